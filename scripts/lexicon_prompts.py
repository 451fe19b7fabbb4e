"""Write nla/resources/corpora/lexicon_prompts.yaml: chat prompts about everyday nouns sampled from WordNet.

    PYTHONPATH=src python scripts/lexicon_prompts.py            # rewrite the shipped file
    PYTHONPATH=src python scripts/lexicon_prompts.py --check    # exit 1 if the shipped file differs

The topics corpus (``topic_prompts.yaml``) covers the 23 topics of the rich teacher's taxonomy, so an AV trained
on it learns those topics and little else (issue 35). This corpus covers the language instead: one prompt per
noun, for nouns drawn from all of WordNet 3.0 by rules, not picked by hand. A noun qualifies when

- it is one lower-case word of 4+ letters, not a plural of another noun, with at most 3 noun senses, more
  than it has adjective senses and at least as many as verb senses (more, for a gerund: "blocking" fails);
- it is the first word of its first sense, as WordNet writes it: WordNet's own name for the thing (so no
  proper name or acronym, which WordNet writes capitalised, and no slang synonym such as "arse" for
  buttocks); that sense's gloss does not call it obscene, vulgar, slang or offensive; it is specific
  (information content >= 0.5, as the open teacher measures it) and names a thing, act, event, state,
  substance ... (not a time, quantity, shape, relation, attribute, feeling or motive: the open teacher's
  NOT_A_TOPIC classes and two more);
- it is in everyday use: a Zipf frequency between 2.8 and 4.8 in ``wordfreq``'s English list (about 0.6 to
  60 uses per million words; the upper bound drops "thing" and "way");
- no prompt naming it mentions any concept of the faithfulness suite (``nla/resources/concepts/*.yaml``, by the
  suite's own keyword matcher), so that the novel split stays novel (tests/faithfulness/test_novel.py).

Nouns are grouped by WordNet's lexicographer class (animal, artifact, food, ...), taken in a fixed hash order
(sha1 of the word), at most ``--per-class`` per class; each gets one of the tasks below, also by hash. The
corpus builder takes prompts round-robin over the classes, so any number of chats is balanced across them.
Needs the dev extra (``wn``, ``wordfreq``); the package itself only reads the YAML.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from nla.data.prose import digest
from nla.faithfulness.concepts import load_concepts
from nla.teach.lexicon import NOT_A_TOPIC, WordNet, load_wordnet

OUT = Path(__file__).resolve().parents[1] / "src/nla/resources/corpora/lexicon_prompts.yaml"
TASKS = (
    "Tell me about {w}.",
    "Write a short paragraph about {w}.",
    "What should a beginner know about {w}?",
    "Write a short story in which {w} plays a part.",
    "Explain {w} in simple words, as if to a child.",
    "What are some interesting facts about {w}?",
    "Where would someone come across {w}, and why does it matter?",
)
SKIP_CLASSES = NOT_A_TOPIC | {12, 16}  # and noun.feeling, noun.motive: moods and reasons, not subjects
RUDE = re.compile(r"\b(obscene|vulgar|slang|offensive|derogatory|disparaging|contemptuous)", re.IGNORECASE)
WORD = re.compile(r"[a-z]{4,}")
CLASS_NAMES = {4: "act", 5: "animal", 6: "artifact", 8: "body", 9: "cognition", 10: "communication", 11: "event",
               13: "food", 14: "group", 15: "location", 17: "object", 18: "person", 19: "phenomenon", 20: "plant",
               21: "possession", 22: "process", 26: "state", 27: "substance"}  # fmt: skip


def raw_synsets(folder: Path) -> dict[int, tuple[str, str]]:
    """data.noun's synsets as written: offset -> (first lemma in its own case, gloss)."""
    out = {}
    with (folder / "data.noun").open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith(" ") and "|" in line:
                head, gloss = line.split("|", 1)
                parts = head.split()
                out[int(parts[0])] = (re.sub(r"\(.*\)$", "", parts[4]), gloss.strip())
    return out


def adjective_senses(folder: Path) -> dict[str, int]:
    """index.adj: lemma -> number of adjective senses ({} without the file)."""
    if not (folder / "index.adj").is_file():
        return {}
    with (folder / "index.adj").open(encoding="utf-8", errors="replace") as f:
        return {p[0]: int(p[2]) for p in (ln.split() for ln in f if not ln.startswith(" ")) if len(p) > 2}


def mostly_a_noun(wn: WordNet, lemma: str, adjectives: dict[str, int]) -> bool:
    """More noun senses than adjective ones, and at least as many as verb ones (more than the verb's when the
    word is an inflection of it: "blocking", "exploit" and "idle" fail, "wedding" and "auction" pass)."""
    nouns, verb = len(wn.senses(lemma)), wn.lemma(lemma, "verb")
    verbs = len(wn.senses(verb, "verb")) if verb else 0
    return (nouns > verbs if verb not in (None, lemma) else nouns >= verbs) and nouns > adjectives.get(lemma, 0)


def candidates(wn: WordNet, zipf: Callable[[str], float], lo: float = 2.8, hi: float = 4.8) -> dict[int, list[str]]:
    """Qualifying nouns by lexicographer class (the rules of the module docstring, less the concept check)."""
    raw, adjectives = raw_synsets(wn.folder), adjective_senses(wn.folder)
    out: dict[int, list[str]] = {}
    for lemma, offs in wn.index["noun"].items():
        if not WORD.fullmatch(lemma) or len(offs) > 3 or offs[0] not in wn.synsets:
            continue
        if wn.lemma(lemma) != lemma or any(lemma.endswith(s) and lemma[: -len(s)] + r in wn.index["noun"]
                                            for s, r in (("s", ""), ("es", ""), ("ies", "y"))):  # fmt: skip
            continue
        if not mostly_a_noun(wn, lemma, adjectives):
            continue
        first, syn = offs[0], wn.synsets[offs[0]]
        written, gloss = raw.get(first, ("", ""))
        if syn.lexfile in SKIP_CLASSES or syn.lexfile not in CLASS_NAMES or written != lemma or RUDE.search(gloss):
            continue
        if wn.ic.get(first, 0.0) < 0.5 or not lo <= zipf(lemma) <= hi:
            continue
        out.setdefault(syn.lexfile, []).append(lemma)
    return out


def prompts(by_class: dict[int, list[str]], per_class: int, banned: Callable[[str], bool]) -> dict[str, list[str]]:
    """Up to ``per_class`` prompts per class, nouns in sha1 order, the task of each by its hash."""
    out = {}
    for lexfile in sorted(by_class):
        chosen = []
        for w in sorted(by_class[lexfile], key=digest):
            p = TASKS[int(digest("task|" + w), 16) % len(TASKS)].format(w=w)
            if not banned(p):
                chosen.append(p)
            if len(chosen) == per_class:
                break
        out[CLASS_NAMES[lexfile]] = chosen
    return out


def concept_matcher() -> Callable[[str], bool]:
    """True for a text that names any shipped concept (covered and novel splits), by the suite's own matcher."""
    suite = load_concepts()
    return lambda text: bool(suite.named(text))


def render(by_class: dict[str, list[str]]) -> str:
    head = [
        "# Chat prompts about everyday nouns drawn from WordNet 3.0 by rules (no hand-picked words), written by",
        "# scripts/lexicon_prompts.py for the nla project: the `lexicon` supplementary corpus of the default NLA",
        "# (`nla train pipeline --preset smollm2`), so that the AV sees contexts about thousands of subjects, not",
        "# only the teacher's taxonomy. The script's docstring gives the rules; do not edit by hand (rerun it).",
        f"#   {sum(map(len, by_class.values()))} prompts in {len(by_class)} WordNet classes; "
        "nla corpus build --prompts lexicon --n-chat 1500 --n-web 0 --out runs/lexicon.jsonl",
    ]
    body = yaml.safe_dump({"prompts": by_class}, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(head) + "\n" + body


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args(list(argv) if argv is not None else None)
    from wordfreq import zipf_frequency

    wn = load_wordnet()
    text = render(prompts(candidates(wn, lambda w: zipf_frequency(w, "en")), args.per_class, concept_matcher()))
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        sys.stdout.write(f"{args.out}: {'up to date' if same else 'differs from what the script writes'}\n")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

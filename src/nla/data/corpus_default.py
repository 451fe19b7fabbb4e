"""The offline default corpus: half chat transcripts, half web-like prose, built without a network.

- **Chat** (``chat-00042``): user prompts from the project-written lists in ``nla/data/`` (hand-written
  prompts plus topic x task templates, picked round-robin across ~20 categories), answered greedily by
  the embedded SmolLM2-135M-Instruct (batched, left padding, KV cache). A share of conversations gets a
  second user turn (a follow-up question) and a second answer.
- **Web** (``web-<source>-<hash>``): prose that installed software already carries, cleaned of markup
  and chunked into passages of ~100-400 words: the stdlib's ``pydoc_data`` topics, stdlib docstrings,
  package long descriptions (``*.dist-info/METADATA``) and license texts; plus a few model-written
  articles, stories and reviews (``web-gen-00007``).

The build is deterministic for a given machine (the web half depends on the installed Python and
packages), interleaves chat and web documents (so any prefix is ~50/50), and is cached as JSONL in
``nla.common.paths.cache_dir("corpus")``. Generations are written in chunks under ``<out>.parts/``; a killed
build resumes from the finished chunks. Run it with ``nla corpus build``. ``load_corpus("default",
limit=N)`` (:func:`default_corpus_documents`) generates only the chunks the first N documents need.

>>> path = build_default_corpus(n_chat=1000, n_web=1000, max_new_tokens=96)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text, cache_dir
from nla.data.documents import Document, document_from_record, write_jsonl
from nla.data.positions import plain_label, plain_transcript
from nla.data.prose import digest, web_passages
from nla.models.target import DEFAULT_TARGET, Target, load_target
from nla.resources import resource

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class DefaultCorpusConfig:
    """Options of ``nla corpus build`` (the default corpus)."""

    out: str | None = option(None, "Output JSONL file (default: <cache>/corpus/default.jsonl).")
    model: str = option(DEFAULT_TARGET, "Model that answers the chat prompts and writes the articles.")
    n_chat: int = option(1000, "Number of chat transcripts.")
    n_web: int = option(1000, "Number of web-like prose documents (0 = chats only).")
    max_new_tokens: int = option(96, "Cap on generated tokens per answer (sets the build time).")
    batch_size: int = option(32, "Prompts generated together.")
    chunk_size: int = option(64, "Conversations per resumable chunk written to disk.")
    multi_turn: float = option(0.15, "Share of chats that get a follow-up question and a second answer.")
    generated_web: float = option(0.05, "Share of web documents written by the model (articles, stories).")
    repetition_penalty: float = option(1.1, "Greedy-decoding repetition penalty (1.0 = off).")
    prompts: str = option(
        "",
        "Your own chat prompts: a YAML file laid out as nla/resources/prompt_templates.yaml (`templates:` of "
        "category/pattern/slots, optional `prompts:` category -> list); replaces the shipped prompt lists, and "
        "documents are named chat-<file stem>-NNNNN; `topics` and `scenes` name the bundled supplementary prompt "
        "files (nla/resources/corpora/). Empty = the shipped lists.",
    )
    locale: list[str] = option(
        [], "Instead: passages in these languages (fr de es ...) from the translations installed on this machine."
    )
    per_language: int = option(40, "With --locale: passages per language.")
    answers_of: str = option("", "Instead: the assistant answers of this chat corpus (JSONL) as plain documents.")


# ----------------------------------------------------------------------------- prompts
@functools.lru_cache(maxsize=4)
def _templates(path: str = "") -> dict[str, Any]:
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8") if path else _data_text("prompt_templates.yaml"))
    except yaml.YAMLError as e:
        raise NLAError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if path and not (isinstance(spec, dict) and isinstance(spec.get("templates", []), list)):
        raise NLAError(f"{path}: expected a mapping with a `templates:` list (see nla/resources/prompt_templates.yaml)")
    return spec


def _data_text(name: str) -> str:
    return resource(name).read_text(encoding="utf-8")


def _expand(template: dict[str, Any]) -> list[str]:
    slots = template["slots"]
    keys = list(slots)
    return [
        template["pattern"].format(**dict(zip(keys, combo, strict=True)))
        for combo in itertools.product(*slots.values())
    ]


def _round_robin(groups: list[list[Any]]) -> Iterator[Any]:
    for row in itertools.zip_longest(*groups):
        yield from (x for x in row if x is not None)


def _shipped_prompts() -> dict[str, list[str]]:
    """The hand-written prompts of ``chat_prompts.txt`` by category."""
    by_cat: dict[str, list[str]] = {}
    cat = "misc"
    for line in _data_text("chat_prompts.txt").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            cat = line[1:-1]
            continue
        by_cat.setdefault(cat, []).append(line.replace("\\n", "\n"))
    return by_cat


def chat_prompts(n: int, prompts: str = "") -> list[tuple[str, str]]:
    """``n`` distinct (category, prompt) pairs, deterministic, balanced across categories; from the shipped
    lists, or from the YAML file ``prompts`` (see :class:`DefaultCorpusConfig`)."""
    if prompts:
        by_cat = {str(c): [str(p) for p in ps] for c, ps in (_templates(prompts).get("prompts") or {}).items()}
    else:
        by_cat = _shipped_prompts()
    templated: dict[str, list[str]] = {}
    for t in _templates(prompts).get("templates") or []:
        templated.setdefault(t["category"], []).extend(_expand(t))
    groups = []
    for c in sorted(set(by_cat) | set(templated)):
        extra = sorted(templated.get(c, []), key=digest)  # hash order: varied, stable
        groups.append([(c, p) for p in by_cat.get(c, []) + extra])
    out, seen = [], set()
    for c, p in _round_robin(groups):
        if p not in seen:
            seen.add(p)
            out.append((c, p))
        if len(out) == n:
            return out
    raise NLAError(f"the prompt lists hold only {len(out)} distinct prompts; ask for at most that many chats")


def article_prompts(n: int) -> list[str]:
    groups = [sorted(_expand(t), key=digest) for t in _templates()["articles"]]
    out = list(itertools.islice(_round_robin(groups), n))
    if len(out) < n:
        raise NLAError(f"only {len(out)} article prompts exist; lower --generated-web")
    return out


def _followups() -> list[str]:
    return list(_templates()["followups"])


# ----------------------------------------------------------------------------- generation
def _tidy(text: str, truncated: bool) -> str:
    """Strip; if the answer was cut at the token cap, end it at the last sentence boundary when one exists
    in its second half."""
    text = text.strip()
    if truncated:
        ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]?(?=\s)|\n", text + " ")]
        if ends and ends[-1] >= len(text) // 2:
            text = text[: ends[-1]].strip()
    return text


PLAIN_ASSISTANT = plain_label("assistant")  # a template-less chat: the generation prompt after the transcript
PLAIN_USER = "\n" + plain_label("user")  # ... and where a base model's answer ends (it starts the next turn)


@torch.no_grad()
def generate_answers(
    target: Target,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    repetition_penalty: float = 1.1,
) -> list[tuple[str, bool]]:
    """Greedy answers (text, truncated_at_cap) to chat conversations, batched with left padding.

    Batches are formed by prompt length within this call only, so the result depends on the list alone.
    A base model without a chat template reads each conversation as the plain transcript extraction reads
    (:func:`nla.data.positions.plain_transcript`) followed by ``Assistant:``; its answer ends where it
    starts the next ``User:`` turn.
    """
    tok = target.tokenizer
    plain = not getattr(tok, "chat_template", None)
    if plain:
        texts = [(tok.bos_token or "") + plain_transcript(c)[0] + f"\n\n{PLAIN_ASSISTANT}" for c in conversations]
    else:
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    results: list[tuple[str, bool]] = [("", False)] * len(texts)
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(target.device)
            out = target.model.generate(  # (b, T + new)
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                repetition_penalty=repetition_penalty,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]  # (b, new)
            for row, i in zip(new, idx, strict=True):
                truncated = not bool((row == tok.eos_token_id).any())
                text = tok.decode(row, skip_special_tokens=True)
                if plain and PLAIN_USER in text:  # a base model goes on with the next turn: its answer ends here
                    text, truncated = text.split(PLAIN_USER, 1)[0], False
                results[i] = (_tidy(text, truncated), truncated)
    finally:
        tok.padding_side = side
    return results


def _chat_chunk(
    target: Target, jobs: list[tuple[int, str, str]], cfg: DefaultCorpusConfig, followups: list[str]
) -> list[Document]:
    gen = {
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.batch_size,
        "repetition_penalty": cfg.repetition_penalty,
    }
    name = f"chat-{Path(cfg.prompts).stem}" if cfg.prompts else "chat"  # document ids
    convs = [[{"role": "user", "content": p}] for _, _, p in jobs]
    first = generate_answers(target, convs, **gen)
    multi = [k for k, (i, _, _) in enumerate(jobs) if int(digest(f"multi-turn-{i}"), 16) % 1000 < cfg.multi_turn * 1000]
    for k in multi:
        convs[k] += [
            {"role": "assistant", "content": first[k][0]},
            {"role": "user", "content": followups[jobs[k][0] % len(followups)]},
        ]
    second = dict(zip(multi, generate_answers(target, [convs[k] for k in multi], **gen), strict=True))
    docs = []
    for k, (i, category, _) in enumerate(jobs):
        answer, truncated = second.get(k, first[k])
        msgs = tuple(convs[k] if k in second else convs[k][:1]) + ({"role": "assistant", "content": answer},)
        meta = {"category": category, "turns": len(msgs) // 2, "truncated": truncated}
        docs.append(Document(doc_id=f"{name}-{i:05d}", messages=msgs, source="default/chat", meta=meta))
    return docs


def _article_chunk(target: Target, jobs: list[tuple[int, str]], cfg: DefaultCorpusConfig) -> list[Document]:
    answers = generate_answers(
        target,
        [[{"role": "user", "content": p}] for _, p in jobs],
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        repetition_penalty=cfg.repetition_penalty,
    )
    return [
        Document(
            doc_id=f"web-gen-{i:05d}",
            text=a or "(empty)",
            source="default/web/generated",
            meta={"prompt": p, "truncated": t},
        )
        for (i, p), (a, t) in zip(jobs, answers, strict=True)
    ]


# ----------------------------------------------------------------------------- build
def _settings(cfg: DefaultCorpusConfig, model_name: str) -> dict[str, Any]:
    other = ("out", "model", "locale", "per_language", "answers_of")  # not part of a chat corpus's identity
    s = {k: v for k, v in asdict(cfg).items() if k not in other}
    data = _data_text("chat_prompts.txt") + _data_text("prompt_templates.yaml")
    if cfg.prompts:
        s["prompts"] = Path(cfg.prompts).name
        data += Path(cfg.prompts).read_text(encoding="utf-8")
    return {"format": FORMAT_VERSION, "model": model_name, **s, "data_sha1": digest(data)[:12]}


def _read_chunk(path: Path, limit: int | None = None) -> list[Document]:
    lines = path.read_text(encoding="utf-8").splitlines()[:limit]
    return [document_from_record(json.loads(line), "", f"{path} line {n}", "") for n, line in enumerate(lines, 1)]


def spread(a: list[Any], b: list[Any]) -> list[Any]:
    """Merge ``b`` into ``a`` evenly, keeping both orders (a, b, a, b ... for equal lengths)."""
    if not b:
        return list(a)
    if not a:
        return list(b)
    na, nb = len(a), len(b)
    keys = [((i + 0.5) / na, 0, x) for i, x in enumerate(a)] + [((j + 0.5) / nb, 1, x) for j, x in enumerate(b)]
    order = sorted(range(len(keys)), key=lambda k: keys[k][:2])
    return [keys[k][2] for k in order]


def build_default_corpus(
    *,
    target: Target | None = None,
    out: Path | None = None,
    n_chat: int = 1000,
    n_web: int = 1000,
    max_new_tokens: int = 96,
    batch_size: int = 32,
    chunk_size: int = 64,
    multi_turn: float = 0.15,
    generated_web: float = 0.05,
    repetition_penalty: float = 1.1,
    model: str = DEFAULT_TARGET,
    prompts: str = "",
    progress: bool = True,
) -> Path:
    """Build (or reuse) the default corpus and return its JSONL path.

    ``target`` overrides ``model`` (e.g. a tiny random model in tests). The output is reused when its
    ``.info.json`` records the same settings; otherwise finished generation chunks in ``<out>.parts/``
    are reused and the rest is generated.
    """
    cfg = DefaultCorpusConfig(
        out=None if out is None else str(out),
        model=model,
        n_chat=n_chat,
        n_web=n_web,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chunk_size=chunk_size,
        multi_turn=multi_turn,
        generated_web=generated_web,
        repetition_penalty=repetition_penalty,
        prompts=prompts,
    )
    out, _ = _produce(cfg, target, None, progress)
    return out


def default_corpus_documents(
    limit: int | None = None, *, target: Target | None = None, progress: bool = True
) -> list[Document]:
    """The first ``limit`` documents of the default corpus (all when None).

    If the corpus is not built yet, only the generation chunks those documents need are produced (they
    are kept for the full build), so ``nla extract --limit-docs 60`` does not wait for 1,000 answers.
    """
    return _produce(DefaultCorpusConfig(), target, limit, progress)[1]


def _out_path(cfg: DefaultCorpusConfig, settings: dict[str, Any], key: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    default = _settings(DefaultCorpusConfig(), DEFAULT_TARGET)
    return cache_dir("corpus") / ("default.jsonl" if settings == default else f"default-{key}.jsonl")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds of one corpus across processes (POSIX advisory lock; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _produce(
    cfg: DefaultCorpusConfig, target: Target | None, limit: int | None, progress: bool
) -> tuple[Path, list[Document]]:
    """Generate what the first ``limit`` documents (or all) need; write the corpus file when complete."""
    from tqdm.auto import tqdm

    if min(cfg.n_chat, cfg.max_new_tokens, cfg.batch_size, cfg.chunk_size) < 1 or cfg.n_web < 0:
        raise NLAError("n_chat, max_new_tokens, batch_size and chunk_size must all be >= 1, n_web >= 0")
    if cfg.prompts and not Path(cfg.prompts).is_file():
        raise NLAError(f"prompt file not found: {cfg.prompts}")
    if not (0 <= cfg.multi_turn <= 1 and 0 <= cfg.generated_web <= 1):
        raise NLAError("multi_turn and generated_web are shares between 0 and 1")
    settings = _settings(cfg, target.name if target is not None else cfg.model)
    key = digest(json.dumps(settings, sort_keys=True))[:12]
    out = _out_path(cfg, settings, key)
    info_path = Path(str(out) + ".info.json")

    def finished() -> bool:
        return (
            out.exists() and info_path.exists() and json.loads(info_path.read_text(encoding="utf-8")).get("key") == key
        )

    if finished():
        return out, _read_chunk(out, limit)
    t0 = time.perf_counter()
    n_gen = round(cfg.n_web * cfg.generated_web)
    chats = [(i, c, p) for i, (c, p) in enumerate(chat_prompts(cfg.n_chat, cfg.prompts))]
    articles = list(enumerate(article_prompts(n_gen)))
    web = web_passages(cfg.n_web - n_gen)  # cheap, and checks availability before the long generation
    order = spread([("chat", i) for i in range(cfg.n_chat)], spread(web, [("gen", j) for j in range(n_gen)]))
    limit = None if limit is not None and limit >= len(order) else limit
    order = order[:limit]
    wanted = {
        kind: sorted({x[1] // cfg.chunk_size for x in order if isinstance(x, tuple) and x[0] == kind})
        for kind in ("chat", "gen")
    }
    parts = Path(str(out) + ".parts")
    with _locked(Path(str(out) + ".lock")):
        if finished():  # another process built it while we waited
            return out, _read_chunk(out, limit)
        if parts.exists() and not (parts / f"{key}.key").exists():
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        (parts / f"{key}.key").touch()
        followups = _followups()
        made: dict[tuple[str, int], Document] = {}
        total = sum(len(wanted[k]) for k in wanted)
        bar = tqdm(total=total, desc=f"{out.name} chunks", unit="chunk", disable=not progress)
        for kind, jobs in (("chat", chats), ("gen", articles)):
            for c in wanted[kind]:
                chunk = jobs[c * cfg.chunk_size : (c + 1) * cfg.chunk_size]
                path = parts / f"{kind}-{c:05d}.jsonl"
                if path.exists():
                    docs = _read_chunk(path)
                else:
                    if target is None:
                        target = load_target(cfg.model)
                    docs = (
                        _chat_chunk(target, chunk, cfg, followups)
                        if kind == "chat"
                        else _article_chunk(target, chunk, cfg)
                    )
                    write_jsonl(docs, path)
                made.update({(kind, job[0]): d for job, d in zip(chunk, docs, strict=True)})
                bar.update(1)
        bar.close()
        docs = [made[x] if isinstance(x, tuple) else x for x in order]
        if limit is None:
            write_jsonl(docs, out)
            seconds = round(time.perf_counter() - t0, 1)
            info = {"key": key, "settings": settings, "documents": len(docs), "build_seconds": seconds}
            atomic_write_text(info_path, json.dumps(info, indent=2))
            shutil.rmtree(parts, ignore_errors=True)
            log.info("default corpus: %d documents in %s (%.0f s)", len(docs), out, seconds)
    return out, docs

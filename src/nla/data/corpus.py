"""Documents: the unit of data an NLA extracts activations from, and the corpora that hold them.

A :class:`Document` is either plain text (web prose) or a chat transcript (``messages``). ``doc_id`` is
stable across runs and machines; splits and resume are keyed by it.

:func:`load_corpus` reads a corpus from a spec:

- ``default``: the offline default corpus (built once by
  :func:`nla.data.corpus_default.build_default_corpus` and cached; see
  ``nla corpus build`` and :mod:`nla.data.corpus_default`);
- a ``.jsonl`` file: one JSON object per line with a ``text`` string or a chat ``messages`` list of
  ``{"role", "content"}``; ``id`` (or ``doc_id``) becomes the doc id, else ``<file name>:<line number>``;
- a ``.parquet`` file: a ``text`` or ``messages`` column, optional ``id``; else ``<file name>:<row>``;
- a folder: one document per ``.txt``/``.md`` file (recursive), id = the path relative to the folder;
- any other file: plain UTF-8 text, one document per blank-line-separated block, id ``<file name>:<n>``;
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face dataset (needs the optional ``datasets`` package and a
  network); ``text`` or ``messages``/``conversation`` column; split defaults to ``train``.

>>> docs = load_corpus("notes.txt", limit=10)   # doctest: +SKIP
>>> docs[0].doc_id, docs[0].kind                # doctest: +SKIP
('notes.txt:1', 'text')
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nla.common.errors import NLAError
from nla.data.corpus_default import default_corpus_documents
from nla.data.documents import Document, document_from_record

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")


# ----------------------------------------------------------------------------- user corpora
def load_corpus(spec: str, *, limit: int | None = None) -> list[Document]:
    """Load the documents of ``spec`` (see the module docstring), at most ``limit`` of them, in order."""
    if limit is not None and limit <= 0:
        raise NLAError(f"corpus limit must be positive, got {limit}")
    spec = str(spec)
    if spec == "default":
        return default_corpus_documents(limit)
    if spec.startswith("hf:"):
        docs = _iter_hf(spec[3:])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise NLAError(
                f"corpus not found: {spec} "
                "(expected 'default', 'hf:NAME', a folder, or a .txt/.md/.jsonl/.parquet file)"
            )
        if path.is_dir():
            docs = _iter_folder(path)
        elif path.suffix.lower() == ".jsonl":
            docs = _iter_jsonl(path)
        elif path.suffix.lower() == ".parquet":
            docs = _iter_parquet(path)
        else:
            docs = _iter_text_blocks(path)
    out: list[Document] = []
    seen: set[str] = set()
    for doc in docs:
        if doc.doc_id in seen:
            raise NLAError(f"duplicate document id {doc.doc_id!r} in corpus {spec}")
        seen.add(doc.doc_id)
        out.append(doc)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise NLAError(f"corpus {spec} holds no documents")
    return out


def corpus_sha256(docs: list[Document]) -> str:
    """The identity of a corpus: sha256 over each document's id, kind and body, in the order given (for the
    value ``nla extract`` records as ``provenance.corpus_sha256``, pass the documents sorted by ``doc_id``)."""
    h = hashlib.sha256()
    for d in docs:
        body = d.text if d.messages is None else json.dumps(list(d.messages), sort_keys=True)
        h.update(json.dumps([d.doc_id, d.kind, body]).encode("utf-8"))
    return h.hexdigest()


def read_utf8(path: Path) -> str:
    """A file's text; one clear error if it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NLAError(f"{path} is not UTF-8 text (undecodable byte at offset {e.start})") from e


def _iter_text_blocks(path: Path) -> Iterator[Document]:
    text = read_utf8(path).replace("\r\n", "\n")
    blocks = [b.strip() for b in re.split(r"\n[ \t]*\n", text)]
    for i, block in enumerate((b for b in blocks if b), start=1):
        yield Document(doc_id=f"{path.name}:{i}", text=block, source=f"file:{path.name}")


def _iter_folder(root: Path) -> Iterator[Document]:
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    for p in files:
        rel = p.relative_to(root).as_posix()
        if any(part.startswith(".") for part in Path(rel).parts):
            continue
        text = read_utf8(p).strip()
        if not text:
            log.info("skipping empty file %s", p)
            continue
        yield Document(doc_id=rel, text=text, source=f"dir:{root.name}")


def _iter_jsonl(path: Path) -> Iterator[Document]:
    for n, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise NLAError(f"{path} line {n}: not valid JSON ({e.msg})") from e
        yield document_from_record(rec, f"{path.name}:{n}", f"{path} line {n}", f"file:{path.name}")


def _iter_parquet(path: Path) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise NLAError(f"{path} is not a readable parquet file: {e}") from e
    names = set(pf.schema_arrow.names)
    cols = [c for c in ("id", "doc_id", "text", "messages", "conversation", "source") if c in names]
    if not {"text", "messages", "conversation"} & names:
        raise NLAError(f"{path} needs a 'text' or 'messages' column; it has {', '.join(sorted(names))}")
    row = 0
    for batch in pf.iter_batches(batch_size=1024, columns=cols):
        for rec in batch.to_pylist():
            rec = {k: v for k, v in rec.items() if v is not None}
            yield document_from_record(rec, f"{path.name}:{row}", f"{path} row {row}", f"file:{path.name}")
            row += 1


def _iter_hf(rest: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError as e:
        raise NLAError("hf: corpora need the optional 'datasets' package: pip install 'nla[datasets]'") from e
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise NLAError("hf corpus spec needs a dataset name: hf:NAME[:CONFIG][@SPLIT]")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # datasets raises many types (network, missing config, ...)
        raise NLAError(f"cannot load Hugging Face dataset {name!r}: {str(e).splitlines()[0] if str(e) else e!r}") from e
    i = 0
    while first is not None:
        yield document_from_record(first, f"{name}:{i}", f"hf:{name} row {i}", f"hf:{name}")
        first, i = next(rows, None), i + 1


# ----------------------------------------------------------------------------- statistics
def doc_words(doc: Document) -> int:
    """Whitespace-separated words of a document (all message contents for chats)."""
    if doc.messages is not None:
        return sum(len(m["content"].split()) for m in doc.messages)
    return len((doc.text or "").split())


def corpus_stats(docs: list[Document]) -> dict[str, Any]:
    """Counts by kind and source plus word-length statistics (overall and per kind)."""

    def lengths(ds: list[Document]) -> dict[str, float]:
        w = [doc_words(d) for d in ds]
        if not w:
            return {}
        return {"mean": round(statistics.fmean(w), 1), "median": statistics.median(w), "min": min(w), "max": max(w)}

    kinds = Counter(d.kind for d in docs)
    return {
        "documents": len(docs),
        "by_kind": dict(sorted(kinds.items())),
        "by_source": dict(sorted(Counter(d.source or "?" for d in docs).items())),
        "multi_turn_chats": sum(1 for d in docs if d.messages is not None and len(d.messages) > 2),
        "words": lengths(docs),
        "words_by_kind": {k: lengths([d for d in docs if d.kind == k]) for k in sorted(kinds)},
    }


__all__ = ["corpus_stats", "doc_words", "load_corpus", "read_utf8"]

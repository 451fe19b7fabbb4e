"""Offline prose for the default corpus: passages of the text that installed software already carries.

Sources (:data:`WEB_SOURCES`, taken round-robin): the stdlib's ``pydoc_data`` topics, stdlib docstrings,
package long descriptions (``*.dist-info/METADATA``) and license texts, cleaned of markup
(:func:`clean_paragraphs`) and chunked into passages of ~100-400 words (:func:`chunk_passages`). What is
available depends on the installed Python and packages, so the passages are deterministic per machine.
"""

from __future__ import annotations

import ast
import email.parser
import functools
import hashlib
import importlib.metadata
import os
import re
import struct
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from nla.common.errors import NLAError
from nla.data.documents import Document

WEB_SOURCES = ("stdlib-topics", "stdlib-docs", "pkg-readme", "license")


def digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


_WORDLIKE = re.compile(r"^[(\"'“‘\[]*[A-Za-z][A-Za-z'’-]*[)\"'”’\].,;:!?]*$")
_INLINE = [
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),  # markdown image
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # markdown link
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`_+"), r"\1"),  # rst link
    (re.compile(r":[\w:.-]+:`~?([^`]+)`"), r"\1"),  # rst role
    (re.compile(r"<[^>\n]{1,200}>"), ""),  # html tag
    (re.compile(r"`+|\*\*|(?<!\w)_{1,2}(?=\w)|(?<=\w)_{1,2}(?!\w)"), ""),  # code and emphasis marks
    (re.compile(r"\s+"), " "),
]


def clean_paragraphs(raw: str) -> list[str]:
    """Prose paragraphs of a markdown/reST/plain text: code, tables, directives and markup removed."""
    raw = re.sub(r"```.*?```|~~~.*?~~~|<!--.*?-->", "\n", raw.replace("\r\n", "\n"), flags=re.S)
    out = []
    for block in re.split(r"\n[ \t]*\n", raw):
        lines = [ln for ln in block.splitlines() if ln.strip() and not re.fullmatch(r"\s*([=\-~^*#+])\1{2,}\s*", ln)]
        if not lines or any(ln.lstrip().startswith((">>>", "$ ", "|", ".. ", "..\t")) for ln in lines):
            continue
        lines = [re.sub(r"^\s*(#{1,6}\s+|[-*+•]\s+|\d+[.)]\s+)", "", ln) for ln in lines]
        text = " ".join(ln.strip() for ln in lines)
        for pattern, repl in _INLINE:
            text = pattern.sub(repl, text)
        text = text.strip()
        words = text.split()
        if len(words) >= 8 and sum(1 for w in words if _WORDLIKE.match(w)) >= 0.75 * len(words):
            out.append(text)
    return out


def chunk_passages(paragraphs: list[str], *, lo: int = 100, hi: int = 400, target: int = 250) -> list[str]:
    """Group paragraphs into passages of lo..hi words (aiming at ``target``); long paragraphs are split
    at sentence ends."""
    pieces: list[str] = []
    for p in paragraphs:
        if len(p.split()) <= hi:
            pieces.append(p)
            continue
        cur: list[str] = []
        for sent in re.split(r"(?<=[.!?])\s+", p):
            if cur and len(" ".join(cur + [sent]).split()) > hi:
                pieces.append(" ".join(cur))
                cur = []
            cur.append(" ".join(sent.split()[:hi]))
        pieces.append(" ".join(cur))
    out, cur, n = [], [], 0
    for p in pieces:
        w = len(p.split())
        if cur and n + w > hi:
            if n >= lo:
                out.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += w
        if n >= target:
            out.append("\n\n".join(cur))
            cur, n = [], 0
    if n >= lo:
        out.append("\n\n".join(cur))
    return out


def _stdlib_topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics, key=digest):
        yield f"pydoc topic {name}", topics[name]


def _stdlib_docs() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "ensurepip"}
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    for p in sorted(files, key=lambda p: digest(p.relative_to(root).as_posix())):
        try:
            tree = ast.parse(p.read_bytes())
        except (SyntaxError, ValueError):
            continue
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        docs = [d for d in (ast.get_docstring(n) for n in nodes) if d and len(d.split()) >= 20]
        if docs:
            yield f"stdlib {p.relative_to(root).as_posix()}", "\n\n".join(docs)


def _distributions() -> list[importlib.metadata.Distribution]:
    by_name: dict[str, importlib.metadata.Distribution] = {}
    for d in importlib.metadata.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name and name != "nla" and name not in by_name:
            by_name[name] = d
    return [by_name[n] for n in sorted(by_name, key=digest)]


def _pkg_readmes() -> Iterator[tuple[str, str]]:
    for d in _distributions():
        raw = d.read_text("METADATA") or ""
        msg = email.parser.Parser().parsestr(raw)
        body = msg.get_payload() if isinstance(msg.get_payload(), str) else ""
        body = body or msg.get("Description", "")
        if body.strip():
            yield f"package {d.metadata['Name']}", body


def _licenses() -> Iterator[tuple[str, str]]:
    for d in _distributions():
        for f in sorted(d.files or [], key=str):
            if re.search(r"(LICEN[CS]E|COPYING|NOTICE)[^/]*$", str(f), re.I) and not str(f).endswith((".py", ".pyc")):
                try:
                    text = Path(str(d.locate_file(f))).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                yield f"license {d.metadata['Name']}/{f.name}", text


def _source_passages(name: str, items: Iterator[tuple[str, str]]) -> Iterator[Document]:
    seen: set[str] = set()  # paragraphs repeat across docstrings and license files: keep the first
    for origin, raw in items:
        fresh = [p for p in clean_paragraphs(raw) if not (p in seen or seen.add(p))]
        for text in chunk_passages(fresh):
            yield Document(
                doc_id=f"web-{name}-{digest(text)[:10]}",
                text=text,
                source=f"default/web/{name}",
                meta={"origin": origin},
            )


def web_passages(n: int) -> list[Document]:
    """``n`` distinct prose passages from installed software, round-robin across :data:`WEB_SOURCES`."""
    return list(_web_passages(n)) if n > 0 else []


@functools.lru_cache(maxsize=4)
def _web_passages(n: int) -> tuple[Document, ...]:
    makers = {
        "stdlib-topics": _stdlib_topics,
        "stdlib-docs": _stdlib_docs,
        "pkg-readme": _pkg_readmes,
        "license": _licenses,
    }
    sources = [_source_passages(name, makers[name]()) for name in WEB_SOURCES]
    out: list[Document] = []
    seen: set[str] = set()
    while sources and len(out) < n:
        for src in list(sources):
            doc = next((d for d in src if digest(d.text or "") not in seen), None)
            if doc is None:
                sources.remove(src)
                continue
            seen.add(digest(doc.text or ""))
            out.append(doc)
            if len(out) == n:
                break
    if len(out) < n:
        raise NLAError(
            f"only {len(out)} prose passages are available offline here; lower --n-web or raise --generated-web"
        )
    return tuple(out)


# ------------------------------------------------------------------ other languages: installed translations

LOCALE_DIR = Path("/usr/share/locale")
_PLACEHOLDER = re.compile(r"%(?:\d+\$)?[-+ #0]*\d*(?:\.\d+)?[a-zA-Z]|[{]\w*[}]|&(?=\w)|_(?=\w)")  # %s, {name}, &File


def mo_messages(path: Path) -> list[str]:
    """The translated strings of one GNU gettext ``.mo`` catalogue (plural forms split; the header dropped)."""
    data = path.read_bytes()
    if len(data) < 20:
        return []
    for order in ("<", ">"):
        magic, _rev, n, _orig, trans = struct.unpack(order + "5I", data[:20])
        if magic == 0x950412DE:
            break
    else:
        return []
    out = []
    for i in range(n):
        length, offset = struct.unpack(order + "2I", data[trans + 8 * i : trans + 8 * i + 8])
        raw = data[offset : offset + length]
        if raw and not raw.startswith(b"Project-Id-Version"):
            out += [s.decode("utf-8", "replace") for s in raw.split(b"\0") if s]
    return out


def locale_passages(language: str, n: int, *, root: Path = LOCALE_DIR) -> list[Document]:
    """Up to ``n`` passages of ``language`` (a locale folder name such as ``fr`` or ``de``) made of the
    installed programs' translated messages (``<root>/<language>/LC_MESSAGES/*.mo``): messages of at least
    8 words, format placeholders removed, six to a paragraph, grouped per catalogue into passages of ~100-400
    words. Deterministic per machine; empty when the machine carries no translations for that language."""
    folder = root / language / "LC_MESSAGES"
    files = sorted(folder.glob("*.mo"), key=lambda p: digest(p.name)) if folder.is_dir() else []
    out: list[Document] = []
    seen: set[str] = set()
    for f in files:
        try:
            messages = mo_messages(f)
        except (OSError, struct.error):
            continue
        paragraphs = []
        for m in messages:
            text = " ".join(_PLACEHOLDER.sub("", m).split())
            if len(text.split()) >= 8 and text not in seen:
                seen.add(text)
                paragraphs.append(text)
        grouped = [" ".join(paragraphs[i : i + 6]) for i in range(0, len(paragraphs), 6)]  # ~6 messages a paragraph
        for text in chunk_passages(grouped):
            meta = {"origin": f.name, "language": language}
            out.append(Document(doc_id=f"web-locale-{language}-{digest(text)[:10]}", text=text,
                                source=f"locale/{language}", meta=meta))  # fmt: skip
            if len(out) == n:
                return out
    return out

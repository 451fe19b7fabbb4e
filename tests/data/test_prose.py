"""Offline prose sources of the corpus: installed translations (other languages)."""

from __future__ import annotations

import struct

from nla.data.prose import locale_passages, mo_messages


def _write_mo(path, pairs: dict[str, str]) -> None:
    """A little-endian GNU .mo catalogue of ``pairs`` (the header entry first, as msgfmt writes it)."""
    items = sorted({"": "Project-Id-Version: test\n", **pairs}.items())
    n = len(items)
    orig_table, trans_table = 28, 28 + 8 * n
    data_start = 28 + 16 * n
    blob, origs, trans = b"", [], []
    for key, _ in items:
        k = key.encode()
        origs.append((len(k), data_start + len(blob)))
        blob += k + b"\0"
    for _, value in items:
        v = value.encode()
        trans.append((len(v), data_start + len(blob)))
        blob += v + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, orig_table, trans_table, 0, 0)
    tables = b"".join(struct.pack("<2I", *e) for e in origs + trans)
    path.write_bytes(head + tables + blob)


def test_locale_passages_read_installed_translations(tmp_path) -> None:
    folder = tmp_path / "fr" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    french = {f"message {i} in English with enough words here": f"le message numéro {i} de %s est dans la liste "
              f"des fichiers qui ont été lus par le programme" for i in range(60)}  # fmt: skip
    french["short"] = "court"
    _write_mo(folder / "prog.mo", french)
    msgs = mo_messages(folder / "prog.mo")
    assert len(msgs) == 61 and "court" in msgs and not any(m.startswith("Project-Id") for m in msgs)
    docs = locale_passages("fr", 5, root=tmp_path)
    assert docs and all(d.doc_id.startswith("web-locale-fr-") and d.meta["language"] == "fr" for d in docs)
    text = " ".join(d.text for d in docs)
    assert "%s" not in text and "court" not in text.split() and "numéro 7 de est dans la liste" in text
    assert locale_passages("de", 5, root=tmp_path) == []
    assert locale_passages("fr", 5, root=tmp_path) == docs  # deterministic

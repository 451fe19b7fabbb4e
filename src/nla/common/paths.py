"""Where nla keeps its caches (converted models, the default corpus, teacher caches), atomic writes, and
the checks that an output path is writable, made before the work rather than after it.

Set ``NLA_CACHE`` to move everything; otherwise ``$XDG_CACHE_HOME/nla`` or ``~/.cache/nla``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nla.common.errors import NLAError


def cache_dir(*parts: str) -> Path:
    """Return (and create) a directory inside the nla cache."""
    root = os.environ.get("NLA_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "nla"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it is renamed to ``final``.

    On any error the temporary directory is removed, so ``final`` is either complete or absent.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _nearest_existing(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _probe(folder: Path, what: str, path: Path) -> None:
    if not folder.is_dir():
        raise NLAError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nla-write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise NLAError(f"cannot write {what} {path}: no new file can be made in {folder} ({e.strerror or e})") from e


def check_writable_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Fail now, before any work, when ``path`` could not be written as a file at the end: it is a folder,
    a parent is a file, or the nearest existing folder refuses a new file (tried with a temporary file,
    removed at once; missing parent folders are not created here)."""
    p = Path(path).expanduser()
    if str(path).strip() == "" or p.is_dir():
        raise NLAError(f"{what} {str(path)!r} is a folder: give a file name")
    _probe(_nearest_existing(p), what, p)
    return p


def check_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Like :func:`check_writable_file` for an output folder: it may exist (as a folder) or be creatable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise NLAError(f"{what} {p} is a file, not a folder")
    _probe(p if p.is_dir() else _nearest_existing(p), what, p)
    return p


def dir_size_mib(path: Path) -> float:
    """Total size of the files under ``path``, in MiB."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20

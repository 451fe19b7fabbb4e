"""What ships inside the package: the default NLA and its card, pipeline presets, prompt lists.

Only data lives here (and the two helpers that find it); code reads it through these functions, never
through paths of its own.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def resource(*parts: str) -> Traversable:
    """A file or folder shipped under ``nla/resources``."""
    return resources.files(__name__).joinpath(*parts)


def default_nla_dir() -> Path:
    """The NLA shipped with the package (``av/``, ``ar/``, ``card.json``)."""
    return Path(__file__).parent / "default_nla"


def shipped_nla_dir(model: str) -> Path:
    """Where the NLA shipped for embedded model ``model`` other than the default one lives (``nla/<model>``;
    it may not exist)."""
    return Path(__file__).parent / "nla" / model

"""nla: Natural Language Autoencoders for LLM activations.

An NLA explains a residual-stream vector of a *target* model in plain English (the activation
verbalizer, AV) and scores the explanation by reconstructing the vector from it (the activation
reconstructor, AR). See the README for the pipeline and the CLI.

>>> from nla import NLA                                               # doctest: +SKIP
>>> nla = NLA.from_pretrained("runs/smol/av/final", "runs/smol/ar/final")  # doctest: +SKIP
>>> nla.explain("The Eiffel Tower is in Paris.", positions="last")   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from nla.errors import NLAError
from nla.target import DEFAULT_TARGET, Target, load_target

__version__ = "0.1.0"

_LAZY = {
    "NLA": "nla.explain",
    "ActivationVerbalizer": "nla.av",
    "ActivationReconstructor": "nla.ar",
    "load_corpus": "nla.corpus",
    "extract": "nla.extract",
    "ExtractConfig": "nla.extract",
}


def __getattr__(name: str) -> Any:
    """Import the heavier parts of the API on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nla' has no attribute {name!r}")


__all__ = ["DEFAULT_TARGET", "NLAError", "Target", "load_target", "__version__", *_LAZY]

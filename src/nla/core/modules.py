"""Anatomy of a stock HF causal LM, found without rewriting it: its text config and its decoder blocks.

Multimodal wrappers (Gemma 3, Llava ...) keep the text decoder's settings under ``get_text_config()``
and its blocks somewhere below the wrapper; these two functions are the only place that knows how.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nla.common.errors import NLAError


def text_config(model: nn.Module) -> Any:
    """The config of the text decoder (``config.get_text_config()`` where the model has one)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise NLAError(f"{type(model).__name__} has no .config: cannot find its decoder blocks")
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def find_decoder_layers(model: nn.Module, n_layers: int | None = None) -> nn.ModuleList:
    """The ModuleList of the text decoder's blocks, found by shape rather than by attribute name
    (``n_layers`` defaults to the text config's ``num_hidden_layers``)."""
    n = int(text_config(model).num_hidden_layers) if n_layers is None else n_layers
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) == n and name.endswith("layers")
    ]
    text = [(name, mod) for name, mod in found if "vision" not in name and "audio" not in name]
    if not text:
        raise NLAError(f"cannot find the {n} decoder blocks in {type(model).__name__}")
    return min(text, key=lambda nm: nm[0].count("."))[1]

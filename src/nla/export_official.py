"""``nla export --format official``: an AV/AR pair as merged, full checkpoints the official NLA code loads.

The official code (kitft/natural_language_autoencoders: ``nla_inference.py`` ``NLAClient`` / ``NLACritic``,
``nla/config.py`` ``load_nla_config``) reads a plain HF model directory plus ``nla_meta.yaml``. This
writes, for each of ``out/av`` and ``out/ar``:

- the weights with any LoRA merged in (the AR: its truncated backbone, ``config.json`` with
  ``num_hidden_layers = L + 1``, and ``value_head.safetensors``);
- a ``config.json`` that transformers 4.5x and 5.x read the same way: rope settings in both forms
  (``rope_theta`` / ``rope_scaling`` beside ``rope_parameters``), ``torch_dtype`` beside ``dtype``;
- tokenizer files that transformers 4.57 can load (a tokenizer class it knows, special tokens as a
  mapping, the chat template also inside ``tokenizer_config.json``); a ``bos_token`` that the tokenizer
  never prepends is left out, since the official critic asserts that a declared BOS is prepended;
- an official schema-2 sidecar: numeric ``injection_scale`` / ``mse_scale``, the full ``tokens`` block in
  both sidecars (``injection_*`` and ``critic_suffix_ids`` in the official convention), both prompt
  templates, the layer as ``extraction.layer_index``, top-level ``extraction_layer_index`` and (AR)
  ``critic.extraction_layer_index``.

>>> export_official("runs/rl/final/av", "runs/rl/final/ar", "nla-official")   # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
import logging
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from nla.common import meta
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, atomic_write_text, dir_size_mib
from nla.export import progress_step
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer

log = logging.getLogger(__name__)

STEPS = 6  # progress steps of export_official
LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # known to transformers 4.x and 5.x alike
_V5_ONLY_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")


def config_for_both(cfg: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` contents readable alike by transformers 4.5x (``rope_theta``, ``rope_scaling``,
    ``torch_dtype``) and 5.x (``rope_parameters``, ``dtype``); nested ``text_config`` too. Pure."""
    out = dict(cfg)
    out.pop("_name_or_path", None)
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            out.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    elif "rope_theta" in out and rope is None:
        scaling = out.get("rope_scaling") or {}
        out["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": out["rope_theta"]}
    if "dtype" in out:
        out.setdefault("torch_dtype", out["dtype"])
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = config_for_both(out["text_config"])
    return out


def tokenizer_config_for_both(cfg: dict[str, Any], *, chat_template: str | None, bos_prepended: bool) -> dict[str, Any]:
    """``tokenizer_config.json`` contents transformers 4.57 loads as 5.x does. Pure.

    The transformers-5 class name ``TokenizersBackend`` becomes ``PreTrainedTokenizerFast`` (the same
    ``tokenizer.json`` underneath); keys only 5.x writes are dropped; a list of ``extra_special_tokens``
    (5.x) becomes ``additional_special_tokens``; the chat template is copied in; ``bos_token`` is removed
    when the tokenizer does not prepend it (``bos_prepended`` False).
    """
    out = {k: v for k, v in cfg.items() if k not in _V5_ONLY_TOKENIZER_KEYS}
    if out.get("tokenizer_class") in (None, "TokenizersBackend"):
        out["tokenizer_class"] = LEGACY_TOKENIZER_CLASS
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        out.pop("extra_special_tokens")
        if extra:
            out["additional_special_tokens"] = list(extra)
    if chat_template and "chat_template" not in out:
        out["chat_template"] = chat_template
    if not bos_prepended and out.get("bos_token") is not None:
        out["bos_token"] = None
    return out


def _rewrite_json(path: Path, fn: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    atomic_write_text(path, json.dumps(fn(data), indent=2, ensure_ascii=False) + "\n")


def _bos_prepended(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]


def patch_hf_files(folder: Path, tokenizer: Any) -> None:
    """Make the config and tokenizer files in ``folder`` loadable by transformers 4.5x and 5.x alike."""
    _rewrite_json(folder / "config.json", config_for_both)
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.exists():
        jinja = folder / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8") if jinja.exists() else getattr(tokenizer, "chat_template", None)
        bos = _bos_prepended(tokenizer)
        _rewrite_json(tok_cfg, lambda c: tokenizer_config_for_both(c, chat_template=template, bos_prepended=bos))


def official_sidecar(role: str, av: ActivationVerbalizer, ar: ActivationReconstructor, source: str) -> dict[str, Any]:
    """The official schema-2 ``nla_meta.yaml`` of the exported ``role`` (``av`` or ``ar``) of the pair."""
    d, layer = av.d_model, av.layer
    m = av.marker
    side: dict[str, Any] = {
        "kind": "nla_model",
        "schema_version": meta.MODEL_SCHEMA_VERSION,
        "role": role,
        "stage": "export",
        "base_checkpoint": av.base_model,
        "d_model": d,
        "extraction_layer_index": layer,
        "extraction": {
            "base_model": av.base_model,
            "layer_index": layer,
            "injection_scale": float(av.injection_scale) if role == "av" and av.injection_scale else None,
            "mse_scale": math.sqrt(d),
        },
        "tokens": {
            "injection_char": m.char,
            "injection_token_id": m.token_id,
            "injection_left_neighbor_id": m.left_neighbor_id,
            "injection_right_neighbor_id": m.right_neighbor_id,
            "critic_suffix_ids": meta.official_suffix_ids(ar.suffix_ids()),
        },
        "prompt_templates": {"av": av.template, "ar": ar.template},
        "trained_on": [],
        "parent_checkpoints": [source],
        "created_at": datetime.datetime.now(tz=datetime.timezone.utc).isoformat(),
        "created_by": "nla export --format official",
    }
    if role == "ar":
        side["critic"] = {"extraction_layer_index": layer}
    eval_meta = av.eval_meta if role == "av" else ar.eval_meta
    if eval_meta:
        side["eval"] = dict(eval_meta)
    return side


def check_pair(av: ActivationVerbalizer, ar: ActivationReconstructor) -> None:
    """Refuse what the official contract cannot state: another layer or width, raw or additive injection."""
    if av.layer < 0:
        raise NLAError("the AV's sidecar states no layer: the official sidecar needs one")
    if ar.layer != av.layer:
        raise NLAError(f"layer mismatch: the AV explains layer {av.layer}, the AR reconstructs layer {ar.layer}")
    if ar.d_model != av.d_model:
        raise NLAError(f"d_model mismatch: the AV expects {av.d_model}, the AR predicts {ar.d_model}")
    if av.injection_mode != "replace":
        raise NLAError(f"the official client replaces the marker embedding; this AV injects by {av.injection_mode!r}")
    if not av.injection_scale:
        raise NLAError("the official client needs a numeric injection_scale; this AV injects raw vectors")


def export_official(av_dir: str | Path, ar_dir: str | Path, out: str | Path, *, progress: Any = None) -> float:
    """Write ``out/av`` and ``out/ar`` in the official layout (see the module docstring); returns MiB written.

    ``progress`` (optional) is a tqdm-like bar advanced once per step (:data:`STEPS` of them). ``out`` is complete or
    absent: everything is written to a temporary directory and renamed.
    """
    bar = progress if progress is not None else nullcontext()

    step = progress_step(progress)

    av = ActivationVerbalizer.from_pretrained(av_dir)
    step("loaded the AV")
    ar = ActivationReconstructor.from_pretrained(ar_dir)
    step("loaded the AR")
    check_pair(av, ar)
    out = Path(out)
    with bar, atomic_dir(out) as tmp:
        av.save_pretrained(tmp / "av", merge_lora=True)
        step("wrote the merged AV")
        ar.save_pretrained(tmp / "ar")
        step("wrote the merged AR")
        for role, model_tok, source in (("av", av.tokenizer, av_dir), ("ar", ar.tokenizer, ar_dir)):
            patch_hf_files(tmp / role, model_tok)
            meta.write_sidecar(tmp / role / meta.MODEL_SIDECAR, official_sidecar(role, av, ar, str(source)))
            step(f"wrote the official {role.upper()} files")
    return dir_size_mib(out)


__all__ = [
    "LEGACY_TOKENIZER_CLASS",
    "STEPS",
    "check_pair",
    "config_for_both",
    "export_official",
    "official_sidecar",
    "patch_hf_files",
    "tokenizer_config_for_both",
]

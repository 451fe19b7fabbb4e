"""The activation reconstructor (AR): explanation text -> the residual-stream vector it explains.

Architecture (official NLA): the target's decoder truncated to ``L + 1`` blocks, final norm replaced by
identity, plus ``head = Linear(d, d, bias=False)`` initialised to the identity. The prediction is the
head applied to the hidden state of the last real token of the templated explanation, so an untrained
AR returns exactly the target's layer-L activation at that token.

Checkpoint layout (the official one, NLA.md §2), written by :meth:`ActivationReconstructor.save_pretrained`:

- full (default): the truncated backbone as a normal HF directory (``config.json`` with
  ``num_hidden_layers = L + 1``, weights, tokenizer; LoRA, if any, merged in), ``value_head.safetensors``
  (one tensor ``weight`` [d, d]) and ``nla_meta.yaml`` (``kind: nla_model, role: ar``).
- adapter-only (``adapter_only=True``, LoRA only, compact): no backbone weights; ``adapter_config.json``
  + ``adapter_model.safetensors``, the head, the tokenizer, and ``nla_meta.yaml`` whose
  ``extraction.base_model`` names the base model the adapter applies to (``adapter: true``).

:meth:`ActivationReconstructor.from_pretrained` reads both, and sidecars saying ``role: critic`` /
``prompt_templates.critic`` (training-time official checkpoints).

>>> from nla.models.target import load_target                                   # doctest: +SKIP
>>> ar = ActivationReconstructor.from_target(load_target("smollm2-135m"), 20)  # doctest: +SKIP
>>> ar.predict(["The token is a comma inside a list of fruits."]).shape  # doctest: +SKIP
torch.Size([1, 576])
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nla.common import meta
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir
from nla.core.modules import find_decoder_layers, text_config
from nla.models import lora
from nla.models.target import Target, copy_tokenizer, load_target, load_tokenizer

log = logging.getLogger(__name__)

VALUE_HEAD = "value_head.safetensors"


def _text_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that owns the decoder blocks (and the final norm), and the blocks' attribute name."""
    layers = find_decoder_layers(model)
    for mod in model.modules():
        for name, child in mod.named_children():
            if child is layers:
                return mod, name
    raise NLAError(f"cannot find the module holding the decoder blocks of {type(model).__name__}")


def _set_n_layers(config: Any, n: int) -> None:
    config.num_hidden_layers = n
    types = getattr(config, "layer_types", None)
    if types is not None:
        config.layer_types = list(types)[:n]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,)
    """Index of the last real token per row; works for left and right padding."""
    T = attention_mask.shape[1]
    pos = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).max(dim=1).values.clamp(min=0)


class ActivationReconstructor(nn.Module):
    """Truncated decoder + identity-initialised linear head; see the module docstring."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        layer: int,
        template: str = meta.DEFAULT_AR_TEMPLATE,
        base_model: str = "",
        final_norm: nn.Module | None = None,
        head: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if "{explanation}" not in template:
            raise NLAError(f"AR template must contain {{explanation}}: {template!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.layer = int(layer)
        self.template = template
        self.base_model = base_model
        self.max_length: int | None = None  # explanations are cut to fit this many tokens when set
        self.eval_meta: dict[str, Any] = {}  # sidecar ``eval`` block (e.g. baseline_mse of the training split)
        text, _ = _text_model(backbone)
        found_norm = getattr(text, "norm", None)
        if found_norm is None:
            raise NLAError(f"cannot find the final norm (.norm) of {type(text).__name__}")
        if not isinstance(found_norm, nn.Identity):
            final_norm = found_norm
            text.norm = nn.Identity()
        # kept out of the module tree (not trained, not in state_dict); restored only when saving
        self.__dict__["_final_norm"] = final_norm
        d = self.d_model
        if head is None:
            p = next(backbone.parameters())
            head = nn.Linear(d, d, bias=False, device=p.device, dtype=p.dtype)
            with torch.no_grad():
                head.weight.copy_(torch.eye(d, dtype=p.dtype, device=p.device))
        self.head = head

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_target(
        cls, target: Target, layer: int, *, template: str = meta.DEFAULT_AR_TEMPLATE, take: bool = False
    ) -> ActivationReconstructor:
        """Copy the first ``layer + 1`` blocks of ``target`` (the target itself is left unchanged), or with
        ``take`` truncate the target's own model and keep it (for a target loaded only to build the AR: no
        copy of its weights, 671 MB of embeddings for Gemma 3)."""
        target.check_layer(layer)
        text, attr = _text_model(target.model)
        full = getattr(text, attr)
        setattr(text, attr, nn.ModuleList(list(full)[: layer + 1]))
        if take:
            backbone, tokenizer = text, target.tokenizer
        else:
            try:
                backbone = copy.deepcopy(text)  # copies only the kept blocks
            finally:
                setattr(text, attr, full)
            tokenizer = copy_tokenizer(target.tokenizer)
        _set_n_layers(backbone.config, layer + 1)
        backbone.requires_grad_(True)
        backbone.eval()
        return cls(backbone, tokenizer, layer=layer, template=template, base_model=target.name)

    # ------------------------------------------------------------------ properties
    @property
    def d_model(self) -> int:
        return int(text_config(self.backbone).hidden_size)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def has_lora(self) -> bool:
        return lora.is_lora(self.backbone)

    @property
    def suffix(self) -> str:
        """Template text after ``{explanation}`` (its token ids are ``tokens.critic_suffix_ids``)."""
        return self.template.split("{explanation}", 1)[1]

    # ------------------------------------------------------------------ LoRA
    def enable_lora(
        self, *, r: int, alpha: float, dropout: float = 0.0, target_modules: list[str] | str | None = None
    ) -> None:
        """Freeze the backbone and train LoRA adapters on it; the head stays trainable."""
        if self.has_lora:
            raise NLAError("this AR already has LoRA adapters")
        self.backbone = lora.apply_lora(self.backbone, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
        self.head.requires_grad_(True)

    def for_inference(self) -> ActivationReconstructor:
        """Merge a LoRA adapter into the backbone, in place, for scoring only (no training after this): one
        matrix per linear map instead of three, about half the AR's time when the README job scores its
        answers. Predictions move in the last bits only. Returns ``self``."""
        if self.has_lora:
            self.backbone = self.backbone.merge_and_unload()
        return self.eval()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T)
    ) -> torch.Tensor:  # (B, d)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, d)
        idx = last_token_index(attention_mask)  # (B,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, d)
        return self.head(last.to(self.head.weight.dtype))

    def render(self, explanation: str) -> str:
        return self.template.replace("{explanation}", explanation)

    def _fit_length(self, explanations: list[str], max_length: int) -> list[str]:
        """Cut explanations (not the template) so each prompt fits ``max_length`` tokens."""
        overhead = len(self.tokenizer(self.render(""))["input_ids"])
        budget = max(1, max_length - overhead)
        out = []
        for text in explanations:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(text if len(ids) <= budget else self.tokenizer.decode(ids[:budget]))
        return out

    def tokenize(self, explanations: list[str], *, max_length: int | None = None) -> Any:
        """BatchEncoding of the templated explanations (padded, as tensors on the AR's device)."""
        max_length = max_length or self.max_length
        if max_length:
            explanations = self._fit_length(list(explanations), max_length)
        enc = self.tokenizer([self.render(e) for e in explanations], padding=True, return_tensors="pt")
        return enc.to(self.device)

    @torch.no_grad()
    def predict(self, explanations: list[str], *, batch_size: int = 32) -> torch.Tensor:  # -> (N, d)
        """Reconstructed vectors for ``explanations`` (float32, on CPU)."""
        was_training = self.training
        self.eval()
        outs = []
        try:
            for i in range(0, len(explanations), batch_size):
                enc = self.tokenize(explanations[i : i + batch_size])
                outs.append(self(enc["input_ids"], enc["attention_mask"]).float().cpu())
        finally:
            self.train(was_training)
        if not outs:
            return torch.zeros(0, self.d_model)
        return torch.cat(outs)

    # ------------------------------------------------------------------ save / load
    def suffix_ids(self) -> list[int]:
        """Live token ids of the template's suffix (all of them; the sidecar records the official tail)."""
        return [int(i) for i in self.tokenizer(self.suffix, add_special_tokens=False)["input_ids"]]

    def sidecar(self, *, adapter: bool = False) -> dict[str, Any]:
        """The ``nla_meta.yaml`` of this AR: numeric ``mse_scale``, the official ``critic_suffix_ids`` (first
        suffix token dropped) and ``critic.extraction_layer_index`` (the official schema-2 names)."""
        out: dict[str, Any] = {
            "kind": "nla_model",
            "schema_version": meta.MODEL_SCHEMA_VERSION,
            "role": "ar",
            "d_model": self.d_model,
            "extraction": {
                "base_model": self.base_model,
                "layer_index": self.layer,
                "mse_scale": math.sqrt(self.d_model),
            },
            "prompt_templates": {"ar": self.template},
            "tokens": {"critic_suffix_ids": meta.official_suffix_ids(self.suffix_ids())},
            "critic": {"extraction_layer_index": self.layer},
        }
        if self.eval_meta:
            out["eval"] = dict(self.eval_meta)
        if adapter:
            out["adapter"] = True
        return out

    def save_pretrained(self, path: str | Path, *, adapter_only: bool = False) -> None:
        """Write the official AR layout to ``path`` atomically (see the module docstring)."""
        from safetensors.torch import save_file

        if adapter_only and not self.has_lora:
            raise NLAError("adapter-only saving needs an AR trained with LoRA")
        if adapter_only and not self.base_model:
            raise NLAError("adapter-only saving needs the base model name (ar.base_model)")
        with atomic_dir(Path(path)) as tmp:
            if adapter_only:
                lora.save_adapter(self.backbone, tmp)
            else:
                self._save_backbone(tmp)
            self.tokenizer.save_pretrained(str(tmp))
            head = self.head.weight.detach().contiguous().cpu()
            save_file({"weight": head}, str(tmp / VALUE_HEAD), metadata={"format": "pt"})
            meta.write_sidecar(tmp / meta.MODEL_SIDECAR, self.sidecar(adapter=adapter_only))

    def _save_backbone(self, path: Path) -> None:
        backbone = lora.merged_copy(self.backbone) if self.has_lora else self.backbone
        text, _ = _text_model(backbone)
        norm = self.__dict__["_final_norm"]
        text.norm = norm if norm is not None else nn.Identity()
        try:
            backbone.save_pretrained(str(path))
        finally:
            text.norm = nn.Identity()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        trainable: bool = False,
        merged: bool = False,
    ) -> ActivationReconstructor:
        """Load an AR checkpoint (ours, full or adapter-only, or an official ``role: ar|critic`` one).

        The AR comes back in eval mode and frozen unless ``trainable`` (then all weights train, or only
        the adapters + head for an adapter-only checkpoint). ``merged`` (not with ``trainable``): an adapter
        is merged into the backbone as it loads (:func:`nla.models.lora.merge_adapter`), for inference."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        info = meta.read_model_sidecar(path)
        role = str(info.get("role", "ar"))
        if role not in ("ar", "critic"):
            raise NLAError(f"{path} is a {role!r} checkpoint, not an activation reconstructor (ar/critic)")
        template = meta.template(info, "ar") or meta.DEFAULT_AR_TEMPLATE
        layer = meta.layer_index(info)
        if layer is None and (path / "config.json").exists():  # a full backbone keeps L + 1 blocks
            layer = _config_layers(path) - 1
            log.info("%s/nla_meta.yaml states no layer: using %d (config.json keeps %d blocks)", path, layer, layer + 1)
        if layer is None:
            raise NLAError(
                f"{path}/nla_meta.yaml gives no layer (extraction.layer_index, extraction_layer_index or "
                "critic.extraction_layer_index) and there is no config.json to count blocks in"
            )
        base_model = meta.base_model(info)
        if info.get("adapter") or not (path / "config.json").exists():
            if not (path / lora.ADAPTER_CONFIG).exists():
                raise NLAError(f"{path} has neither a config.json backbone nor a LoRA adapter")
            if not base_model:
                raise NLAError(f"{path} is an adapter-only AR but its sidecar names no extraction.base_model")
            ar = cls.from_target(load_target(base_model, dtype=dtype, device=device), int(layer), template=template,
                                 take=True)  # fmt: skip
            if merged and not trainable:
                ar.backbone = lora.merge_adapter(ar.backbone, path)
            else:
                ar.backbone = lora.load_adapter(ar.backbone, path, trainable=trainable)
        else:
            try:
                backbone = AutoModel.from_pretrained(str(path), dtype=dtype)
            except (OSError, ValueError) as e:
                raise NLAError(f"cannot load the AR backbone in {path}: {e}") from e
            n = int(text_config(backbone).num_hidden_layers)
            if n != int(layer) + 1:
                log.warning(
                    "AR backbone in %s has %d blocks but its layer index is %s (expected %s)",
                    path,
                    n,
                    layer,
                    int(layer) + 1,
                )
            has_tok = any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
            if not has_tok and not base_model:
                raise NLAError(f"{path} has no tokenizer and its sidecar names no base model to take one from")
            tokenizer = load_tokenizer(str(path) if has_tok else base_model)
            ar = cls(
                backbone.to(device).eval(),
                tokenizer,
                layer=int(layer),
                template=template,
                base_model=base_model,
            )
        ar.head.weight.data.copy_(_read_head(path, ar.d_model, load_file))
        ar.to(device)
        if not trainable:
            ar.requires_grad_(False)
        elif not ar.has_lora:
            ar.requires_grad_(True)
        ar.head.requires_grad_(trainable)
        ar.eval()
        ar.eval_meta = dict(info.get("eval") or {})
        _check_suffix(ar, info)
        return ar


def _read_head(path: Path, d: int, load_file: Any) -> torch.Tensor:  # -> (d, d)
    if not (path / VALUE_HEAD).exists():
        raise NLAError(f"{path} has no {VALUE_HEAD}")
    tensors = load_file(str(path / VALUE_HEAD))
    if "weight" not in tensors:
        raise NLAError(f"{path / VALUE_HEAD} must hold one tensor named 'weight', found {sorted(tensors)}")
    w = tensors["weight"]
    if tuple(w.shape) != (d, d):
        raise NLAError(f"{path / VALUE_HEAD} weight has shape {list(w.shape)}, expected [{d}, {d}]")
    return w


def _config_layers(path: Path) -> int:
    """``num_hidden_layers`` of ``path/config.json`` (or of its ``text_config``)."""
    import json

    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        n = cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers"))
        return int(n)
    except (OSError, ValueError, TypeError) as e:
        raise NLAError(f"cannot read num_hidden_layers from {path / 'config.json'}: {e}") from e


def _check_suffix(ar: ActivationReconstructor, info: dict[str, Any]) -> None:
    want = (info.get("tokens") or {}).get("critic_suffix_ids")
    if want is None:
        return
    got = ar.suffix_ids()
    if not meta.suffix_matches(list(want), got):
        log.warning(
            "critic_suffix_ids in the sidecar %s match neither the live tokenizer's suffix %s nor its official tail %s",
            list(want),
            got,
            got[1:],
        )


__all__ = ["VALUE_HEAD", "ActivationReconstructor", "last_token_index"]

"""LoRA adapters for any HF decoder (the AR backbone, the AV causal LM), via peft.

:func:`apply_lora` attaches adapters to the linear projections inside the *text decoder blocks* only
(attention and MLP, discovered by name), never to a vision tower or the LM head; :func:`save_adapter`
/ :func:`load_adapter` write and read the adapter as ``adapter_config.json`` + ``adapter_model.safetensors``
(the standard peft layout, so ``peft.PeftModel.from_pretrained`` reads it too).

>>> model = apply_lora(model, r=16, alpha=32, dropout=0.0)     # doctest: +SKIP
>>> save_adapter(model, "runs/x/adapter")                       # doctest: +SKIP
>>> model = load_adapter(fresh_base_model, "runs/x/adapter")    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from nla.common.errors import NLAError
from nla.core.modules import find_decoder_layers

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def decoder_blocks_name(model: nn.Module) -> str:
    """Dotted name of the ModuleList holding the text decoder blocks (e.g. ``model.layers``)."""
    layers = find_decoder_layers(model)
    for name, mod in model.named_modules():
        if mod is layers:
            return name
    raise NLAError(f"cannot locate the decoder blocks of {type(model).__name__}")


def default_target_modules(model: nn.Module) -> str:
    """A peft regex matching every ``nn.Linear`` inside the text decoder blocks (attention + MLP)."""
    prefix = decoder_blocks_name(model)
    leaves = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.startswith(prefix + ".")
        }
    )
    if not leaves:
        raise NLAError(f"no linear layers found inside {prefix} of {type(model).__name__}")
    return rf"^{re.escape(prefix)}\.\d+\.(.*\.)?({'|'.join(map(re.escape, leaves))})$"


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model: base weights frozen, only the adapters trainable.

    ``target_modules`` follows peft (a list of module-name suffixes or one full-match regex); the default
    is every linear projection inside the text decoder blocks. ``modules_to_save`` names modules (by their
    last name component, e.g. ``input_layernorm``) that are trained and saved in full beside the adapter.
    """
    from peft import LoraConfig, get_peft_model

    if r <= 0:
        raise NLAError(f"LoRA rank must be positive, got {r}")
    targets = default_target_modules(model) if target_modules is None else target_modules
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        bias="none",
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    try:
        with warnings.catch_warnings():  # peft calls a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = get_peft_model(model, config)
    except ValueError as e:
        raise NLAError(f"cannot apply LoRA to {type(model).__name__}: {e}") from e
    n_train = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    log.info("LoRA r=%d alpha=%g on %s: %d trainable parameters", r, alpha, type(model).__name__, n_train)
    return wrapped


def is_lora(model: nn.Module) -> bool:
    peft = sys.modules.get("peft")  # a model can only be peft's if peft was imported (importing it costs ~1 s)
    return peft is not None and isinstance(model, peft.PeftModel)


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write the adapter of a peft ``model`` into directory ``path`` (config JSON + safetensors)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not is_lora(model):
        raise NLAError("save_adapter needs a model wrapped by apply_lora")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.peft_config["default"])
    config.base_model_name_or_path = None
    config.save_pretrained(str(path))
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_adapter(model: nn.Module, path: str | Path, *, trainable: bool = False) -> nn.Module:
    """Attach the adapter saved in ``path`` to base ``model`` (same architecture) and return the peft model."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / ADAPTER_CONFIG).exists() or not (path / ADAPTER_WEIGHTS).exists():
        raise NLAError(f"{path} holds no LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    config = LoraConfig.from_pretrained(str(path))
    config.inference_mode = not trainable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = get_peft_model(model, config)
    device = next(wrapped.parameters()).device
    result = set_peft_model_state_dict(wrapped, load_file(str(path / ADAPTER_WEIGHTS), device=str(device)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise NLAError(
            f"adapter in {path} does not fit the model: {len(missing)} LoRA weights missing, e.g. {missing[0]}"
        )
    if not trainable:
        wrapped.requires_grad_(False)
    return wrapped


# adapter_config.json entries under which merging is W += B @ A * scale plus copies of modules_to_save
_PLAIN = {"bias": "none", "fan_in_fan_out": False, "use_dora": False, "lora_bias": False}
_EMPTY = ("rank_pattern", "alpha_pattern", "layer_replication", "trainable_token_indices", "target_parameters")
_PREFIX = "base_model.model."


@torch.no_grad()
def merge_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with the LoRA adapter saved in ``path`` merged into its weights, in place, for inference:
    each adapted linear map gets ``W += (B @ A) * alpha / r`` (``/ sqrt(r)`` with rsLoRA) and each
    ``modules_to_save`` module the adapter's weights, as peft's ``merge_and_unload`` does, to the bit, but
    without building peft's wrapper (or importing peft: about 2 s less for ``nla explain``). Adapters with
    other features (DoRA, per-module ranks, biases ...) go through peft. Returns the plain model."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / ADAPTER_CONFIG).exists() or not (path / ADAPTER_WEIGHTS).exists():
        raise NLAError(f"{path} holds no LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    plain = all(config.get(k, v) == v for k, v in _PLAIN.items()) and not any(config.get(k) for k in _EMPTY)
    if config.get("peft_type", "LORA") != "LORA" or not plain:
        return load_adapter(model, path).merge_and_unload()
    r = int(config["r"])
    scale = float(config["lora_alpha"]) / (math.sqrt(r) if config.get("use_rslora") else r)
    params = dict(model.named_parameters())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path / ADAPTER_WEIGHTS)).items():
        name = key.removeprefix(_PREFIX)
        lora_part = re.fullmatch(r"(.+)\.(lora_[AB])\.weight", name)
        if lora_part:
            pairs.setdefault(lora_part[1], {})[lora_part[2]] = value
        elif name in params and params[name].shape == value.shape:
            params[name].copy_(value)  # a module trained in full (modules_to_save)
        else:
            raise NLAError(
                f"adapter in {path} does not fit the model: no parameter {name} of shape {tuple(value.shape)}"
            )
    for module, ab in pairs.items():
        weight = params.get(f"{module}.weight")
        if (
            weight is None
            or set(ab) != {"lora_A", "lora_B"}
            or weight.shape != (ab["lora_B"].shape[0], ab["lora_A"].shape[1])
        ):
            raise NLAError(f"adapter in {path} does not fit the model at {module}")
        b, a = (ab[k].to(device=weight.device, dtype=weight.dtype) for k in ("lora_B", "lora_A"))
        weight += (b @ a) * scale  # in the weight's dtype, as peft (which loads fp16 adapters into fp32 ones)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with LoRA merged into the base weights (the original keeps its adapters)."""
    if not is_lora(model):
        return copy.deepcopy(model)
    return copy.deepcopy(model).merge_and_unload()


__all__ = [
    "apply_lora",
    "decoder_blocks_name",
    "default_target_modules",
    "is_lora",
    "load_adapter",
    "merge_adapter",
    "merged_copy",
    "save_adapter",
]

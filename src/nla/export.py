"""Compact export of a trained NLA (``nla export``): full checkpoints -> LoRA adapters on the base model.

A fully fine-tuned AV or AR differs from its base model by a delta ``W_tuned - W_base`` per weight. For
every linear projection inside the decoder blocks the delta is replaced by its best rank-``r``
approximation (truncated SVD, Eckart-Young), written as a standard peft LoRA adapter (``B @ A`` with
``lora_alpha = r``, so the scaling is 1); changed norm weights are stored in full (peft
``modules_to_save``, a few KB). What neither can hold -- changes to the embeddings and the LM head -- is
dropped, and :class:`ExportReport` says how large it was. The AR keeps its full ``(d, d)``
head. The result loads with the usual ``from_pretrained`` (``adapter: true`` in ``nla_meta.yaml``, base
weights from ``extraction.base_model``), and is what ships as the package's default NLA.

An export is lossy: always score the exported pair (``nla eval``) rather than assume the numbers of the
full checkpoints.

>>> report = export_nla("runs/rl/final/av", "runs/rl/final/ar", "nla-small", rank=16)  # doctest: +SKIP
>>> report.kept_energy["av"], report.size_mib                                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, atomic_write_bytes, dir_size_mib
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.models.lora import ADAPTER_WEIGHTS, apply_lora, is_lora
from nla.models.target import load_target

log = logging.getLogger(__name__)

LORA_STEPS = 5  # progress steps of export_nla
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


def progress_step(progress: Any) -> Callable[[str], None]:
    """``step(desc)`` for an optional tqdm-like bar: shows ``desc`` and advances the bar by one (no-op without)."""

    def step(desc: str) -> None:
        if progress is not None:
            progress.set_postfix_str(desc)
            progress.update(1)

    return step


def lowrank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factorisation of ``delta`` (out, in): ``B (out, r) @ A (r, in)``.

    Returns ``(B, A, kept)`` where ``kept`` is the fraction of ``||delta||_F^2`` the factors keep (1.0 for
    a zero delta). The singular values are split evenly (``B = U sqrt(S)``, ``A = sqrt(S) V^T``) so both
    factors have similar magnitudes, which keeps them accurate in half precision.
    """
    if delta.ndim != 2:
        raise ValueError(f"delta must be a matrix, got shape {tuple(delta.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    d = delta.double()
    r = min(rank, *d.shape)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    total = float((s**2).sum())
    root = s[:r].sqrt()
    b = u[:, :r] * root  # (out, r)
    a = root[:, None] * vh[:r]  # (r, in)
    if r < rank:  # pad so every module has the adapter's rank
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - r)], dim=1)
        a = torch.cat([a, a.new_zeros(rank - r, a.shape[1])], dim=0)
    kept = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    return b.to(delta.dtype), a.to(delta.dtype), kept


@dataclass
class LoraExtraction:
    """What :func:`extract_lora` kept and dropped of one model's fine-tuning delta."""

    modules: int = 0  # linear projections converted
    kept_energy: float = 1.0  # fraction of the summed squared delta norm kept by the factors
    dropped: dict[str, float] = field(default_factory=dict)  # other changed weights -> ||delta|| / ||W||


def extract_lora(
    tuned: nn.Module, base: nn.Module, *, rank: int, atol: float = 0.0
) -> tuple[nn.Module, LoraExtraction]:
    """Wrap ``base`` (modified in place) in a LoRA adapter approximating ``tuned - base``.

    Both models must have the same architecture and parameter names. Targets are every linear layer in
    the decoder blocks (:func:`nla.models.lora.default_target_modules`). Returns the peft model and a report;
    parameters that changed but cannot be expressed (norms, embeddings, a head) are listed in
    ``report.dropped`` with their relative change (entries at or below ``atol`` are omitted).
    """
    tuned_params = dict(tuned.named_parameters())
    base_params = {n: p.detach().clone() for n, p in base.named_parameters()}
    missing = sorted(set(base_params) ^ set(tuned_params))
    if missing:
        raise NLAError(f"the tuned and base models differ in their parameters, e.g. {missing[0]}")

    def change(key: str) -> float:
        w = base_params[key].float()
        return float((tuned_params[key].detach().float() - w).norm() / w.norm().clamp_min(1e-12))

    # norms (1-d weights) are tiny: keep them in full, by module name (peft matches the last component)
    vectors = {k for k, w in base_params.items() if w.ndim == 1 and change(k) > atol}
    save_full = sorted({k.rsplit(".", 2)[-2] for k in vectors})
    peft_model = apply_lora(base, r=rank, alpha=float(rank), modules_to_save=save_full or None)
    report = LoraExtraction()
    kept_sq = total_sq = 0.0
    covered: set[str] = set()
    for name, param in peft_model.named_parameters():
        if ".modules_to_save.default." in name:
            key = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
            with torch.no_grad():
                param.copy_(tuned_params[key])
            covered.add(key)
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        if key not in tuned_params:
            raise NLAError(f"LoRA target {key} has no counterpart in the tuned model")
        delta = tuned_params[key].detach().float() - base_params[key].float()
        b, a, kept = lowrank_factors(delta, rank)
        sq = float(delta.double().pow(2).sum())
        kept_sq, total_sq = kept_sq + kept * sq, total_sq + sq
        with torch.no_grad():
            module.lora_B["default"].weight.copy_(b)
            module.lora_A["default"].weight.copy_(a)
        covered.add(key)
        report.modules += 1
    report.kept_energy = kept_sq / total_sq if total_sq > 0 else 1.0
    report.dropped = {k: c for k in base_params if k not in covered and (c := change(k)) > atol}
    if report.dropped:
        worst = max(report.dropped, key=report.dropped.__getitem__)
        log.warning(
            "LoRA export drops changes to %d weights it cannot express (largest: %s, %.2g relative)",
            len(report.dropped),
            worst,
            report.dropped[worst],
        )
    return peft_model, report


@dataclass
class ExportReport:
    """Summary of :func:`export_nla`: per model (``av``/``ar``) the kept delta energy and dropped weights."""

    out: Path
    rank: int
    kept_energy: dict[str, float]
    dropped: dict[str, dict[str, float]]
    size_mib: float


def cast_adapter(path: str | Path, dtype: str) -> None:
    """Rewrite the adapter weights in checkpoint directory ``path`` in ``dtype`` (loading casts them back)."""
    from safetensors.torch import load_file, save

    file = Path(path) / ADAPTER_WEIGHTS
    if not file.exists():
        raise NLAError(f"{path} holds no {ADAPTER_WEIGHTS}")
    kind = getattr(torch, dtype)
    tensors = {k: (v.to(kind) if v.is_floating_point() else v) for k, v in load_file(str(file)).items()}
    atomic_write_bytes(file, save(tensors, metadata={"format": "pt"}))


def drop_tokenizer_files(path: str | Path) -> None:
    """Remove the tokenizer files of a checkpoint directory (loading then takes the base model's)."""
    for name in TOKENIZER_FILES:
        (Path(path) / name).unlink(missing_ok=True)


@dataclass
class ExportConfig:
    """Options of ``nla export``."""

    format: str = option(
        "lora",
        "lora: compact LoRA adapters on the base model (nla loads them); official: merged full AV and AR "
        "checkpoints that the official NLA code loads under transformers 4.5x and 5.x (docs/interop.md).",
        choices=["lora", "official"],
    )
    av: str = option("", "AV checkpoint directory (e.g. runs/rl/final/av); a LoRA adapter is copied as it is.")
    ar: str = option("", "AR checkpoint directory (e.g. runs/rl/final/ar); a LoRA adapter is copied as it is.")
    out: str = option("", "Output directory; receives av/ and ar/ (written atomically, replaced if present).")
    rank: int = option(16, "LoRA rank of the exported adapters (size grows linearly with it).")
    dtype: str = option("float16", "Storage type of the adapter factors.", choices=["float16", "bfloat16", "float32"])
    keep_tokenizer: bool = option(False, "Also copy the tokenizer files (by default they come from the base model).")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


def export_nla(
    av_dir: str | Path,
    ar_dir: str | Path,
    out: str | Path,
    *,
    rank: int = 16,
    dtype: str = "float16",
    keep_tokenizer: bool = False,
    progress: Any = None,
) -> ExportReport:
    """Write ``out/av`` and ``out/ar`` as LoRA adapters (+ the AR head) on their common base model.

    ``dtype`` is the storage type of the adapter factors (the head stays float32). Without
    ``keep_tokenizer`` the tokenizer files are left out: loading takes them from the base model.
    ``out`` is complete or absent: everything is written to a temporary directory and renamed. A
    checkpoint that already is a LoRA adapter (trained with ``--lora`` or continued with ``--init``) is
    copied with its own rank and only cast to ``dtype``. ``progress`` (optional) is a tqdm-like bar
    advanced once per step (:data:`LORA_STEPS` of them).
    """
    import shutil

    step = progress_step(progress)

    av = ActivationVerbalizer.from_pretrained(av_dir)
    step("loaded the AV")
    ar = ActivationReconstructor.from_pretrained(ar_dir)
    step("loaded the AR")
    adapter = {"av": is_lora(av.model), "ar": ar.has_lora}
    for name, base in (("AV", av.base_model), ("AR", ar.base_model)):
        if not base:
            raise NLAError(f"the {name} checkpoint names no extraction.base_model: cannot export it as an adapter")
    if av.base_model != ar.base_model:
        raise NLAError(f"the AV is based on {av.base_model!r} but the AR on {ar.base_model!r}")

    out = Path(out)
    kept: dict[str, float] = {}
    dropped: dict[str, dict[str, float]] = {}
    with atomic_dir(out) as tmp:
        for role, src in (("av", av_dir), ("ar", ar_dir)):  # an adapter already is compact: copied as it is
            if adapter[role]:
                log.info("the %s is already a LoRA adapter: copied (its own rank), stored in %s", role.upper(), dtype)
                shutil.copytree(src, tmp / role)
                kept[role], dropped[role] = 1.0, {}
        if not all(adapter.values()):
            base = load_target(av.base_model)  # one load: the AR copies its blocks before the AV wraps the model
            if not adapter["ar"]:
                small = ActivationReconstructor.from_target(base, ar.layer, template=ar.template)
                small.backbone, ar_rep = extract_lora(ar.backbone, small.backbone, rank=rank, atol=1e-6)
                small.head.weight.data.copy_(ar.head.weight.data)
                small.max_length, small.eval_meta = ar.max_length, dict(ar.eval_meta)
                small.save_pretrained(tmp / "ar", adapter_only=True)
                kept["ar"], dropped["ar"] = ar_rep.kept_energy, ar_rep.dropped
        step("wrote the AR adapter")
        if not adapter["av"]:
            av.model, av_rep = extract_lora(av.model, base.model, rank=rank, atol=1e-6)
            av.save_pretrained(tmp / "av")
            kept["av"], dropped["av"] = av_rep.kept_energy, av_rep.dropped
        step("wrote the AV adapter")
        for role in ("av", "ar"):
            cast_adapter(tmp / role, dtype)
            if not keep_tokenizer:
                drop_tokenizer_files(tmp / role)
        step(f"stored the factors in {dtype}")
    return ExportReport(out=out, rank=rank, kept_energy=kept, dropped=dropped, size_mib=dir_size_mib(out))


__all__ = [
    "LORA_STEPS",
    "ExportConfig",
    "ExportReport",
    "LoraExtraction",
    "cast_adapter",
    "drop_tokenizer_files",
    "export_nla",
    "extract_lora",
    "lowrank_factors",
]

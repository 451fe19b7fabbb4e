"""The whole NLA recipe as one resumable command (``nla train pipeline``).

Stages, each writing into ``<run_dir>/<stage>/`` and finishing with a ``<run_dir>/<stage>/DONE`` marker
(a JSON summary)::

    extract  -> extract/acts               activations of the target at layer L, split by document
    teach    -> teach/{ar_sft,av_sft,eval}.parquet   warm-start explanations from the teacher
    ar_sft   -> ar_sft/final               the AR trained on teacher text
    av_sft   -> av_sft/final               the AV trained on teacher text
    rl       -> rl/final/{av,ar}           joint GRPO (rl split)
    export   -> export/nla/{av,ar}         the RL pair as LoRA adapters on the base model (:mod:`nla.export`)
    refit    -> refit/{av,ar}/final        the export is lossy, so the RL AV explains ar_sft rows
                                           (:mod:`nla.verbalize`); the LoRA AV is distilled on those
                                           explanations and the LoRA AR refit on them (the offline form
                                           of RL's online AR updates)
    eval     -> eval/card.json             the stage ladder with controls (see :mod:`nla.evaluate.card`)
    ship     -> ship/nla/{av,ar,card.json} the compact NLA (what ships as the package default)

Re-running the same command skips stages with a DONE marker and resumes the interrupted one (every stage
resumes internally). ``--stop-after STAGE`` stops after a stage; ``--from STAGE`` clears STAGE and every
later stage and redoes them (earlier stages must be done). Options come from a preset (``--preset
cpu-smollm2`` or ``gpu``, or a YAML path), then ``--config``, then flags; ``<stage>_options`` mappings pass
any other option straight to a stage's own config.

>>> run_pipeline(load_pipeline_config("cpu-smollm2", run_dir="runs/nla"))     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nla.common.config import config_to_dict, load_yaml, make_config, option
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, atomic_write_text, dir_size_mib
from nla.data.extract import ExtractConfig, extract
from nla.evaluate.card import EvalConfig, evaluation_card, format_card
from nla.export import cast_adapter, drop_tokenizer_files, export_nla
from nla.resources import resource
from nla.teach.run import TeachConfig, teach
from nla.train.ar import ARTrainConfig, train_ar
from nla.train.av import AVTrainConfig, train_av
from nla.train.rl.trainer import RLConfig, train_rl
from nla.verbalize import VerbalizeConfig, verbalize

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("extract", "teach", "ar_sft", "av_sft", "rl", "export", "refit", "eval", "ship")
DONE = "DONE"
TEACH_SPLITS = ("ar_sft", "av_sft", "eval")


@dataclass
class PipelineConfig:
    """Options of ``nla train pipeline`` (every stage's main knobs; ``*_options`` for the rest)."""

    run_dir: str = option("runs/pipeline", "Run directory: one sub-directory per stage.")
    model: str = option("smollm2-135m", "Target model: embedded name, HF id or local HF directory.")
    layer: int | None = option(None, "Layer L; default round(2/3 n_layers).")
    corpus: str = option("default", "Corpus spec for extract ('default', a JSONL/parquet/txt path, hf:NAME).")
    limit_docs: int | None = option(None, "Use only the first N documents of the corpus.")
    positions_per_doc: int = option(8, "Activation positions per document.")
    skip: int = option(50, "Skip the first tokens of each document.")
    max_tokens: int = option(512, "Cap each document at this many tokens.")
    split_fractions: list[float] = option([0.25, 0.25, 0.4, 0.1], "Document fractions of av_sft ar_sft rl eval.")
    teacher: str = option("offline", "Teacher: offline, hf, anthropic, openai.")
    teacher_model: str = option("", "Teacher model (default: the teacher's own default).")
    teacher_base_url: str = option("", "Teacher API base URL.")
    teacher_concurrency: int = option(8, "Parallel teacher requests (API teachers).")
    teach_rows: int = option(0, "Explain at most this many rows of each of ar_sft/av_sft (0 = all).")
    eval_rows: int = option(64, "Held-out rows explained by the teacher and scored in the card.")
    ar_steps: int = option(200, "AR-SFT optimizer steps.")
    ar_batch_size: int = option(8, "AR-SFT batch size.")
    ar_lr: float = option(5e-5, "AR-SFT learning rate.")
    ar_lora: bool = option(False, "AR-SFT with LoRA.")
    av_steps: int = option(200, "AV-SFT optimizer steps.")
    av_batch_size: int = option(8, "AV-SFT batch size.")
    av_lr: float = option(2e-5, "AV-SFT learning rate.")
    av_lora: bool = option(False, "AV-SFT with LoRA.")
    rl_steps: int = option(60, "RL steps.")
    rl_prompts_per_step: int = option(4, "RL activations per step.")
    rl_group_size: int = option(4, "RL samples per activation (G).")
    rl_max_new_tokens: int = option(100, "RL response cap.")
    rl_av_lr: float = option(1e-5, "RL learning rate of the AV.")
    rl_ar_lr: float = option(5e-5, "RL learning rate of the AR.")
    rl_kl_coef: float = option(0.01, "RL KL coefficient.")
    rl_lora: bool = option(False, "RL with LoRA on the AV.")
    export_rank: int = option(16, "LoRA rank of the exported AV and AR.")
    export_dtype: str = option(
        "float16", "Storage type of the exported adapters.", choices=["float16", "bfloat16", "float32"]
    )
    refit_rows: int = option(1024, "ar_sft rows the RL AV explains for the refit of the exported pair (0 = no refit).")
    distill_steps: int = option(100, "Steps distilling the RL AV's explanations into the exported LoRA AV (0 = none).")
    distill_lr: float = option(1e-4, "Learning rate of that distillation.")
    refit_steps: int = option(150, "Steps refitting the exported AR on the RL AV's explanations (0 = none).")
    refit_batch_size: int = option(16, "AR refit batch size.")
    refit_lr: float = option(1e-4, "AR refit learning rate (LoRA adapters + head).")
    eval_max_new_tokens: int = option(150, "Cap of the greedy explanations of the eval card and the refit.")
    save_every: int = option(25, "Checkpoint every this many steps in the training stages.")
    bf16: str = option("auto", "bf16 autocast in the training stages.", choices=["auto", "true", "false"])
    seed: int = option(0, "Seed of every stage.")
    extract_options: dict[str, Any] = option({}, "Extra ExtractConfig options (YAML mapping).")
    teach_options: dict[str, Any] = option({}, "Extra TeachConfig options (YAML mapping).")
    ar_sft_options: dict[str, Any] = option({}, "Extra ARTrainConfig options (YAML mapping).")
    av_sft_options: dict[str, Any] = option({}, "Extra AVTrainConfig options (YAML mapping).")
    rl_options: dict[str, Any] = option({}, "Extra RLConfig options (YAML mapping).")
    distill_options: dict[str, Any] = option({}, "Extra AVTrainConfig options of the distillation (YAML mapping).")
    refit_options: dict[str, Any] = option({}, "Extra ARTrainConfig options of the AR refit (YAML mapping).")
    eval_options: dict[str, Any] = option({}, "Extra EvalConfig options (YAML mapping).")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_options"):
                value = getattr(self, f.name)
                if isinstance(value, str):  # from the command line
                    value = yaml.safe_load(value) or {}
                if not isinstance(value, dict):
                    raise ValueError(f"{f.name} must be a mapping of option: value")
                setattr(self, f.name, value)


@dataclass
class PipelineResult:
    run_dir: Path
    stages: dict[str, str]  # stage -> "ran", "skipped" (already done) or "not run"
    card: dict[str, Any] | None  # eval/card.json when the eval stage is done


# ----------------------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    folder = resource("presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's option mapping: a bundled name (``cpu-smollm2``, ``gpu``) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return load_yaml(path)
    res = resource("presets", f"{name_or_path}.yaml")
    if not res.is_file():
        raise NLAError(
            f"unknown preset {name_or_path!r}; bundled presets: {', '.join(preset_names())} (or a .yaml path)"
        )
    data = yaml.safe_load(res.read_text(encoding="utf-8")) or {}
    return dict(data)


def load_pipeline_config(
    preset: str | None = None, config: str | Path | None = None, **overrides: Any
) -> PipelineConfig:
    """Defaults < preset < YAML ``config`` < ``overrides``; unknown keys are an error."""
    values: dict[str, Any] = load_preset(preset) if preset else {}
    if config:
        values.update(load_yaml(Path(config)))
    values.update(overrides)
    return make_config(PipelineConfig, values, source=f"preset {preset}" if preset else "pipeline config")


# ----------------------------------------------------------------------------------------- stages


class _Stages:
    """One method per stage; each returns a JSON-able summary written into the DONE marker."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.run = Path(cfg.run_dir)

    def dir(self, stage: str) -> Path:
        return self.run / stage

    @property
    def acts(self) -> Path:
        return self.dir("extract") / "acts"

    def teach_out(self, split: str) -> Path:
        return self.dir("teach") / f"{split}.parquet"

    def extract(self) -> dict[str, Any]:
        c = self.cfg
        ec = make_config(ExtractConfig, {
            "model": c.model, "corpus": c.corpus, "out": str(self.acts), "layer": c.layer, "limit_docs": c.limit_docs,
            "positions_per_doc": c.positions_per_doc, "skip": c.skip, "max_tokens": c.max_tokens, "seed": c.seed,
            "split_fractions": list(c.split_fractions), **c.extract_options}, source="extract options")  # fmt: skip
        res = extract(ec)
        empty = [s for s in ("av_sft", "ar_sft", "rl", "eval") if res.rows_per_split.get(s, 0) == 0]
        if empty:
            raise NLAError(f"the corpus is too small: the {', '.join(empty)} split(s) got no rows; use more documents")
        return {
            "rows": res.n_rows,
            "rows_per_split": res.rows_per_split,
            "docs": res.n_used_docs,
            "seconds": res.seconds,
        }

    def teach(self) -> dict[str, Any]:
        c = self.cfg
        out: dict[str, Any] = {}
        for split in TEACH_SPLITS:
            target = self.teach_out(split)
            if target.exists() and Path(str(target) + ".nla_meta.yaml").exists():
                out[split] = "kept"
                continue
            limit = c.eval_rows if split == "eval" else c.teach_rows
            tc = make_config(TeachConfig, {
                "data": str(self.acts), "split": split, "out": str(target), "teacher": c.teacher,
                "model": c.teacher_model,
                "base_url": c.teacher_base_url, "concurrency": c.teacher_concurrency, "limit": limit, "seed": c.seed,
                **c.teach_options}, source="teach options")  # fmt: skip
            res = teach(tc)
            if res.n_kept == 0:
                raise NLAError(f"the teacher kept no row of the {split} split (drops: {res.drops})")
            out[split] = {"rows": res.n_rows, "kept": res.n_kept, "drops": res.drops}
        return out

    def _train_common(self) -> dict[str, Any]:
        c = self.cfg
        return {"model": c.model, "seed": c.seed, "bf16": c.bf16, "save_every": c.save_every, "eval_every": 0}

    def ar_sft(self) -> dict[str, Any]:
        c = self.cfg
        ac = make_config(ARTrainConfig, {
            **self._train_common(), "out_dir": str(self.dir("ar_sft")), "data": str(self.teach_out("ar_sft")),
            "eval_data": str(self.teach_out("eval")), "max_steps": c.ar_steps, "batch_size": c.ar_batch_size,
            "lr": c.ar_lr, "lora": c.ar_lora, **c.ar_sft_options}, source="ar_sft options")  # fmt: skip
        res = train_ar(ac)
        return {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval}

    def av_sft(self) -> dict[str, Any]:
        c = self.cfg
        vc = make_config(AVTrainConfig, {
            **self._train_common(), "out_dir": str(self.dir("av_sft")), "data": str(self.teach_out("av_sft")),
            "eval_data": str(self.teach_out("eval")), "max_steps": c.av_steps, "batch_size": c.av_batch_size,
            "lr": c.av_lr, "lora": c.av_lora, **c.av_sft_options}, source="av_sft options")  # fmt: skip
        _, res = train_av(vc)
        return {
            "steps": res.steps,
            "final_loss": res.final_loss,
            "eval": res.final_eval,
            "injection_scale": res.extra.get("injection_scale"),
        }

    def rl(self) -> dict[str, Any]:
        c = self.cfg
        rc = make_config(RLConfig, {
            "av": str(self.dir("av_sft") / "final"), "ar": str(self.dir("ar_sft") / "final"), "data": str(self.acts),
            "split": "rl", "eval_data": str(self.teach_out("eval")), "out_dir": str(self.dir("rl")),
            "steps": c.rl_steps, "prompts_per_step": c.rl_prompts_per_step, "group_size": c.rl_group_size,
            "max_new_tokens": c.rl_max_new_tokens, "av_lr": c.rl_av_lr, "ar_lr": c.rl_ar_lr, "kl_coef": c.rl_kl_coef,
            "lora": c.rl_lora, "eval_rows": c.eval_rows, "save_every": c.save_every, "seed": c.seed, "bf16": c.bf16,
            **c.rl_options}, source="rl options")  # fmt: skip
        res = train_rl(rc)
        return {
            "steps": res.steps,
            "final_eval": res.final_eval,
            "last_step": res.last.record() if res.last is not None else None,
        }

    def export(self) -> dict[str, Any]:
        c = self.cfg
        rep = export_nla(
            self.dir("rl") / "final" / "av",
            self.dir("rl") / "final" / "ar",
            self.dir("export") / "nla",
            rank=c.export_rank,
            dtype=c.export_dtype,
        )
        return {
            "rank": rep.rank,
            "size_mib": round(rep.size_mib, 2),
            "kept_energy": rep.kept_energy,
            "dropped": rep.dropped,
        }

    def shipped(self, role: str) -> Path:
        """The shipped AV or AR: the refit one when the refit ran, else the plain export."""
        refit = self.dir("refit") / role / "final"
        return refit if refit.exists() else self.dir("export") / "nla" / role

    def refit(self) -> dict[str, Any]:
        import pyarrow.parquet as pq
        import torch

        c = self.cfg
        if c.refit_rows <= 0:
            return {"skipped": "refit_rows is 0: the plain export ships"}
        exported = self.dir("export") / "nla"
        text = verbalize(
            VerbalizeConfig(
                av=str(self.dir("rl") / "final" / "av"),
                data=str(self.acts),
                split="ar_sft",
                out=str(self.dir("refit") / "rl_av_text.parquet"),
                limit=c.refit_rows,
                max_new_tokens=c.eval_max_new_tokens,
                seed=c.seed,
                device="cuda" if torch.cuda.is_available() else "cpu",
            )
        )
        out: dict[str, Any] = {"rows": c.refit_rows}
        cols = pq.read_table(text, columns=["explanation", "tag_ok", "truncated"]).to_pydict()
        finished = [ok and not cut for ok, cut in zip(cols["tag_ok"], cols["truncated"], strict=True)]
        out["finished_rows"] = sum(finished)
        if c.distill_steps > 0 and sum(finished) >= 2:
            vc = make_config(AVTrainConfig, {
                **self._train_common(), "out_dir": str(self.dir("refit") / "av"), "data": str(text),
                "init": str(exported / "av"), "max_steps": c.distill_steps, "batch_size": c.av_batch_size,
                "lr": c.distill_lr, "max_response_tokens": c.eval_max_new_tokens, "samples": 0,
                **c.distill_options}, source="distill options")  # fmt: skip
            _, res = train_av(vc)
            out["av"] = {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval}
        if c.refit_steps > 0 and any(e.strip() for e in cols["explanation"]):
            ac = make_config(ARTrainConfig, {
                **self._train_common(), "out_dir": str(self.dir("refit") / "ar"), "data": str(text),
                "init": str(exported / "ar"), "eval_data": str(self.teach_out("eval")), "max_steps": c.refit_steps,
                "batch_size": c.refit_batch_size, "lr": c.refit_lr, "save_adapter_only": True,
                **c.refit_options}, source="refit options")  # fmt: skip
            res = train_ar(ac)
            out["ar"] = {"steps": res.steps, "final_loss": res.final_loss, "eval_on_teacher_text": res.final_eval}
        return out

    def eval(self) -> dict[str, Any]:
        c = self.cfg
        compute = self.dir("eval") / "compute.yaml"
        atomic_write_text(compute, yaml.safe_dump(self.compute(), sort_keys=False))
        ec = make_config(EvalConfig, {
            "av": str(self.dir("rl") / "final" / "av"), "ar": str(self.dir("rl") / "final" / "ar"),
            "sft_av": str(self.dir("av_sft") / "final"), "sft_ar": str(self.dir("ar_sft") / "final"),
            "stage": [f"shipped={self.shipped('av')},{self.shipped('ar')}"],
            "data": str(self.teach_out("eval")), "train_data": str(self.teach_out("ar_sft")), "rows": c.eval_rows,
            "max_new_tokens": c.eval_max_new_tokens, "seed": c.seed, "out": str(self.dir("eval") / "card.json"),
            "compute": str(compute), **c.eval_options}, source="eval options")  # fmt: skip
        card = evaluation_card(ec)
        log.info("evaluation card:\n%s", format_card(card))
        return {"card": str(self.dir("eval") / "card.json"), "ladder": card["ladder"]}

    def compute(self) -> dict[str, Any]:
        """Wall time of every finished stage (from the DONE markers) and the machine it ran on."""
        import os

        import torch

        out: dict[str, Any] = {}
        for name in STAGES:
            marker = self.dir(name) / DONE
            if marker.exists():
                out[f"{name}_seconds"] = json.loads(marker.read_text(encoding="utf-8")).get("seconds")
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        out["torch_threads"] = torch.get_num_threads()
        return out

    @property
    def nla_dir(self) -> Path:
        return self.dir("ship") / "nla"

    def ship(self) -> dict[str, Any]:
        with atomic_dir(self.nla_dir) as tmp:
            for role in ("av", "ar"):  # the refit adapters trained in fp32: store them compactly again
                shutil.copytree(self.shipped(role), tmp / role)
                cast_adapter(tmp / role, self.cfg.export_dtype)
                drop_tokenizer_files(tmp / role)
            shutil.copy(self.dir("eval") / "card.json", tmp / "card.json")
        size = dir_size_mib(self.nla_dir)
        log.info(
            "the compact NLA is in %s (%.1f MiB); `nla explain --av %s/av --ar %s/ar` uses it",
            self.nla_dir,
            size,
            self.nla_dir,
            self.nla_dir,
        )
        return {"dir": str(self.nla_dir), "size_mib": round(size, 2)}


def _check_stage(name: str | None, what: str) -> None:
    if name is not None and name not in STAGES:
        raise NLAError(f"{what} must be one of {', '.join(STAGES)}, got {name!r}")


def run_pipeline(
    cfg: PipelineConfig,
    *,
    start: str | None = None,
    stop_after: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> PipelineResult:
    """Run the stages in order, skipping finished ones; see the module docstring."""
    _check_stage(start, "--from")
    _check_stage(stop_after, "--stop-after")
    if start and stop_after and STAGES.index(stop_after) < STAGES.index(start):
        raise NLAError(f"--stop-after {stop_after} comes before --from {start}")
    stages = _Stages(cfg)
    run = stages.run
    run.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    previous = run / "pipeline.yaml"
    if previous.exists() and previous.read_text(encoding="utf-8") != resolved:
        log.warning("%s was started with other options; finished stages are kept as they are", run)
    atomic_write_text(previous, resolved)
    if start is not None:
        for name in STAGES[: STAGES.index(start)]:
            if not (stages.dir(name) / DONE).exists():
                raise NLAError(f"--from {start} needs the earlier stage {name} to be done; run without --from first")
        for name in STAGES[STAGES.index(start) :]:
            if stages.dir(name).exists():
                log.info("--from %s: clearing %s", start, stages.dir(name))
                shutil.rmtree(stages.dir(name))
    status = {name: "not run" for name in STAGES}
    for name in STAGES:
        marker = stages.dir(name) / DONE
        if marker.exists():
            status[name] = "skipped"
            log.info("stage %s: already done (%s)", name, marker)
        else:
            log.info("stage %s: running", name)
            if on_stage is not None:
                on_stage(name)
            t0 = time.perf_counter()
            summary = getattr(stages, name)()
            summary = {"stage": name, "seconds": round(time.perf_counter() - t0, 1), **summary}
            atomic_write_text(marker, json.dumps(summary, indent=2, default=str) + "\n")
            status[name] = "ran"
            log.info("stage %s: done in %.0f s", name, summary["seconds"])
        if name == stop_after:
            break
    card_path = stages.dir("eval") / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else None
    return PipelineResult(run, status, card)


__all__ = [
    "STAGES",
    "PipelineConfig",
    "PipelineResult",
    "load_pipeline_config",
    "load_preset",
    "preset_names",
    "run_pipeline",
]

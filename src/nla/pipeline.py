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
later stage and redoes them (earlier stages must be done).

:class:`PipelineConfig` holds a few shared options (``run_dir model layer seed bf16 save_every
held_out_rows``) and each stage's own config as a section (``extract teach ar_sft av_sft rl export refit
eval``; ``refit`` has ``verbalize distill ar``): YAML ``rl: {kl_coef: 0.02}``, flag ``--rl.kl-coef 0.02``.
The pipeline fills in each section's paths and shared options itself (setting one is an error). Options come
from a preset (``--preset cpu-smollm2`` or ``gpu``, or a YAML path), then ``--config``, then flags, merged
key by key. See docs/pipeline.md.

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

from nla.common.config import config_to_dict, fill_section, load_yaml, make_config, merge, nest, option, section
from nla.common.errors import NLAError
from nla.common.paths import atomic_dir, atomic_write_text, dir_size_mib
from nla.data.extract import ExtractConfig, extract
from nla.evaluate.card import EvalConfig, evaluation_card, format_card
from nla.export import ExportConfig, cast_adapter, drop_tokenizer_files, export_nla
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


_PATH = "the pipeline fills in the paths that connect the stages"
_SIDECAR = "the trainers read it from the data's sidecar: set the top-level layer"


def _managed(paths: str, shared: str = "", **other: str) -> dict[str, str]:
    """The fields of a stage config the pipeline fills in, with the reason a user may not set them."""
    out = dict.fromkeys(paths.split(), _PATH)
    out.update({name: f"it is the top-level option {name}" for name in shared.split()})
    return {**out, **other}


def _trainer(paths: str) -> dict[str, str]:
    return _managed(paths, "model seed bf16 save_every", layer=_SIDECAR)


@dataclass
class RefitConfig:
    """The refit stage: the RL AV explains ar_sft rows (``verbalize``); the exported LoRA AV is distilled on
    those explanations (``distill``) and the exported AR refit on them (``ar``)."""

    rows: int = option(1024, "ar_sft rows the RL AV explains for the refit (0 = no refit: the plain export ships).")
    distill_av: bool = option(True, "Distill the RL AV's explanations into the exported LoRA AV (refit.distill).")
    refit_ar: bool = option(True, "Refit the exported AR on the RL AV's explanations (refit.ar).")
    verbalize: VerbalizeConfig = section(
        VerbalizeConfig, "The RL AV explains refit.rows ar_sft rows (nla verbalize).",
        managed=_managed("av data split out", "seed", limit="it is refit.rows",
                         device="the pipeline uses cuda when available, else cpu"),
    )  # fmt: skip
    distill: AVTrainConfig = section(
        AVTrainConfig, "The exported LoRA AV trained on those explanations (nla train av).",
        managed=_trainer("out_dir data init"),
        max_steps=100, batch_size=8, lr=1e-4, max_response_tokens=150, samples=0, eval_every=0,
    )  # fmt: skip
    ar: ARTrainConfig = section(
        ARTrainConfig, "The exported AR refit on those explanations (nla train ar).",
        managed=_trainer("out_dir data init eval_data"),
        max_steps=150, batch_size=16, lr=1e-4, save_adapter_only=True, eval_every=0,
    )  # fmt: skip


@dataclass
class PipelineConfig:
    """Options of ``nla train pipeline``: a few shared ones, then each stage's own config as a section."""

    run_dir: str = option("runs/pipeline", "Run directory: one sub-directory per stage.")
    model: str = option("smollm2-135m", "Target model: embedded name, HF id or local HF directory.")
    layer: int | None = option(None, "Layer L; default round(2/3 n_layers).")
    seed: int = option(0, "Seed of every stage.")
    bf16: str = option("auto", "bf16 autocast in the training stages.", choices=["auto", "true", "false"])
    save_every: int = option(25, "Checkpoint every this many steps in the training stages.")
    held_out_rows: int = option(
        64, "Rows of the eval split the teacher explains (teach/eval.parquet): the held-out pool of every evaluation."
    )
    extract: ExtractConfig = section(
        ExtractConfig, "Activations of the target (nla extract).", managed=_managed("out", "model layer seed"),
        positions_per_doc=8,
    )  # fmt: skip
    teach: TeachConfig = section(
        TeachConfig,
        "Teacher explanations of the ar_sft and av_sft splits (limit: rows of each) and of held_out_rows eval rows "
        "(nla teach; teach.model is the teacher's model).",
        managed=_managed("data out", "seed", split="the pipeline teaches the ar_sft, av_sft and eval splits"),
    )
    ar_sft: ARTrainConfig = section(
        ARTrainConfig, "The AR trained on teacher text (nla train ar).", managed=_trainer("out_dir data eval_data"),
        max_steps=200, batch_size=8, lr=5e-5, eval_every=0,
    )  # fmt: skip
    av_sft: AVTrainConfig = section(
        AVTrainConfig, "The AV trained on teacher text (nla train av).", managed=_trainer("out_dir data eval_data"),
        max_steps=200, batch_size=8, lr=2e-5, eval_every=0,
    )  # fmt: skip
    rl: RLConfig = section(
        RLConfig, "Joint GRPO of the AV and AR (nla train rl).",
        managed=_managed("av ar data split eval_data out_dir", "seed bf16 save_every"),
        steps=60, prompts_per_step=4, max_new_tokens=100,
    )  # fmt: skip
    export: ExportConfig = section(
        ExportConfig, "The RL pair as LoRA adapters (nla export).", managed=_managed("av ar out")
    )
    refit: RefitConfig = section(RefitConfig, "The exported pair refit on the RL AV's explanations.")
    eval: EvalConfig = section(
        EvalConfig, "The evaluation card (nla eval).",
        managed=_managed("av ar sft_av sft_ar data train_data out compute", "seed",
                         stage="the pipeline adds the shipped stage"),
    )  # fmt: skip


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
    """Defaults < preset < YAML ``config`` < ``overrides``, merged key by key inside sections; unknown keys
    are an error. ``overrides`` are options by name: ``seed=1``, ``rl={"kl_coef": 0.02}`` or, as the CLI
    passes them, dotted ``**{"rl.kl_coef": 0.02}``."""
    values: dict[str, Any] = load_preset(preset) if preset else {}
    if config:
        values = merge(values, load_yaml(Path(config)))
    values = merge(values, nest(overrides))
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

    def shared(self, *names: str) -> dict[str, Any]:
        return {name: getattr(self.cfg, name) for name in names}

    def trainer(self, out_dir: Path, data: Path, **paths: Path) -> dict[str, Any]:
        """What the pipeline fills in for a trainer: its paths and the shared options (layer: the sidecar's)."""
        return {"out_dir": out_dir, "data": data, **paths, **self.shared("model", "seed", "bf16", "save_every"),
                "layer": None}  # fmt: skip

    def extract(self) -> dict[str, Any]:
        res = extract(fill_section(self.cfg, "extract", out=self.acts, **self.shared("model", "layer", "seed")))
        empty = [s for s in ("av_sft", "ar_sft", "rl", "eval") if res.rows_per_split.get(s, 0) == 0]
        if empty:
            raise NLAError(f"the corpus is too small: the {', '.join(empty)} split(s) got no rows; use more documents")
        return {"rows": res.n_rows, "rows_per_split": res.rows_per_split, "docs": res.n_used_docs,
                "seconds": res.seconds}  # fmt: skip

    def teach(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split in TEACH_SPLITS:
            target = self.teach_out(split)
            if target.exists() and Path(str(target) + ".nla_meta.yaml").exists():
                out[split] = "kept"
                continue
            tc = fill_section(self.cfg, "teach", data=self.acts, split=split, out=target, seed=self.cfg.seed)
            if split == "eval":
                tc = dataclasses.replace(tc, limit=self.cfg.held_out_rows)
            res = teach(tc)
            if res.n_kept == 0:
                raise NLAError(f"the teacher kept no row of the {split} split (drops: {res.drops})")
            out[split] = {"rows": res.n_rows, "kept": res.n_kept, "drops": res.drops}
        return out

    def ar_sft(self) -> dict[str, Any]:
        paths = self.trainer(self.dir("ar_sft"), self.teach_out("ar_sft"), eval_data=self.teach_out("eval"))
        res = train_ar(fill_section(self.cfg, "ar_sft", **paths))
        return {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval}

    def av_sft(self) -> dict[str, Any]:
        paths = self.trainer(self.dir("av_sft"), self.teach_out("av_sft"), eval_data=self.teach_out("eval"))
        _, res = train_av(fill_section(self.cfg, "av_sft", **paths))
        scale = res.extra.get("injection_scale")
        return {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval, "injection_scale": scale}

    def rl(self) -> dict[str, Any]:
        rc = fill_section(
            self.cfg, "rl", av=self.dir("av_sft") / "final", ar=self.dir("ar_sft") / "final", data=self.acts,
            split="rl", eval_data=self.teach_out("eval"), out_dir=self.dir("rl"),
            **self.shared("seed", "bf16", "save_every"),
        )  # fmt: skip
        res = train_rl(rc)
        last = res.last.record() if res.last is not None else None
        return {"steps": res.steps, "final_eval": res.final_eval, "last_step": last}

    def export(self) -> dict[str, Any]:
        rl = self.dir("rl") / "final"
        xc = fill_section(self.cfg, "export", av=rl / "av", ar=rl / "ar", out=self.dir("export") / "nla")
        rep = export_nla(xc.av, xc.ar, xc.out, rank=xc.rank, dtype=xc.dtype, keep_tokenizer=xc.keep_tokenizer)
        size = round(rep.size_mib, 2)
        return {"rank": rep.rank, "size_mib": size, "kept_energy": rep.kept_energy, "dropped": rep.dropped}

    def shipped(self, role: str) -> Path:
        """The shipped AV or AR: the refit one when the refit ran, else the plain export."""
        refit = self.dir("refit") / role / "final"
        return refit if refit.exists() else self.dir("export") / "nla" / role

    def refit(self) -> dict[str, Any]:
        import pyarrow.parquet as pq
        import torch

        r = self.cfg.refit
        if r.rows <= 0:
            return {"skipped": "refit.rows is 0: the plain export ships"}
        exported, out_dir = self.dir("export") / "nla", self.dir("refit")
        text = verbalize(
            fill_section(
                self.cfg, "refit.verbalize", av=self.dir("rl") / "final" / "av", data=self.acts, split="ar_sft",
                out=out_dir / "rl_av_text.parquet", limit=r.rows, seed=self.cfg.seed,
                device="cuda" if torch.cuda.is_available() else "cpu",
            )
        )  # fmt: skip
        out: dict[str, Any] = {"rows": r.rows}
        cols = pq.read_table(text, columns=["explanation", "tag_ok", "truncated"]).to_pydict()
        finished = [ok and not cut for ok, cut in zip(cols["tag_ok"], cols["truncated"], strict=True)]
        out["finished_rows"] = sum(finished)
        if r.distill_av and sum(finished) >= 2:
            paths = self.trainer(out_dir / "av", text, init=exported / "av")
            _, res = train_av(fill_section(self.cfg, "refit.distill", **paths))
            out["av"] = {"steps": res.steps, "final_loss": res.final_loss, "eval": res.final_eval}
        if r.refit_ar and any(e.strip() for e in cols["explanation"]):
            paths = self.trainer(out_dir / "ar", text, init=exported / "ar", eval_data=self.teach_out("eval"))
            res = train_ar(fill_section(self.cfg, "refit.ar", **paths))
            out["ar"] = {"steps": res.steps, "final_loss": res.final_loss, "eval_on_teacher_text": res.final_eval}
        return out

    def eval(self) -> dict[str, Any]:
        compute = self.dir("eval") / "compute.yaml"
        atomic_write_text(compute, yaml.safe_dump(self.compute(), sort_keys=False))
        rl, card_path = self.dir("rl") / "final", self.dir("eval") / "card.json"
        ec = fill_section(
            self.cfg, "eval", av=rl / "av", ar=rl / "ar", sft_av=self.dir("av_sft") / "final",
            sft_ar=self.dir("ar_sft") / "final", stage=[f"shipped={self.shipped('av')},{self.shipped('ar')}"],
            data=self.teach_out("eval"), train_data=self.teach_out("ar_sft"), out=card_path, compute=compute,
            seed=self.cfg.seed,
        )  # fmt: skip
        card = evaluation_card(ec)
        log.info("evaluation card:\n%s", format_card(card))
        return {"card": str(card_path), "ladder": card["ladder"]}

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
                cast_adapter(tmp / role, self.cfg.export.dtype)
                drop_tokenizer_files(tmp / role)
            shutil.copy(self.dir("eval") / "card.json", tmp / "card.json")
        nla, size = self.nla_dir, dir_size_mib(self.nla_dir)
        log.info(
            "the compact NLA is in %s (%.1f MiB); `nla explain --av %s/av --ar %s/ar` uses it", nla, size, nla, nla
        )
        return {"dir": str(nla), "size_mib": round(size, 2)}


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
    "STAGES", "PipelineConfig", "PipelineResult", "RefitConfig", "load_pipeline_config", "load_preset",
    "preset_names", "run_pipeline",
]  # fmt: skip

"""The whole NLA recipe as one resumable command (``nla train pipeline``).

Stages, each writing into ``<run_dir>/<stage>/`` and finishing with a ``<run_dir>/<stage>/DONE`` marker
(a JSON summary); :data:`STAGE_HELP` says what each does::

    corpora -> extract -> teach -> ar_sft -> av_sft -> rl -> expert -> selftext -> card -> faithfulness -> ship

``rl``, ``expert`` and ``selftext`` are switched on by the preset (``run_rl``, ``expert.rows``,
``selftext.greedy_rows``); a stage that is off still writes its DONE marker, saying so. The current AV is the
last of av_sft / rl / expert that ran, the current AR the last of ar_sft / rl / the self-text repeats; the card,
the faithfulness report(s) and ship/nla are of that pair. Re-running the same command skips stages with a DONE
marker and resumes the interrupted one; ``--stop-after STAGE`` stops after a stage; ``--from STAGE`` clears
STAGE and every later stage and redoes them.

Options: defaults < preset (``--preset smollm2``, ``gpu``, ``tiny`` or a YAML path) < ``--config`` < flags,
merged key by key inside sections (:mod:`nla.pipeline.config`; docs/pipeline.md).

>>> run_pipeline(load_pipeline_config("smollm2", run_dir="runs/nla"))     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nla.common.config import config_to_dict
from nla.common.errors import NLAError
from nla.common.paths import atomic_write_text, dir_size_mib
from nla.pipeline.clock import StageClock, reset_clock
from nla.pipeline.config import (
    PipelineConfig,
    load_pipeline_config,
    load_preset,
    parse_mix,
    parse_schedule,
    preset_names,
)
from nla.pipeline.stages import DONE, STAGE_HELP, STAGES, Stages
from nla.train.checkpoint import checkpoint_dirs
from nla.train.loop import CHECKPOINT

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run_dir: Path
    stages: dict[str, str]  # stage -> "ran", "skipped" (already done) or "not run"
    card: dict[str, Any] | None  # card/card.json when the card stage is done


def code_version() -> str:
    """The package version and, in a git checkout, ``git describe --always --dirty`` of it."""
    import nla

    version = f"nla {nla.__version__}"
    try:
        here = Path(nla.__file__).resolve().parent
        git = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} (git {git.stdout.strip()})" if git.returncode == 0 and git.stdout.strip() else version


def _check_stage(name: str | None, what: str) -> None:
    if name is not None and name not in STAGES:
        raise NLAError(f"{what} must be one of {', '.join(STAGES)}, got {name!r}")


def run_pipeline(
    cfg: PipelineConfig,
    *,
    start: str | None = None,
    stop_after: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    command: str = "",
) -> PipelineResult:
    """Run the stages in order, skipping finished ones; see the module docstring. ``command`` (what the user
    typed) goes onto the card; by default the equivalent ``nla train pipeline --config <run>/pipeline.yaml``."""
    _check_stage(start, "--from")
    _check_stage(stop_after, "--stop-after")
    if start and stop_after and STAGES.index(stop_after) < STAGES.index(start):
        raise NLAError(f"--stop-after {stop_after} comes before --from {start}")
    run = Path(cfg.run_dir)
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    stages = Stages(cfg, command=command or f"nla train pipeline --config {run / 'pipeline.yaml'}",
                    code_version=code_version())  # fmt: skip
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
        reset_clock(run, list(STAGES[STAGES.index(start) :]))
    status = {name: "not run" for name in STAGES}
    for name in STAGES:
        marker = stages.dir(name) / DONE
        if marker.exists():
            status[name] = "skipped"
            log.info("stage %s: already done (%s)", name, marker)
        else:
            log.info("stage %s: running (%s)", name, STAGE_HELP[name])
            if on_stage is not None:
                on_stage(name)
            with StageClock(run, name) as clock:
                t0 = time.perf_counter()
                summary = getattr(stages, name)()
            this_attempt = round(time.perf_counter() - t0, 1)
            summary = {"stage": name, "seconds": round(clock.seconds(), 1), "attempts": clock.attempts,
                       "seconds_last_attempt": this_attempt, **summary}  # fmt: skip
            atomic_write_text(marker, json.dumps(summary, indent=2, default=str) + "\n")
            if not cfg.keep_checkpoints:
                _drop_checkpoints(stages.dir(name))
            status[name] = "ran"
            log.info("stage %s: done in %.0f s (%d attempt(s); this one %.0f s)", name, summary["seconds"],
                     clock.attempts, this_attempt)  # fmt: skip
        if name == stop_after:
            break
    card_path = stages.dir("card") / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else None
    return PipelineResult(run, status, card)


def _drop_checkpoints(stage_dir: Path) -> None:
    """Delete the resume checkpoints under a finished stage (its DONE marker makes them useless)."""
    folders = checkpoint_dirs(stage_dir, CHECKPOINT)  # checkpoint/ and its keep_last snapshots checkpoint-<step>/
    if folders:
        freed = sum(dir_size_mib(p) for p in folders)
        for p in folders:
            shutil.rmtree(p)
        log.info("%s: deleted %d resume checkpoint(s), %.0f MiB (keep_checkpoints: true keeps them)",
                 stage_dir.name, len(folders), freed)  # fmt: skip


__all__ = [
    "STAGES", "STAGE_HELP", "PipelineConfig", "PipelineResult", "code_version", "load_pipeline_config",
    "load_preset", "parse_mix", "parse_schedule", "preset_names", "run_pipeline",
]  # fmt: skip

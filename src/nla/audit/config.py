"""The options of ``nla audit`` and their checks: light (no torch), so a bad option fails at once.

:class:`AuditConfig` becomes the flags of ``nla audit run``; :func:`check_config` refuses a bad value
before anything is read or created; ``RUN_KEYS`` are the options a run is defined by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from nla.common.config import option
from nla.common.errors import NLAError
from nla.core.text import DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP
from nla.explain.positions import check_spec

SAMPLE_CHATS = "sample-chats"  # DATA name of the transcripts shipped with nla (resources/audit/sample_chats.jsonl)

# the options a run is defined by: continuing a run with other values would mix incomparable rows
RUN_KEYS = (
    "positions",
    "max_tokens",
    "every",
    "sample",
    "seed",
    "max_new_tokens",
    "best_of",
    "temperature",
    "min_support",
    "batch_size",
)


@dataclass
class AuditConfig:
    """Options of ``nla audit``."""

    out: str = option("audit.db", "The audit database (SQLite) to create or continue.")
    av: str | None = option(None, "AV checkpoint; default: the NLA shipped with nla.")
    ar: str | None = option(None, "AR checkpoint; default: the shipped one with the default AV.")
    target: str | None = option(None, "Target model; default: the AV sidecar's extraction.base_model.")
    baseline: float | None = option(None, "Predict-the-mean baseline for fve (default: the sidecar's).")
    positions: str = option(
        "auto", "Tokens to explain: auto (assistant tokens of chats, all tokens of text), all, assistant, last, 10:20."
    )
    max_tokens: int | None = option(
        None,
        "Keep only the last N tokens of each document (as nla explain does); default: skip positions past "
        "the target's context window, with a reason stored in the DB.",
    )
    every: int = option(1, "Keep every k-th of the selected tokens.")
    sample: int | None = option(None, "Keep a random sample of at most this many tokens per document (seeded).")
    limit: int | None = option(None, "Audit at most this many documents of DATA (rerun without it to continue).")
    max_new_tokens: int = option(150, "Longest explanation, in tokens.")
    best_of: int = option(1, "1 = greedy; K > 1 = the greedy answer and K-1 samples, the best-reconstructed kept.")
    temperature: float | None = option(None, "Sampling temperature for --best-of (default 0.7).")
    min_support: int = option(DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP)
    batch_size: int = option(
        64,
        "Positions per work batch (decoded together across documents, one transaction); 64 decodes ~1.25x "
        "faster than 32 for ~15%% more memory (docs/throughput.md).",
    )
    seed: int = option(0, "Seed of --sample and of best-of sampling (per batch: seed + batch number).")
    new_run: bool = option(False, "Start a new run in the DB (needed to use another NLA or other options).")
    engine: str = option("local", "Where batches are explained.", choices=["local", "ray"])
    ray_address: str | None = option(None, "Ray cluster address (default: start a local Ray).")
    num_actors: int | None = option(None, "Ray actors (each loads the NLA once); default: CPUs - 1 locally.")
    num_cpus: float = option(1.0, "CPUs per Ray actor (also its torch threads).")
    num_gpus: float = option(0.0, "GPUs per Ray actor (use with --device cuda).")
    device: str = option("cpu", "Torch device, e.g. cpu or cuda:0.")
    dtype: str = option("float32", "Model dtype.", choices=["float32", "bfloat16", "float16"])
    timeout: float = option(10.0, "Seconds to wait for a database another process has locked.")


# ----------------------------------------------------------------------------- options


def check_config(cfg: AuditConfig) -> None:
    """Refuse bad options before anything is read or created (one clear error naming the option)."""
    at_least_one = {
        "--batch-size": cfg.batch_size,
        "--max-new-tokens": cfg.max_new_tokens,
        "--best-of": cfg.best_of,
        "--every": cfg.every,
        "--min-support": cfg.min_support,
        "--sample": cfg.sample,
        "--limit": cfg.limit,
        "--max-tokens": cfg.max_tokens,
        "--num-actors": cfg.num_actors,
    }
    for name, value in at_least_one.items():
        if value is not None and value < 1:
            raise NLAError(f"{name} must be >= 1, got {value}")
    if cfg.temperature is not None and not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise NLAError(f"--temperature must be a positive number, got {cfg.temperature}")
    if cfg.baseline is not None and not (math.isfinite(cfg.baseline) and cfg.baseline > 0):
        raise NLAError(f"--baseline must be a positive number, got {cfg.baseline}")
    cpus_ok = math.isfinite(cfg.num_cpus) and cfg.num_cpus > 0
    if not cpus_ok or not (math.isfinite(cfg.num_gpus) and cfg.num_gpus >= 0):
        raise NLAError(f"--num-cpus must be > 0 and --num-gpus >= 0, got {cfg.num_cpus} and {cfg.num_gpus}")
    if not (math.isfinite(cfg.timeout) and cfg.timeout >= 0):
        raise NLAError(f"--timeout must be a number of seconds >= 0, got {cfg.timeout}")
    if cfg.positions.strip().lower() != "auto":
        check_spec(cfg.positions)
    out = Path(cfg.out)
    if out.is_dir():
        raise NLAError(f"--out {out} is a directory: name the database file, e.g. {out / 'audit.db'}")
    if out.exists() and not out.is_file():
        raise NLAError(f"--out {out} is not a regular file")


def check_data(data: str) -> None:
    """A DATA path that does not exist is one clear error at once (names and ``hf:`` are checked later)."""
    name = str(data)
    if name in ("default", SAMPLE_CHATS) or name.startswith("hf:") or Path(name).expanduser().exists():
        return
    raise NLAError(
        f"corpus not found: {name} (expected 'default', '{SAMPLE_CHATS}', 'hf:NAME', a folder, "
        "or a .txt/.md/.jsonl/.parquet file)"
    )


__all__ = ["RUN_KEYS", "SAMPLE_CHATS", "AuditConfig", "check_config", "check_data"]

"""The Ray engine of ``nla audit --engine ray``: the same work batches, explained by a Ray Data actor pool.

Each actor loads the NLA once (from the run's checkpoint paths) and explains whole work batches with
:func:`nla.audit.worker.explain_batch`, the function the local engine calls, so the rows are the same. The
driver keeps planning and writing: it alone touches SQLite (one transaction per batch), so a cluster
needs no shared database, only the checkpoints at the same paths on every node and ``nla`` installed.

Local Ray by default (every CPU of this machine, one actor per CPU but one: an actor pool that takes
every CPU starves Ray Data's own tasks and hangs); ``ray_address`` joins a cluster (``auto`` or
``ray://host:10001``); ``num_gpus`` per actor on GPU nodes (with ``device="cuda"``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nla.audit.worker import explain_batch, load_nla
from nla.common.errors import NLAError

log = logging.getLogger(__name__)


class BatchWorker:
    """A Ray Data actor: loads the NLA once, then explains one work batch per call."""

    def __init__(self, desc: dict[str, Any], device: str, dtype: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.nla = load_nla(desc, device, dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for work_json, opts_json in zip(batch["work"], batch["opts"], strict=True):
            rows = explain_batch(self.nla, json.loads(work_json), json.loads(opts_json))
            for r in rows:
                r["activation"] = base64.b64encode(r["activation"]).decode("ascii")
            out.append(json.dumps(rows))
        return {"batch": batch["batch"], "rows": np.array(out, dtype=object)}


def ray_engine(desc: dict[str, Any], cfg: Any) -> Callable[..., Iterator[tuple[int, list[dict[str, Any]]]]]:
    """An engine for :func:`nla.audit.job.audit`: ``engine(batches, opts)`` yields ``(batch, rows)``."""
    try:
        import ray
    except ImportError as e:
        raise NLAError("--engine ray needs Ray Data: pip install 'nla[ray]'") from e

    def run(batches: list[dict[str, Any]], opts: dict[str, Any]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        started = not ray.is_initialized()
        if started:
            local = cfg.ray_address is None
            try:
                ray.init(
                    address=cfg.ray_address,
                    num_cpus=(os.cpu_count() or 2) if local else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise NLAError(f"cannot start or reach Ray at {cfg.ray_address or 'local'}: {e}") from e
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the audit job shows its own progress bar
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1))
            actors = cfg.num_actors or max(1, int((cpus - 1) // max(cfg.num_cpus, 1e-9)))
            items = [{"batch": b["batch"], "work": json.dumps(b), "opts": json.dumps(opts)} for b in batches]
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                BatchWorker,
                fn_constructor_kwargs={
                    "desc": desc,
                    "device": cfg.device,
                    "dtype": cfg.dtype,
                    "threads": int(max(1, cfg.num_cpus)),
                },
                batch_size=1,
                batch_format="numpy",
                concurrency=actors,
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus or None,
            )
            log.info("ray: %d work batches on %d actor(s) of %s CPU", len(items), actors, cfg.num_cpus)
            for row in ds.iter_rows():
                rows = json.loads(row["rows"])
                for r in rows:
                    r["activation"] = base64.b64decode(r["activation"])
                yield int(row["batch"]), rows
        finally:
            if started:
                ray.shutdown()

    return run


__all__ = ["BatchWorker", "ray_engine"]

"""The AV as a teacher (``nla verbalize``): its explanations of a split, as a parquet the AR trains on.

An AR trained on teacher text reads the teacher's style; the AV writes differently (it paraphrases, it
confabulates details). During RL the AR keeps training on the AV's own explanations; this is the same
update done offline, on many rows at once: verbalize a TRAINING split (never the eval split) with the
final AV, then ``nla train ar --init <AR> --data <this parquet>`` refits the AR to what the AV actually
says. The output has the columns of ``nla teach`` (the input rows + ``explanation``, ``response``,
``teacher``), so every command that reads teacher data reads it. Rows whose answer has no closed tag
keep their tag-stripped text (:func:`nla.core.text.text_for_ar`, what the AR reads at inference too) and are
counted. Work goes to ``<out>.work`` in chunks: a killed run resumes where it stopped, and a run stopped
early can be finished with a smaller ``--limit`` (the chunks it shares are kept).

With ``--best-of K --ar AR`` each row gets the AV's greedy answer and K-1 samples, and the AR keeps the one
it reconstructs best (:mod:`nla.evaluate.rerank`, what ``nla explain`` prints); the rows also carry the
chosen and the greedy answer's ``mse_nrm``. ``nla train av --init <AV>`` on that parquet is the offline form
of RL's policy update (expert iteration: the AV learns to write at once what it wrote best of K), as the AR
refit is the offline form of RL's AR updates.

    nla verbalize --av runs/rl/final/av --data runs/acts --split ar_sft --limit 2000 --out runs/av_text.parquet
    nla verbalize --av AV --ar AR --best-of 4 --temperature 0.7 --data runs/acts --split rl --out runs/best4.parquet
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from nla.common.config import option
from nla.common.errors import NLAError
from nla.common.meta import dataset_sidecar_path, write_sidecar
from nla.core.text import DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP, filtering_support, text_for_ar
from nla.data.activations import vectors as table_vectors
from nla.evaluate.rerank import candidates, choose
from nla.models.ar import ActivationReconstructor
from nla.models.av import ActivationVerbalizer
from nla.teach.run import open_work, read_input, write_table

log = logging.getLogger(__name__)


@dataclass
class VerbalizeConfig:
    """Options of ``nla verbalize``."""

    av: str = option("", "AV checkpoint directory (full or adapter).")
    data: str = option("", "An `nla extract` directory.")
    split: str = option("ar_sft", "Split to verbalize (a training split: the eval split stays held out).")
    out: str = option("", "Output parquet (+ .nla_meta.yaml sidecar).")
    limit: int = option(0, "Verbalize only the first N rows (0 = all).")
    offset: int = option(0, "Skip the first N rows of the split (with --limit: rows offset .. offset+limit).")
    every: int = option(
        1, "Take every N-th row from --offset on (a split holds several positions per document, in a row)."
    )
    ar: str = option("", "AR checkpoint that chooses among --best-of answers.")
    best_of: int = option(1, "Answers per row (the greedy one and K-1 samples at --temperature); the AR keeps one.")
    min_support: int = option(DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP)
    max_new_tokens: int = option(150, "Longest explanation, in tokens.")
    do_sample: bool = option(False, "Sample at --temperature instead of greedy decoding (what inference uses).")
    temperature: float = option(1.0, "Sampling temperature (with --do-sample).")
    batch_size: int = option(
        64, "Vectors per generate call (64: ~2x the tokens/s of 16 on CPU, docs/throughput.md; at most chunk_size)."
    )
    chunk_size: int = option(128, "Rows per resumable chunk.")
    seed: int = option(0, "Sampling seed (per chunk: seed + chunk index).")
    device: str = option("cpu", "Torch device.")
    dtype: str = option(
        "float32", "The AV's weights while it writes: float32, or bfloat16 (about 2x faster on CPUs with AMX, "
        "docs/throughput.md; a greedy answer can change where two tokens nearly tie)."
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        for name in ("max_new_tokens", "batch_size", "chunk_size", "best_of", "every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        if self.best_of > 1 and not self.ar:
            raise ValueError("--best-of K > 1 needs --ar, the AR that chooses")
        if self.best_of > 1 and self.do_sample:
            raise ValueError("--best-of already samples K-1 answers; drop --do-sample")


def verbalize(cfg: VerbalizeConfig) -> Path:
    """Write the AV's explanations of ``cfg.split`` to ``cfg.out``; returns the output path."""
    if not cfg.av or not cfg.data or not cfg.out:
        raise NLAError("verbalize needs --av, --data (an extraction directory) and --out (a .parquet file)")
    if cfg.split == "eval":
        log.warning("verbalizing the eval split: an AR trained on it is no longer evaluated on held-out data")
    t0 = time.perf_counter()
    data, out = Path(cfg.data), Path(cfg.out)
    if not data.is_dir():
        raise NLAError(f"--data {data} is not a directory")
    inp = read_input(data, cfg.split)
    if cfg.offset >= inp.table.num_rows:
        raise NLAError(f"--offset {cfg.offset} but {data}/{cfg.split} has {inp.table.num_rows} rows")
    rows = list(range(cfg.offset, inp.table.num_rows, cfg.every))[: cfg.limit or None]
    table, meta_in = inp.table.take(rows), inp.sidecar
    whole = table_vectors(inp.table)  # (rows of the split, d)
    vectors = whole[rows]  # (N, d)
    av = ActivationVerbalizer.from_pretrained(cfg.av, device=cfg.device, dtype=cfg.dtype, merged=True).for_inference()
    if vectors.shape[1] != av.d_model:
        raise NLAError(f"the AV has d_model {av.d_model} but {data}/{cfg.split} has {vectors.shape[1]}-d vectors")
    ar = ActivationReconstructor.from_pretrained(cfg.ar, device=cfg.device, merged=True) if cfg.best_of > 1 else None
    if ar is not None and ar.d_model != av.d_model:
        raise NLAError(f"the AR has d_model {ar.d_model} but the AV {av.d_model}")
    n = vectors.shape[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(str(out) + ".work")
    manifest = {
        "data": str(data.resolve()),
        "split": cfg.split,
        "offset": cfg.offset,
        "every": cfg.every,
        "chunk_size": cfg.chunk_size,
        "inputs": hashlib.sha256(whole.numpy().tobytes()).hexdigest(),  # the whole split: another --limit keeps chunks
        "av": str(Path(cfg.av).resolve()),
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "ar": str(Path(cfg.ar).resolve()) if ar is not None else "",
        "best_of": cfg.best_of,
        **({"dtype": cfg.dtype} if cfg.dtype != "float32" else {}),  # absent in float32: older work folders resume
        **({"min_support": support} if (support := filtering_support(cfg.best_of, cfg.min_support)) > 1 else {}),
    }
    n_chunks = math.ceil(n / cfg.chunk_size)
    size = [min(n, (ci + 1) * cfg.chunk_size) - ci * cfg.chunk_size for ci in range(n_chunks)]
    done = {ci: t for ci, t in open_work(work, manifest).items() if ci < n_chunks and t.num_rows == size[ci]}
    resumed = sum(t.num_rows for t in done.values())
    if resumed:
        log.info("resuming: %d rows already done in %s", resumed, work)
    bar = tqdm(total=n, initial=resumed, unit="row", desc="verbalize", dynamic_ncols=True)
    try:
        for ci in range(n_chunks):
            if ci in done:
                continue
            lo, hi = ci * cfg.chunk_size, min(n, (ci + 1) * cfg.chunk_size)
            vecs = vectors[lo:hi].to(cfg.device)
            gen = {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "seed": cfg.seed + ci}
            if ar is None:
                resp = av.sample(vecs, do_sample=cfg.do_sample, temperature=cfg.temperature, **gen)
            else:
                resp, mse = choose(
                    ar,
                    vecs,
                    candidates(av, vecs, cfg.best_of, temperature=cfg.temperature, min_support=cfg.min_support, **gen),
                    cfg.best_of,
                )
            columns = {
                "row": pa.array(range(lo, hi), pa.int64()),
                "explanation": pa.array([text_for_ar(t) for t in resp.texts], pa.string()),
                "response": pa.array(resp.texts, pa.string()),
                "tag_ok": pa.array([e is not None for e in resp.explanations], pa.bool_()),
                "truncated": pa.array([bool(t) for t in resp.truncated], pa.bool_()),
            }
            if ar is not None:
                best = mse.argmin(dim=1)  # what choose() kept
                columns["mse_nrm"] = pa.array(mse.gather(1, best[:, None])[:, 0].tolist(), pa.float32())
                columns["mse_greedy"] = pa.array(mse[:, 0].tolist(), pa.float32())
                columns["chosen"] = pa.array(best.tolist(), pa.int32())
            chunk = pa.table(columns)
            write_table(chunk, work / f"chunk-{ci:05d}.parquet")
            done[ci] = chunk
            bar.update(hi - lo)
    finally:
        bar.close()

    results = pa.concat_tables([done[i] for i in range(n_chunks)])
    output = table
    for name in results.column_names[1:]:  # all but "row"
        if name in output.column_names:
            output = output.drop_columns([name])
        output = output.append_column(name, results.column(name))
    output = output.append_column("teacher", pa.array([f"av:{cfg.av}"] * n, pa.string()))
    tag_fail = n - sum(results.column("tag_ok").to_pylist())
    meta = {k: v for k, v in meta_in.items() if k not in ("n_rows", "num_rows", "rows", "file", "shard", "splits")}
    meta.update(kind="nla_dataset", n_rows=n)
    if "row_count" in meta:  # the official contract's count (nla extract part sidecars carry it)
        meta["row_count"] = n
    meta["teacher"] = {"name": "av", "model": str(cfg.av), "version": "verbalize-v1", "base_url": None}
    meta["verbalize"] = {
        "data": str(data),
        "split": cfg.split,
        "rows": n,
        "tag_failures": tag_fail,
        "truncated": sum(results.column("truncated").to_pylist()),
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "temperature": cfg.temperature,
        "offset": cfg.offset,
        "every": cfg.every,
        "dtype": cfg.dtype,
    }
    if ar is not None:
        chosen, greedy = (results.column(c).to_numpy() for c in ("mse_nrm", "mse_greedy"))
        meta["verbalize"].update(
            ar=str(cfg.ar),
            best_of=cfg.best_of,
            mean_mse_nrm_chosen=float(chosen.mean()),
            mean_mse_nrm_greedy=float(greedy.mean()),
            greedy_chosen=float((results.column("chosen").to_numpy() == 0).mean()),
        )
    write_sidecar(dataset_sidecar_path(out), meta)
    write_table(output, out)
    shutil.rmtree(work, ignore_errors=True)
    log.info(
        "wrote %d AV explanations to %s (%d without a closed tag) in %.1f s", n, out, tag_fail, time.perf_counter() - t0
    )
    return out


__all__ = ["VerbalizeConfig", "verbalize"]

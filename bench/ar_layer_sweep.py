"""The AR's held-out fve per layer: which layer an NLA of a target should explain (issue 32, item 3).

It reuses a pipeline run's teacher text (``teach/ar_sft.parquet`` for training, ``teach/eval.parquet`` held
out, document-disjoint) and re-extracts the same (document, position) rows at every layer in ``--layers``
(the offline teacher reads the text and the target's output, never layer L, so the explanations stay the
same). For each layer it trains a fresh AR with the run's own AR-SFT options (LoRA, batch, lr, bf16) for
``--steps`` steps and prints, on the held-out rows:

- ``B``: the predict-the-mean baseline of the training rows at that layer (what fve_nrm divides by);
- ``AR``: the AR's fve_nrm; ``shuf`` / ``empty``: its shuffled-pairing and empty-explanation controls;
- ``lookup`` / ``lookup2``: the last-token and last-two-token lookup tables fitted on the SAME training rows;
- ``margin``: AR minus the better lookup, i.e. what the explanation carries beyond the final token(s);
- ``s/step``: training seconds per step, the held-out evaluations included.

A layer whose AR beats its lookups by more is one where the teacher's text explains more of the vector.
The row of the run's own layer is checked to reproduce the run's stored vectors (the rows are the same).
Results land in ``<out>/sweep.json``; a layer already there is not trained again.

With ``--preset``, a run directory whose teach stage is not done is first made by the recipe itself, at a
small size: the preset's main corpus cut to ``--docs`` documents, no supplementary corpora, ``--rows``
ar_sft rows explained (and 8 of each other table its mixes name), up to the teach stage (12 min for Gemma 3
270M on 2 idle cores). A finished run's directory works as well, with its full-size tables.

    python bench/ar_layer_sweep.py --preset gemma3-270m --run-dir runs/gemma-sweep --layers 6,9,12,14 --steps 200
    python bench/ar_layer_sweep.py --run-dir runs/gemma --layers 12,14 --steps 200   # an existing run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nla.common.config import fill_section
from nla.common.meta import dataset_sidecar_path, layer_index, read_sidecar, write_sidecar
from nla.data.activations import vectors
from nla.data.corpus import load_corpus
from nla.data.extract import extract_chunk
from nla.evaluate.lookup import token_lookup_control
from nla.models.target import load_target
from nla.pipeline import run_pipeline
from nla.pipeline.config import load_pipeline_config
from nla.pipeline.stages import Stages
from nla.train.ar import train_ar

KEY = ("doc_id", "position")


def rows_at(target, table: pa.Table, docs: dict, ex, layer: int) -> torch.Tensor:  # -> (N, d)
    """The vectors of ``table``'s (doc_id, position) rows at ``layer``, in the table's order."""
    wanted = sorted(set(table.column("doc_id").to_pylist()))
    got = extract_chunk(target, [docs[d] for d in wanted], layer, ex, [1.0, 0.0, 0.0, 0.0])[0]
    index = {k: i for i, k in enumerate(zip(*(got.column(c).to_pylist() for c in KEY), strict=True))}
    keys = list(zip(*(table.column(c).to_pylist() for c in KEY), strict=True))
    missing = [k for k in keys if k not in index]
    if missing:
        raise SystemExit(f"{len(missing)} rows not re-extracted (first {missing[0]}): other extract options?")
    return vectors(got.take([index[k] for k in keys]))


def at_layer(table: pa.Table, src: Path, vecs: torch.Tensor, layer: int, out: Path) -> Path:
    """A copy of a teacher parquet with its vectors (and its sidecar's layer) replaced."""
    col = pa.array(list(vecs.numpy()), type=pa.list_(pa.float32()))
    t = table.set_column(table.schema.get_field_index("activation_vector"), "activation_vector", col)
    if "activation_layer" in t.column_names:
        t = t.set_column(t.schema.get_field_index("activation_layer"), "activation_layer",
                         pa.array([layer] * t.num_rows, type=pa.int32()))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, out)
    meta = copy.deepcopy(read_sidecar(dataset_sidecar_path(src)))
    meta.setdefault("extraction", {})["layer_index"] = layer
    if "extraction_layer_index" in meta:
        meta["extraction_layer_index"] = layer
    write_sidecar(dataset_sidecar_path(out), meta)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a pipeline run whose teach stage is done")
    ap.add_argument("--layers", required=True, help="comma-separated block indices")
    ap.add_argument("--steps", type=int, default=200, help="AR-SFT steps per layer (the run's options otherwise)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="", help="default: <run-dir>/layer_sweep")
    ap.add_argument("--preset", default="", help="make the run first (small) with this preset if it has no teach stage")
    ap.add_argument("--model", default=None, help="with --preset: another target than the preset's")
    ap.add_argument("--corpus", default=None, help="with --preset: another main corpus than the preset's")
    ap.add_argument("--docs", type=int, default=800, help="with --preset: main-corpus documents")
    ap.add_argument("--rows", type=int, default=2000, help="with --preset: ar_sft rows the teacher explains")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run_dir).expanduser()
    if args.preset and not (run / "teach" / "DONE").exists():
        extract = {"limit_docs": args.docs, **({"corpus": args.corpus} if args.corpus else {})}
        small = load_pipeline_config(
            args.preset, run_dir=str(run), threads=args.threads, extract=extract,
            corpora={"locale": [], "topic_chats": 0, "scene_chats": 0},
            teach_rows={"ar_sft": args.rows, "av_sft": 8, "rl": 8},
            **({"model": args.model} if args.model else {}),
        )  # fmt: skip
        run_pipeline(small, stop_after="teach")
    cfg = load_pipeline_config(config=run / "pipeline.yaml", run_dir=str(run))
    stages = Stages(cfg)
    out = Path(args.out).expanduser() if args.out else run / "layer_sweep"
    results_path = out / "sweep.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    sources = {"train": stages.teach_out("ar_sft"), "eval": stages.eval_data}
    tables = {k: pq.read_table(p) for k, p in sources.items()}
    target = load_target(cfg.model)
    run_layer = layer_index(read_sidecar(dataset_sidecar_path(sources["train"])))
    docs = {d.doc_id: d for d in load_corpus(str(stages.dir("corpora") / "main.jsonl"))}
    ex = fill_section(cfg, "extract", out="-", model=cfg.model, layer=None, seed=cfg.seed)
    for layer in [int(x) for x in args.layers.split(",")]:
        if str(layer) in results:
            continue
        t0 = time.perf_counter()
        vecs = {k: rows_at(target, t, docs, ex, layer) for k, t in tables.items()}
        if layer == run_layer:  # the same rows: the re-extracted vectors must be the run's
            stored = vectors(tables["train"])  # (N, d)
            diff, scale = float((vecs["train"] - stored).abs().max()), float(stored.abs().max())
            if diff > 1e-3 * scale:
                raise SystemExit(f"layer {layer}: re-extracted vectors differ from the run's by {diff:.3g}")
        paths = {k: at_layer(tables[k], sources[k], vecs[k], layer, out / f"L{layer}" / f"{k}.parquet")
                 for k in tables}  # fmt: skip
        extract_s = time.perf_counter() - t0
        ar_cfg = fill_section(cfg, "ar_sft", **stages.trainer(out / f"L{layer}" / "ar", str(paths["train"]),
                              eval_data=str(paths["eval"]), init="", baseline_data=""))  # fmt: skip
        ar_cfg = dataclasses.replace(ar_cfg, layer=layer, max_steps=args.steps, save_every=50)
        t1 = time.perf_counter()
        res = train_ar(ar_cfg)
        train_s = time.perf_counter() - t1
        ev = res.final_eval
        n_eval = int(ev["n"])  # the rows the AR was scored on (eval_max_rows)
        contexts = {k: t.column("detokenized_text_truncated").to_pylist() for k, t in tables.items()}
        look = token_lookup_control(vecs["train"], contexts["train"], vecs["eval"][:n_eval], contexts["eval"][:n_eval],
                                    target.tokenizer, ev["baseline"])  # fmt: skip
        results[str(layer)] = {**ev, **look, "steps": res.steps, "extract_seconds": extract_s,
                               "train_seconds": train_s, "train_rows": tables["train"].num_rows}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    n = target.n_layers
    print(f"# {cfg.model} ({n} blocks): AR-SFT {args.steps} steps per layer on the run's teacher text ({run})")
    head = ("layer", "depth", "B", "AR", "shuf", "empty", "lookup", "lookup2", "margin", "s/step")
    print(" ".join(f"{h:>7}" for h in head))
    for key in sorted(results, key=int):
        r = results[key]
        margin = r["fve_nrm"] - max(r["fve_token_lookup"], r["fve_token_lookup_2"])
        cells = (r["baseline"], r["fve_nrm"], r["fve_shuffled"], r["fve_empty"], r["fve_token_lookup"],
                 r["fve_token_lookup_2"], margin, r["train_seconds"] / max(1, r["steps"]))  # fmt: skip
        print(f"{int(key):>7} {(int(key) + 1) / n:>7.2f}" + "".join(f" {c:>7.3f}" for c in cells))


if __name__ == "__main__":
    main()

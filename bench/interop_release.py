"""Must-show of issue 33, official -> nla: checkpoints and datasets written BY the official code, used by nla.

    python bench/interop_release.py --official-repo ~/nla-runs/i33/official_repo \\
        --export ~/nla-runs/i33/official --interop ~/nla-runs/i33/interop --work ~/nla-runs/i33/release

``--official-repo`` is a checkout of kitft/natural_language_autoencoders (unmodified); its scripts run as
subprocesses with that folder first on the path (its package is also called ``nla``), under ``--python457``
(transformers 4.57.1, which the official stack pins: under 5.x its ``compute_canonical_neighbors`` fails
because ``apply_chat_template(tokenize=True)`` returns a dict there). Steps:

1. checkpoints: the export's sidecars are put back into the official TRAINING-time shape (role actor/critic,
   templates actor/critic, no layer but ``critic.extraction_layer_index``), then the official
   ``release/hf_stage_and_scrub.py`` stages them as release files (top-level ``extraction_layer_index``,
   role av/ar); a second AR copy drops the ``critic:`` block (as some releases do);
2. ``nla explain`` and ``nla explain-vector --best-of 1`` on the release pair (and the critic-less AR),
   compared with the shipped NLA's greedy explanations of the same vectors (``--interop`` run);
3. datasets: a stage-2 parquet (schema and sidecar of ``stage0``/``stage2``) from those vectors and
   explanations; the official ``nla.datagen.stage3_build`` builds ``ar_sft`` and ``av_sft`` from it;
4. ``nla train ar`` for a few steps on the official ``ar_sft`` file, and ``nla eval`` on it (AR-SFT on the
   teacher text with the release AR, plus the release pair's round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

SMOLLM2 = Path.home() / ".cache/nla/models/smollm2-135m"  # the base model as nla converted it


def base_for_both(export: Path, dst: Path) -> str:
    """SmolLM2 as a folder transformers 4.57 and 5.x both load: its weights (linked) with the export's
    config/tokenizer treatment (the official datagen loads the tokenizer under 4.57)."""
    from nla.export_official import config_for_both

    dst.mkdir(exist_ok=True)
    for name in ("model.safetensors", "generation_config.json"):
        if not (dst / name).exists():
            (dst / name).symlink_to(SMOLLM2 / name)
    cfg = config_for_both(json.loads((SMOLLM2 / "config.json").read_text()))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(export / "av" / name, dst / name)
    return str(dst)


def run(cmd: list[str], log: Path, *, cwd: str | None = None, env: dict | None = None) -> str:
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(res.stdout)
    if res.returncode:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}; see {log}")
    return res.stdout


def training_time(src: Path, dst: Path, role: str, *, keep_critic: bool = True) -> None:
    """A copy of an exported checkpoint whose sidecar has the official training-time shape."""
    shutil.copytree(src, dst)
    side = yaml.safe_load((src / "nla_meta.yaml").read_text())
    side["role"] = {"av": "actor", "ar": "critic"}[role]
    side["prompt_templates"] = {"actor": side["prompt_templates"]["av"], "critic": side["prompt_templates"]["ar"]}
    side.pop("extraction_layer_index")
    side["extraction"] = {k: side["extraction"][k] for k in ("injection_scale", "mse_scale")}
    side["base_checkpoint"] = "/checkpoints/base"  # training writes a path; the release scrub replaces it
    if not keep_critic:
        side.pop("critic", None)
    (dst / "nla_meta.yaml").write_text(yaml.safe_dump(side, sort_keys=False, allow_unicode=True))


def official_env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", required=True)
    ap.add_argument("--export", required=True, help="nla export --format official of the shipped NLA")
    ap.add_argument("--interop", required=True, help="work folder of bench/interop_official.py (vectors, nla.json)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--python457", required=True, help="python with transformers 4.57.1 (the official stack's pin)")
    ap.add_argument("--vectors", type=int, default=3, help="vectors explained through the release pair")
    args = ap.parse_args()
    repo, export, interop = (Path(p).expanduser() for p in (args.official_repo, args.export, args.interop))
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)  # finished steps (their output files present) are not run again
    log = work / "log.txt"
    nla = [sys.executable, "-m", "nla.cli"]
    env = official_env(repo)
    py457 = str(Path(args.python457).expanduser())
    report: dict = {}

    # 1. release checkpoints staged by the official scrub script
    rel: dict[str, Path] = {}
    for name, role, keep in (("av", "av", True), ("ar", "ar", True), ("ar_nocritic", "ar", False)):
        staged = sorted(work.glob(f"train_{name}_hfstage_*"))
        if staged:
            rel[name] = staged[-1]
            continue
        shutil.rmtree(work / f"train_{name}", ignore_errors=True)
        training_time(export / role, work / f"train_{name}", role, keep_critic=keep)
        out = run([py457, str(repo / "release/hf_stage_and_scrub.py"), str(work / f"train_{name}"),
                   "smollm2-135m", "a public corpus", "20"], log, env=env)  # fmt: skip
        rel[name] = Path(out.strip().splitlines()[-1])
    report["release_sidecars"] = {k: yaml.safe_load((p / "nla_meta.yaml").read_text()) for k, p in rel.items()}

    # 2. nla explain / explain-vector on the release pair
    vecs = np.load(interop / "vectors.npy")[: args.vectors]
    np.save(work / "vectors.npy", vecs)
    ours = json.loads((interop / "nla.json").read_text())
    for name in ("ar", "ar_nocritic"):
        jsonl = work / f"explain_vector_{name}.jsonl"
        if not jsonl.exists():
            run([*nla, "explain-vector", str(work / "vectors.npy"), "--av", str(rel["av"]), "--ar", str(rel[name]),
             "--best-of", "1", "--jsonl", str(jsonl)], log)  # fmt: skip
        got = [json.loads(line)["raw"] for line in jsonl.read_text().splitlines()]
        report[f"explain_vector_{name}_identical_to_shipped"] = sum(
            a == b for a, b in zip(got, ours["raw"][: len(got)], strict=True)
        )
    text = "The capital of France is Paris, and the capital of Italy is"
    jsonl = work / "explain.jsonl"
    if not jsonl.exists():
        run([*nla, "explain", text, "--av", str(rel["av"]), "--ar", str(rel["ar"]), "--target", "smollm2-135m",
         "--positions", "last", "--best-of", "1", "--jsonl", str(jsonl)], log)  # fmt: skip
    explained = [json.loads(line) for line in jsonl.read_text().splitlines()]
    report["explain_last_token"] = {k: explained[-1].get(k) for k in ("explanation", "cosine", "control_cosine")}
    report["explain_equals_shipped_vector_0"] = explained[-1].get("raw") == ours["raw"][0]

    # 3. official datasets: stage 2 (written here in its schema) -> official stage3_build -> ar_sft, av_sft.
    # SmolLM2 has no single-token character in U+3200-33FF, where stage3 auto-picks its marker; as its error
    # message says, a hand-picked one goes into the checkout's injection_token_cache.yaml (the shipped
    # NLA's marker). This edits that data file of the checkout, no code.
    cache = repo / "nla/datagen/injection_token_cache.yaml"
    entries = yaml.safe_load(cache.read_text()) if cache.exists() else {}
    entries = entries if isinstance(entries, dict) else {}
    marker = report["release_sidecars"]["av"]["tokens"]
    model = base_for_both(export, work / "smollm2-135m-both")
    entries[model] = {"char": marker["injection_char"], "token_id": marker["injection_token_id"]}
    cache.write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=True))
    all_vecs = np.load(interop / "vectors.npy")
    n, d = all_vecs.shape
    for split, rows in (("train", range(0, n - 3)), ("eval", range(n - 3, n))):
        rows = list(rows)
        table = pa.table({
            "n_raw_tokens": pa.array([12 + i for i in rows], pa.int64()),
            "detokenized_text_truncated": pa.array([f"text {i}" for i in rows], pa.string()),
            "activation_vector": pa.array(all_vecs[rows].tolist(), pa.list_(pa.float32(), d)),
            "activation_layer": pa.array([20] * len(rows), pa.int64()),
            "doc_id": pa.array([f"{split}-{i}" for i in rows], pa.string()),
            "api_explanation": pa.array([ours["explanations"][i] for i in rows], pa.string()),
        })  # fmt: skip
        path = work / f"stage2_{split}.parquet"
        pq.write_table(table, path)
        side = {"dataset_id": f"base_{split}", "stage": "base", "row_count": len(rows),
                "extraction": {"base_model": model, "d_model": d, "layer_index": 20, "norm": "none",
                               "corpus": "nla interop vectors", "corpus_slice": {"start": 0, "length": len(rows)},
                               "positions_per_doc": 1},
                "kind": "nla_dataset", "schema_version": 1, "keep_debug_metadata": True}  # fmt: skip
        Path(str(path) + ".nla_meta.yaml").write_text(yaml.safe_dump(side, sort_keys=False))
        for stage in ("ar_sft", "av_sft"):
            run([py457, "-m", "nla.datagen.stage3_build", "--input", str(path), "--stage", stage,
                 "--output", str(work / f"{stage}_{split}.parquet")], log, cwd=str(repo), env=env)  # fmt: skip
    report["official_ar_sft_sidecar"] = yaml.safe_load((work / "ar_sft_train.parquet.nla_meta.yaml").read_text())
    report["official_ar_sft_columns"] = pq.read_schema(work / "ar_sft_train.parquet").names

    # 4. nla train ar (a few steps) and nla eval on the official datasets
    out = run([*nla, "train", "ar", "--data", str(work / "ar_sft_train.parquet"),
               "--eval-data", str(work / "ar_sft_eval.parquet"), "--out-dir", str(work / "ar_run"),
               "--max-steps", "3", "--batch-size", "4", "--train-last-n-layers", "1", "--eval-every", "3",
               "--save-every", "3"], log)  # fmt: skip
    report["train_ar_stdout"] = out.strip().splitlines()[-6:]
    metrics = (work / "ar_run/metrics.jsonl").read_text().splitlines()
    report["train_ar_losses"] = [json.loads(line).get("loss") for line in metrics if '"loss"' in line]
    run([*nla, "eval", "--data", str(work / "ar_sft_eval.parquet"),
         "--train-data", str(work / "ar_sft_train.parquet"),
         "--sft-ar", str(rel["ar"]), "--av", str(rel["av"]), "--ar", str(rel["ar"]), "--rows", "3",
         "--max-new-tokens", "80", "--out", str(work / "card.json")], log)  # fmt: skip
    card = json.loads((work / "card.json").read_text())
    report["eval_card_keys"] = sorted(card)
    report["eval_ar_sft_teacher"] = card.get("ar_sft_teacher")
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "release_sidecars"}, indent=2, default=str))


if __name__ == "__main__":
    main()

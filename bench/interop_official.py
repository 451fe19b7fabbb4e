"""Must-show of issue 33: the official NLA client code against ``nla export --format official``.

    python bench/interop_official.py --official ~/nla-runs/i33/official_code \\
        --python457 ~/nla-runs/i33/venv457/bin/python --work ~/nla-runs/i33/interop

1. ``nla export --format official`` of the shipped NLA (``--export``, reused when present);
2. N real activation vectors: SmolLM2 layer 20 at the last token of N short texts;
3. ``nla explain-vector --best-of 1`` (greedy) on the shipped NLA and on the export; nla's AR (shipped)
   reconstruction of each greedy explanation;
4. ``nla serve-sglang --av EXPORT/av`` (SGLang's /generate protocol), then ``bench/interop_client.py``
   (official ``NLAClient`` / ``NLACritic``, unmodified) under the 4.57 interpreter and under this one
   (transformers 5.x, with its chat-template shim, see that file);
5. prints per transformers version: greedy explanations identical to nla's (raw text and extracted),
   and the min / mean cosine between the official critic's and nla's AR reconstructions (fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

TEXTS = [
    "The capital of France is Paris, and the capital of Italy is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "She opened the fridge, took out the milk and poured it into a",
    "In 1969, Neil Armstrong became the first person to walk on the",
    "The recipe calls for two cups of flour, one egg and a pinch of",
    "Dear Sir or Madam, I am writing to complain about the",
    "The stock market fell sharply on Monday after the central bank",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
    "He kicked the ball past the goalkeeper and the crowd",
    "To install the package, run pip install followed by the",
]


def nla(*args: str, log: Path) -> None:
    with log.open("a") as f:
        subprocess.run([sys.executable, "-m", "nla.cli", *args], check=True, stdout=f, stderr=f)


def activations(n: int, layer: int) -> np.ndarray:  # -> (n, d)
    from nla.models.target import load_target

    target = load_target("smollm2-135m")
    rows = []
    for text in TEXTS[:n]:
        enc = target.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hs = target.model(**enc, output_hidden_states=True).hidden_states
        rows.append(hs[layer + 1][0, -1].float().numpy())
    return np.stack(rows).astype(np.float32)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 600) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        if proc.poll() is not None:
            raise RuntimeError("nla serve-sglang exited")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return
        except OSError:
            time.sleep(2)
    raise TimeoutError(url)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(-1) / (np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="folder with the official nla_inference.py (unmodified)")
    ap.add_argument("--python457", required=True, help="python of a venv with transformers 4.57.1")
    ap.add_argument("--work", default=str(Path.home() / "nla-runs/i33/interop"))
    ap.add_argument("--export", default="", help="official export of the shipped NLA (default: WORK/export)")
    ap.add_argument("--n", type=int, default=8, help=f"vectors (at most {len(TEXTS)})")
    ap.add_argument("--port", type=int, default=30123)
    args = ap.parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    export = Path(args.export).expanduser() if args.export else work / "export"
    log = work / "log.txt"
    here = Path(__file__).resolve().parent
    if not (export / "av" / "nla_meta.yaml").exists():
        nla("export", "--format", "official", "--out", str(export), log=log)
    vecs = activations(args.n, 20)
    old = np.load(work / "vectors.npy") if (work / "vectors.npy").exists() else None
    jsonls = [work / f"nla-{name}.jsonl" for name in ("shipped", "export")]
    reuse = old is not None and old.shape[0] >= args.n and np.array_equal(old[: args.n], vecs)
    reuse = reuse and all(p.exists() and len(read_jsonl(p)) >= args.n for p in jsonls)
    np.save(work / "vectors.npy", vecs)
    if not reuse:  # (the same vectors explained before: their greedy explanations are reused)
        for name, extra in (("shipped", []), ("export", ["--av", str(export / "av"), "--ar", str(export / "ar")])):
            nla("explain-vector", str(work / "vectors.npy"), "--best-of", "1", "--jsonl",
                str(work / f"nla-{name}.jsonl"), *extra, log=log)  # fmt: skip
    shipped = read_jsonl(work / "nla-shipped.jsonl")[: args.n]
    exported = read_jsonl(work / "nla-export.jsonl")[: args.n]
    from nla.explain.api import resolve_nla_paths
    from nla.models.ar import ActivationReconstructor

    _, ar_path = resolve_nla_paths(None, None)
    ar = ActivationReconstructor.from_pretrained(str(ar_path))
    expl = [r["explanation"] for r in shipped]
    pred = ar.predict(expl).numpy()
    (work / "nla.json").write_text(json.dumps({"explanations": expl, "raw": [r["raw"] for r in shipped]}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "nla.cli", "serve-sglang", "--av", str(export / "av"), "--port", str(args.port)],
        stdout=log.open("a"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{args.port}"
    runs = {"4.57": [args.python457], "5.x": [sys.executable]}
    try:
        wait_for(url, server)
        for label, py in runs.items():
            shim = ["--shim-chat-template"] if label == "5.x" else ["--direct"]
            cmd = [*py, str(here / "interop_client.py"), "--official", args.official, "--export", str(export),
                   "--work", str(work), "--url", url, *shim]  # fmt: skip
            subprocess.run(cmd, check=True, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)
    finally:
        server.terminate()
        server.wait(30)
    n = len(vecs)
    same = sum(a["raw"] == b["raw"] for a, b in zip(shipped, exported, strict=True))
    summary: dict = {"n": n, "shipped_vs_export_nla_identical": same}
    print(f"{n} vectors; nla explain-vector, shipped vs exported pair: {same}/{n} identical greedy explanations")
    for path in sorted(work.glob("official-*.json")):
        res = json.loads(path.read_text())
        client, direct = res["client"], res.get("direct")
        same_raw = sum(a == b for a, b in zip(client["raw"], [r["raw"] for r in shipped], strict=True))
        same_expl = sum(a == b for a, b in zip(client["explanation"], expl, strict=True))
        same_direct = sum(direct["greedy_agrees"]) if direct else None
        cos = cosines(np.array(res["critic"]["reconstruction"]), pred)
        nla_cos = np.array([r["cosine"] for r in shipped])
        off_cos = np.array([s[1] for s in res["critic"]["score"]])
        row = {
            "transformers": res["transformers"], "shim": res["shim_chat_template"],
            "client_raw_identical": same_raw, "client_explanation_identical": same_expl,
            "direct_teacher_forced_greedy_agrees": same_direct,
            "critic_vs_nla_ar_cos_min": float(cos.min()), "critic_vs_nla_ar_cos_mean": float(cos.mean()),
            "score_cos_max_abs_diff": float(np.abs(off_cos - nla_cos).max()),
            "nla_inference_sha256": res["nla_inference_sha256"],
        }  # fmt: skip
        summary[res["transformers"]] = row
        print(
            f"transformers {row['transformers']}{' (chat-template shim)' if row['shim'] else ''}: NLAClient greedy "
            f"raw {same_raw}/{n}, explanation {same_expl}/{n} identical to nla explain-vector; "
            f"HF-direct teacher-forced greedy agrees {same_direct}/{n}; "
            f"NLACritic vs nla AR reconstruction cosine min {cos.min():.7f} mean {cos.mean():.7f}; "
            f"|score cos - nla cos| max {row['score_cos_max_abs_diff']:.2e}"
        )
    (work / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

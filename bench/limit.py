"""How close AV generation runs to the machine's matrix-multiply limit, per command, in ONE run.

For each command's generation workload (its library call, its default batch and decoding options), the script
measures the AV's generated tokens per second and, right after it, the fp32 GEMM rate of the AV's own
decode-step matrices (every linear layer of the model plus the LM head, ``F.linear`` on the real weights, in
whichever memory layout multiplies faster) at the batch that workload actually decoded with (the mean rows per
decoding step, recorded during the run: rows that finish early lower it) and at batch 128. With F = 2 x (weights
touched per token) FLOPs per generated token, the ceiling at batch b is ``gemm_rate(b) / F`` tokens/s, and the
table prints ``tokens/s / ceiling`` at the batch used and at batch 128. Attention and sampling are left out of
F, so the ratio is what the matrix unit allows, not an exact roofline. ``--json`` also keeps every answer, so
two checkouts' greedy answers (audit + verbalize: 96 vectors) can be compared.

Workloads (the shipped NLA, vectors = layer-20 activations of the shipped sample chats, from token 8 on):

- explain        best-of-4 on 8 vectors (the README job: 8 tokens), batch_size 16, 150 new tokens
- explain-vector best-of-4 on 16 vectors, batch_size 16
- audit          greedy on 64 vectors, batch 64 (``nla audit`` decodes a work batch of 64 positions at once)
- verbalize      greedy on 32 other vectors, batch_size 16
- rl             8 vectors x group 4 sampled at T 1.0, gen_batch_size 32

It uses only library calls older checkouts also have, so the same script measures another checkout:
``PYTHONPATH=/other/src python bench/limit.py``. CPU by default; ``--device cuda`` on a GPU. ``--av`` takes
another AV (its target and layer give the vectors: e.g. a Gemma 3 AV); ``--dtype bfloat16`` loads its weights
in bf16, and the GEMM rate is then measured in bf16 too (the ratio is against the same dtype's limit).

    python bench/limit.py                        # all commands, 1 thread
    python bench/limit.py --only audit rl --max-new-tokens 80
    python bench/limit.py --only verbalize --av runs/gemma/av_sft/final --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

COMMANDS = ("explain", "explain-vector", "audit", "verbalize", "rl")


def linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weight of every linear map a decoding step multiplies by (LoRA merged in for the count), LM head
    included: (out, in) tensors."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = []
    for name, mod in base.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, torch.nn.Linear) and w is not None and "lora_" not in name:
            out.append(w.detach())
    return out


def gemm_rate(weights: list[torch.Tensor], batch: int, seconds: float = 2.0) -> float:
    """FLOP/s of ``F.linear`` with a (batch, in) input over all ``weights``, timed for about ``seconds`` in
    each of the two memory layouts of a weight (row-major (out, in), and column-major: the transpose of a
    contiguous (in, out) matrix, which the CPU's GEMM reads faster at small batches); the faster one counts,
    whatever layout the model itself holds."""
    flops = sum(2 * batch * w.shape[0] * w.shape[1] for w in weights)
    xs = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    sync = torch.cuda.synchronize if weights[0].is_cuda else (lambda: None)
    best = 0.0
    for layout in ("row", "column"):
        ws = [w.contiguous() if layout == "row" else w.t().contiguous().t() for w in weights]

        def step(ws: list[torch.Tensor] = ws) -> None:
            for w in ws:
                F.linear(xs[w.shape[1]], w)

        with torch.no_grad():
            step()
            sync()
            n, t0 = 0, time.perf_counter()
            while True:
                step()
                n += 1
                sync()
                dt = time.perf_counter() - t0
                if dt >= seconds and n >= 2:
                    best = max(best, n * flops / dt)
                    break
        del ws
    return best


class StepCounter:
    """Counts decoding steps and their rows (forwards of one new token per row) on the AV's embeddings."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.steps = self.rows = 0
        self._h = model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, _m: Any, args: tuple[Any, ...], _out: Any) -> None:
        ids = args[0]
        if torch.is_tensor(ids) and ids.dim() == 2 and ids.shape[1] == 1:
            self.steps += 1
            self.rows += ids.shape[0]

    def close(self) -> None:
        self._h.remove()


def workloads(av: Any, vectors: torch.Tensor, n_new: int) -> dict[str, Callable[[], Any]]:
    from nla.evaluate.rerank import candidates
    from nla.train.rl.config import RLConfig
    from nla.train.rl.rollout import sample_rollouts

    rl = RLConfig(group_size=4, gen_batch_size=32, temperature=1.0, max_new_tokens=n_new)
    return {
        "explain": lambda: candidates(av, vectors[:8], 4, max_new_tokens=n_new, batch_size=16, seed=0),
        "explain-vector": lambda: candidates(av, vectors[:16], 4, max_new_tokens=n_new, batch_size=16, seed=0),
        "audit": lambda: av.sample(vectors[:64], max_new_tokens=n_new, batch_size=64),
        "verbalize": lambda: av.sample(vectors[64:96], max_new_tokens=n_new, batch_size=16),
        "rl": lambda: sample_rollouts(av, vectors[:8], rl, 0, nullcontext()).responses,
    }


def sample_chat_vectors(device: str, model: str = "smollm2-135m", layer: int = 20) -> torch.Tensor:  # (N, d)
    from nla.audit.plan import SAMPLE_CHATS, content_of, read_documents
    from nla.explain.inputs import encode_input
    from nla.models.target import load_target

    target = load_target(model, device=device)
    docs, _ = read_documents(SAMPLE_CHATS)
    vecs = []
    for d in docs:
        content = content_of(d)
        if not isinstance(content, str) and not getattr(target.tokenizer, "chat_template", None):
            from nla.data.positions import plain_transcript  # a base model (Gemma 3 270M) reads the chat as text

            content = plain_transcript(content)[0]
        enc = encode_input(target.tokenizer, content)
        ids = torch.tensor([enc.input_ids], device=device)
        vecs.append(target.hidden_at(ids, None, layer)[0, 8::7].float())  # every 7th token from token 8 on
    vecs = torch.cat(vecs)
    if vecs.shape[0] < 96:
        raise SystemExit(f"the sample chats give {vecs.shape[0]} vectors; the workloads need 96")
    return vecs[:96]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=COMMANDS, default=list(COMMANDS))
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="Also write the table here.")
    ap.add_argument("--av", default=None, help="An AV checkpoint (default: the shipped SmolLM2 NLA's).")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from nla.models.av import ActivationVerbalizer
    from nla.resources import default_nla_dir

    dtype = getattr(torch, args.dtype)
    av = ActivationVerbalizer.from_pretrained(args.av or default_nla_dir() / "av", device=args.device, dtype=dtype)
    av = getattr(av, "for_inference", lambda: av)()  # what NLA.from_pretrained and verbalize do (newer code)
    if args.av:
        vectors = sample_chat_vectors(args.device, av.base_model, av.layer)
    else:
        vectors = sample_chat_vectors(args.device)  # the default's names, which older checkouts also resolve
    weights = linear_weights(av.model)
    flops_per_token = sum(2 * w.shape[0] * w.shape[1] for w in weights)
    jobs = workloads(av, vectors, args.max_new_tokens)
    av.sample(vectors[:2], max_new_tokens=2, batch_size=2)  # warm-up
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU thread(s)"
    print(f"AV {av.base_model} ({args.dtype}): {flops_per_token / 1e9:.3f} GFLOP per generated token; {where}")
    rows = []
    for name in args.only:
        counter = StepCounter(av.model)
        t0 = time.perf_counter()
        resp = jobs[name]()
        secs = time.perf_counter() - t0
        counter.close()
        tokens = sum(len(x) for x in resp.ids)
        batch = max(1, round(counter.rows / max(1, counter.steps)))
        rate_b, rate_128 = gemm_rate(weights, batch), gemm_rate(weights, 128)
        tps = tokens / secs
        row = {
            "command": name,
            "answers": len(resp.ids),
            "tokens": tokens,
            "seconds": round(secs, 2),
            "tokens_per_s": round(tps, 1),
            "mean_decode_batch": round(counter.rows / max(1, counter.steps), 1),
            "gemm_gflops_at_batch": round(rate_b / 1e9, 1),
            "gemm_gflops_at_128": round(rate_128 / 1e9, 1),
            "ratio_at_batch": round(tps / (rate_b / flops_per_token), 3),
            "ratio_at_128": round(tps / (rate_128 / flops_per_token), 3),
            "load1": round(os.getloadavg()[0], 1),
            "answers_text": [av.tokenizer.decode(x) for x in resp.ids],
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "answers_text"}), flush=True)
    print(
        f"\n{'command':<15}{'tok/s':>8}{'batch':>7}{'GF/s@b':>8}{'GF/s@128':>9}{'ratio@b':>9}{'ratio@128':>10}{'load':>6}"
    )
    for r in rows:
        print(
            f"{r['command']:<15}{r['tokens_per_s']:>8.1f}{r['mean_decode_batch']:>7.1f}{r['gemm_gflops_at_batch']:>8.1f}"
            f"{r['gemm_gflops_at_128']:>9.1f}{r['ratio_at_batch']:>9.0%}{r['ratio_at_128']:>10.0%}{r['load1']:>6.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"flops_per_token": flops_per_token, "device": where, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

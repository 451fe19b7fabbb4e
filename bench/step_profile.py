"""Where the AV's generation time goes: prefill against decoding steps, and within the steps, matrix products
against attention against everything else.

One ``av.sample`` call on held-out chat vectors (the vectors of ``bench/limit.py``), greedy, every answer in one
batch. First it is timed plainly, with the backend's forward passes timed by input shape (the prefix before the
marker, the prefill from the marker on, the decoding steps); then it runs again under torch's profiler, whose
self-CPU times are summed by operator family. Prints both tables.

    python bench/step_profile.py                      # the shipped AV, 32 vectors, 40 new tokens, 1 thread
    python bench/step_profile.py --vectors 64 --max-new-tokens 80 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import logging
import time
from typing import Any

import torch

from limit import sample_chat_vectors

PHASES = ("prefix", "prefill", "decoding steps")
FAMILIES = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--av", default=None, help="An AV checkpoint (default: the shipped SmolLM2 NLA's).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from torch.profiler import ProfilerActivity, profile

    from nla.generation import hf
    from nla.models.av import ActivationVerbalizer
    from nla.resources import default_nla_dir

    av = ActivationVerbalizer.from_pretrained(args.av or default_nla_dir() / "av", device="cpu").for_inference()
    vectors = sample_chat_vectors("cpu", av.base_model, av.layer) if args.av else sample_chat_vectors("cpu")
    vectors = vectors[: args.vectors]
    n = vectors.shape[0]

    times: dict[str, list[float]] = collections.defaultdict(list)
    forward = hf.HFBackend._forward

    def timed(self: Any, model: Any, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        kind = "decoding steps" if ids.shape[1] == 1 else ("prefix" if ids.shape[0] == 1 else "prefill")
        t0 = time.perf_counter()
        with torch.profiler.record_function(kind):
            out = forward(self, model, ids, cache)
        times[kind].append(time.perf_counter() - t0)
        return out

    def run() -> tuple[float, int]:  # seconds, generated tokens
        t0 = time.perf_counter()
        resp = av.sample(vectors, max_new_tokens=args.max_new_tokens, batch_size=n)
        return time.perf_counter() - t0, sum(len(x) for x in resp.ids)

    av.sample(vectors[:2], max_new_tokens=2, batch_size=2)  # warm-up
    hf.HFBackend._forward = timed  # type: ignore[method-assign]
    try:
        secs, tokens = run()
        plain = {k: list(v) for k, v in times.items()}
        times.clear()  # the timed run again, under the profiler
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
    finally:
        hf.HFBackend._forward = forward  # type: ignore[method-assign]
    prompt = av.prompt_ids()
    m = prompt.index(av.marker.token_id)
    print(f"AV {av.base_model}: {n} vectors, greedy, batch {n}, {args.max_new_tokens} new tokens, ", end="")
    print(f"{args.threads} thread(s)")
    print(f"whole call {secs:.2f} s, {tokens} tokens, {tokens / secs:.1f} tokens/s")
    print(f"prompt: {m} tokens before the marker, {len(prompt) - m} from it on")
    for kind in PHASES:
        ts = plain.get(kind, [])
        print(f"  {kind:15s} {len(ts):4d} forward(s) {sum(ts):7.2f} s ({sum(ts) / secs:.0%})")

    spent: dict[tuple[str, str], float] = collections.Counter()  # (phase, family) -> self CPU us
    for ev in prof.events():
        phase = ev
        while phase is not None and phase.name not in PHASES:
            phase = phase.cpu_parent
        if phase is not None and ev.name not in PHASES:
            family = next((f for f, ops in FAMILIES.items() if ev.name in ops), "everything else")
            spent[phase.name, family] += ev.self_cpu_time_total
    print("self CPU time under the profiler, by phase and operator family:")
    for kind in ("prefill", "decoding steps"):
        total = sum(v for (p, _), v in spent.items() if p == kind) or 1.0
        shares = ", ".join(f"{f} {spent[kind, f] / total:.0%}" for f in (*FAMILIES, "everything else"))
        print(f"  {kind:15s} {total / 1e6:7.2f} s: {shares}")


if __name__ == "__main__":
    main()

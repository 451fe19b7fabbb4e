"""Seconds per AR-SFT optimizer step on SmolLM2 (layer 20) for each training mode.

Modes: full fine-tune, ``train_last_n_layers`` (default 4, a CPU speed option) and LoRA r=16. Each step
is forward + normalised-MSE loss + backward + clipping + AdamW on one batch of ~100-token texts; the
first step (allocation) is printed apart from the steady ones.

    python bench/train_ar.py --threads 1 --batch 16 --steps 4
"""

from __future__ import annotations

import argparse
import time

import torch

from nla.train.ar import ARTrainConfig, ar_loss, build_ar

_TEXT = (
    'Setting: prose about cooking pasta in salted water. The text ends with: "add the garlic, basil," '
    'The final token is ",", a comma inside a list of ingredients; the model predicts next " and" or a noun. '
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--last-n", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modes = {
        "full": {},
        f"last{args.last_n}": {"train_last_n_layers": args.last_n},
        "lora-r16": {"lora": True, "lora_r": 16, "lora_alpha": 32.0},
    }
    texts = [f"Row {i}. " + _TEXT * 2 for i in range(args.batch)]
    for name, extra in modes.items():
        torch.manual_seed(0)
        ar = build_ar(ARTrainConfig(data="-", eval_data="-", max_length=128, **extra), "smollm2-135m", 20)
        enc = ar.tokenize(texts)
        batch = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "gold": torch.randn(args.batch, ar.d_model),
        }
        params = [p for p in ar.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            ar_loss(ar, batch).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        steady = sum(times[1:]) / max(1, len(times) - 1)
        print(
            f"{name:10s} tokens/row={enc['input_ids'].shape[1]} trainable={sum(p.numel() for p in params) / 1e6:.1f}M "
            f"first step {times[0]:.2f}s, then {steady:.2f}s/step",
            flush=True,
        )


if __name__ == "__main__":
    main()

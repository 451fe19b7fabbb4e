"""``nla explain``: explain the activations of a text, token by token, with a trained NLA.

    nla explain "The Eiffel Tower is in Paris." --positions last
    nla explain --file essay.txt --positions 50:60 --av runs/nla/av --ar runs/nla/ar --html out.html
    nla explain --chat chat.jsonl --positions assistant --jsonl out.jsonl --num-samples 4

``--chat`` reads a JSONL file with one ``{"role": ..., "content": ...}`` message per line (or one line
``{"messages": [...]}``). ``--positions``: all, last, assistant, indices ``3,5,-1``, ranges ``10:20``
(``--positions=-5:`` when the value starts with a minus).
Without ``--av`` the NLA shipped with the package is used, if there is one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nla.common.config import add_config_args, config_from_args, option
from nla.common.errors import NLAError


@dataclass
class NLAOptions:
    """Options shared by ``nla explain`` and ``nla explain-vector``."""

    av: str | None = option(None, "AV checkpoint directory (ours or official); default: the NLA shipped with nla.")
    ar: str | None = option(
        None, "AR checkpoint directory for round-trip scores; default: the shipped one with the default AV."
    )
    target: str | None = option(None, "Target model; default: the AV sidecar's extraction.base_model.")
    max_new_tokens: int = option(150, "Longest explanation, in tokens.")
    num_samples: int = option(1, "Explanations per activation (> 1 samples; the first is shown, all are saved).")
    do_sample: bool = option(False, "Sample instead of greedy decoding (implied by --num-samples > 1).")
    temperature: float | None = option(
        None, "Sampling temperature (default: 1.0 for --num-samples, 0.7 for --best-of)."
    )
    best_of: int | None = option(
        None,
        "Best-of-K decoding: the greedy answer and K-1 samples; the AR keeps the "
        "one it reconstructs best (K generations per token). Default: 4 with an AR "
        "(unless --num-samples/--do-sample), else 1 (greedy).",
    )
    top_p: float = option(1.0, "Nucleus sampling threshold.")
    batch_size: int = option(16, "Activations explained per batched generate call.")
    seed: int | None = option(None, "Seed for sampling.")
    baseline: float | None = option(
        None, "Predict-the-mean baseline B for fve (default: the sidecar's eval.baseline_mse)."
    )
    device: str = option("cpu", "Torch device, e.g. cpu or cuda:0.")
    dtype: str = option("float32", "Model dtype.", choices=["float32", "bfloat16", "float16"])
    jsonl: str | None = option(None, "Write one JSON record per explained token/vector to this file.")

    def gen_kwargs(self) -> dict[str, Any]:
        return dict(
            max_new_tokens=self.max_new_tokens,
            num_samples=self.num_samples,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            batch_size=self.batch_size,
            seed=self.seed,
            best_of=self.best_of,
        )


@dataclass
class ExplainConfig(NLAOptions):
    positions: str = option(
        "all",
        "Tokens to explain: all, last, assistant, indices 3,5,-1, ranges 10:20 "
        "(write --positions=-5: when the value starts with a minus).",
    )
    html: str | None = option(None, "Write a self-contained HTML report to this file.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="Explain the activations of a text token by token with a trained NLA.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("text", nargs="?", default=None, help="The text to explain (or use --file / --chat).")
    p.add_argument("--file", type=Path, default=None, help="Read the text from this file (UTF-8).")
    p.add_argument("--chat", type=Path, default=None, help="A chat as JSONL: one {role, content} message per line.")
    add_config_args(p, ExplainConfig)
    p.set_defaults(func=run)


def read_chat_jsonl(path: Path) -> list[dict[str, str]]:
    """Messages from JSONL: one message object per line, or a single ``{"messages": [...]}`` line."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:
        raise NLAError(f"cannot read chat file {path}: {e.strerror}") from e
    try:
        rows = [json.loads(ln) for ln in lines]
    except json.JSONDecodeError as e:
        raise NLAError(f"chat file {path} is not valid JSONL: {e}") from e
    if len(rows) == 1 and isinstance(rows[0], dict) and "messages" in rows[0]:
        rows = rows[0]["messages"]
    ok = rows and all(
        isinstance(r, dict) and isinstance(r.get("role"), str) and isinstance(r.get("content"), str) for r in rows
    )
    if not ok:
        raise NLAError(f'chat file {path} must hold {{"role": ..., "content": ...}} messages, one per line')
    return [{"role": r["role"], "content": r["content"]} for r in rows]


def read_input(args: argparse.Namespace) -> str | list[dict[str, str]]:
    given = [x for x in (args.text, args.file, args.chat) if x is not None]
    if len(given) != 1:
        raise NLAError("give exactly one input: a TEXT argument, --file FILE or --chat FILE.jsonl")
    if args.chat is not None:
        return read_chat_jsonl(args.chat)
    if args.file is not None:
        try:
            return args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise NLAError(f"cannot read {args.file} as UTF-8 text: {e}") from e
    return str(args.text)


def check_positions(cfg: ExplainConfig, source: str | list[dict[str, str]]) -> None:
    """Resolve ``--positions`` with the target's tokenizer alone, so bad specs fail before models load."""
    from nla.common.meta import MODEL_SIDECAR, read_model_sidecar
    from nla.explain.api import resolve_nla_paths
    from nla.explain.inputs import encode_input
    from nla.explain.positions import parse_positions
    from nla.models.target import load_tokenizer

    av, _ = resolve_nla_paths(cfg.av, cfg.ar)
    name = cfg.target
    if name is None and (Path(av) / MODEL_SIDECAR).exists():
        name = (read_model_sidecar(Path(av)).get("extraction") or {}).get("base_model")
    if not name:
        return  # the AV loader will say what is missing
    enc = encode_input(load_tokenizer(str(name)), source)
    parse_positions(cfg.positions, len(enc.input_ids), assistant_mask=enc.assistant_mask)


def load_nla(cfg: NLAOptions) -> Any:
    from nla.explain.api import NLA, resolve_nla_paths

    av, ar = resolve_nla_paths(cfg.av, cfg.ar)
    return NLA.from_pretrained(av, ar, target=cfg.target, device=cfg.device, dtype=cfg.dtype, baseline=cfg.baseline)


def notes_for(nla: Any, records: list[Any], best_of: int = 1) -> list[str]:
    """Lines that say what the scores mean (and what is missing)."""
    from nla.explain.report import summary

    notes = [f"target {nla.target.name}, layer {nla.layer}"]
    if best_of > 1:
        notes.append(
            f"best of {best_of}: each explanation is the one of {best_of} (greedy + samples) the AR "
            "reconstructs best, so its score is the best of them"
        )
    if nla.ar is None:
        notes.append("no AR given: explanations are not scored")
        return notes
    if nla.baseline is None:
        notes.append(
            "no predict-the-mean baseline known (eval.baseline_mse): fve not reported, only cosine and mse_nrm"
        )
    else:
        notes.append(f"fve_nrm = 1 - mse_nrm / {nla.baseline:.4f} (predict-the-mean baseline)")
    ctrl = [c for r in records if (c := r.control_cosine) is not None]
    s = summary(records)
    if ctrl and s["mean_cosine"] is not None:
        notes.append(
            f"mean cosine {s['mean_cosine']:+.3f} vs {sum(ctrl) / len(ctrl):+.3f} for an EMPTY explanation (control)"
        )
    return notes


def write_outputs(cfg: NLAOptions, nla: Any, records: list[Any], tokens: list[str] | None, title: str) -> None:
    from nla.explain.report import render_table, write_html, write_jsonl

    sys.stdout.write(render_table(records, width=shutil.get_terminal_size((120, 24)).columns))
    from nla.evaluate.rerank import resolve_best_of

    best_of = resolve_best_of(cfg.best_of, has_ar=nla.ar is not None, sampling=cfg.num_samples > 1 or cfg.do_sample)
    notes = notes_for(nla, records, best_of)
    sys.stdout.write("".join(f"# {n}\n" for n in notes))
    if cfg.jsonl:
        write_jsonl(cfg.jsonl, records)
    html = getattr(cfg, "html", None)
    if html:
        write_html(html, records, tokens, title=title, notes=notes)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExplainConfig, args)
    source = read_input(args)  # before loading models: input errors come fast
    check_positions(cfg, source)
    nla = load_nla(cfg)
    records = nla.explain(source, cfg.positions, **cfg.gen_kwargs())
    tokens = nla.encode(source).tokens
    title = (
        f"NLA explanations: {args.file or args.chat or (str(source)[:60] + ('...' if len(str(source)) > 60 else ''))}"
    )
    write_outputs(cfg, nla, records, tokens, title)
    return 0

"""``nla explain``: explain the activations of a text, token by token, with a trained NLA.

    nla explain "The Eiffel Tower is in Paris." --positions last
    nla explain --file essay.txt --positions 50:60 --av runs/nla/av --ar runs/nla/ar --html out.html
    nla explain --chat chat.jsonl --positions assistant --jsonl out.jsonl --num-samples 4
    nla explain --file book.txt --max-tokens 2000 --positions last --best-of 1

``--chat`` reads a JSONL file with one ``{"role": ..., "content": ...}`` message per line (or one line
``{"messages": [...]}``). ``--positions``: text (default: the tokens you typed, not a BOS token or chat
template), all, last, assistant, indices ``3,5,-1``, ranges ``10:20`` (``--positions=-5:`` when the value
starts with a minus). A position past the target's context window is an error: ``--max-tokens N`` keeps
the last N tokens, or explain a window before the limit with ``--positions``.
Without ``--av`` the NLA shipped with the package is used, if there is one.

Everything that can be checked is checked before any model loads: the options, the input, the
positions against the context window, and that every output file can be written. A run estimated to
take over a minute says so first (and how to go faster); generation shows a progress bar with an ETA.
Each token's table row shows its score, the score of an EMPTY explanation (ctrl) and a verdict
(docs/explain.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nla.common.config import add_config_args, config_from_args, option
from nla.common.errors import NLAError
from nla.core.text import DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP

log = logging.getLogger(__name__)


@dataclass
class NLAOptions:
    """Options shared by ``nla explain`` and ``nla explain-vector``."""

    av: str | None = option(None, "AV checkpoint directory (ours or official); default: the NLA shipped with nla.")
    ar: str | None = option(
        None, "AR checkpoint directory for round-trip scores; default: the shipped one with the default AV."
    )
    target: str | None = option(
        None,
        "Target model (explain only; alias --model): an embedded name (smollm2-135m, gemma3-270m), an HF id or a "
        "local directory. Default: the AV sidecar's extraction.base_model; with no --av, the NLA shipped for it.",
        aliases=("--model",),
    )
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
    min_support: int = option(DEFAULT_MIN_SUPPORT, MIN_SUPPORT_HELP)
    top_p: float = option(1.0, "Nucleus sampling threshold.")
    batch_size: int = option(16, "Activations explained per batched generate call.")
    seed: int | None = option(None, "Seed for sampling.")
    baseline: float | None = option(
        None, "Predict-the-mean baseline B for fve (default: the sidecar's eval.baseline_mse)."
    )
    device: str = option("cpu", "Torch device, e.g. cpu or cuda:0.")
    dtype: str = option("float32", "Model dtype.", choices=["float32", "bfloat16", "float16"])
    jsonl: str | None = option(None, "Write one JSON record per explained token/vector to this file.")

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "num_samples", "batch_size", "best_of", "min_support"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.baseline is not None and not (math.isfinite(self.baseline) and self.baseline > 0):
            raise ValueError(f"--baseline must be a positive number, got {self.baseline}")

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
            min_support=self.min_support,
        )


@dataclass
class ExplainConfig(NLAOptions):
    positions: str = option(
        "text",
        "Tokens to explain: text (the tokens you typed), all, last, assistant, indices 3,5,-1, ranges 10:20 "
        "(write --positions=-5: when the value starts with a minus).",
    )
    max_tokens: int | None = option(
        None,
        "Keep only the last N tokens of the input (default: the whole input, which must then fit the "
        "target's context window when a position past it is selected).",
    )
    html: str | None = option(None, "Write a self-contained HTML report to this file.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {self.max_tokens}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="Explain the activations of a text token by token with a trained NLA.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    given = p.add_argument_group("input (required: exactly one)").add_mutually_exclusive_group(required=True)
    given.add_argument("text", nargs="?", default=None, help="The text to explain.")
    given.add_argument("--file", type=Path, default=None, help="Read the text from this file (UTF-8).")
    given.add_argument("--chat", type=Path, default=None, help="A chat as JSONL: one {role, content} message per line.")
    add_config_args(p, ExplainConfig)
    p.set_defaults(func=run)


def read_chat_jsonl(path: Path) -> list[dict[str, str]]:
    """Messages from JSONL: one message object per line, or a single ``{"messages": [...]}`` line.
    Errors name the file's own line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise NLAError(f"cannot read chat file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise NLAError(f"chat file {path} is not UTF-8 text") from e
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise NLAError(f"chat file {path}, line {number}: not valid JSON ({e.msg} at column {e.colno})") from e
    if len(rows) == 1 and isinstance(rows[0][1], dict) and "messages" in rows[0][1]:
        number, messages = rows[0][0], rows[0][1]["messages"]
        rows = [(number, m) for m in messages] if isinstance(messages, list) else [(number, messages)]
    if not rows:
        raise NLAError(f"chat file {path} holds no messages")
    for number, r in rows:
        if not (isinstance(r, dict) and isinstance(r.get("role"), str) and isinstance(r.get("content"), str)):
            raise NLAError(
                f'chat file {path}, line {number}: expected a {{"role": ..., "content": ...}} message with string '
                f"values, got {json.dumps(r, ensure_ascii=False)[:80]}"
            )
    return [{"role": r["role"], "content": r["content"]} for _, r in rows]


def read_input(args: argparse.Namespace) -> str | list[dict[str, str]]:
    given = [x for x in (args.text, args.file, args.chat) if x is not None]
    if len(given) != 1:
        raise NLAError("give exactly one input: a TEXT argument, --file FILE or --chat FILE.jsonl")
    if args.chat is not None:
        return read_chat_jsonl(args.chat)
    if args.file is not None:
        if args.file.is_dir():
            raise NLAError(f"--file {args.file} is a folder, not a text file")
        try:
            return args.file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise NLAError(f"--file {args.file} is not UTF-8 text (byte {e.object[e.start]:#x} at {e.start})") from e
        except OSError as e:
            raise NLAError(f"cannot read --file {args.file}: {e.strerror or e}") from e
    return str(args.text)


def check_outputs(outputs: dict[str, str | None], inputs: list[Path | None] = ()) -> None:
    """Every output file can be written, no two outputs are the same file, and none is an input."""
    from nla.common.paths import check_writable_file

    seen: dict[Path, str] = {}
    for flag, value in outputs.items():
        if value is None:
            continue
        path = check_writable_file(value, flag).resolve()
        if path in seen:
            raise NLAError(f"{seen[path]} and {flag} are the same file ({value}): give them different names")
        for given in inputs:
            if given is not None and given.exists() and given.resolve() == path:
                raise NLAError(f"{flag} {value} would overwrite the input file: give another name")
        seen[path] = flag


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise NLAError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NLAError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise NLAError(f"--device {device}: MPS is not available here (use --device cpu)")


def check_checkpoints(cfg: NLAOptions) -> tuple[str, str | None, dict[str, Any]]:
    """The AV/AR to load (both checked, sidecars read) and the AV sidecar; decoding options that need an AR."""
    from nla.evaluate.rerank import resolve_best_of
    from nla.explain.api import local_checkpoint, resolve_nla_paths

    av, ar = resolve_nla_paths(cfg.av, cfg.ar, cfg.target)
    _, av_meta = local_checkpoint(av)
    if ar is not None:
        local_checkpoint(ar)
    sampling = cfg.num_samples > 1 or cfg.do_sample
    best_of = resolve_best_of(cfg.best_of, has_ar=ar is not None, sampling=sampling)
    if best_of > 1 and ar is None:
        raise NLAError("--best-of needs an AR to choose with: give --ar (or --best-of 1)")
    if best_of > 1 and sampling:
        raise NLAError("--best-of makes its own samples: drop --num-samples / --do-sample (or give --best-of 1)")
    check_device(cfg.device)
    return av, ar, av_meta


def prepare_text(cfg: ExplainConfig, source: str | list[dict[str, str]], av_meta: dict[str, Any]) -> tuple[Any, list]:
    """Tokenise with the target's tokenizer alone and resolve ``--positions`` / ``--max-tokens`` against its
    context window, so bad specs and overlong inputs fail before any model loads."""
    from nla.explain.inputs import encode_input, select_tokens
    from nla.models.target import load_tokenizer, model_context_limit

    name = cfg.target or (av_meta.get("extraction") or {}).get("base_model")
    if not name:
        raise NLAError("the AV sidecar names no extraction.base_model: pass --target")
    tokenizer = load_tokenizer(str(name))
    limit, source_of_limit = model_context_limit(str(name), tokenizer)
    enc = encode_input(tokenizer, source)
    return select_tokens(
        enc, cfg.positions, limit=limit, model=str(name), limit_source=source_of_limit, max_tokens=cfg.max_tokens
    )


def load_nla(cfg: NLAOptions, *, with_target: bool = True) -> Any:
    from nla.explain.api import NLA, resolve_nla_paths

    av, ar = resolve_nla_paths(cfg.av, cfg.ar, cfg.target)
    return NLA.from_pretrained(
        av,
        ar,
        target=cfg.target if with_target else None,
        device=cfg.device,
        dtype=cfg.dtype,
        baseline=cfg.baseline,
        with_target=with_target,
    )


def generate(nla: Any, cfg: NLAOptions, items: int, what: str, call: Callable[[], list[Any]]) -> tuple[list, str]:
    """Run ``call`` (which generates ``items`` x K explanations) under a progress bar; an estimate timed on
    its first batch (:class:`nla.explain.progress.LiveEstimate`) adds, for a run estimated over a minute,
    one line saying how long and how to go faster. Returns the records and a note comparing the estimate
    with the time taken."""
    from tqdm.auto import tqdm

    from nla.evaluate.rerank import resolve_best_of
    from nla.explain.progress import (
        WARN_SECONDS,
        LiveEstimate,
        Plan,
        estimate_line,
        human_seconds,
        progress_bar,
        score_seconds,
    )

    sampling = cfg.num_samples > 1 or cfg.do_sample
    best_of = resolve_best_of(cfg.best_of, has_ar=nla.ar is not None, sampling=sampling)
    k = best_of if best_of > 1 else cfg.num_samples
    plan = Plan(items, k, cfg.batch_size, cfg.max_new_tokens, best_of=best_of > 1)

    def ready(seconds: float) -> None:
        log.debug("calibrated on the first batch %s: %s; estimate %.1f s", plan.batch_shape, est.calibration, seconds)
        if seconds > WARN_SECONDS:
            tqdm.write(f"nla: {estimate_line(plan, seconds, what=what)}", file=sys.stderr)

    est = LiveEstimate(nla.av, plan, score_seconds(nla.ar), on_ready=ready)
    t0 = time.perf_counter()
    with progress_bar(plan.generations, desc=f"explain {items} {what[:-1] if items == 1 else what}", estimate=est):
        records = call()
    took = time.perf_counter() - t0
    batches = f"{plan.generations} explanations in {plan.batches} batch{'' if plan.batches == 1 else 'es'}"
    if est.seconds is None:
        log.debug("generation and scoring took %.1f s; no estimate (the backend's forwards are not visible)", took)
        return records, f"{batches} took {human_seconds(took)}"
    off = 100 * (est.seconds / took - 1)
    log.debug("generation and scoring took %.1f s; estimate %.1f s (%+.0f%%)", took, est.seconds, off)
    note = f"{batches} took {human_seconds(took)} (estimated {human_seconds(est.seconds)})"
    return records, note


def notes_for(nla: Any, records: list[Any], best_of: int = 1, min_support: int = 1) -> list[str]:
    """Lines that say what the scores mean (and what is missing)."""
    from nla.explain.report import legend_lines, summary

    base = nla.target.name if nla.target is not None else nla.av.base_model
    notes = [f"target {base}, layer {nla.layer}"]
    if best_of > 1:
        notes.append(
            f"best of {best_of}: each explanation is the one of {best_of} (greedy + samples) the AR "
            "reconstructs best, so its score is the best of them"
            + (f"; topics and salient words only where {min_support} of them agree" if min_support > 1 else "")
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
    return notes + legend_lines(records)


def write_outputs(
    cfg: NLAOptions,
    nla: Any,
    records: list[Any],
    tokens: list[str] | None,
    title: str,
    *,
    extra_notes: list[str] = (),
    text_mask: list[bool] | None = None,
) -> None:
    from nla.evaluate.rerank import resolve_best_of
    from nla.explain.report import render_table, write_html, write_jsonl

    sys.stdout.write(render_table(records, width=shutil.get_terminal_size((120, 24)).columns))
    best_of = resolve_best_of(cfg.best_of, has_ar=nla.ar is not None, sampling=cfg.num_samples > 1 or cfg.do_sample)
    notes = notes_for(nla, records, best_of, cfg.min_support) + list(extra_notes)
    sys.stdout.write("".join(f"# {n}\n" for n in notes))
    if cfg.jsonl:
        write_jsonl(cfg.jsonl, records)
    html = getattr(cfg, "html", None)
    if html:
        write_html(html, records, tokens, title=title, notes=notes, text_mask=text_mask)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExplainConfig, args)
    source = read_input(args)  # before loading models: every check below is fast
    check_outputs({"--jsonl": cfg.jsonl, "--html": cfg.html}, [args.file, args.chat])
    _, _, av_meta = check_checkpoints(cfg)
    enc, picked = prepare_text(cfg, source, av_meta)
    nla = load_nla(cfg)
    records, timing = generate(
        nla,
        cfg,
        len(picked),
        "positions",
        lambda: nla.explain(source, cfg.positions, max_tokens=cfg.max_tokens, **cfg.gen_kwargs()),
    )
    notes = [timing]
    if enc.dropped:
        notes.append(
            f"--max-tokens {cfg.max_tokens}: explained the last {len(enc.input_ids):,} tokens; the first "
            f"{enc.dropped:,} were cut, so positions count from the cut"
        )
    name = args.file or args.chat or (str(source)[:60] + ("..." if len(str(source)) > 60 else ""))
    write_outputs(
        cfg, nla, records, enc.tokens, f"NLA explanations: {name}", extra_notes=notes, text_mask=enc.text_mask
    )
    return 0

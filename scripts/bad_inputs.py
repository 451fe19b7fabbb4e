"""Every bad input we know of, what ``nla`` answers, and its exit code: writes docs/bad-inputs.md.

    PYTHONPATH=src python scripts/bad_inputs.py                 # run every case, rewrite docs/bad-inputs.md
    PYTHONPATH=src python scripts/bad_inputs.py --out /tmp/b.md

Each case runs the real command line (``nla.cli.main``) in this process on tiny random checkpoints from
tests/helpers.py (a few cases use the real default model, where its limits are the point) and records the
exit code, the error line, the seconds it took, whether any model weights were loaded before the error,
and whether anything was written. tests/cli/test_bad_inputs.py runs the same cases and asserts each row:
exit code 2, one ``error:`` line holding the expected words, no model loaded, nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog."
UNWRITABLE = "/proc/nla-bad-inputs/out"  # /proc refuses new files even to root


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` with ``{NAME}`` placeholders (fixtures), the words the error must hold."""

    what: str
    argv: tuple[str, ...]
    expect: str
    real: bool = False  # uses the real default model (its tokenizer and config only)


def _c(what: str, argv: str | list[str], expect: str, real: bool = False) -> Case:
    return Case(what, tuple(argv.split() if isinstance(argv, str) else argv), expect, real)


EX = ["explain", TEXT, "--av", "{AV}", "--ar", "{AR}"]  # a good explain command on the tiny NLA
EV = ["explain-vector"]
AU = ["audit", "{CHATS}", "--out", "{TMP}/a.db", "--av", "{AV}", "--ar", "{AR}"]  # a good audit on the tiny NLA
CASES: list[Case] = [
    # the input
    _c("no input", ["explain", "--av", "{AV}"], "one of the arguments text --file --chat is required"),
    _c("two inputs", ["explain", TEXT, "--file", "{ESSAY}", "--av", "{AV}"], "not allowed with argument"),
    _c("missing --file", ["explain", "--file", "{TMP}/missing.txt", "--av", "{AV}"], "No such file"),
    _c("--file is a folder", ["explain", "--file", "{TMP}", "--av", "{AV}"], "is a folder"),
    _c("--file not UTF-8", ["explain", "--file", "{LATIN1}", "--av", "{AV}"], "is not UTF-8 text"),
    _c("empty text", ["explain", "   ", "--av", "{AV}"], "is empty"),
    _c("chat: bad JSON on line 3", ["explain", "--chat", "{CHAT_BAD_JSON}", "--av", "{AV}"], "line 3: not valid JSON"),
    _c("chat: no content on line 2", ["explain", "--chat", "{CHAT_NO_CONTENT}", "--av", "{AV}"], "line 2: expected"),
    _c("chat: empty file", ["explain", "--chat", "{CHAT_EMPTY}", "--av", "{AV}"], "holds no messages"),
    # positions and the context window
    _c("position past the end", [*EX, "--positions", "99"], "out of range"),
    _c("empty range", [*EX, "--positions", "5:2"], "selects no tokens"),
    _c("unknown position keyword", [*EX, "--positions", "first"], "bad --positions item"),
    _c("assistant positions of plain text", [*EX, "--positions", "assistant"], "needs a chat input"),
    _c(
        "text longer than the context (tiny: 512)", ["explain", "--file", "{LONG}", "--av", "{AV}"], "reads at most 512"
    ),
    _c(
        "20,000-word file, default NLA (SmolLM2: 8,192)",
        ["explain", "--file", "{LONG}", "--positions", "last"],
        "reads at most 8,192",
        real=True,
    ),
    _c("--max-tokens above the context", [*EX, "--max-tokens", "100000"], "is more than"),
    _c("--max-tokens 0", [*EX, "--max-tokens", "0"], "--max-tokens must be >= 1"),
    # decoding options
    _c("--max-new-tokens 0", [*EX, "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    _c("--max-new-tokens not a number", [*EX, "--max-new-tokens", "ten"], "invalid int value"),
    _c("--best-of 0", [*EX, "--best-of", "0"], "--best-of must be >= 1"),
    _c("--best-of without an AR", ["explain", TEXT, "--av", "{AV}", "--best-of", "2"], "needs an AR"),
    _c("--best-of with --num-samples", [*EX, "--best-of", "2", "--num-samples", "3"], "makes its own samples"),
    _c("--temperature 0", [*EX, "--temperature", "0"], "--temperature must be > 0"),
    _c("--top-p 1.5", [*EX, "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    _c("--baseline -1", [*EX, "--baseline=-1"], "--baseline must be a positive number"),
    _c("unknown --dtype", [*EX, "--dtype", "float64"], "invalid choice"),
    _c("--device that is not one", [*EX, "--device", "potato"], "not a torch device"),
    _c("--device cuda without a GPU", [*EX, "--device", "cuda:0"], "no CUDA GPU"),
    _c("--threads 0", [*EX, "--threads", "0"], "--threads must be >= 1"),
    _c("--config file missing", [*EX, "--config", "{TMP}/nope.yaml"], "config file not found"),
    _c("--config with an unknown key", [*EX, "--config", "{BAD_YAML}"], "unknown --config"),
    # output files (all checked before any model loads)
    _c("--html where nothing can be written", [*EX, "--html", f"{UNWRITABLE}/r.html"], "no new file can be made"),
    _c("--html is a folder", [*EX, "--html", "{TMP}"], "is a folder"),
    _c("--jsonl under a file", [*EX, "--jsonl", "{ESSAY}/x.jsonl"], "is a file, not a folder"),
    _c("--jsonl and --html the same file", [*EX, "--jsonl", "{TMP}/o", "--html", "{TMP}/o"], "same file"),
    _c(
        "--html would overwrite the input", ["explain", "--file", "{ESSAY}", "--html", "{ESSAY}"], "overwrite the input"
    ),
    # checkpoints and models
    _c("--av folder without a sidecar", ["explain", TEXT, "--av", "{TARGET}"], "has no nla_meta.yaml"),
    _c("--av path that does not exist", ["explain", TEXT, "--av", "./no/such/av"], "is not a directory"),
    _c("--av Hub id, offline, not cached", ["explain", TEXT, "--av", "nosuchorg/nosuch-av"], "not in the local HF"),
    _c("--target Hub id, offline", [*EX, "--target", "nosuchorg/nosuch-model"], "Hub is not reachable"),
    _c("info: Hub id, offline", ["info", "--model", "nosuchorg/nosuch-model"], "Hub is not reachable"),
    _c("info: missing local model", ["info", "--model", "./no/such/model"], "unknown model"),
    # vector files
    _c("missing vector file", [*EV, "{TMP}/none.npy", "--av", "{AV}"], "no such vector file"),
    _c("vector file of another type", [*EV, "{ESSAY}", "--av", "{AV}"], "unsupported vector file"),
    _c("pickled .npy", [*EV, "{PICKLED}", "--av", "{AV}"], "plain numeric .npy"),
    _c("vectors of the wrong width", [*EV, "{NARROW}", "--av", "{AV}"], "width 32 but this NLA's d_model is 64"),
    _c("a zero vector", [*EV, "{ZEROS}", "--av", "{AV}"], "all zeros"),
    _c("a NaN vector", [*EV, "{NANS}", "--av", "{AV}"], "NaN"),
    _c("a 3-D array", [*EV, "{CUBE}", "--av", "{AV}"], "1-D (d,) or 2-D (N, d)"),
    _c(".safetensors with two tensors, no --key", [*EV, "{TWO}", "--av", "{AV}"], "choose one with --key"),
    _c(".safetensors without that --key", [*EV, "{TWO}", "--key", "nope", "--av", "{AV}"], "has no tensor 'nope'"),
    _c("--key with a .npy", [*EV, "{GOOD_NPY}", "--key", "W", "--av", "{AV}"], "--key applies to .safetensors"),
    _c(
        "explain-vector --jsonl unwritable", [*EV, "{GOOD_NPY}", "--av", "{AV}", "--jsonl", f"{UNWRITABLE}/v"], "cannot"
    ),
    # nla audit: every option and DATA checked before the DB (or a run row) exists
    _c("audit --sample -1", [*AU, "--sample", "-1"], "--sample must be >= 1"),
    _c("audit --every 0", [*AU, "--every", "0"], "--every must be >= 1"),
    _c("audit --positions with a bad range", [*AU, "--positions", "1:2:3"], "bad --positions range"),
    _c("audit --positions with a bad item", [*AU, "--positions", "first"], "bad --positions item"),
    _c("audit --max-tokens 0", [*AU, "--max-tokens", "0"], "--max-tokens must be >= 1"),
    _c("audit --max-tokens above the context", [*AU, "--max-tokens", "100000"], "is more than"),
    _c("audit --temperature 0", [*AU, "--temperature", "0"], "--temperature must be a positive number"),
    _c("audit --out is a folder", ["audit", "{CHATS}", "--out", "{TMP}", "--av", "{AV}"], "is a directory"),
    _c("audit DATA missing", ["audit", "{TMP}/none.jsonl", "--out", "{TMP}/a.db", "--av", "{AV}"], "corpus not found"),
    _c("audit search without a DB", ["audit", "search", "x", "--db", "{TMP}/none.db"], "no audit database"),
    # nla serve
    _c("serve --port 99999", ["serve", "--port", "99999"], "--port 99999 is not a TCP port"),
    _c("serve --port -1", ["serve", "--port=-1"], "--port -1 is not a TCP port"),
    _c(
        "explain-vector --html unwritable",
        [*EV, "{GOOD_NPY}", "--av", "{AV}", "--html", f"{UNWRITABLE}/v.html"],
        "no new file can be made",
    ),
    # other commands
    _c("extract --out unwritable", ["extract", "--model", "{TARGET}", "--out", UNWRITABLE], "cannot write output"),
    _c("extract --out is a file", ["extract", "--model", "{TARGET}", "--out", "{ESSAY}"], "is a file, not a folder"),
    _c("eval without an AR", ["eval", "--data", "{ESSAY}"], "needs --data and at least one AR"),
    _c("eval --data missing", ["eval", "--data", "{TMP}/none.parquet", "--ar", "{AR}"], "no such file"),
    _c("eval --ar not a checkpoint", ["eval", "--data", "{ESSAY}", "--ar", "{TARGET}"], "not an NLA checkpoint"),
    _c("eval --out unwritable", ["eval", "--data", "{ESSAY}", "--ar", "{AR}", "--out", f"{UNWRITABLE}/c"], "cannot"),
    _c("eval --rows 0", ["eval", "--data", "{ESSAY}", "--ar", "{AR}", "--rows", "0"], "--rows must be >= 1"),
    _c("unknown command", ["explian", TEXT], "invalid choice"),
]


def build_fixtures(root: Path) -> dict[str, str]:
    """Tiny checkpoints and bad files under ``root``; returns the placeholder values."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    from safetensors.numpy import save_file

    from nla.models.ar import ActivationReconstructor
    from nla.models.av import ActivationVerbalizer
    from nla.models.target import load_target

    from helpers import save_tiny_target

    root.mkdir(parents=True, exist_ok=True)
    fx = {"ROOT": str(root), "TMP": str(root / "work")}
    (root / "work").mkdir(exist_ok=True)
    save_tiny_target(root / "target")
    target = load_target(str(root / "target"))
    ActivationVerbalizer.from_target(target, injection_scale=8.0, layer=1).save_pretrained(root / "av")
    ActivationReconstructor.from_target(target, 1).save_pretrained(root / "ar")
    fx.update(TARGET=str(root / "target"), AV=str(root / "av"), AR=str(root / "ar"))
    files = root / "files"
    files.mkdir(exist_ok=True)

    def put(name: str, text: str | bytes) -> str:
        path = files / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return str(path)

    words = "the city of light stands by the river and people walk along its banks every day".split()
    fx["LONG"] = put("long.txt", " ".join(words[i % len(words)] for i in range(20_000)))
    fx["ESSAY"] = put("essay.txt", TEXT)
    fx["LATIN1"] = put("latin1.txt", "café crème".encode("latin-1"))
    fx["CHAT_BAD_JSON"] = put(
        "bad.jsonl", '{"role": "user", "content": "hi"}\n\n{"role": "assistant", "content": "hello"\n'
    )
    fx["CHAT_NO_CONTENT"] = put("nocontent.jsonl", '{"role": "user", "content": "hi"}\n{"role": "assistant"}\n')
    fx["CHAT_EMPTY"] = put("empty.jsonl", "\n\n")
    chat = '{"id": "c0", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    fx["CHATS"] = put("chats.jsonl", chat + "\n")
    fx["BAD_YAML"] = put("bad.yaml", "max_new_tokens: 5\nmax_new_tokenz: 6\n")
    for name, array in {
        "GOOD_NPY": np.ones((2, 64), np.float32),
        "NARROW": np.ones((2, 32), np.float32),
        "ZEROS": np.zeros((2, 64), np.float32),
        "NANS": np.full((1, 64), np.nan, np.float32),
        "CUBE": np.ones((2, 2, 64), np.float32),
        "PICKLED": np.array([{"x": 1}], dtype=object),
    }.items():
        np.save(files / f"{name.lower()}.npy", array, allow_pickle=True)
        fx[name] = str(files / f"{name.lower()}.npy")
    save_file({"W": np.ones((2, 64), np.float32), "b": np.ones(64, np.float32)}, str(files / "two.safetensors"))
    fx["TWO"] = str(files / "two.safetensors")
    return fx


def fill(case: Case, fx: dict[str, str]) -> list[str]:
    return [a.format(**fx) if "{" in a else a for a in case.argv]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@dataclass
class Result:
    code: int
    stderr: str
    seconds: float
    models_loaded: int
    written: list[str]


@contextlib.contextmanager
def count_model_loads() -> Any:
    """Count every model-weights load (``from_pretrained`` of a causal LM) inside the block."""
    from transformers import AutoModelForCausalLM

    calls: list[str] = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls: Any, *args: Any, **kw: Any) -> Any:
        calls.append(str(args[0]) if args else "?")
        return original(cls, *args, **kw)

    AutoModelForCausalLM.from_pretrained = classmethod(counting)
    try:
        yield calls
    finally:
        AutoModelForCausalLM.from_pretrained = classmethod(original)


def run_case(case: Case, fx: dict[str, str], root: Path) -> Result:
    """Run one case through ``nla.cli.main`` in this process."""
    from nla.cli import main

    before = snapshot(root)
    err = io.StringIO()
    t0 = time.perf_counter()
    with count_model_loads() as loads, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(fill(case, fx))
        except SystemExit as e:  # argparse usage errors
            code = int(e.code or 0)
    seconds = time.perf_counter() - t0
    return Result(code, err.getvalue(), seconds, len(loads), sorted(snapshot(root) - before))


def shown(case: Case, fx: dict[str, str]) -> str:
    """The command line as the docs show it: fixture paths by their placeholder names."""
    out = []
    for a in case.argv:
        for name in fx:
            a = a.replace("{" + name + "}", name)
        out.append(f'"{a}"' if " " in a or not a.strip() else a)
    return "nla " + " ".join(out)


def anonymous(text: str, fx: dict[str, str]) -> str:
    """``text`` with the temporary fixture paths replaced by their placeholder names (stable docs)."""
    for name, value in sorted(fx.items(), key=lambda kv: -len(kv[1])):
        if name != "ROOT":
            text = text.replace(value, name)
    return text.replace(fx.get("ROOT", "\0"), "ROOT")


def markdown(rows: list[tuple[Case, Result]], fx: dict[str, str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ").strip()

    lines = [
        "# Bad inputs and what `nla` says",
        "",
        "Generated by `PYTHONPATH=src python scripts/bad_inputs.py` (do not edit by hand); "
        "`tests/cli/test_bad_inputs.py` asserts every row: exit code 2, one `error:` line holding the expected "
        "words, no model weights loaded before the error, nothing written. AV, AR and TARGET are tiny random "
        "checkpoints from `tests/helpers.py` (d_model 64, 512-token context); rows marked *default* use the "
        "shipped NLA and SmolLM2, whose tokenizer and config alone are read. `LONG` is a 20,000-word text; "
        f"`{UNWRITABLE}` is a folder nobody can write (not even root). Seconds include the in-process "
        "command start (imports already loaded) on a shared 2-core machine.",
        "",
        "| # | bad input | command | exit | message | s | models loaded |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (case, res) in enumerate(rows, 1):
        msg = [anonymous(line, fx) for line in res.stderr.strip().splitlines()]
        what = case.what + (" *(default)*" if case.real else "")
        loaded = "no" if res.models_loaded == 0 else f"**{res.models_loaded}**"
        lines.append(
            f"| {i} | {cell(what)} | `{cell(shown(case, fx))}` | {res.code} | "
            f"{cell(' / '.join(msg))} | {res.seconds:.1f} | {loaded} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bad-inputs.md")
    args = ap.parse_args(argv)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fx = build_fixtures(root)
        rows = []
        for case in CASES:
            res = run_case(case, fx, root)
            rows.append((case, res))
            lines = res.stderr.strip().splitlines()
            ok = res.code == 2 and len(lines) == 1 and case.expect in lines[0] and not res.models_loaded
            ok = ok and not res.written
            if not ok:
                failures.append(f"{case.what}: exit {res.code}, {res.stderr.strip()!r}, written {res.written}")
            sys.stderr.write(f"{'ok ' if ok else 'BAD'} {res.code} {res.seconds:5.1f}s  {case.what}\n")
    from nla.common.paths import atomic_write_text

    atomic_write_text(args.out, markdown(rows, fx))
    sys.stderr.write(f"wrote {args.out}: {len(rows)} cases, {len(failures)} not as expected\n")
    sys.stderr.write("".join(f"  {f}\n" for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

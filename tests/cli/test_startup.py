"""Start-up and shutdown of the ``nla`` command: lazy imports (no torch before a command needs it),
the command list read without importing, and a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nla.cli import build_parser, command_table, main


def _imports_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["explain", "--bogus"],
        ["explain", "--file", "/no/such/file.txt"],
        ["serve", "--port", "99999"],
        ["audit", "x.jsonl", "--sample", "-1"],
        ["explain-vector", "/no/such.npy"],
    ],
)
def test_help_bad_options_and_bad_paths_do_not_load_torch(argv: list[str]) -> None:
    code = (
        f"from nla.cli import main\ntry:\n    rc = main({argv!r})\n"
        "except SystemExit as e:\n    rc = e.code\nassert rc in (0, 2), rc"
    )
    mods = _imports_after(code)
    assert mods and "torch" not in mods and "transformers" not in mods, argv


def test_command_list_matches_the_full_parser() -> None:
    full = build_parser()
    light = build_parser(only="")

    def names(p) -> list[str]:
        return sorted(next(a for a in p._actions if a.dest == "command").choices)

    assert names(full) == names(light)
    stages = {k for k in command_table() if k.startswith("train ")}
    assert stages == {"train ar", "train av", "train rl", "train pipeline"}


def test_sigterm_is_one_line_and_a_clean_exit(monkeypatch, capsys) -> None:
    import nla.serve.server

    def serve(cfg) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(nla.serve.server, "serve", serve)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["serve", "--port", "0"]) == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "terminated (SIGTERM)" in err and "again to resume" in err
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back

"""The ``nla`` command line: a thin layer over the library.

Each module ``nla/cli/<name>.py`` adds one top-level command (modules named ``train_<stage>.py`` add
``nla train <stage>``): either by its ``NAME``, ``HELP`` and ``CONFIG`` (the config dataclass whose fields
become flags), an optional ``arguments(parser)`` for flags of its own, and ``run(args)``; or, for
commands with sub-commands, by a ``register(subparsers)`` function. ``main(argv)`` returns the exit code, so
tests call it directly. Library errors (:class:`nla.common.errors.NLAError`), usage errors and file-system
errors become one ``nla: error:`` line and exit code 2 (``-v`` shows the traceback of the latter).

Every command gets ``--threads N`` (torch CPU threads, applied before any model work; default: automatic,
see :mod:`nla.common.threads`). A module may list config fields that must be given in ``REQUIRED``; their
``--help`` says "(required)".
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

from nla.common.config import add_config_args
from nla.common.errors import NLAError

log = logging.getLogger("nla")

THREADS_HELP = (
    "CPU threads for torch (default: automatic: one per core that no other process is busy on; "
    "NLA_THREADS or OMP_NUM_THREADS override it)."
)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit code 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    run: Callable[[argparse.Namespace], int],
    *,
    doc: str | None = None,
    config: type | None = None,
    required: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    """Add one command: ``help`` in the command list, the module ``doc`` as its ``--help`` text, one flag
    per field of the ``config`` dataclass (and ``--config FILE``; the fields in ``required`` say so in
    ``--help``), and ``run`` as what it does."""
    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config is not None:
        add_config_args(p, config)
    for action in p._actions:
        if action.dest in required and action.help:
            action.help = action.help.rsplit(" (default:", 1)[0] + " (required)"
    p.set_defaults(func=run)
    return p


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of every runnable command below ``parser`` (sub-commands of sub-commands included)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    # _name_parser_map, not choices: a command may widen what its choices accept (nla audit DATA)
    return [leaf for a in subs for p in dict.fromkeys(a._name_parser_map.values()) for leaf in leaf_parsers(p)]


def print_json(obj: Any, *, indent: int | None = 2, main_only: bool = False) -> None:
    """Write ``obj`` as JSON on stdout (with ``main_only``: only from the main process of a launch)."""
    if main_only:
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return
    sys.stdout.write(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nla",
        description="Natural Language Autoencoders: explain LLM activations in plain English.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = sub.add_parser("train", help="Train an NLA stage (ar, av, rl, pipeline).")
    train_sub = train_parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        where = train_sub if info.name.startswith("train_") else sub
        if hasattr(module, "register"):  # commands with sub-commands or positional arguments of their own
            module.register(where)
            continue
        p = add_command(
            where,
            module.NAME,
            module.HELP,
            module.run,
            doc=module.__doc__,
            config=module.CONFIG,
            required=tuple(getattr(module, "REQUIRED", ())),
        )
        if hasattr(module, "arguments"):
            module.arguments(p)
    for leaf in leaf_parsers(parser):
        if "--threads" not in leaf._option_string_actions:
            leaf.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """One handler for the Hub's warnings (not two), and no weight-loading bars unless ``-v``."""
    logging.getLogger("huggingface_hub").propagate = False
    if not verbose:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_libraries(args.verbose)
    try:
        from nla.common.threads import set_threads

        set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except NLAError as e:
        sys.stderr.write(f"nla: error: {e}\n")
        return 2
    except OSError as e:  # a file-system problem the checks before the work did not foresee
        if args.verbose:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        sys.stderr.write(f"nla: error: {e.strerror or e}{where}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("nla: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

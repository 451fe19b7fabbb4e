"""The ``nla`` command line: a thin layer over the library.

Each module ``nla/cli/<name>.py`` adds one top-level command (modules named ``train_<stage>.py`` add
``nla train <stage>``): either by its ``NAME``, ``HELP`` and ``CONFIG`` (the config dataclass whose fields
become flags), an optional ``arguments(parser)`` for flags of its own, and ``run(args)``; or, for
commands with sub-commands, by a ``register(subparsers)`` function. ``main(argv)`` returns the exit code, so
tests call it directly. Library errors (:class:`nla.common.errors.NLAError`) become one ``nla: error:`` line
and exit code 2.
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


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    run: Callable[[argparse.Namespace], int],
    *,
    doc: str | None = None,
    config: type | None = None,
) -> argparse.ArgumentParser:
    """Add one command: ``help`` in the command list, the module ``doc`` as its ``--help`` text, one flag
    per field of the ``config`` dataclass (and ``--config FILE``), and ``run`` as what it does."""
    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config is not None:
        add_config_args(p, config)
    p.set_defaults(func=run)
    return p


def print_json(obj: Any, *, indent: int | None = 2, main_only: bool = False) -> None:
    """Write ``obj`` as JSON on stdout (with ``main_only``: only from the main process of a launch)."""
    if main_only:
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return
    sys.stdout.write(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        p = add_command(where, module.NAME, module.HELP, module.run, doc=module.__doc__, config=module.CONFIG)
        if hasattr(module, "arguments"):
            module.arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except NLAError as e:
        sys.stderr.write(f"nla: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("nla: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

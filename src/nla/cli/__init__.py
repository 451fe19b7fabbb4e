"""The ``nla`` command line: a thin layer over the library.

Each module ``nla/cli/<name>.py`` defines ``register(subparsers)`` and adds one top-level command;
modules named ``train_<stage>.py`` add ``nla train <stage>``. ``main(argv)`` returns the exit code, so
tests call it directly. Library errors (:class:`nla.common.errors.NLAError`) become one ``nla: error:`` line
and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from nla.common.errors import NLAError

log = logging.getLogger("nla")


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
        module.register(train_sub if info.name.startswith("train_") else sub)
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

"""The ``nla`` command line: a thin layer over the library.

Each module ``nla/cli/<name>.py`` adds one top-level command (modules named ``train_<stage>.py`` add
``nla train <stage>``): either by its ``NAME``, ``HELP`` and ``CONFIG`` (the config dataclass whose fields
become flags), an optional ``arguments(parser)`` for flags of its own, and ``run(args)``; or, for
commands with sub-commands, by a ``register(subparsers)`` function. ``main(argv)`` returns the exit code, so
tests call it directly. Library errors (:class:`nla.common.errors.NLAError`), usage errors and file-system
errors become one ``nla: error:`` line and exit code 2 (``-v`` shows the traceback of the latter).

Start-up is lazy: ``main`` builds the parser of the one command it is given (importing only that
command's module); the list of commands in ``nla --help`` is read from the modules' ``NAME``/``HELP``
constants (or their ``register`` function's first ``add_parser`` call) without importing them, so
``nla --help``, a bad option or a bad path answer without loading torch. :func:`build_parser` without
``only`` builds every command (what the ``--help`` tests walk).

Every command gets ``--threads N`` (torch CPU threads, applied before any model work; default: automatic,
see :mod:`nla.common.threads`). A module may list config fields that must be given in ``REQUIRED``; their
``--help`` says "(required)".
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import pkgutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
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


TRAIN_HELP = "Train an NLA stage (ar, av, rl, pipeline)."


def _constants(path: Path) -> tuple[str | None, str | None]:
    """(command name, help) of a command module read from its source, without importing it: its ``NAME``
    and ``HELP`` constants, else the first ``add_parser("name", help="...")`` call in ``register``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets[0]
            names = targets.elts if isinstance(targets, ast.Tuple) else [targets]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for t, v in zip(names, values, strict=False):
                if isinstance(t, ast.Name) and isinstance(v, ast.Constant) and isinstance(v.value, str):
                    found[t.id] = v.value
    if "NAME" in found and "HELP" in found:
        return found["NAME"], found["HELP"]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_parser" and node.args:
            name = node.args[0]
            helps = [k.value for k in node.keywords if k.arg == "help"]
            if isinstance(name, ast.Constant) and helps and isinstance(helps[0], ast.Constant):
                return str(name.value), str(helps[0].value)
    return None, None


def command_table() -> dict[str, tuple[str, str, bool]]:
    """Every command: ``{"explain": (module, help, is_train_stage), "train ar": ...}``, from the sources."""
    table = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        name, help = _constants(Path(__file__).parent / f"{info.name}.py")
        if name is None:  # a module this reader does not understand: ask it
            module = importlib.import_module(f"{__name__}.{info.name}")
            name, help = getattr(module, "NAME", info.name), getattr(module, "HELP", "")
        train = info.name.startswith("train_")
        table[f"train {name}" if train else str(name)] = (info.name, str(help), train)
    return table


def _add_module(where: argparse._SubParsersAction, module_name: str) -> None:
    module = importlib.import_module(f"{__name__}.{module_name}")
    if hasattr(module, "register"):  # commands with sub-commands or positional arguments of their own
        module.register(where)
        return
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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``nla`` parser. ``only``: build just that command (``"explain"``, ``"train"``; ``""`` none) and
    list the others by name and help; None builds every command."""
    parser = Parser(
        prog="nla",
        description="Natural Language Autoencoders: explain LLM activations in plain English.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    table = command_table()
    train_sub = None
    for key, (module_name, help, train) in table.items():
        name = key.removeprefix("train ")
        if train:
            if train_sub is None:
                train_parser = sub.add_parser("train", help=TRAIN_HELP)
                train_sub = train_parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
            if only is None or only == "train":
                _add_module(train_sub, module_name)
            else:
                train_sub.add_parser(name, help=help)
        elif only is None or only == name:
            _add_module(sub, module_name)
        else:
            sub.add_parser(name, help=help)  # listed, not built: its module is not imported
    for leaf in leaf_parsers(parser):
        if "--threads" not in leaf._option_string_actions:
            leaf.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    return parser


def _command_word(argv: list[str]) -> str:
    """The command ``argv`` names (the first word that is not an option), or "" when there is none."""
    return next((a for a in argv if not a.startswith("-")), "")


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so a job unwinds (files closed, transactions rolled back)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def quiet_libraries(verbose: bool) -> None:
    """One handler for the Hub's warnings (not two), and no weight-loading bars unless ``-v``."""
    logging.getLogger("huggingface_hub").propagate = False
    if verbose:
        return
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:  # read by transformers when it loads (importing it here would cost seconds on every command)
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_word(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_libraries(args.verbose)
    previous = _install_sigterm()
    try:
        apply_threads(getattr(args, "threads", None))
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
    except Terminated:
        sys.stderr.write("nla: terminated (SIGTERM); finished work is kept: run the same command again to resume\n")
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def apply_threads(requested: int | None) -> int:
    """The torch thread count (:mod:`nla.common.threads`): set now when torch is loaded; otherwise handed to
    torch through ``OMP_NUM_THREADS`` when it loads, so a command that fails before any model work never
    pays for importing torch."""
    import os

    from nla.common.threads import resolve_threads, set_threads

    if "torch" in sys.modules:
        return set_threads(requested)
    n = resolve_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def _install_sigterm() -> Any:
    """SIGTERM -> :class:`Terminated` in the main thread (elsewhere signals cannot be caught); the old handler."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        return None


if __name__ == "__main__":
    raise SystemExit(main())

"""The `probe` command: a thin layer over the Python API.

Each subcommand lives in its own module here with ``register(subparsers)``; it
parses flags, calls the API, and prints.  User errors (:class:`ProbeError`) become
one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""
import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import ProbeError

SUBCOMMANDS = ["models", "extract", "info", "fit", "compare", "cka", "similarity", "correspond", "train",
               "demo"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        raise ProbeError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="probe", description="Probe what diffusion models know about images.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    from ..version import __version__

    parser.add_argument("--version", action="version", version=f"probe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:  # every one ships: a missing module is a broken install
        importlib.import_module(f"probe.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.command_line = shlex.join(["probe", *argv])  # recorded with what it makes
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 2
        from ..device import set_threads

        set_threads(getattr(args, "threads", None))  # before anything imports torch
        return args.func(args) or 0
    except ProbeError as e:
        if debug:
            raise
        print(f"probe: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`probe info f.h5 | head`): not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:
        # files the user named that cannot be read or written: their problem to fix, not a bug
        if debug:
            raise
        print(f"probe: error: {e} (check the path and its permissions; --debug shows the traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        return 130

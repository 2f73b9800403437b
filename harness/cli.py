"""Command line: parse, call one command's `main` (harness/commands/: each module owns its arguments and output).

Each command's module is imported when that command runs, so `harness --help` loads no torch, Ray or pandas.

Exit codes: 0 ok, 1 a failed run, 2 bad input (spec, data, model), 130 stopped by SIGINT (Ctrl-C), 143 stopped by
SIGTERM (harness.core.signals).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness.commands import COMMANDS
from harness.core.console import configure_console
from harness.core.errors import HarnessError
from harness.core.ray_env import stop_ray
from harness.core.signals import cleaning_up, describe, exit_code, sigterm_raises


def _command_in(argv: Sequence[str]) -> str | None:
    """The command named in `argv` (its first word that is not an option), None when none is."""
    return next((a for a in argv if not a.startswith("-")), None)


def _verbose_parser() -> argparse.ArgumentParser:
    """`--verbose`, a parent of the parser and of every command's (before or after the command: `harness
    --verbose run x.yaml`, `harness run x.yaml -v`)."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show library warnings, progress bars and Ray Tune tables (hidden by default)")
    return verbose


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `harness` argument parser; the arguments of the command named in `argv` are added by its module."""
    verbose = _verbose_parser()
    parser = argparse.ArgumentParser(prog="harness", description="Bounded parameter-efficient unlearning harness",
                                     parents=[verbose])
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = _command_in(argv)
    for name, (module, text) in COMMANDS.items():
        command = sub.add_parser(name, help=text, parents=[verbose])
        if name == chosen:
            importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    with sigterm_raises():
        try:
            # The console mode first: the command's module imports libraries (torch, Ray) whose noise it hides; and
            # inside the handlers, so Ctrl-C during those imports exits as anywhere else.
            configure_console(getattr(_verbose_parser().parse_known_args(argv)[0], "verbose", False))
            args = build_parser(argv).parse_args(argv)
            configure_console(getattr(args, "verbose", False))
            return importlib.import_module(COMMANDS[args.command][0]).main(args)
        except HarnessError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (harness.core.signals.Interrupted)
            if "ray" in sys.modules:  # Ray workers and actors of a command not inside a job (tune, between jobs)
                with cleaning_up():
                    stop_ray()
            print(f"interrupted ({describe(err)}): harness {command} stopped", file=sys.stderr, flush=True)
            return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())

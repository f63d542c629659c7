"""Command line: `python -m engine {data,profile,train-base,run,results,sweep,jobs,worker,best} ...`. Every long
step shows progress; a user mistake prints one line and exits with status 2.

One module per group of commands, each with `add_parser(subparsers)` and `COMMANDS` (each command's `run(args) ->
int`); `main(argv)` parses, dispatches and turns a UserError into one line on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from engine.cli import best, deploy, measure, noisy, prepare, queue, search
from engine.errors import UserError

# In the order `--help` lists the commands.
GROUPS: tuple[ModuleType, ...] = (prepare, measure, queue, search, best, noisy, deploy)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose refusal of a command line is one line, naming `--help` instead of printing the
    usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The command line's parser, with the options every command shares.

    Returns:
        The parser and, for each command, the module that runs it.
    """
    parser = _Parser(prog="python -m engine", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    group_of: dict[str, ModuleType] = {}
    for group in GROUPS:
        known = set(sub.choices)
        group.add_parser(sub)
        group_of.update((name, group) for name in sub.choices if name not in known)
    return parser, group_of


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command.

    Args:
        argv: the arguments after `python -m engine` (default: sys.argv[1:]).

    Returns:
        The exit status: 0, 1 when a sweep's job failed, 2 for a user mistake, 130 when interrupted, 141 when the
        reader of stdout went away.
    """
    parser, group_of = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        from engine.queue import interrupt_on_terminate

        interrupt_on_terminate()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        status = group_of[args.command].COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
        return status
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`results | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when stdout is flushed
        return 141

"""The ``observer`` command line: one subcommand per module, loaded only when it is run."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from observer._extras import MissingDependency, check_command

# Each package exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
# Packages are imported lazily so that ``observer --help`` needs no optional dependency.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("observer.demo", "run an instrumented app under load, with leaks to find"),
    "doctor": ("observer.doctor", "check pool settings against the PostgreSQL server"),
    "sidecar": ("observer.sidecar", "serve /metrics for a multi-worker app, plus the server view"),
    "render": ("observer.monitoring", "render alert rules and dashboards"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        found[name] = (module, help_text)
    return found


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (the usage goes to --help), exit code 2."""

    def error(self, message: str) -> NoReturn:
        # "argument --port: --port must be ..." says the option twice: once is enough.
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)
        flag = re.fullmatch(r"argument (--\S+): expected one argument", message)
        if flag:  # "--range -5m": argparse took the value for an option
            message += f" (a value that starts with '-' goes after '=': {flag[1]}=VALUE)"
        if "unrecognized arguments" in message or "invalid choice" in message:
            message += f" (see: {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``observer`` parser, one subparser per available command (they are Parsers too)."""
    parser = Parser(
        prog="observer", description="pool-observer: see your SQLAlchemy pools and sessions."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in _available().items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``observer`` with ``argv``; the exit code (2: a usage error, said in one line)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exited:  # --help (0) or a usage error (2), already printed
        return int(exited.code or 0)
    try:
        check_command(args.command, args)
    except MissingDependency as exc:
        print(f"observer {args.command}: {exc}", file=sys.stderr)
        return 2
    code: int = args._module.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The argument parser every `tbg` subcommand uses: defaults shown in `--help`, and a user error is
one line naming what to fix (with a "did you mean" for a mistyped flag) and exit status 2.

argparse's own error() prints the whole usage block before the message; a newcomer reads the
first line, so we print only the message and point at `--help`.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, NoReturn, get_args, get_origin

if TYPE_CHECKING:
    from proxy.sources import Knob


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, except where there is no default to show
    (None, False for a flag) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
            or action.default == []
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with defaults in `--help` and one-line errors."""

    def __init__(self, prog: str, description: str | None = None) -> None:
        super().__init__(prog=prog, description=description, formatter_class=DefaultsFormatter)

    def fail(self, message: str) -> NoReturn:
        """A user error: `<prog>: <message>` on stderr, exit 2."""
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            words = message.split(":", 1)[1].split()
            flag = next((w.split("=", 1)[0] for w in words if w.startswith("-")), None)
            known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            close = difflib.get_close_matches(flag, known, n=1) if flag else []
            if close:
                message += f" (did you mean {close[0]}?)"
        self.fail(f"{message}; see `{self.prog} --help`")


def add_field_flags(group: argparse._ActionsContainer, knobs: Iterable[Knob]) -> None:
    """One option per config field that has a `Flag` marker: its help is the field's
    description, default and variable; its value stays a string (None: not given) for the schema
    to validate like the file's."""
    from proxy.sources import flag_help

    for knob in knobs:
        if knob.flag is None:
            continue
        choices = (
            get_args(knob.info.annotation) if get_origin(knob.info.annotation) is Literal else ()
        )
        metavar = knob.flag.metavar or ("{" + ",".join(choices) + "}" if choices else None)
        group.add_argument(knob.flag.name, dest=knob.dest, metavar=metavar, help=flag_help(knob))

"""Command-line conventions shared by shm-publisher, shm-read and shm-exporter.

Every tool answers a bad argument with one line on stderr and exit code 2, and
validates ``--name`` the same way.
"""

from __future__ import annotations

import argparse
import os

from shm_metrics import shm_layout as L

EXIT_USAGE = 2

ENVIRONMENT_HELP = f"""
environment:
  {L.NAME_ENV}             the segment name when --name is not given
  SHM_METRICS_PUBLISHER_USER   the user trusted besides root and you when
                               --publisher-user is not given
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def paragraph(text: str) -> str:
    """A help description wrapped for an 80-column terminal (the raw formatter keeps the epilog's tables)."""
    import textwrap

    return textwrap.fill(text, 79)


def description_from(doc: str) -> str:
    """A module docstring's first paragraph as a --help description: reStructuredText's ``literal``
    markup taken out, wrapped for 80 columns."""
    return paragraph(" ".join(doc.split("\n\n")[0].replace("``", "").split()))


def segment_name(text: str) -> str:
    """argparse type for ``--name``: the canonical '/name' or a usage error."""
    try:
        return L.validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_seconds(text: str) -> float:
    """argparse type for durations (``--max-age``, ``--since``): a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def resolve_segment_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--name``, or SHM_METRICS_NAME, or the default; a bad environment value is a usage error that
    names the variable (the user never typed ``--name``)."""
    if args.name is None:
        try:
            args.name = L.env_segment_name()
        except ValueError as exc:
            parser.error(str(exc))


def resolve_reader_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--name`` and ``--publisher-user`` with their environment defaults, checked here once.

    A bad value is a usage error naming what the user actually set: the option,
    or the environment variable when the option was not given.
    """
    from shm_metrics.readers.reader import PUBLISHER_USER_ENV, resolve_user

    resolve_segment_name(parser, args)
    given = args.publisher_user
    spec, source = (given, "--publisher-user") if given is not None else (os.environ.get(PUBLISHER_USER_ENV),
                                                                          PUBLISHER_USER_ENV)
    if spec:
        try:
            resolve_user(spec, source)
        except ValueError as exc:
            parser.error(str(exc))

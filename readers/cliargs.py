"""Command-line conventions shared by shm-publisher, shm-read and shm-exporter.

Every tool answers a bad argument with one line on stderr and exit code 2, and
validates ``--name`` the same way.
"""

from __future__ import annotations

import argparse
import logging
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


# ---------------------------------------------------------------- logging, as node_exporter logs
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
_LEVEL_NUMBERS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """node_exporter's ``--log.level`` and ``--log.format`` (promlog's flags); ``--log-level`` stays an alias,
    and ``warning`` is taken for ``warn``."""
    parser.add_argument("--log.level", "--log-level", dest="log_level", default="info", metavar="LEVEL",
                        choices=[*LOG_LEVELS, "warning"],
                        help="only log messages with this severity or above: debug, info, warn, error "
                             "(default: %(default)s)")
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=LOG_FORMATS,
                        help="output format of log messages: logfmt or json, as node_exporter writes them "
                             "(default: %(default)s)")


def setup_logging(args: argparse.Namespace, stream: object = None) -> None:
    """Log to stderr (or ``stream``) as ``args`` say: node_exporter's lines, e.g.
    ``ts=2026-01-02T03:04:05.678Z caller=cli.py:140 level=info msg="listening on ..."``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter() if args.log_format == "logfmt" else JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVEL_NUMBERS[args.log_level])


def _log_fields(record: logging.LogRecord) -> list[tuple[str, str]]:
    """go-kit's keys in promlog's order: ts (UTC, milliseconds), caller (file:line), level, msg; err when the
    record carries an exception."""
    import os.path
    import time

    # time, not datetime: a long-running publisher would keep datetime's ~0.4 MiB for this one line.
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(record.created)) + f"{int(record.created % 1 * 1000):03d}Z"
    level = "warn" if record.levelno == 30 else "debug" if record.levelno < 20 else (
        "info" if record.levelno < 30 else "error")
    fields = [("ts", ts),
              ("caller", f"{os.path.basename(record.pathname)}:{record.lineno}"), ("level", level),
              ("msg", record.getMessage())]
    if record.exc_info:
        import traceback

        fields.append(("err", "".join(traceback.format_exception(*record.exc_info)).rstrip()))
    return fields


def logfmt_value(value: str) -> str:
    """A value as go-logfmt writes it: bare unless it holds a space, ``=``, ``"`` or a control character; in
    quotes with Go's escapes (``\\"``, ``\\\\``, ``\\n``, ``\\u001b``) otherwise."""
    if not any(c <= " " or c in '="' for c in value):
        return value
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif c < " ":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class LogfmtFormatter(logging.Formatter):
    """node_exporter's default log lines (go-kit's logfmt)."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in _log_fields(record))


class JsonFormatter(logging.Formatter):
    """node_exporter's ``--log.format=json``: one object per line, keys sorted (Go's map encoding), no HTML
    escaping (go-kit turns it off)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        text = json.dumps(dict(sorted(_log_fields(record))), ensure_ascii=False, separators=(",", ":"))
        return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")

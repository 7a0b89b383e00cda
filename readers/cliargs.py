"""Command-line conventions shared by shm-publisher, shm-read and shm-exporter.

Every tool answers a bad argument with one line on stderr and exit code 2, and
validates ``--name`` the same way.
"""

from __future__ import annotations

import argparse

from shm_metrics import shm_layout as L

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def segment_name(text: str) -> str:
    """argparse type for ``--name``: the canonical '/name' or a usage error."""
    try:
        return L.validate_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

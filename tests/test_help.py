"""--help of the three programs: clean text (no docstring markup), every default stated, 80 columns."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from shm_metrics.publisher.cli import build_parser as publisher_parser
from shm_metrics.readers.cli import build_parser as reader_parser
from shm_metrics.readers.exporter.cli import build_parser as exporter_parser
from shm_metrics.readers.top import build_parser as top_parser

PROGRAMS = {"shm-publisher": (["-m", "shm_metrics.publisher"], publisher_parser),
            "shm-read": (["-m", "shm_metrics.readers"], reader_parser),
            "shm-read top": (["-m", "shm_metrics.readers", "top"], top_parser),
            "shm-exporter": (["-m", "shm_metrics.readers.exporter"], exporter_parser)}


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_is_clean_and_states_every_default(program):
    argv, build = PROGRAMS[program]
    out = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=30,
                         env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "``" not in text and text.startswith("usage: ")
    assert max(map(len, text.splitlines())) <= 100, max(text.splitlines(), key=len)
    for action in build()._actions:
        flag = action.nargs == 0  # --once, --keep-on-exit...: nothing to default
        if not flag and action.default not in (None, argparse.SUPPRESS):
            assert action.help and "default" in action.help, f"{program} {action.option_strings}: no default shown"

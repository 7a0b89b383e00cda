"""End to end in one breath: a real publisher, a real segment, shm-read's bare value."""

import os

from conftest import run_reader


def test_once_prints_bare_process_count(name, start_publisher):
    start_publisher(name, "--interval", "0.2")
    out = run_reader("--name", name, "--once", "procs_total")
    assert out.returncode == 0, out.stderr
    count = int(out.stdout.strip())
    real = sum(1 for e in os.listdir("/proc") if e.isdigit())
    assert abs(count - real) <= 10

"""``make run`` as a user runs it: in a terminal session of its own, ended by ``q`` or by Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import shm_files

ROOT = Path(__file__).resolve().parent.parent


def _read_until(fd: int, output: bytearray, needle: bytes, timeout: float = 30.0) -> bool:
    """Read the terminal into ``output`` until ``needle`` shows or the session ends; True if it showed."""
    deadline = time.monotonic() + timeout
    while needle not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every process of the session has closed the terminal
                return needle in output
            if not chunk:
                break
            output += chunk
    return needle in output


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_make_run_ends_quietly_and_leaves_nothing(key):
    make = shutil.which("make") or pytest.skip("make is not installed")
    segment = f"/shmtest-makerun-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    venv = Path(sys.prefix)
    if not (venv / "bin" / "shm-publisher").exists() or not (venv / "bin" / "shm-read").exists():
        pytest.skip(f"no console scripts in {venv}/bin (make run uses them)")
    pid, fd = pty.fork()  # a new session whose controlling terminal is the pty: Ctrl-C is the real thing
    if pid == 0:
        # -o: the test's environment is installed already; never reinstall it from here.
        os.execv(make, [make, "-s", "-C", str(ROOT), "-o", f"{venv}/.installed", "run", f"VENV={venv}",
                        f"NAME={segment}", "INTERVAL=0.2"])
    output = bytearray()
    try:
        assert _read_until(fd, output, b"q quit"), output[-2000:]
        os.write(fd, key)
        _read_until(fd, output, b"\0never\0")
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    text = output.decode(errors="replace")
    assert "Error" not in text and "***" not in text, text[-1000:]
    if key == b"q":
        assert os.waitstatus_to_exitcode(status) == 0
    assert not shm_files(segment), "the publisher left its segment"

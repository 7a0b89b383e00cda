"""Shared fixtures: unique segment names, real publishers stopped by PID, no leftovers."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shm_metrics import shm_layout as L

BIN = Path(sys.executable).parent
PUBLISHER = [sys.executable, "-m", "shm_metrics.publisher"]
READER = [sys.executable, "-m", "shm_metrics.readers"]


def shm_files(name: str) -> list[str]:
    """What a publisher under ``name`` may create: the segment, its semaphore, its demand socket and (while it
    grows) the next generation under a temporary name."""
    base = L.validate_name(name)[1:]
    paths = (f"/dev/shm/{base}", f"/dev/shm/sem.{base}.lock", f"/dev/shm/{base}.want",
             *glob.glob(f"/dev/shm/{glob.escape(base)}.gen-*"))
    return [p for p in paths if os.path.lexists(p)]


@pytest.fixture
def name(request) -> str:
    """A segment name unique to this test; its files must be gone afterwards."""
    value = f"/shmtest-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield value
    leftovers = shm_files(value)
    for path in leftovers:  # clean up, then fail: a test must not leave files
        try:
            os.chmod(path, 0o600, follow_symlinks=False) if not os.path.islink(path) else None
            os.unlink(path)
        except OSError:
            pass
    assert not leftovers, f"test left files in /dev/shm: {leftovers}"


def wait_for(predicate, timeout: float = 10.0, what: str = "condition", poll: float = 0.01):
    """predicate()'s first truthy value; AssertionError (with the last value) after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what} (last: {value!r})")


def segment_header(name: str) -> dict | None:
    """The header under ``name`` as a dict, or None if absent or not (yet) ours."""
    try:
        with open(L.segment_path(name), "rb") as f:
            head = f.read(L.MIN_HEADER_BYTES)
    except FileNotFoundError:
        return None
    if len(head) < L.MIN_HEADER_BYTES or head[:8] != L.MAGIC:
        return None
    return dict(zip(L.HEADER.names, L.HEADER.struct.unpack_from(head)))


def segment_state(name: str) -> int | None:
    hdr = segment_header(name)
    return None if hdr is None else hdr["state"]


class Publisher:
    """A real shm-publisher process, stopped by its own PID."""

    def __init__(self, name: str, *args: str, wait: bool = True, env: dict | None = None):
        self.name = name
        self.proc = subprocess.Popen([*PUBLISHER, "--name", name, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        if wait:  # until *this* publisher runs (a stale segment may still say "running")
            wait_for(lambda: self.proc.poll() is not None or (segment_header(name) or {}).get("state") ==
                     L.STATE_RUNNING and segment_header(name)["publisher_pid"] == self.proc.pid,
                     what=f"publisher on {name} to run")
            if self.proc.poll() is not None:
                raise AssertionError(f"publisher exited {self.proc.returncode}: {self.proc.stderr.read()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()

    def stderr(self) -> str:
        return self.proc.stderr.read()


@pytest.fixture
def start_publisher(name):
    """start_publisher(name, *args) -> Publisher; every one is stopped (by PID) at teardown.

    Depends on ``name`` so that publishers stop before the leftover check runs.
    """
    started: list[Publisher] = []

    def start(name: str, *args: str, **kw) -> Publisher:
        pub = Publisher(name, *args, **kw)
        started.append(pub)
        return pub

    yield start
    for pub in started:
        if pub.proc.poll() is None:
            pub.stop()
        else:
            for stream in (pub.proc.stdout, pub.proc.stderr):
                if not stream.closed:
                    stream.close()


def run_reader(*args: str, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*READER, *args], capture_output=True, text=True, timeout=timeout, **kw)


class PtyProcess:
    """A process whose stdout and stderr are a terminal (for the live views and charts).

    Output is collected with ``read_until``; ``stop`` sends a signal to its PID
    and returns the exit code.
    """

    def __init__(self, argv: list[str], env: dict | None = None, columns: int = 120, rows: int = 40):
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = dict(os.environ if env is None else env, TERM="xterm-256color", COLUMNS=str(columns),
                   LINES=str(rows))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 15.0, count: int = 1) -> bytes:
        """Output so far, once ``needle`` occurs ``count`` times in it."""
        import select

        deadline = time.monotonic() + timeout
        while self.output.count(needle) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                self.output += chunk
        assert self.output.count(needle) >= count, f"{needle!r} not {count}x in output: {self.output[-2000:]!r}"
        return self.output

    def wait(self, timeout: float = 15.0) -> int:
        """Read everything until the process exits; its exit code."""
        try:
            self.read_until(b"\0never\0", timeout=timeout)
        except AssertionError:
            pass  # the output ended (EIO) or the time ran out: the exit code tells which
        return self.stop(signal.SIGKILL, timeout=1.0)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            return self.proc.wait(timeout)
        finally:
            os.close(self.master)


def seq_in_file(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(L.HEADER_SEQ_OFFSET)
        return int.from_bytes(f.read(8), "little")


@pytest.fixture(scope="module")
def real_segment_bytes() -> bytes:
    """The bytes of a real, consistent segment (taken from a short-lived publisher)."""
    src = f"/shmtest-src-{os.getpid()}-{time.monotonic_ns()}"
    pub = Publisher(src, "--interval", "0.1")
    try:
        path = L.segment_path(src)
        wait_for(lambda: seq_in_file(path) >= 4, what="two samples")
        for _ in range(100):
            s1 = seq_in_file(path)
            data = Path(path).read_bytes()
            if s1 % 2 == 0 and seq_in_file(path) == s1 and int.from_bytes(
                    data[L.HEADER_SEQ_OFFSET:L.HEADER_SEQ_OFFSET + 8], "little") == s1:
                break
        else:
            raise AssertionError("no consistent copy of the segment")
    finally:
        assert pub.stop() == 0
    assert not shm_files(src), "publisher left files behind"
    return data


@pytest.fixture
def make_segment_file(name):
    """make_segment_file(data, mode, live) writes a file under the test's own name; removed at the end.

    ``live``: the test process holds the file's liveness lock, standing in for a live publisher (the
    way readers tell a publisher that died without saying so from one that runs).
    """
    path = L.segment_path(name)
    held = []

    def make(data: bytes, mode: int = 0o644, live: bool = True) -> str:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            if live:
                L.hold_liveness_lock(fd)
                held.append(fd)
        finally:
            if not live:
                os.close(fd)
        return path

    yield make
    for fd in held:
        os.close(fd)
    if os.path.lexists(path):
        os.unlink(path)


@pytest.fixture
def exporters():
    """start(name, *args) -> Exporter; each is stopped by its PID at teardown."""
    from exporter_util import Exporter

    started: list[Exporter] = []

    def start(name: str, *args: str, **kw) -> Exporter:
        exp = Exporter(name, *args, **kw)
        started.append(exp)
        return exp

    yield start
    for exp in started:
        exp.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    """node_exporter's end-to-end test, per collector (tests/test_node_e2e.py), at the end of the run."""
    node_e2e = sys.modules.get("node_e2e")
    result = getattr(node_e2e, "LAST_TABLE", None)
    if result:
        path, table = result
        terminalreporter.write_sep("=", f"node_exporter 1.5.0 end-to-end, per collector (also in {path})")
        terminalreporter.write(table)

"""What every question needs: timing, tables, /proc readings, and a Lab that owns what the benchmark starts.

Measuring on a shared 2-core machine:

* Variants are timed in alternating rounds (A B C, B C A, C A B, ...): slow
  phases of the machine hit every variant alike instead of whichever ran then.
* A row's figure is the median over rounds; a ratio against a peer is the
  median of the per-round ratios (a round's A and B ran seconds apart, so
  their ratio cancels the machine's drift better than a ratio of medians).
* Nothing is compared across runs: every ratio is against a peer measured in
  the same run, in the same rounds.

Everything the benchmark starts is a child of this process and is stopped by
its own PID (Popen.send_signal, os.kill(pid), waitpid(pid)); every segment and
message queue has a unique name and is removed; ``Lab.close`` checks.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shm_metrics import shm_layout as L

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv `make bench` runs in: its console scripts are what users run
# What shm-publisher covers since issue 11: node_exporter's default collectors, plus processes (--top).
NODE_COLLECTORS = ("defaults", "processes")
NAME_PREFIX = "shmbench-"


# ---------------------------------------------------------------- settings
@dataclass
class Config:
    """How long to measure.  --quick only proves that every question still runs (a few seconds in all)."""

    quick: bool = False

    def pick(self, full, quick):
        return quick if self.quick else full


# ---------------------------------------------------------------- statistics
def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


def paired_ratio(rows: list[float], peers: list[float]) -> float:
    """Median of per-round ratios row/peer (the rounds were measured side by side)."""
    return median(a / b for a, b in zip(rows, peers) if b > 0)


def per_call(fn: Callable[[], object], n: int) -> float:
    """Seconds per call of ``fn`` over a batch of ``n`` calls (loop overhead included, alike for every row)."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def calibrate(fn: Callable[[], object], seconds: float) -> int:
    """A batch size that makes one batch of ``fn`` last about ``seconds`` (timeit's autorange, roughly)."""
    n = 1
    while True:
        took = per_call(fn, n) * n
        if took >= seconds / 4 or n >= 1 << 22:
            return max(1, int(n * seconds / max(took, 1e-9)))
        n *= 4


def alternate(batches: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each batch once per round, rotating the order every round; per-round results by name."""
    names = list(batches)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(batches[name]())
    return out


# ---------------------------------------------------------------- formatting
def us(seconds: float) -> str:
    v = seconds * 1e6
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:,.0f}".replace(",", " ")


def ms(seconds: float) -> str:
    v = seconds * 1e3
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def x(ratio: float) -> str:
    if ratio >= 100:
        return f"{ratio:,.0f}x".replace(",", " ")
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x" if ratio >= 1 else f"{ratio:.3f}x"


@dataclass
class Target:
    text: str  # what is promised, with the measured value: "read() 1.21x bare (<= 1.5x)"
    met: bool | None  # None: not measured (e.g. node_exporter missing)


@dataclass
class Table:
    number: int
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c).replace("|", "\\|") for c in cells])  # a pipe in a cell would split it

    def target(self, text: str, met: bool | None) -> None:
        self.targets.append(Target(text, met))

    def render(self) -> str:
        lines = [f"## Q{self.number}. {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines.append("")
        lines += [f"{note}  " for note in self.notes]
        if self.notes:
            lines.append("")
        met = [t.text for t in self.targets if t.met]
        missed = [t.text for t in self.targets if t.met is False]
        unmeasured = [t.text for t in self.targets if t.met is None]
        verdict = (f"**Targets (Q{self.number})**: met: {'; '.join(met) or 'none'} — "
                   f"NOT met: {'; '.join(missed) or 'none'}")
        if unmeasured:
            verdict += f" — not measured: {'; '.join(unmeasured)}"
        lines.append(verdict)
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- /proc
TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process from /proc/PID/stat (exited threads included; 10 ms ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, in nanosecond resolution.

    /proc/PID/stat counts in 10 ms ticks: a 1 Hz publisher uses about one tick
    in a 10 s window, so its CPU % would be noise.  The scheduler's own run
    time per thread (/proc/PID/task/TID/schedstat, first field, ns) is the
    same accounting without the rounding; summing the live threads misses only
    threads that exited inside the window, so windows are read while the
    connections (and their threads) are still open.  Falls back to stat.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread exited meanwhile
    except OSError:
        return stat_cpu_seconds(pid)
    return total / 1e9 if total else stat_cpu_seconds(pid)


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def status_kib(pid: int, key: str) -> float:
    """A kB line of /proc/PID/status (VmRSS, RssAnon, RssShmem...); NaN if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return float("nan")


# ---------------------------------------------------------------- HTTP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int) -> http.client.HTTPConnection:
    """The one client every scrape uses: http.client, keep-alive (no gzip unless ``get`` asks for it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


# What Prometheus (2.x, its scrape defaults) sends with every scrape: it asks for gzip, and both servers then
# compress (node_exporter's promhttp at gzip's default level, shm-exporter at level 1).
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.45.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


def get(conn: http.client.HTTPConnection, path: str = "/metrics", headers: dict[str, str] | None = None) -> bytes:
    """The body of a GET (``headers``: e.g. PROMETHEUS_HEADERS), decompressed when the server sent it gzipped."""
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {resp.status}")
    return gzip.decompress(body) if resp.getheader("Content-Encoding") == "gzip" else body


def wait_http(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering on port {port}")
        try:
            conn = connect(port)
            try:
                get(conn)
                return
            finally:
                conn.close()
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.05)
    raise RuntimeError(f"{what}: nothing answers on 127.0.0.1:{port}")


# ---------------------------------------------------------------- processes and segments
@dataclass
class Launched:
    proc: subprocess.Popen
    label: str
    log: Path
    name: str | None = None  # its segment, for publishers and exporters
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Lab:
    """Owns the processes, segments and queues of one benchmark run; ``close()`` stops and removes them all."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix=NAME_PREFIX))
        self.launched: list[Launched] = []
        self.forked: set[int] = set()
        self.segments: list[str] = []
        self.queues: list[str] = []
        self.pids: list[int] = []  # every process started, for the final check (and tests/test_bench.py)
        self._n = 0

    # --- names
    def segment_name(self, what: str) -> str:
        """A unique segment name (``/shmbench-<pid>-<random>-<what>-<n>``), recorded for the final check."""
        self._n += 1
        name = f"/{NAME_PREFIX}{self.tag}-{what}-{self._n}"
        self.segments.append(name)
        return name

    def queue_name(self, what: str) -> str:
        self._n += 1
        name = f"/{NAME_PREFIX}{self.tag}-{what}-{self._n}"
        self.queues.append(name)
        return name

    # --- processes
    def start(self, argv: list[str], label: str, env: dict | None = None, cwd: Path | str = ROOT, **kw) -> Launched:
        log = self.tmp / f"{len(self.launched)}-{label.replace('/', '_').replace(' ', '_')}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=cwd, env=env, **kw)
        self.pids.append(proc.pid)
        launched = Launched(proc, label, log)
        self.launched.append(launched)
        return launched

    def stop(self, launched: Launched, timeout: float = 15.0) -> int:
        """SIGTERM to its own PID, SIGKILL after ``timeout``."""
        proc = launched.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def script(self, name: str, module: str) -> list[str]:
        """A console script of this venv (what users run), or ``python -m`` if it is not installed."""
        path = BIN / name
        return [str(path)] if path.exists() else [sys.executable, "-m", module]

    def publisher(self, interval: float, what: str = "pub", *options: str, python: str | None = None) -> Launched:
        """A real shm-publisher on a unique name (with ``options``), returned once its first sample is in;
        ``python``: the interpreter of another checkout's venv, to run that one's."""
        name = self.segment_name(what)
        command = [python, "-m", "shm_metrics.publisher"] if python else self.script("shm-publisher",
                                                                                    "shm_metrics.publisher")
        pub = self.start([*command, "--name", name, "--interval", str(interval), *options],
                         f"publisher-{interval}{''.join(options)}")
        pub.name = name
        wait_running(name, pub)
        return pub

    def shm_exporter(self, name: str, python: str | None = None) -> Launched:
        command = [python, "-m", "shm_metrics.readers.exporter"] if python else self.script(
            "shm-exporter", "shm_metrics.readers.exporter")
        exp = self.start([*command, "--name", name, "--web.listen-address", "127.0.0.1:0"], "shm-exporter")
        exp.name = name
        deadline = time.monotonic() + 30
        while exp.port is None:
            text = exp.log.read_text(errors="replace")
            if "listening on" in text:  # "listening on http://127.0.0.1:PORT/metrics ..."
                exp.port = int(text.split("listening on ", 1)[1].split("/", 3)[2].rsplit(":", 1)[1])
            elif exp.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shm-exporter did not start:\n{text}")
            else:
                time.sleep(0.02)
        wait_http(exp.port, exp.proc, "shm-exporter")
        return exp

    def node_exporter(self, collectors: tuple[str, ...] = NODE_COLLECTORS,
                      label: str = "node_exporter") -> Launched | None:
        """Debian's node_exporter with these collectors ("defaults": its default set; default: those we
        cover), or None if not installed."""
        binary = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
        if not os.access(binary, os.X_OK):
            return None
        port = free_port()
        flags = [] if "defaults" in collectors else ["--collector.disable-defaults"]
        node = self.start([binary, f"--web.listen-address=127.0.0.1:{port}", *flags,
                           *(f"--collector.{c}" for c in collectors if c != "defaults")], label)
        node.port = port
        wait_http(port, node.proc, label)
        return node

    # --- forked children
    def fork(self, child: Callable[[], None], cpu: int | None = None) -> int:
        """Fork a child that runs ``child()`` (optionally pinned to ``cpu``) and exits; returns its PID."""
        pid = os.fork()
        if pid == 0:
            _run_child(child, cpu)
        self.forked.add(pid)
        self.pids.append(pid)
        return pid

    def reap(self, pid: int, timeout: float = 10.0) -> None:
        """Wait for a forked child by its PID; SIGKILL it (by PID) if it does not exit in time."""
        deadline = time.monotonic() + timeout
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        self.forked.discard(pid)

    # --- the end
    def close(self) -> str:
        """Stop everything (by PID), remove leftovers under our own names, and say what was done."""
        for pid in list(self.forked):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap(pid)
        for launched in reversed(self.launched):
            self.stop(launched)
        alive = [lch.label for lch in self.launched if lch.proc.poll() is None]
        leftovers = []
        for name in self.segments:
            for path in (L.segment_path(name), L.semaphore_path(name), L.demand_path(name)):
                if os.path.lexists(path):
                    leftovers.append(path)
                    os.unlink(path)
        if self.queues:
            import posix_ipc

            for name in self.queues:  # each is removed by its user; one that is still there is a leftover
                try:
                    posix_ipc.unlink_message_queue(name)
                    leftovers.append(f"message queue {name}")
                except posix_ipc.ExistentialError:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        status = "clean" if not alive and not leftovers else "NOT CLEAN"
        text = (f"cleanup: {status}: {len(self.pids)} processes started, all stopped by PID; "
                f"{len(self.segments)} segments and {len(self.queues)} message queues created, ")
        text += "none left" if not leftovers else f"leftovers removed by the benchmark: {', '.join(leftovers)}"
        if alive:
            text += f"; still running: {', '.join(alive)}"
        return text


def _run_child(child: Callable[[], None], cpu: int | None) -> None:
    """The body of a forked child: never returns, never runs the parent's cleanup."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        child()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def wait_running(name: str, launched: Launched, timeout: float = 20.0) -> None:
    """Until *this* process publishes under ``name`` (state running, its pid in the header)."""
    from shm_metrics.readers import Reader, ReaderError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launched.proc.poll() is not None:
            raise RuntimeError(f"{launched.label} exited {launched.proc.returncode}:\n"
                               f"{launched.log.read_text(errors='replace')}")
        try:
            with Reader(name) as r:
                snap = r.read(arrays=False)
                if snap.state == "running" and snap.publisher_pid == launched.pid and snap.seq > 0:
                    return
        except ReaderError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{launched.label} on {name} did not start publishing")


class Workers:
    """``n`` forked children that get ready together, work together, then report.

    Each child runs ``setup(i)`` (attach, connect) and says it is ready; all
    start ``work(state)`` when the parent closes the shared "go" pipe (one
    close wakes every child at once); each writes its JSON result to its own
    pipe, then waits until the parent releases it, so that whatever it holds
    (a keep-alive connection, and the server thread serving it) stays alive
    until the parent has read the servers' CPU counters.
    """

    def __init__(self, lab: Lab, n: int, setup: Callable[[int], object], work: Callable[[object], object]):
        self.lab = lab
        go_r, self._go_w = os.pipe()
        release_r, self._release_w = os.pipe()
        self.kids: list[tuple[int, int]] = []
        try:
            for i in range(n):
                result_r, result_w = os.pipe()

                def child(i=i, result_r=result_r, result_w=result_w) -> None:
                    os.close(result_r)
                    os.close(self._go_w)
                    os.close(self._release_w)
                    for _, other in self.kids:
                        os.close(other)
                    state = setup(i)
                    os.write(result_w, b"R")
                    os.read(go_r, 1)  # EOF when the parent says go
                    payload = json.dumps(work(state)).encode()
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(result_w, view):]
                    os.close(result_w)
                    os.read(release_r, 1)  # EOF when released

                pid = lab.fork(child)
                os.close(result_w)
                self.kids.append((pid, result_r))
        finally:
            os.close(go_r)
            os.close(release_r)

    def ready(self) -> None:
        for pid, fd in self.kids:
            if os.read(fd, 1) != b"R":
                raise RuntimeError(f"worker {pid} failed while getting ready (its traceback is above)")

    def go(self) -> None:
        os.close(self._go_w)
        self._go_w = -1

    def results(self) -> list:
        out = []
        for pid, fd in self.kids:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            if not chunks:
                raise RuntimeError(f"worker {pid} failed (its traceback is above)")
            out.append(json.loads(b"".join(chunks)))
        return out

    def release(self) -> None:
        if self._go_w >= 0:
            os.close(self._go_w)
            self._go_w = -1
        if self._release_w >= 0:
            os.close(self._release_w)
            self._release_w = -1
        for pid, fd in self.kids:
            self.lab.reap(pid)
            os.close(fd)
        self.kids = []


class Shared:
    """The daemons several questions use, started once: a 1 s publisher, shm-exporter on it, node_exporter."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self._publisher: Launched | None = None
        self._exporter: Launched | None = None
        self._node: Launched | None | bool = False  # False: not tried yet; None: not installed

    @property
    def publisher(self) -> Launched:
        if self._publisher is None:
            self._publisher = self.lab.publisher(1.0, "main")
        return self._publisher

    @property
    def exporter(self) -> Launched:
        if self._exporter is None:
            self._exporter = self.lab.shm_exporter(self.publisher.name)
        return self._exporter

    @property
    def node(self) -> Launched | None:
        if self._node is False:
            self._node = self.lab.node_exporter()
        return self._node

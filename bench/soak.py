"""``python -m bench.soak``: memory and descriptors of every process under steady load, over time (issue 15).

Starts a publisher at 100 Hz, shm-exporter, two keep-alive scrapers that hammer it as fast as they can (plain
text and gzip), and three followers (``shm-read -f``, ``shm-read --json`` and the Python API's ``follow()``).
Every --every seconds it prints each process's resident memory (VmRSS of /proc/PID/status) and open
descriptors (the entries of /proc/PID/fd), with the scrape count.  It runs for --seconds, or with
--scrapes until the exporter has answered that many scrapes.  Then it stops every process by its own PID and
checks that the publisher removed its segment.

The verdict compares every later row with the row at the end of the warm-up: the warm-up must outlast the
history ring's filling (60 s at 100 Hz), whose pages become resident in every process that maps the segment.
Exit 0 when no process's RSS rose more than --bound MiB above it and no descriptor count rose; 1 otherwise,
or when a process died, a scrape failed, or something was left behind.
"""

from __future__ import annotations

import argparse
import http.client
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Lab, Launched, connect, cpu_seconds, rss_mib, status_kib

DEFAULTS = {"seconds": None, "scrapes": 0, "every": 30.0, "warmup": 90.0, "bound": 4.0, "interval": 0.01}
_COUNTER = struct.Struct("=QQ")  # (good, bad): one writer (the process counted), read by the driver


class Counter:
    """Two counts in a small shared file: a process writes them as it goes, the driver reads them."""

    def __init__(self, path: Path, create: bool = False):
        if create:
            path.write_bytes(bytes(_COUNTER.size))
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), _COUNTER.size)

    def add(self, ok: bool) -> None:
        good, bad = _COUNTER.unpack_from(self._map)
        _COUNTER.pack_into(self._map, 0, good + ok, bad + (not ok))

    def read(self) -> tuple[int, int]:
        return _COUNTER.unpack_from(self._map)


# ---------------------------------------------------------------- the load, each in its own process
def scrape(port: int, gzip: bool, counter: Counter) -> None:
    """GET /metrics on one keep-alive connection, forever; a failed or partial answer counts as bad."""
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    conn = None
    while True:
        try:
            conn = conn or connect(port)
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200 and (body[:2] == b"\x1f\x8b" if gzip else b"\nshm_metrics_up 1" in body)
        except (OSError, http.client.HTTPException):
            ok = False
            if conn is not None:
                conn.close()
            conn = None
        counter.add(ok)


def follow_api(name: str, counter: Counter) -> None:
    """The Python API's follow(): every family and scalar of each sample, as an application would use them."""
    from shm_metrics.readers import Reader

    for snap in Reader(name).follow():
        counter.add(bool(snap.families.all()) and bool(snap.scalars()))


# ---------------------------------------------------------------- the driver
_PROC_STAT = re.compile(r"/proc/(\d+)/(?:task/(\d+)/)?stat$")


def descriptors(pid: int) -> tuple[int, dict[int, str]]:
    """(open fds that are not /proc stat files, {fd: path} of the /proc/PID[/task/TID]/stat files).

    The publisher's process scan (--top) keeps one stat file open per process and thread of the host and
    closes it when the process is gone (publisher/processes.py): those follow the host's churn, so they are
    checked for files of exited tasks (``stale_stat_fds``) instead of being counted against the bound.
    """
    other, stats = 0, {}
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:  # closed meanwhile
            continue
        if _PROC_STAT.match(target):
            stats[int(entry)] = target
        else:
            other += 1
    return other, stats


def steady_descriptors(pid: int) -> tuple[int, dict[int, str]]:
    """``descriptors`` without what a scrape opens for microseconds (the exporter's process metrics list
    /proc/self/fd and read /proc/self/limits at every scrape): the fewest of three looks 10 ms apart."""
    looks = []
    for _ in range(3):
        looks.append(descriptors(pid))
        time.sleep(0.01)
    return min(looks, key=lambda look: look[0])


def stale_stat_fds(pid: int) -> list[str]:
    """The /proc stat files ``pid`` holds whose task has exited, seen so on two looks a second apart
    (the scan closes such a file at its next pass, 10 ms later at 100 Hz; one held longer is a leak)."""
    def stale() -> set[tuple[int, str]]:
        return {(fd, path) for fd, path in descriptors(pid)[1].items() if not os.path.exists(os.path.dirname(path))}

    first = stale()
    time.sleep(1.0)
    return sorted(path for _, path in first & stale())


@dataclass
class Row:
    elapsed: float
    scrapes: int
    usage: dict[str, tuple[float, int, int]]  # label -> (RSS MiB, fds, /proc stat fds kept by the --top scan)
    parts: dict[str, tuple[float, float, float]]  # label -> RssAnon, RssFile, RssShmem (pages of the segment), MiB
    host_peak: int = 0  # the most processes the host had at once since the previous row (looked at 5 times a second)


@dataclass
class Soak:
    lab: Lab
    args: argparse.Namespace
    procs: dict[str, Launched] = field(default_factory=dict)
    counters: dict[str, Counter] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # shm-read followers: lines printed so far
    rows: list[Row] = field(default_factory=list)
    port: int = 0

    def start(self) -> None:
        pub = self.lab.publisher(self.args.interval, "soak")
        self.procs["publisher"] = pub
        exp = self.lab.shm_exporter(pub.name)
        self.procs["exporter"], self.port = exp, exp.port
        me = [sys.executable, "-m", "bench.soak"]
        for label, extra in (("scraper", []), ("scraper-gz", ["--gzip"])):
            self._counted(label, [*me, "scrape", "--port", str(exp.port), *extra])
        self._piped("shm-read-f", [*self.lab.script("shm-read", "shm_metrics.readers"), "--name", pub.name, "-f",
                                   "procs_total", "forks_per_second"])
        self._piped("shm-read-json", [*self.lab.script("shm-read", "shm_metrics.readers"), "--name", pub.name,
                                      "--json"])
        self._counted("follow-api", [*me, "follow", "--name", pub.name])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every process has done its work once (imports done, connected), so row 0 is a working start."""
        deadline = time.monotonic() + timeout
        while not (all(c.read()[0] for c in self.counters.values()) and all(self.lines.values())):
            if self.dead() or time.monotonic() > deadline:
                raise RuntimeError(f"the load did not start: dead {self.dead()}, counts "
                                   f"{ {k: c.read() for k, c in self.counters.items()} }, lines {self.lines}")
            time.sleep(0.05)

    def _counted(self, label: str, argv: list[str]) -> None:
        path = self.lab.tmp / f"{label}.count"
        self.counters[label] = Counter(path, create=True)
        self.procs[label] = self.lab.start([*argv, "--counter", str(path)], label)

    def _piped(self, label: str, argv: list[str]) -> None:
        """A shm-read follower whose output is counted, line by line, and dropped (--json is ~MB/s at 100 Hz)."""
        log = self.lab.tmp / f"{label}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        launched = Launched(proc, label, log)
        self.lab.launched.append(launched)
        self.lab.pids.append(proc.pid)
        self.procs[label] = launched
        self.lines[label] = 0
        threading.Thread(target=self._count_lines, args=(label, proc.stdout), daemon=True).start()

    def _count_lines(self, label: str, stream) -> None:
        while chunk := stream.read1(1 << 16):
            self.lines[label] += chunk.count(b"\n")

    def scrapes(self) -> tuple[int, int]:
        """(answered, failed) over both scrapers."""
        counts = [self.counters[label].read() for label in ("scraper", "scraper-gz")]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def sample(self, elapsed: float) -> Row:
        usage, parts = {}, {}
        for label, p in self.procs.items():
            other, stats = steady_descriptors(p.pid)
            kept = len(stats) if label == "publisher" else 0  # elsewhere: a scrape's /proc/self/stat, open a moment
            usage[label] = (rss_mib(p.pid), other, kept)
            parts[label] = tuple(status_kib(p.pid, key) / 1024 for key in ("RssAnon", "RssFile", "RssShmem"))
        row = Row(elapsed, self.scrapes()[0], usage, parts)
        self.rows.append(row)
        return row

    def dead(self) -> list[str]:
        return [f"{label} (exit {p.proc.returncode})" for label, p in self.procs.items() if p.proc.poll() is not None]


def _header(labels: list[str]) -> str:
    """Two lines: the processes, then RSS and fds under each (the publisher's kept /proc stat files apart)."""
    cells = "".join(f" | {label[:13]:>13}" for label in labels)
    units = " | {:>13}".format("RSS MiB  fds") * len(labels)
    return f"{'time s':>7} {'scrapes':>9} {'per s':>6}{cells}\n{'':>24}{units}  (+N: /proc stat files kept by --top)"


def _line(row: Row, previous: Row | None) -> str:
    rate = (row.scrapes - previous.scrapes) / max(row.elapsed - previous.elapsed, 1e-9) if previous else 0.0
    cells = "".join(f" | {rss:8.1f} {fds:4d}" for rss, fds, _ in row.usage.values())
    kept = [stats for _, _, stats in row.usage.values() if stats]
    return (f"{row.elapsed:7.0f} {row.scrapes:9d} {rate:6.0f}{cells}" + "".join(f"  (+{n})" for n in kept)
            + f"  host peak {row.host_peak} processes")


def run(soak: Soak) -> None:
    """Sample at 0, every --every seconds, at the end of the warm-up and at the end; stop early if one died."""
    args = soak.args
    t0 = time.monotonic()
    print(_header(list(soak.procs)), flush=True)
    marks = sorted({args.warmup, *(k * args.every for k in range(1, int(min(args.seconds, 1e7) // args.every) + 1))})
    previous, peak = None, 0
    while True:
        # The publisher's --top scan holds state per process of the host: its memory follows the host's peaks.
        peak = max(peak, sum(1 for entry in os.scandir("/proc") if entry.name.isdigit()))
        now = time.monotonic() - t0
        done = now >= args.seconds or bool(args.scrapes) and soak.scrapes()[0] >= args.scrapes
        if previous is None or done or soak.dead() or (marks and now >= marks[0]):
            while marks and now >= marks[0]:
                marks.pop(0)
            row = soak.sample(now)
            row.host_peak, peak = peak, 0
            print(_line(row, previous), flush=True)
            previous = row
            if done or soak.dead():
                return
        time.sleep(0.2)


def verdict(soak: Soak) -> bool:
    """Print RSS and fds per process at start, after warm-up and at the end; True if within the bounds."""
    args, rows = soak.args, soak.rows
    answered, failed = soak.scrapes()
    seconds = rows[-1].elapsed
    print(f"\n{answered} scrapes answered in {seconds:.0f} s ({answered / max(seconds, 1e-9):.0f}/s), {failed} failed;"
          f" follow-api saw {soak.counters['follow-api'].read()[0]} samples, "
          + ", ".join(f"{label} printed {n} lines" for label, n in soak.lines.items()))
    ok = not failed and not soak.dead()
    # The publisher's always (none kept while no viewer asks for the --top scan), any other's that keeps some.
    stale = {label: stale_stat_fds(p.pid) for label, p in soak.procs.items()
             if label == "publisher" or rows[-1].usage[label][2]}
    for label, paths in stale.items():
        print(f"{label}: {rows[-1].usage[label][2]} /proc stat files kept, {len(paths)} of exited tasks"
              + (f": {', '.join(paths[:5])}" if paths else ""))
        ok = ok and not paths
    warm = next((row for row in rows if row.elapsed >= args.warmup), None)
    if warm is None or warm is rows[-1]:
        print(f"not judged: the run ended before the warm-up ({args.warmup:g} s) was over")
        return ok
    print(f"{'process':<14} {'RSS start':>9} {'warm-up':>8} {'end':>8} {'max':>8} {'growth':>7}   "
          f"{'fds start':>9} {'warm-up':>7} {'end':>4} {'max':>4}   {'CPU s':>6}   "
          f"{'warm-up to end: anon file shm':>29}")
    for label, proc in soak.procs.items():
        ok = _judge(label, proc, rows, warm, args.bound) and ok
    print("MiB; the RSS's change split into anonymous memory (RssAnon), mapped files (RssFile: libraries, code) "
          "and pages of the segment (RssShmem: resident as the history ring fills)")
    before = max(row.host_peak for row in rows if row.elapsed <= warm.elapsed)
    after = max(row.host_peak for row in rows if row.elapsed > warm.elapsed)
    if after > before:  # the --top scan keeps a record per process: the publisher's RSS follows the host's peak
        print(f"the host's process count peaked at {after} after the warm-up ({before} before): the publisher's "
              "--top scan holds a record per process, and its RSS follows the peak")
    print(f"bound: RSS at most +{args.bound:g} MiB and no more descriptors than at the end of the warm-up "
          f"({warm.elapsed:.0f} s): {'met' if ok else 'NOT MET'}")
    return ok


def _judge(label: str, proc: Launched, rows: list[Row], warm: Row, bound: float) -> bool:
    """One process's line of the verdict: its highest RSS and fds after the warm-up against the warm-up's."""
    later = [row.usage[label] for row in rows if row.elapsed >= warm.elapsed]
    rss_max, fds_max = max(u[0] for u in later), max(u[1] for u in later)
    growth = rss_max - warm.usage[label][0]
    bad = growth > bound or fds_max > warm.usage[label][1]
    cpu = cpu_seconds(proc.pid) if proc.proc.poll() is None else float("nan")
    print(f"{label:<14} {rows[0].usage[label][0]:9.1f} {warm.usage[label][0]:8.1f} {rows[-1].usage[label][0]:8.1f} "
          f"{rss_max:8.1f} {growth:+7.1f}   {rows[0].usage[label][1]:9d} {warm.usage[label][1]:7d} "
          f"{rows[-1].usage[label][1]:4d} {fds_max:4d}   {cpu:6.0f}   "
          + " ".join(f"{end - start:+5.1f}" for start, end in zip(warm.parts[label], rows[-1].parts[label])).rjust(29)
          + ("   TOO MUCH" if bad else ""))
    return not bad


def _env(name: str, kind: type):
    value = os.environ.get(f"SOAK_{name.upper()}")
    return kind(value) if value not in (None, "") else DEFAULTS[name]


def _limits(args: argparse.Namespace) -> None:
    """By time (300 s) unless a scrape count is given; with both, whichever comes first."""
    if args.seconds is None:
        args.seconds = float("inf") if args.scrapes else 300.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[1])
    sub = ap.add_subparsers(dest="role")
    for name, kind, text in (("seconds", float, "run this long (env SOAK_SECONDS; default 300 unless --scrapes)"),
                             ("scrapes", int, "run until this many scrapes (env SOAK_SCRAPES; 0: by time); "
                                              "with --seconds, whichever comes first"),
                             ("every", float, "a row every this many seconds (env SOAK_EVERY)"),
                             ("warmup", float, "the verdict's baseline: the row at this time (env SOAK_WARMUP)"),
                             ("bound", float, "RSS growth allowed after the warm-up, MiB (env SOAK_BOUND)"),
                             ("interval", float, "the publisher's --interval (env SOAK_INTERVAL)")):
        ap.add_argument(f"--{name}", type=kind, default=_env(name, kind),
                        help=text if name == "seconds" else f"{text}; default %(default)s")
    scraper = sub.add_parser("scrape", help="(internal) one keep-alive scraper")
    scraper.add_argument("--port", type=int, required=True)
    scraper.add_argument("--gzip", action="store_true")
    scraper.add_argument("--counter", type=Path, required=True)
    follower = sub.add_parser("follow", help="(internal) a follower through the Python API")
    follower.add_argument("--name", required=True)
    follower.add_argument("--counter", type=Path, required=True)
    args = ap.parse_args(argv)
    _limits(args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.role == "scrape":
        scrape(args.port, args.gzip, Counter(args.counter))
    if args.role == "follow":
        follow_api(args.name, Counter(args.counter))

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: everything is stopped

    signal.signal(signal.SIGTERM, on_term)
    lab = Lab()
    soak = Soak(lab, args)
    ok = False
    try:
        soak.start()
        soak.wait_ready()
        limit = " or ".join([f"{args.scrapes} scrapes"] * bool(args.scrapes)
                            + [f"{args.seconds:g} s"] * (args.seconds < float("inf")))
        print(f"soak: publisher every {args.interval:g} s on {soak.procs['publisher'].name}, shm-exporter on "
              f"127.0.0.1:{soak.port}; {limit}, a row every {args.every:g} s, warm-up {args.warmup:g} s; PIDs "
              + ", ".join(f"{label} {p.pid}" for label, p in soak.procs.items()), flush=True)
        run(soak)
        if soak.dead():
            print(f"died during the soak: {', '.join(soak.dead())}")
        ok = verdict(soak)
    finally:
        summary = lab.close()
        print(summary, flush=True)
    return 0 if ok and "cleanup: clean" in summary else 1


if __name__ == "__main__":
    sys.exit(main())

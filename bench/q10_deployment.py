"""Q10. The deployment as an operator pays for it: shm-publisher + shm-exporter against node_exporter.

Both run with their defaults, side by side in the same windows, scraped the same way by the same
scrapers (keep-alive connections, as Prometheus keeps one per target; an HA pair is two scrapers with
their own phase): two every 15 s (once with plain GETs, once with the headers Prometheus sends, gzip
asked for), one every 15 s, two every 5 s, one every 60 s, none.  Each row is
one window (90 s in a full run) in which every process's CPU is read from the scheduler
(``common.cpu_seconds``: /proc/PID/task/*/schedstat).  The ratio is shm-metrics' total (publisher +
exporter) over node_exporter's.  Freshness: at every scrape of shm-exporter, the scrape's start minus
the served ``node_time_seconds`` (a family sampled on demand); the row shows the largest.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from bench.common import PROMETHEUS_HEADERS, Config, Shared, Table, connect, cpu_seconds, get, wait_running, x

# (label, number of scrapers, period in seconds, headers of each scrape: None for a plain GET)
ROWS = (("HA pair, every 15 s", 2, 15.0, None),
        ("HA pair, every 15 s, as Prometheus asks (gzip)", 2, 15.0, PROMETHEUS_HEADERS),
        ("one, every 15 s", 1, 15.0, None), ("HA pair, every 5 s", 2, 5.0, None),
        ("one, every 60 s", 1, 60.0, None), ("no scraper", 0, 0.0, None))
REQUIRED, TARGET, OWN_TARGET_MS = 1.0, 0.5, 0.5  # ratio required and aimed at; the publisher alone, ms/s
_NODE_TIME = re.compile(rb"^node_time_seconds ([0-9.e+]+)$", re.M)


class Scraper(threading.Thread):
    """Scrapes one target every ``period`` from ``phase``; records each scrape's start and body."""

    def __init__(self, port: int, period: float, phase: float, until: float, ages: list[float] | None,
                 headers: dict[str, str] | None = None):
        super().__init__(daemon=True)
        self.port, self.period, self.next, self.until, self.ages = port, period, phase, until, ages
        self.headers = headers
        self.count = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn = connect(self.port)
        try:
            while self.next < self.until:
                time.sleep(max(0.0, self.next - time.monotonic()))
                began = time.time()
                self.next += self.period
                try:
                    body = get(conn, headers=self.headers)
                except OSError:  # an idle keep-alive connection the server closed: a new one, as Prometheus does
                    conn.close()
                    conn = connect(self.port)
                    try:
                        body = get(conn, headers=self.headers)
                    except OSError as exc:
                        self.errors.append(repr(exc))
                        continue
                self.count += 1
                if self.ages is not None:
                    found = _NODE_TIME.search(body)
                    self.ages.append(began - float(found[1]) if found else float("inf"))
        finally:
            conn.close()


def _window(shared: Shared, node, scrapers: int, period: float, seconds: float,
            full=None, headers: dict[str, str] | None = None) -> dict[str, float]:
    pub, exp = shared.publisher, shared.exporter
    pids = {"publisher": pub.pid, "exporter": exp.pid, "node": node.pid}
    if full is not None:  # the design before sampling on demand, and the floor, measured in the same window
        pids["always_full"] = full.pid
        pids["floor"] = full.floor.pid
        pids["python_only"] = full.python_only.pid
        pids["grid_python"] = full.grid_python.pid
    start = time.monotonic()
    until = start + seconds
    ages: list[float] = []
    threads = []
    for i in range(scrapers):
        first = start + (period * (0.13 + 0.61 * i)) % period  # an HA pair's two servers are out of phase
        threads.append(Scraper(exp.port, period, first, until, ages, headers))
        threads.append(Scraper(node.port, period, first, until, None, headers))
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    for t in threads:
        t.start()
    time.sleep(max(0.0, until - time.monotonic()))
    after = {k: cpu_seconds(pid) for k, pid in pids.items()}
    for t in threads:
        t.join(30)
    errors = [e for t in threads for e in t.errors]
    if errors:
        raise RuntimeError(f"scrapes failed: {errors[:3]}")
    out = {k: (after[k] - before[k]) / seconds for k in pids}
    out["max_age"] = max(ages) if ages else float("nan")
    out["scrapes"] = sum(t.count for t in threads) / 2
    return out


def run(cfg: Config, shared: Shared) -> Table:
    table = Table(10, "The deployment: shm-publisher + shm-exporter against node_exporter, both with their "
                  "defaults, scraped alike, CPU from schedstat",
                  ["scrapers", "window", "scrapes each", "publisher % core", "exporter % core",
                   "shm-metrics % core", "node_exporter % core", "ratio", "publisher ms CPU/s",
                   "largest age of node_time_seconds"])
    node = shared.lab.node_exporter(("defaults",), "node_exporter-q10")
    if node is None:
        table.notes.append("node_exporter is not installed (Debian's prometheus-node-exporter): nothing compared.")
        table.target("measured", None)
        return table
    seconds = cfg.pick(90.0, 1.5)
    get(connect(shared.exporter.port))  # the 1 s publisher and its exporter started, and warm
    time.sleep(cfg.pick(5.0, 0.2))
    lab = shared.lab
    name = lab.segment_name("q10-always-full")
    full = lab.start([*lab.script("shm-publisher", "shm_metrics.publisher"), "--name", name, "--interval", "1",
                      "--always-full"], "publisher-always-full")
    full.name = name
    full.floor = lab.start([sys.executable, "-m", "bench.floor"], "floor")
    wait_running(name, full)
    python_only = lab.segment_name("q10-python-only")  # the publisher as it is, without publisher/_scan.c
    full.python_only = lab.start([*lab.script("shm-publisher", "shm_metrics.publisher"), "--name", python_only,
                                  "--interval", "1"], "publisher-python-only",
                                 env={**os.environ, "SHM_METRICS_NO_FAST_PATH": "1"})
    wait_running(python_only, full.python_only)
    grid_python = lab.segment_name("q10-grid-python")  # the publisher as it is, its grid samples not compiled
    full.grid_python = lab.start([*lab.script("shm-publisher", "shm_metrics.publisher"), "--name", grid_python,
                                  "--interval", "1"], "publisher-grid-python",
                                 env={**os.environ, "SHM_METRICS_NO_COMPILED": "1"})
    wait_running(grid_python, full.grid_python)
    results = {}
    for label, scrapers, period, headers in ROWS:
        period = period if not cfg.quick else min(period, 1.0)
        r = results[label] = _window(shared, node, scrapers, period, seconds, full if not scrapers else None,
                                     headers)
        ours = r["publisher"] + r["exporter"]
        table.add(label, f"{seconds:.0f} s", f"{r['scrapes']:.0f}", f"{100 * r['publisher']:.3f}",
                  f"{100 * r['exporter']:.3f}", f"{100 * ours:.3f}", f"{100 * r['node']:.3f}",
                  x(ours / r["node"]) if r["node"] else "-", f"{1000 * r['publisher']:.2f}",
                  f"{r['max_age']:.3f} s" if scrapers else "-")
    table.notes.append("shm-publisher with its defaults (1 s, --top 10, node_exporter's default collectors), "
                       "shm-exporter with its defaults, Debian's node_exporter with its defaults; every "
                       "scraper keeps one connection per target, and scrapes both targets at the same moments. "
                       "A plain GET but in the row 'as Prometheus asks': there each scrape sends Prometheus' "
                       "headers (Accept-Encoding: gzip among them), and both servers compress their answer.")
    alone = results["no scraper"]
    table.notes.append(f"The alternatives, in the no-scraper window: the publisher as it is (tiers: every interval "
                       f"what local readers show, the rest on demand) {1000 * alone['publisher']:.2f} ms of CPU "
                       f"per second; the same with --always-full (every collector every second, the design "
                       f"before) {1000 * alone['always_full']:.2f} ms/s; the same with its grid samples not "
                       f"compiled (SHM_METRICS_NO_COMPILED=1: the C reader of numbers, the rest in Python) "
                       f"{1000 * alone['grid_python']:.2f} ms/s; the same without its C reader of "
                       f"numbers (SHM_METRICS_NO_FAST_PATH=1: the Python parsers every interval) "
                       f"{1000 * alone['python_only']:.2f} ms/s; the floor (bench/floor.py: a Python "
                       f"process that wakes every second and only reads the files of the every-interval sample, "
                       f"statvfs of the mounts the publisher keeps included, parsing and publishing nothing) "
                       f"{1000 * alone['floor']:.2f} ms/s.")
    lab.stop(full.floor)
    lab.stop(full.python_only)
    lab.stop(full.grid_python)
    lab.stop(full)
    table.notes.append("Largest age: over every scrape of shm-exporter in the window, the scrape's start minus "
                       "the node_time_seconds it served (sampled on demand: at most max(interval, 1 s)).")
    ha = results["HA pair, every 15 s"]
    prometheus = results["HA pair, every 15 s, as Prometheus asks (gzip)"]
    fast = results["HA pair, every 5 s"]

    def ratio(r: dict[str, float]) -> float:
        return (r["publisher"] + r["exporter"]) / r["node"] if r["node"] else float("inf")

    table.target(f"HA pair at 15 s {x(ratio(ha))} (<= {REQUIRED}x required)", ratio(ha) <= REQUIRED)
    table.target(f"HA pair at 5 s {x(ratio(fast))} (<= {REQUIRED}x required)", ratio(fast) <= REQUIRED)
    table.target(f"HA pair at 15 s as Prometheus asks {x(ratio(prometheus))} (<= {REQUIRED}x required)",
                 ratio(prometheus) <= REQUIRED)
    table.target(f"HA pair at 15 s {x(ratio(ha))} (<= {TARGET}x aimed at)", ratio(ha) <= TARGET)
    table.target(f"HA pair at 15 s as Prometheus asks {x(ratio(prometheus))} (<= {TARGET}x aimed at)",
                 ratio(prometheus) <= TARGET)
    for label in ("one, every 60 s", "no scraper"):
        own = 1000 * results[label]["publisher"]
        table.target(f"publisher alone, {label}: {own:.2f} ms/s (<= {OWN_TARGET_MS})", own <= OWN_TARGET_MS)
    ages = [r["max_age"] for r in results.values() if r["max_age"] == r["max_age"]]
    oldest = max(ages, default=float("inf"))
    table.target(f"served node_time_seconds at most {oldest:.3f} s old (<= 1 s)", oldest <= 1.0)
    return table

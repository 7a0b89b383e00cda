"""Memory that stays flat (issue 15): what the exporter keeps does not grow with scrapes, samples or churn.

The long check is ``make soak`` (RSS and fds of every process for minutes, bench/soak.py); these are its
cheap guards.  They count Python allocations with tracemalloc and compare them across a number of
published samples, never against the clock.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

from conftest import wait_for

from shm_metrics import shm_layout as L
from shm_metrics.families import Family
from shm_metrics.readers.exporter.exposition import build
from shm_metrics.readers.exporter.render import FamilyRenderer, render_families
from shm_metrics.readers.exporter.server import App, ExporterServer, _WorkerPool
from shm_metrics.readers.exporter.source import SegmentSource
from shm_metrics.readers.exporter.webconfig import WebConfigWatcher
from shm_metrics.readers.reader import Reader

# Python allocations the exporter may gain between two equal runs of SAMPLES new samples: 5-20 KiB measured.
# The cache of every value ever formatted that issue 15 removed kept ~430 KiB more per 60 samples at 100 Hz.
RETAINED_SLACK = 128 * 1024
SAMPLES = 60
ROOT = Path(__file__).resolve().parent.parent
# Shared objects a publisher has no use for, each resident for as long as it runs (months): OpenSSL's libcrypto
# (~3.4 MiB, through secrets -> hmac -> hashlib), decimal's (through statistics), datetime's (a log line's time).
UNUSED_LIBRARIES = ("libcrypto", "_hashlib", "_decimal", "_datetime")


@contextlib.contextmanager
def serving(name: str):
    """The exporter's own classes as shm-exporter wires them, serving ``name`` on a free port in a thread."""
    source = SegmentSource(name)
    _, exposition = build(source)
    server = ExporterServer(("127.0.0.1", 0), socket.AF_INET, App(exposition, "/metrics", WebConfigWatcher(None),
                                                                   name))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, exposition
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        source.close()
        assert not thread.is_alive()


def scrape_samples(conn: http.client.HTTPConnection, exposition, samples: int) -> None:
    """Scrape (plain text and gzip in turn) until ``samples`` more published samples have been rendered."""
    target = exposition.renders + samples
    n = 0
    while exposition.renders < target:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if n % 2 else {})
        response = conn.getresponse()
        assert response.status == 200 and response.read()
        n += 1


def retained(run) -> int:
    """Python bytes still allocated after ``run()`` (garbage collected first)."""
    run()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_exporter_retains_nothing_sample_after_sample(name, start_publisher):
    """After a warm-up, SAMPLES more samples scraped over keep-alive (plain and gzip) leave the exporter's
    allocations where the SAMPLES before left them: nothing is kept per sample, per value or per scrape."""
    start_publisher(name, "--interval", "0.01")
    with serving(name) as (server, exposition):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            # Traced from before the warm-up: what the renderers keep from it (texts, rows) is replaced only
            # when a family changes, and replacing an untraced object would look like growth.
            tracemalloc.start()
            try:
                scrape_samples(conn, exposition, 30)  # warm-up: catalog, kept lines, worker thread
                first = retained(lambda: scrape_samples(conn, exposition, SAMPLES))
                second = retained(lambda: scrape_samples(conn, exposition, SAMPLES))
            finally:
                tracemalloc.stop()
        finally:
            conn.close()
    assert second - first < RETAINED_SLACK, f"the exporter kept {second - first} bytes more over {SAMPLES} samples"
    assert server._workers.threads == 1  # one keep-alive client: one worker, however many scrapes


def test_the_publisher_maps_no_library_it_has_no_use_for(name, start_publisher):
    """After grid samples, a full sample and the per-process scan (both asked for), and a log line, the
    publisher's address space holds none of UNUSED_LIBRARIES: what it imports is what it uses."""
    pub = start_publisher(name, "--interval", "0.1", "--log.level", "debug")
    with Reader(name) as reader:
        first = reader.read(arrays=False)
        assert reader.ask(L.DEMAND_SCAN) and reader.ask(L.DEMAND_FULL)
        wait_for(lambda: reader.read(arrays=False).full_sample_time > first.full_sample_time,
                 what="a full sample asked for")
        wait_for(lambda: reader.read().top_cpu, what="the per-process scan's table")
    with open(f"/proc/{pub.pid}/maps") as f:
        mapped = {line.split()[-1].rsplit("/", 1)[-1] for line in f if "/" in line}
    unused = sorted(path for path in mapped for library in UNUSED_LIBRARIES if path.startswith(library))
    assert not unused, f"the publisher mapped {unused}"


def test_a_keep_alive_clients_next_request_needs_no_new_worker():
    """A worker counts itself free before it hands its connection back, so the client's next request, dispatched
    during the hand-back as the loop does when the client is quick, goes to that worker: no thread is started
    per race, and the pool (a malloc arena per thread) does not creep up to its size under steady scraping."""
    done = threading.Event()
    names = set()

    def work(job: int):
        names.add(threading.current_thread().name)

        def hand_back() -> None:
            pool.submit(job + 1) if job < 100 else done.set()  # the next request is there at once

        return hand_back

    pool = _WorkerPool(8, work)
    pool.submit(0)
    try:
        assert done.wait(30)
    finally:
        pool.stop()
    assert pool.threads == 1 and names == {"shm-exporter-worker-1"}


def _disks(names: range, value: float) -> list[Family]:
    return [Family("node_disk_reads_completed_total", "counter", "The total number of reads completed successfully.",
                   ("device",), [((f"sd{i}",), value + i) for i in names])]


def test_renderer_keeps_lines_of_the_current_series_only():
    """Devices that come and go leave no lines behind beyond a bound set by the series of a render."""
    renderer = FamilyRenderer()
    for round_ in range(50):  # 100 new devices each time: 5000 series seen in all
        renderer.render(_disks(range(round_ * 100, round_ * 100 + 100), 1.0))
        assert renderer.kept() <= 2 * (100 + FamilyRenderer.SLACK)


def test_renderer_writes_the_new_value_of_a_kept_line():
    renderer = FamilyRenderer()
    for value in (1.0, 2.5, 2.5, 1234567.0, float("nan"), float("nan"), 0.0):
        assert renderer.render(_disks(range(1), value)) == render_families(_disks(range(1), value))
    assert b"sd0\"} 1.234567e+06\n" in renderer.render(_disks(range(1), 1234567.0))


def test_soak_prints_its_table_and_verdict_and_stops_everything():
    """`make soak` in a few seconds: every process in the table and the verdict, all stopped by PID, the segment
    gone.  Its bound is not judged here (a warm-up of 3 s is no warm-up): that is `make soak`'s business."""
    soak = subprocess.Popen([sys.executable, "-m", "bench.soak", "--seconds", "6", "--every", "2", "--warmup", "3"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = soak.communicate(timeout=120)
    finally:
        if soak.poll() is None:
            soak.kill()
            soak.communicate()
    pids = {label: int(pid) for label, pid in re.findall(r"([\w-]+) (\d+)", out.split("PIDs ", 1)[1].split("\n")[0])}
    assert list(pids) == SOAK_PROCESSES, out + err
    rows = [line for line in out.splitlines() if re.match(r"^ +\d+ +\d+ +\d+ \|", line)]
    assert len(rows) >= 3 and all(line.count("|") == len(SOAK_PROCESSES) for line in rows), out
    verdict = out.split("\nprocess ", 1)[1]
    assert all(re.search(rf"^{label} +\d", verdict, re.M) for label in SOAK_PROCESSES), out
    assert "publisher: " in out and " of exited tasks" in out, out  # the --top scan's kept files were checked
    assert "cleanup: clean:" in out, out + err
    alive = [pid for pid in pids.values() if os.path.exists(f"/proc/{pid}") and
             Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, f"soak processes still running: {alive}"
    assert not [n for n in os.listdir("/dev/shm") if f"shmbench-{soak.pid}-" in n]


SOAK_PROCESSES = ["publisher", "exporter", "scraper", "scraper-gz", "shm-read-f", "shm-read-json", "follow-api"]

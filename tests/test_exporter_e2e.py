"""shm-exporter end to end: a real publisher, a real exporter process, scraped over HTTP on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import threading

import pytest
from conftest import READER, shm_files, wait_for
from exporter_util import (
    EXPORTER,
    Exposition,
    Process,
    free_port,
    get,
    keepalive_connection,
    metrics,
    need,
    scrape,
    wait_scrape,
)

from shm_metrics import shm_layout as L
from shm_metrics.readers.exporter.collector import OWN_NAMES

# node_* families and the layout's typed fields that hold the same value.
SCALAR_FIELDS = {"node_load1": "load1", "node_procs_running": "procs_running", "node_forks_total": "forks_total",
                 "node_memory_MemTotal_bytes": "mem_total_bytes", "node_filefd_allocated": "filefd_allocated",
                 "node_boot_time_seconds": "boot_time", "node_intr_total": "interrupts_total"}
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def up(expo: Exposition) -> float:
    return expo.value("shm_metrics_up")


def state(expo: Exposition) -> str:
    current = [dict(k)["state"] for k, v in expo.samples["shm_metrics_segment_state"].items() if v == 1]
    assert len(current) == 1, expo.text
    return current[0]


def assert_down(expo: Exposition, expected_state: str) -> None:
    assert up(expo) == 0
    assert state(expo) == expected_state
    # None of the segment's; the textfile collector runs in the exporter, at scrape time (0 without a directory).
    segment = {n for n in expo.names("node_") if not n.startswith("node_textfile_")}
    assert not segment, f"node_* series with up 0: {sorted(segment)}"
    assert expo.names("process_"), "the exporter's own process metrics are always there"


def shm_read_json(name: str) -> dict:
    out = subprocess.run([*READER, "--name", name, "--once", "--json"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# ------------------------------------------------------------------ values


def test_values_match_shm_read(name, start_publisher, exporters):
    pub = start_publisher(name, "--interval", "5")  # slow: a scrape and shm-read see the same sample
    exp = exporters(name)
    for _ in range(5):
        expo = scrape(exp.url + "/metrics")
        data = shm_read_json(name)
        if expo.value("shm_metrics_seq") == data["seq"]:
            break
    else:
        pytest.fail("scrape and shm-read never saw the same sample")

    assert up(expo) == 1 and state(expo) == "running"
    assert expo.value("shm_metrics_publisher_info", hostname=data["hostname"], layout_version=str(L.LAYOUT_VERSION),
                      publisher_pid=str(pub.pid)) == 1
    assert expo.value("shm_metrics_sample_timestamp_seconds") == pytest.approx(data["sample_time"], rel=1e-15)
    assert expo.value("shm_metrics_interval_seconds") == 5
    assert 0 <= expo.value("shm_metrics_sample_age_seconds") <= 2 * 5 + 1

    for family, field in SCALAR_FIELDS.items():
        assert expo.value(family) == pytest.approx(data[field], rel=1e-15), family
    for row in data["cpus"]:
        for mode in CPU_MODES:
            assert expo.value("node_cpu_seconds_total", cpu=str(row["cpu"]), mode=mode) == pytest.approx(row[mode])
    for row in data["net"]:
        assert expo.value("node_network_receive_bytes_total", device=row["device"]) == row["rx_bytes"]
    for row in data["disks"]:
        assert expo.value("node_disk_written_bytes_total", device=row["device"]) == row["written_bytes"]
    for row in data["filesystems"]:
        labels = {k: row[k] for k in ("device", "fstype", "mountpoint")}
        assert expo.value("node_filesystem_avail_bytes", **labels) == row["avail_bytes"]

    # Every family of the sample (shm-read --json's "families") is rendered, with its type, HELP,
    # labels and values, and nothing else is.
    families = data["families"]
    assert "node_uname_info" in families and len(families) > 100
    assert expo.names("node_") == set(families) | {"node_textfile_scrape_error"}  # textfile: the exporter's
    assert expo.names("shm_metrics_") == set(OWN_NAMES)
    for fam_name, fam in families.items():
        parsed_type = {"untyped": "unknown"}.get(fam["type"], fam["type"])  # prometheus_client's parser's word
        assert expo.types[fam_name] == parsed_type and expo.help[fam_name] == fam["help"], fam_name
        # The scrape families have the exporter's textfile collector's row besides the publisher's.
        extra = 1 if fam_name.startswith("node_scrape_collector_") else 0
        assert len(expo.samples[fam_name]) == len(fam["series"]) + extra, fam_name
        for series in fam["series"]:
            value = expo.samples[fam_name][frozenset(series["labels"].items())]  # a label may be called "name"
            assert value == pytest.approx(series["value"], rel=1e-15, nan_ok=True), fam_name

    # The bare value the README's scripts use.
    out = subprocess.run([*READER, "--name", name, "--once", "procs_total"], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0 and int(out.stdout) == expo.value("node_processes_pids")


def test_promtool_finds_only_what_it_finds_in_node_exporter(name, start_publisher, exporters):
    # Our names are node_exporter's, so promtool's lint of them is node_exporter's lint (its camelCase
    # meminfo names, "bits" as a unit...): nothing of ours beyond it.
    promtool = need("promtool", "prometheus")
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    node = Process([binary, f"--web.listen-address=127.0.0.1:{port}"])
    try:
        node.wait_for_line("Listening on")
        reference = metrics(f"http://127.0.0.1:{port}/metrics")
    finally:
        node.stop()

    def lint(text: str) -> set[str]:
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert out.returncode in (0, 3), out
        return {line for line in (out.stdout + out.stderr).splitlines() if line.strip()}

    allowed = lint(reference)
    start_publisher(name, "--interval", "0.5")
    exp = exporters(name)
    for text in (metrics(exp.url + "/metrics"), metrics(exporters(name + "-none").url + "/metrics")):
        assert lint(text) <= allowed


# ------------------------------------------------------------------ HTTP


def test_http_paths_keepalive_head_and_gzip(name, start_publisher, exporters):
    start_publisher(name, "--interval", "0.5")
    exp = exporters(name, "--web.telemetry-path", "/probe")

    status, headers, body = get(exp.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert 'href="/probe"' in body and name in body
    assert get(exp.url + "/metrics")[0] == 404
    assert get(exp.url + "/probe/more")[0] == 404
    status, headers, body = get(exp.url + "/probe?x=1")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "node_load1 " in body

    # One connection for many requests (HTTP/1.1 keep-alive), mixing paths and methods.
    conn = keepalive_connection(exp.port)
    try:
        sock = None
        for i in range(20):
            method, path = [("GET", "/probe"), ("GET", "/"), ("GET", "/nope"), ("HEAD", "/probe")][i % 4]
            conn.request(method, path)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == {"/probe": 200, "/": 200, "/nope": 404}[path]
            assert resp.getheader("Connection") != "close"
            if method == "HEAD":
                assert data == b"" and int(resp.getheader("Content-Length")) > 1000
            sock = sock or conn.sock
            assert conn.sock is sock, "the connection was not reused"

        # gzip when the client accepts it, as Prometheus does.
        conn.request("GET", "/probe", headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        assert resp.getheader("Content-Encoding") == "gzip"
        text = gzip.decompress(resp.read()).decode()
        assert Exposition(text).value("shm_metrics_up") == 1
        assert conn.sock is sock
    finally:
        conn.close()


def test_sigterm_exits_zero_and_port_in_use_exits_one(name, exporters):
    exp = exporters(name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        out = subprocess.run([*EXPORTER, "--name", name, "--listen", f"127.0.0.1:{busy}"], capture_output=True,
                             text=True, timeout=20)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot listen" in out.stderr
    assert exp.stop(signal.SIGTERM) == 0
    assert "stopped" in exp.output()


# ------------------------------------------------------------------ up 0, never a 500


def test_no_segment_then_publisher_appears(name, start_publisher, exporters):
    exp = exporters(name)
    expo = scrape(exp.url + "/metrics")
    assert_down(expo, "absent")
    assert not expo.names("shm_metrics_publisher_info")
    pub = start_publisher(name, "--interval", "0.2")
    expo = wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1, what="up 1 after the publisher started")
    assert expo.value("node_processes_pids") > 0
    assert dict(next(iter(expo.samples["shm_metrics_publisher_info"])))["publisher_pid"] == str(pub.pid)


def test_stopped_segment_kept_on_exit(name, start_publisher, exporters):
    pub = start_publisher(name, "--interval", "0.2", "--keep-on-exit")
    exp = exporters(name)
    wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1, what="up 1")
    assert pub.stop() == 0
    try:
        expo = scrape(exp.url + "/metrics")
        assert_down(expo, "stopped")
        # The segment's own facts are still shown: an alert can say which publisher stopped and when.
        assert dict(next(iter(expo.samples["shm_metrics_publisher_info"])))["publisher_pid"] == str(pub.pid)
        assert expo.value("shm_metrics_sample_timestamp_seconds") > 0
    finally:
        for path in shm_files(name):
            os.unlink(path)


def test_sigstopped_publisher_goes_stale_then_recovers(name, start_publisher, exporters):
    pub = start_publisher(name, "--interval", "0.2")  # stale after 2 x 0.2 + 1 = 1.4 s
    exp = exporters(name)
    wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1, what="up 1")
    os.kill(pub.pid, signal.SIGSTOP)
    try:
        expo = wait_scrape(exp.url + "/metrics", lambda e: up(e) == 0, what="up 0 while SIGSTOPped")
        assert_down(expo, "running")  # the header still says running: the publisher is hung, not gone
        if "shm_metrics_sample_age_seconds" in expo.samples:  # absent if it stopped in the middle of a write
            assert expo.value("shm_metrics_sample_age_seconds") > 1.4
        assert_down(scrape(exp.url + "/metrics"), "running")  # and stays down: no stale value served as fresh
    finally:
        os.kill(pub.pid, signal.SIGCONT)
    wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1, what="up 1 after SIGCONT")


@pytest.mark.parametrize("content", [b"NOTASEGMENT" * 1000, L.MAGIC + bytes(100), L.MAGIC, b""],
                         ids=["garbage", "short-header", "magic-only", "empty"])
def test_corrupt_file_under_the_name(name, exporters, content):
    path = L.segment_path(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, content)
        os.close(fd)
        exp = exporters(name)
        for _ in range(3):
            status, _, body = get(exp.url + "/metrics")
            assert status == 200
            assert_down(Exposition(body), "incompatible")
    finally:
        os.unlink(path)


def test_publisher_restart_is_picked_up(name, start_publisher, exporters):
    first = start_publisher(name, "--interval", "0.2")
    exp = exporters(name)

    def publisher_pid(e: Exposition) -> str | None:
        info = e.samples.get("shm_metrics_publisher_info")
        return dict(next(iter(info)))["publisher_pid"] if info else None

    wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1 and publisher_pid(e) == str(first.pid), what="first")
    # A crash: SIGKILL leaves the segment behind; the next publisher takes the name over (a new object).
    first.stop(signal.SIGKILL)
    second = start_publisher(name, "--interval", "0.2")
    expo = wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1 and publisher_pid(e) == str(second.pid),
                       what="the restarted publisher")
    assert expo.value("node_processes_pids") > 0
    # A clean stop removes the segment: absent, then a third publisher again without touching the exporter.
    second.stop()
    wait_for(lambda: not shm_files(name), what="segment removed")
    assert_down(scrape(exp.url + "/metrics"), "absent")
    third = start_publisher(name, "--interval", "0.2")
    wait_scrape(exp.url + "/metrics", lambda e: up(e) == 1 and publisher_pid(e) == str(third.pid), what="third")


def test_concurrent_scrapes(name, start_publisher, exporters):
    start_publisher(name, "--interval", "0.2")
    exp = exporters(name)
    errors: list[str] = []

    def worker() -> None:
        conn = keepalive_connection(exp.port)
        try:
            for _ in range(15):
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                text = resp.read().decode()
                if resp.status != 200 or Exposition(text).value("shm_metrics_up") != 1:
                    errors.append(f"{resp.status}: {text[:200]}")
        except Exception as exc:  # reported below, in the test's thread
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]

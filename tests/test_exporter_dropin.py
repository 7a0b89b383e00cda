"""The last of drop-in (issue 18), side by side with Debian's node_exporter 1.5.0 where the endpoint shows it.

- ``collect[]``: the same families for the same selection, node_exporter's status and body for a name it
  refuses, ``node_scrape_collector_*`` limited to the selection, the node_* text cached per filter;
- promhttp's handler metrics (503s from ``--web.max-requests`` counted) and the Go client's process metrics;
- ``--log.level``/``--log.format`` (logfmt, json) on both commands, as node_exporter writes them;
- ``--web.systemd-socket`` with a socket passed the way systemd passes it, repeated ``--web.listen-address``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import node_e2e
import pytest
from conftest import PUBLISHER, wait_for
from exporter_util import EXPORTER, Exporter, Process, free_port, get, need, scrape, wait_scrape

from shm_metrics.readers.cliargs import JsonFormatter, LogfmtFormatter, logfmt_value
from shm_metrics.readers.exporter.exposition import build
from shm_metrics.readers.exporter.owners import owner
from shm_metrics.readers.exporter.source import SegmentSource

GO_OWN = ("go_", "node_exporter_build_info")  # the Go runtime's and build's: a Python exporter has neither
OURS_ONLY = {"node_processes_pids", "node_processes_threads", "node_processes_state", "node_processes_threads_state"}


@contextlib.contextmanager
def node_exporter(*args: str):
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    proc = Process([binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.textfile.directory=", *args])
    try:
        proc.wait_for_line("Listening on")
        yield f"http://127.0.0.1:{port}/metrics", proc
    finally:
        proc.stop()


def family_names(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}


def scrape_rows(text: str) -> set[str]:
    return set(re.findall(r'^node_scrape_collector_success\{collector="([^"]+)"\}', text, re.M))


# ---------------------------------------------------------------- which collector owns which family

def test_every_declared_family_belongs_to_the_collector_that_declares_it(tmp_path):
    """The exporter's rule (owners.py) against the publisher's declarations: every collector, on node_exporter's
    end-to-end fixture, where each has its families (meminfo's fields, zfs's kstats, hwmon's sensors...)."""
    from shm_metrics.publisher.collectors import registry
    from shm_metrics.publisher.sampler import Sampler

    root = node_e2e.unpack(tmp_path) / node_e2e.FIXTURES
    options, filters = node_e2e.publisher_settings()
    sampler = Sampler(procfs=str(root / "proc"), sysfs=str(root / "sys"), rootfs=str(root),
                      udev_data=str(root / "udev" / "data"), collectors=registry(), options=options,
                      filters=filters)
    try:
        sample = sampler.sample()
        wrong, checked = [], 0
        for collector in sampler.collectors:
            declared = {fam.name for fam in collector.families}
            declared |= {fam.name for fam, _, _ in sample.all_series() if fam in collector.families}
            for name in declared:
                checked += 1
                want = collector.reports or ("processes",)  # the layout's own: node_exporter's processes names
                if owner(name) not in want:
                    wrong.append(f"{name}: {owner(name)}, declared by {collector.name} ({want})")
    finally:
        sampler.close()
    assert checked > 900 and not wrong, wrong
    assert owner("node_scrape_collector_success") is None and owner("shm_metrics_up") is None
    assert owner("node_textfile_scrape_error") == "textfile" and owner("process_open_fds") is None


# ---------------------------------------------------------------- collect[] against node_exporter

def test_collect_filter_selects_the_same_families_as_node_exporter(name, start_publisher):
    start_publisher(name, "--interval", "0.5")
    exp = Exporter(name)
    try:
        wait_scrape(exp.url + "/metrics", lambda e: e.value("shm_metrics_up") == 1, what="up 1")
        with node_exporter() as (theirs_url, _):
            ours_all, theirs_all = get(exp.url + "/metrics")[2], get(theirs_url)[2]
            common = scrape_rows(ours_all) & scrape_rows(theirs_all)
            assert {"cpu", "stat", "loadavg", "meminfo", "netdev", "netclass", "textfile"} <= common
            selections = [[c] for c in sorted(common)]
            selections += [["loadavg", "meminfo"], ["cpu", "cpufreq", "stat"], ["netdev", "netclass", "netdev"]]
            compared = 0
            for selection in selections:
                query = "?" + "&".join(f"collect[]={c}" for c in selection)
                # A host that changes under the test (interfaces created and removed by other tests) can make a
                # collector fail or differ on one side for one scrape: a few tries, the same answer in the end.
                for _ in range(5):
                    ours, theirs = get(exp.url + "/metrics" + query), get(theirs_url + query)
                    assert ours[0] == theirs[0] == 200, (selection, ours[0], theirs[0])
                    mine = {n for n in family_names(ours[2]) if n.startswith("node_")} - OURS_ONLY
                    others = {n for n in family_names(theirs[2]) if n.startswith("node_")}
                    others.discard("node_exporter_build_info")
                    if mine == others:
                        break
                    time.sleep(0.5)
                assert mine == others, (selection, sorted(mine - others), sorted(others - mine))
                assert scrape_rows(ours[2]) == scrape_rows(theirs[2]) == set(selection), selection
                # The exporter's own metrics stay, as node_exporter's do.
                for prefix in ("process_", "promhttp_"):
                    assert {n for n in family_names(ours[2]) if n.startswith(prefix)} == \
                           {n for n in family_names(theirs[2]) if n.startswith(prefix)}, prefix
                compared += 1
            # What node_exporter refuses, refused alike: status, body, content type.
            for query in ("collect[]=nonsense", "collect[]=processes", "collect[]=", "collect[]=loadavg&collect[]=x",
                          "collect[]=cpu&collect[]=drbd", "collect%5B%5D=bogus"):
                ours, theirs = get(f"{exp.url}/metrics?{query}"), get(f"{theirs_url}?{query}")
                assert (ours[0], ours[2]) == (theirs[0], theirs[2]) and ours[0] == 400, (query, ours, theirs)
                assert ours[1]["Content-Type"] == theirs[1]["Content-Type"], query
            # Parameters node_exporter does not know are ignored, as there.
            assert get(f"{exp.url}/metrics?exclude[]=cpu&foo=1")[0] == 200
    finally:
        exp.stop()
    print(f"\ncollect[]: {compared} selections equal to node_exporter's")


def stable(text: bytes) -> list[str]:
    """The lines that do not move between two scrapes of one sample."""
    return [line for line in text.decode().splitlines()
            if not line.startswith(("shm_metrics_sample_age_seconds ", "node_scrape_collector_duration_seconds"))]


def test_collect_filter_cache_per_filter(name, start_publisher):
    start_publisher(name, "--interval", "3600")
    source = SegmentSource(name)
    _, exposition = build(source, process_metrics=False)
    try:
        wait_for(lambda: b"shm_metrics_up 1\n" in exposition.render(), what="up 1")
        renders = exposition.renders
        exposition.render()
        load, both = exposition.render(["loadavg"]), exposition.render(["meminfo", "loadavg"])
        assert exposition.renders == renders + 2  # the unfiltered text was cached already; two filters, two texts
        for _ in range(3):
            assert stable(exposition.render(["loadavg"])) == stable(load)
            assert stable(exposition.render(["loadavg", "meminfo"])) == stable(both)
        assert exposition.renders == renders + 2  # each filter's text reused (in any order of the names)
        load_text = load.decode()
        assert "node_load1 " in load_text and "node_memory_" not in load_text and "node_cpu_" not in load_text
        assert scrape_rows(load_text) == {"loadavg"} and "node_textfile_scrape_error" not in load_text
        assert scrape_rows(exposition.render(["textfile"]).decode()) == {"textfile"}
        assert "node_memory_MemTotal_bytes " in both.decode() and scrape_rows(both.decode()) == {"loadavg", "meminfo"}
    finally:
        source.close()


def test_many_collect_filters_never_evict_the_unfiltered_text(name, start_publisher):
    """Any local client may choose collect[] subsets: more than the cache holds push out the oldest filters,
    never the plain scrape's text, and their renderers go with them."""
    from shm_metrics.readers.exporter.exposition import MAX_CACHED_FILTERS

    start_publisher(name, "--interval", "3600")
    source = SegmentSource(name)
    _, exposition = build(source, process_metrics=False)
    try:
        wait_for(lambda: b"shm_metrics_up 1\n" in exposition.render(), what="up 1")
        plain = exposition.render()
        renders = exposition.renders
        names = ["loadavg", "meminfo", "cpu", "stat", "netdev", "diskstats", "filefd", "filesystem"]
        filters = [[a, b] for a in names for b in names if a < b][:3 * MAX_CACHED_FILTERS]
        for chosen in filters:
            exposition.render(chosen)
        assert exposition.renders == renders + len(filters)
        assert stable(exposition.render()) == stable(plain) and exposition.renders == renders + len(filters)
        assert len(exposition._renderers) <= MAX_CACHED_FILTERS and None in exposition._renderers
    finally:
        source.close()


# ---------------------------------------------------------------- promhttp and process metrics

def promhttp(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("promhttp_")}


def test_promhttp_counts_scrapes_as_node_exporter_does(name, exporters):
    exp = exporters(name)
    with node_exporter() as (theirs_url, _):
        ours_seen, theirs_seen = [], []
        for _ in range(3):
            ours_seen.append(promhttp(get(exp.url + "/metrics")[2]))
            theirs_seen.append(promhttp(get(theirs_url)[2]))
        get(exp.url + "/metrics?collect[]=nonsense")  # refused before promhttp's handler: not counted
        get(theirs_url + "?collect[]=nonsense")
        get(exp.url + "/")
        get(theirs_url.replace("/metrics", "/"))
        ours_seen.append(promhttp(get(exp.url + "/metrics")[2]))
        theirs_seen.append(promhttp(get(theirs_url)[2]))
    assert ours_seen == theirs_seen
    assert ours_seen[-1]['promhttp_metric_handler_requests_total{code="200"}'] == 3
    assert ours_seen[-1]["promhttp_metric_handler_requests_in_flight"] == 1  # the scrape that reads it


def test_disable_exporter_metrics_leaves_what_node_exporter_leaves(name, exporters):
    exp = exporters(name, "--web.disable-exporter-metrics")
    with node_exporter("--web.disable-exporter-metrics") as (theirs_url, _):
        theirs = {n for n in family_names(get(theirs_url)[2]) if not n.startswith("node_")}
    ours = {n for n in family_names(get(exp.url + "/metrics")[2]) if not n.startswith(("node_", "shm_metrics_"))}
    assert ours == theirs == {"promhttp_metric_handler_errors_total"}


def test_process_metrics_are_the_go_clients(name, exporters):
    exp = exporters(name)
    with node_exporter() as (theirs_url, _):
        theirs = scrape(theirs_url)
    ours = scrape(exp.url + "/metrics")
    names = {n for n in theirs.names("process_")}
    assert "process_virtual_memory_max_bytes" in names and names <= ours.names("process_")
    for n in names:
        assert (ours.types[n], ours.help[n]) == (theirs.types[n], theirs.help[n]), n
    # Same limits, same values: both read RLIMIT_AS and RLIMIT_NOFILE (each raised to the hard limit at start).
    assert ours.value("process_virtual_memory_max_bytes") == theirs.value("process_virtual_memory_max_bytes")
    assert ours.value("process_max_fds") == theirs.value("process_max_fds")
    pid = exp.proc.pid
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert abs(ours.value("process_resident_memory_bytes") - rss) < 16 << 20
    assert ours.value("process_open_fds") == pytest.approx(len(os.listdir(f"/proc/{pid}/fd")), abs=3)
    assert abs(ours.value("process_start_time_seconds") - Path(f"/proc/{pid}").stat().st_mtime) < 60


def test_503s_from_max_requests_are_counted(name):
    """A scrape held in flight, one more refused 503 (promhttp's body), and the counters say so."""
    from shm_metrics.readers.exporter.exposition import Exposition
    from shm_metrics.readers.exporter.server import App, ExporterServer
    from shm_metrics.readers.exporter.webconfig import WebConfigWatcher

    class Held(Exposition):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.entered = threading.Semaphore(0)
            self.release = threading.Event()
            self.hold = True

        def render(self, collect=None):
            if self.hold:
                self.hold = False
                self.entered.release()
                self.release.wait(30)
            return super().render(collect)

    source = SegmentSource(name)
    _, plain = build(source)
    exposition = Held(plain.shm, True, None, None)
    server = ExporterServer(("127.0.0.1", 0), socket.AF_INET, App(exposition, "/metrics", WebConfigWatcher(None),
                                                                    name), max_requests=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        held = []
        first = threading.Thread(target=lambda: held.append(get(url)))
        first.start()
        assert exposition.entered.acquire(timeout=10)
        status, headers, body = get(url)
        assert status == 503 and body == "Limit of concurrent requests reached (1), try again later.\n"
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        during = promhttp(exposition.render().decode())
        assert during["promhttp_metric_handler_requests_in_flight"] == 1  # the held one
        exposition.release.set()
        first.join(10)
        assert held[0][0] == 200
        after = promhttp(get(url)[2])
        assert after['promhttp_metric_handler_requests_total{code="503"}'] == 1
        assert after['promhttp_metric_handler_requests_total{code="200"}'] == 1
        assert after["promhttp_metric_handler_requests_in_flight"] == 1
        assert after['promhttp_metric_handler_errors_total{cause="gathering"}'] == 0
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        source.close()


# ---------------------------------------------------------------- textfile without a directory

def test_textfile_scrape_error_0_without_a_directory(name, exporters):
    exp = exporters(name)
    text = get(exp.url + "/metrics")[2]
    with node_exporter() as (theirs_url, _):
        theirs = get(theirs_url)[2]
    block = "\n".join(line for line in text.splitlines() if "node_textfile_" in line)
    assert block == "\n".join(line for line in theirs.splitlines() if "node_textfile_" in line)
    assert block.endswith("\nnode_textfile_scrape_error 0")


# ---------------------------------------------------------------- logging

def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord("shm-exporter", level, "/x/cli.py", 42, message, (), None)
    record.created = 1_780_000_000.123456
    return record


def test_logfmt_and_json_lines_are_go_kits():
    assert LogfmtFormatter().format(_record("listening on http://[::1]:19100/metrics")) == (
        'ts=2026-05-28T20:26:40.123Z caller=cli.py:42 level=info msg="listening on http://[::1]:19100/metrics"')
    assert LogfmtFormatter().format(_record("stopped", logging.WARNING)).endswith("level=warn msg=stopped")
    assert logfmt_value("") == "" and logfmt_value("a=b") == '"a=b"' and logfmt_value('say "hi"\n') == \
        r'"say \"hi\"\n"' and logfmt_value("tab\there") == r'"tab\there"' and logfmt_value("\x1b") == r'"\u001b"'
    assert logfmt_value("ünïcode") == "ünïcode"
    line = JsonFormatter().format(_record("a <b> & \"c\"", logging.ERROR))
    assert line == ('{"caller":"cli.py:42","level":"error","msg":"a <b> & \\"c\\"",'
                    '"ts":"2026-05-28T20:26:40.123Z"}')


def _log_lines(argv: list[str], until: str, env: dict | None = None) -> list[str]:
    proc = Process(argv, env=env)
    try:
        proc.wait_for_line(until)
    finally:
        proc.stop()
    return proc.lines


def test_both_commands_log_as_node_exporter(name):
    logfmt = re.compile(r'^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z caller=[\w.]+:\d+ level=(debug|info|warn|error) '
                        r'msg=("([^"\\]|\\.)*"|\S+)( |$)')
    with node_exporter() as (_, proc):
        theirs_logfmt = proc.lines[0]
    with node_exporter("--log.format=json") as (_, proc):
        theirs_json = json.loads(proc.lines[0])
    assert logfmt.match(theirs_logfmt), theirs_logfmt  # the pattern is node_exporter's own
    publisher = [*PUBLISHER, "--name", name, "--interval", "3600"]
    exporter = [*EXPORTER, "--name", name, "--web.listen-address", "127.0.0.1:0"]
    for argv, until in ((publisher, "publishing"), (exporter, "listening on")):
        lines = _log_lines(argv, until)
        assert lines and all(logfmt.match(line) for line in lines), lines
        lines = _log_lines([*argv, "--log.format=json"], until)
        objects = [json.loads(line) for line in lines]
        assert objects and all(set(o) == {"caller", "level", "msg", "ts"} for o in objects), lines
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]) for o in objects)
        assert set(theirs_json) >= {"caller", "level", "msg", "ts"} and len(theirs_json["ts"]) == len(objects[0]["ts"])
    # --log.level=warn leaves the info lines out; --log-level is the same flag.
    for flag in ("--log.level=warn", "--log-level=warn", "--log-level=warning"):
        port = free_port()
        exp = Process([*EXPORTER, "--name", name, "--web.listen-address", f"127.0.0.1:{port}", flag])
        pub = Process([*publisher, flag])
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_for(lambda url=url: get_or_none(url) == 1, what="the exporter sees the publisher")
        finally:
            exp.stop()
            pub.stop()
        assert not [line for line in exp.lines + pub.lines if "level=info" in line], (flag, exp.lines, pub.lines)
    for bad in ("--log.level=verbose", "--log.format=text"):
        out = subprocess.run([*EXPORTER, bad], capture_output=True, text=True, timeout=20)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr


def get_or_none(url: str) -> float | None:
    """shm_metrics_up at ``url``, None while nothing answers there."""
    try:
        return scrape(url).value("shm_metrics_up")
    except OSError:
        return None


# ---------------------------------------------------------------- listeners

def test_repeated_listen_addresses(name, exporters):
    second = free_port()
    exp = exporters(name, "--web.listen-address", f"[::1]:{second}", "--web.listen-address", "127.0.0.2:0")
    listening = [line for line in exp.lines if "listening on" in line]
    assert len(listening) == 3, exp.lines
    assert get(exp.url + "/metrics")[0] == 200
    assert get(f"http://[::1]:{second}/metrics")[0] == 200
    third = int(re.search(r"127\.0\.0\.2:(\d+)/", listening[2])[1])
    assert get(f"http://127.0.0.2:{third}/metrics")[0] == 200


def test_listen_address_in_use_is_exit_1_and_releases_the_others(name):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        first = free_port()
        out = subprocess.run([*EXPORTER, "--name", name, "--web.listen-address", f"127.0.0.1:{first}",
                              "--web.listen-address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"shm-exporter: error: cannot listen on 127.0.0.1:{port}: Address already in use"], out.stderr


def _activated(name: str, sockets: list[socket.socket], *args: str, listen_pid: str = "$$") -> Process:
    """shm-exporter started the way systemd starts a socket-activated service: the listening sockets as
    descriptors 3, 4, ..., LISTEN_FDS their count and LISTEN_PID the pid of the process exec'd (a shell that
    moves the descriptors into place, sets the variables and execs the exporter, keeping its pid)."""
    moves = " ".join(f"{3 + i}<&{s.fileno()}" for i, s in enumerate(sockets))
    closes = " ".join(f"{s.fileno()}<&-" for s in sockets)
    script = (f'exec {moves}; exec {closes}; export LISTEN_FDS={len(sockets)} LISTEN_PID={listen_pid} '
              f'LISTEN_FDNAMES=shm-exporter.socket; exec "$@"')
    argv = ["bash", "-c", script, "bash", *EXPORTER, "--name", name, "--web.systemd-socket", *args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, pass_fds=[s.fileno() for s in sockets])
    wrapped = Process.__new__(Process)
    wrapped.argv, wrapped.proc, wrapped.lines = argv, proc, []
    wrapped._reader = threading.Thread(target=wrapped._drain, daemon=True)
    wrapped._reader.start()
    return wrapped


def test_systemd_socket_activation(name):
    listeners = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.listen()
        listeners.append(sock)
    path = Path(tempfile.mkdtemp(prefix="shm-exporter-sd-")) / "metrics.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    unix.listen()
    listeners.append(unix)
    ports = [s.getsockname()[1] for s in listeners[:2]]
    # The listen address is ignored with --web.systemd-socket, as in node_exporter.
    proc = _activated(name, listeners, "--web.listen-address", "127.0.0.1:1")
    try:
        for sock in listeners:
            sock.close()  # the exporter holds its own copies: systemd keeps them too, but need not
        proc.wait_for_line("listening on")
        wait_for(lambda: len([line for line in proc.lines if "listening on" in line]) == 3, what="three listeners")
        assert get(f"http://127.0.0.1:{ports[0]}/metrics")[0] == 200
        assert get(f"http://[::1]:{ports[1]}/metrics")[0] == 200
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"shm_metrics_up 0" in answer
        assert "systemd activated listeners" in proc.output()
    finally:
        assert proc.stop() == 0, proc.output()
        path.unlink()
        path.parent.rmdir()


def test_systemd_listeners_reads_and_removes_the_variables():
    from shm_metrics.readers.exporter.server import systemd_listeners

    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "OTHER": "y"}
    assert systemd_listeners(env) == [] and env == {"OTHER": "y"}  # another process's: ignored, removed
    assert systemd_listeners({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == []


def test_systemd_socket_without_activation_is_exit_1(name):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        proc = _activated(name, [sock], listen_pid="1")  # meant for another process: not ours
        assert proc.proc.wait(20) == 1
    finally:
        sock.close()
    proc._reader.join(5)
    assert proc.lines == ["shm-exporter: error: --web.systemd-socket: no socket activation file descriptors found "
                          "(LISTEN_FDS, LISTEN_PID)"], proc.lines
    out = subprocess.run([*EXPORTER, "--name", name, "--web.systemd-socket"], capture_output=True, text=True,
                         timeout=20, env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")})
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr

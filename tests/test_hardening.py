"""Issue 9, the readers' side: every other local user is hostile.

A segment planted by another user, truncated under its readers, left by a
publisher that died, lying in its counts or header values, or a bad
environment variable: each gets one line on stderr and a documented exit code
(shm-read), a state of its own (shm-exporter), never a traceback, a hang or
SIGBUS.  The segments here are real files under /dev/shm, copied from a real
publisher and altered the way an attacker would.
"""

from __future__ import annotations

import math
import os
import signal
import struct
import subprocess
import time

import pytest
from conftest import PUBLISHER, READER, run_reader, wait_for
from exporter_util import EXPORTER, Exposition, scrape, wait_scrape

from shm_metrics import shm_layout as L
from shm_metrics.readers import IncompatibleSegment, Reader, UntrustedSegment

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a file owned by another user")


# ----------------------------------------------------------------- altering a real segment
def altered(data: bytes, header: dict | None = None, scalars: dict | None = None,
            counts: dict | None = None, history_times: list[float] | None = None) -> bytes:
    """``data`` (a real segment) with header fields, scalars, section counts or history times replaced."""
    buf = bytearray(data)
    _, layout = L.parse_header(data, len(data))
    for field, value in (header or {}).items():
        struct.pack_into("<" + L.HEADER.by_name[field].code, buf, L.HEADER.offsets[field], value)
    for field, value in (scalars or {}).items():
        struct.pack_into("<" + L.SCALARS.by_name[field].code, buf, layout.offset_of("scalars", field), value)
    for section, value in (counts or {}).items():
        entry = layout.section_entry_offset(L.SECTION_INDEX[section])
        struct.pack_into("<I", buf, entry + L.SECTION.offsets["count"], value)
    h = L.SECTION_INDEX["history"]
    for k, value in enumerate(history_times or []):
        struct.pack_into("<d", buf, layout.offsets[h] + k * L.HISTORY.size + L.HISTORY.offsets["sample_time"], value)
    return bytes(buf)


def with_family_value(data: bytes, family: str, value: float) -> bytes:
    """``data`` with the (single) series of ``family`` set to ``value``: what shm-exporter serves."""
    from shm_metrics import families as F

    buf = bytearray(data)
    _, layout = L.parse_header(data, len(data))
    index = F.read_catalog(memoryview(data), layout).index[family]
    series = L.SECTION_INDEX["series"]
    count = struct.unpack_from("<I", data, layout.section_entry_offset(series) + L.SECTION.offsets["count"])[0]
    rows = [layout.offsets[series] + k * L.SERIES.size for k in range(count)]
    row = next(r for r in rows if struct.unpack_from("<I", data, r)[0] == index)
    struct.pack_into("<d", buf, row + L.SERIES.offsets["value"], value)
    return bytes(buf)


def fresh(data: bytes, **scalars: float) -> bytes:
    """A copy that stays fresh for the test's length: stamped now, with a one-hour interval."""
    return altered(data, header={"sample_time": time.time(), "interval_seconds": 3600.0}, scalars=scalars)


def capacity(data: bytes, section: str) -> int:
    _, layout = L.parse_header(data, len(data))
    return layout.capacities[L.SECTION_INDEX[section]]


def assert_one_line(out: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The documented exit code, one line on stderr holding ``words``, and no traceback."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def exporter_state(expo: Exposition) -> str:
    states = expo.samples["shm_metrics_segment_state"]
    return next(dict(labels)["state"] for labels, value in states.items() if value == 1)


# ----------------------------------------------------------------- 1. squatting
@as_root
def test_a_segment_planted_by_another_user_is_refused(name, make_segment_file, real_segment_bytes, exporters):
    planted = with_family_value(fresh(real_segment_bytes, procs_total=31337), "node_processes_pids", 31337)
    path = make_segment_file(planted)
    os.chown(path, NOBODY, NOBODY)  # as if user nobody had created it before the publisher started

    for args in (["--once", "procs_total"], ["--once", "--json"], ["--info"], ["--history", "load1"],
                 ["top", "--once"]):
        out = run_reader(*args, "--name", name)
        assert_one_line(out, 4, "owned by nobody", "--publisher-user", "SHM_METRICS_PUBLISHER_USER")
        assert "31337" not in out.stdout
    with pytest.raises(UntrustedSegment):
        Reader(name)

    exp = exporters(name)
    expo = scrape(exp.url + "/metrics")
    assert exporter_state(expo) == "untrusted"
    assert expo.value("shm_metrics_up") == 0
    assert "node_processes_pids" not in expo.samples

    # The publisher's own user, named: trusted again, by option, by environment and in the exporter.
    assert run_reader("--name", name, "--once", "procs_total", "--publisher-user", "nobody").stdout == "31337\n"
    env = dict(os.environ, SHM_METRICS_PUBLISHER_USER=str(NOBODY))
    assert run_reader("--name", name, "--once", "procs_total", env=env).stdout == "31337\n"
    named = exporters(name, "--publisher-user", "nobody")
    assert scrape(named.url + "/metrics").value("node_processes_pids") == 31337


def test_an_unknown_publisher_user_is_a_usage_error(name):
    assert_one_line(run_reader("--name", name, "--once", "--publisher-user", "no-such-user-x"), 2,
                    "--publisher-user", "no-such-user-x")
    env = dict(os.environ, SHM_METRICS_PUBLISHER_USER="no-such-user-x")
    assert_one_line(run_reader("--name", name, "--once", "procs_total", env=env), 2, "SHM_METRICS_PUBLISHER_USER")


# ----------------------------------------------------------------- 2. truncation under readers
@pytest.mark.parametrize("size", [0, 4096])
def test_truncating_a_segment_under_the_exporter_and_a_follower(name, make_segment_file, real_segment_bytes,
                                                               exporters, size):
    path = make_segment_file(fresh(real_segment_bytes))
    exp = exporters(name)
    assert scrape(exp.url + "/metrics").value("shm_metrics_up") == 1
    follower = subprocess.Popen([*READER, "--name", name, "-f", "procs_total"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline().strip().isdigit()  # it has the segment mapped and has read it
        # Truncate while it sleeps until the next sample, as a follower does nearly all the time (the
        # microseconds between its size check and its read are the owner's own window: LAYOUT.md).
        time.sleep(0.3)
        os.truncate(path, size)  # what the owner, and only the owner, can do to it
        expo = wait_scrape(exp.url + "/metrics", lambda e: exporter_state(e) == "incompatible",
                           what="the exporter to see the truncation")
        assert expo.value("shm_metrics_up") == 0
        time.sleep(1.5)  # the follower wakes at least once a second; it must be alive after that
        assert follower.poll() is None, f"follower died: {follower.returncode} {follower.stderr.read()}"
        assert exp.proc.poll() is None, "exporter died"
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=10)
    assert follower.returncode == 130, err  # interrupted by us, not killed by SIGBUS (-7)
    assert "changed size" in err or "too small" in err or "header says" in err, err


# ----------------------------------------------------------------- 5. a dead publisher reads as dead
def test_a_sigkilled_publisher_reads_as_dead(name, start_publisher, exporters):
    pub = start_publisher(name, "--interval", "0.1")
    exp = exporters(name)
    wait_scrape(exp.url + "/metrics", lambda e: e.value("shm_metrics_up") == 1, what="up")
    try:
        pub.proc.kill()
        assert pub.proc.wait(10) == -signal.SIGKILL
        header = dict(zip(L.HEADER.names, L.HEADER.struct.unpack_from(open(L.segment_path(name), "rb").read())))
        assert header["state"] == L.STATE_RUNNING  # the header still claims a live publisher
        assert_one_line(run_reader("--name", name, "--once", "procs_total"), 5, "publisher not running")
        info = run_reader("--name", name, "--info", "--json")
        assert info.returncode == 5
        assert '"state": "dead"' in info.stdout.replace('":"', '": "')
        expo = wait_scrape(exp.url + "/metrics", lambda e: exporter_state(e) == "dead", what="dead")
        assert expo.value("shm_metrics_up") == 0
        with Reader(name) as reader:
            assert reader.publisher_alive() is False
            snap = reader.read(check_alive=True)
            assert snap.state == "dead" and not snap.is_fresh()
    finally:
        for path in (L.segment_path(name), L.semaphore_path(name), L.demand_path(name)):
            if os.path.lexists(path):
                os.unlink(path)


def test_readers_never_take_the_liveness_lock(name, make_segment_file, real_segment_bytes):
    """A reader only tests the lock: with no publisher holding it, it stays free while readers look at it,
    so a publisher starting meanwhile is never told the name is in use."""
    path = make_segment_file(fresh(real_segment_bytes), live=False)  # nobody holds the lock
    fd = os.open(path, os.O_RDWR)
    try:
        with Reader(name) as reader:
            assert reader.publisher_alive() is False
            assert reader.read(check_alive=True).state == "dead"
            L.hold_liveness_lock(fd)  # free: the reader, still attached, did not take it
            assert reader.publisher_alive() is True  # and it sees whoever does
        # A one-shot reader run meanwhile sees the holder alive and leaves the lock to it.
        assert run_reader("--name", name, "--once", "procs_total").returncode == 0
        other = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                L.hold_liveness_lock(other)  # still held, by this test's first descriptor
        finally:
            os.close(other)
    finally:
        os.close(fd)


# ----------------------------------------------------------------- 6. lying counts
@pytest.mark.parametrize("section", ["cpus", "net", "top_cpu", "process_states"])
def test_a_count_beyond_capacity_is_refused_on_every_path(name, make_segment_file, real_segment_bytes, section):
    data = fresh(real_segment_bytes)
    make_segment_file(altered(data, counts={section: capacity(data, section) + 1}))
    for args in (["--once", "procs_total"], ["--once"], ["--info"], ["--history", "load1"], ["--once", "--json"]):
        assert_one_line(run_reader("--name", name, *args), 4, section)
    with Reader(name) as reader:
        with pytest.raises(IncompatibleSegment, match=section):
            reader.read(arrays=False)
        with pytest.raises(IncompatibleSegment, match=section):
            reader.history()


# ----------------------------------------------------------------- 7. hostile values in a valid header
@pytest.mark.parametrize("interval", [0.0, math.nan, math.inf, -1.0, 1e9])
def test_an_impossible_interval_is_refused(name, make_segment_file, real_segment_bytes, exporters, interval):
    make_segment_file(altered(fresh(real_segment_bytes), header={"interval_seconds": interval}))
    for args in (["--once", "procs_total"], ["--once", "--json"], ["--info"], ["--history", "load1", "--since", "5"]):
        assert_one_line(run_reader("--name", name, *args), 4, "interval_seconds")
    # A follower waits for a valid segment instead, saying why, and prints nothing from this one.
    follower = subprocess.Popen([*READER, "--name", name, "--json", "--count", "1"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        line = follower.stderr.readline()
        assert "waiting" in line and "interval_seconds" in line, line
        assert follower.poll() is None
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=10)
    assert out == "" and "Traceback" not in err
    expo = scrape(exporters(name).url + "/metrics")
    assert exporter_state(expo) == "incompatible" and expo.value("shm_metrics_up") == 0


@pytest.mark.parametrize("sample_time", [-math.inf, math.inf, math.nan])
def test_a_sample_time_that_is_no_time_is_refused(name, make_segment_file, real_segment_bytes, exporters,
                                                  sample_time):
    make_segment_file(altered(fresh(real_segment_bytes), header={"sample_time": sample_time}))
    for args in (["--once", "procs_total"], ["--once"], ["--once", "--json"], ["--info"], ["--history", "load1"]):
        assert_one_line(run_reader("--name", name, *args), 4, "sample_time")
    with Reader(name) as reader, pytest.raises(IncompatibleSegment, match="sample_time"):
        reader.read()
    expo = scrape(exporters(name).url + "/metrics")
    assert exporter_state(expo) == "incompatible" and expo.value("shm_metrics_up") == 0


def test_a_sample_from_the_future_is_never_fresh(name, make_segment_file, real_segment_bytes, exporters):
    make_segment_file(altered(fresh(real_segment_bytes), header={"sample_time": time.time() + 1e6}))
    assert_one_line(run_reader("--name", name, "--once", "procs_total"), 5, "in the future")
    expo = scrape(exporters(name).url + "/metrics")
    assert expo.value("shm_metrics_up") == 0 and "node_processes_pids" not in expo.samples


def test_absurd_values_are_rendered_not_raised(name, make_segment_file, real_segment_bytes):
    data = altered(fresh(real_segment_bytes, boot_time=1e300, uptime_seconds=math.inf, load1=math.nan),
                   history_times=[math.nan, 1e300, -math.inf])
    make_segment_file(data)
    table = run_reader("--name", name, "--once")
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
    assert "invalid time" in table.stdout and "inf s" in table.stdout
    as_json = run_reader("--name", name, "--once", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert '"load1":null' in as_json.stdout and "NaN" not in as_json.stdout  # JSON has no NaN
    for args in (["--history", "load1"], ["--history", "load1", "--json"], ["--history", "forks_per_second"],
                 ["--once", "load1", "uptime_seconds", "boot_time"]):
        out = run_reader("--name", name, *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr)


# ----------------------------------------------------------------- 8. bad environment values
@pytest.mark.parametrize("command", [
    [*READER, "--once", "procs_total"], [*READER, "--once"], [*READER, "--info"], [*READER, "top", "--once"],
    PUBLISHER, EXPORTER,
])
def test_a_bad_segment_name_in_the_environment_is_one_line_naming_it(command):
    env = dict(os.environ, SHM_METRICS_NAME="bad/name")
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=20)
    line = assert_one_line(out, 2, "SHM_METRICS_NAME", "bad/name")
    assert "--name" not in line  # the user never passed it
    wait_for(lambda: not os.path.exists("/dev/shm/bad"), what="nothing created")

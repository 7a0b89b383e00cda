"""shm-read (``python -m readers``) and the reader API against real publishers and real segments.

Every test runs under its own unique segment name (the ``name`` fixture fails a
test that leaves files in /dev/shm); every process is started here and stopped
by its own PID.  Corrupt segments are hand-made files under the test's name,
removed by the test itself.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import READER, Publisher, run_reader, segment_state, seq_in_file, shm_files, wait_for

from shm_metrics import shm_layout as L
from shm_metrics.readers import NoSegment, Reader

REPO = Path(__file__).resolve().parent.parent
INTERVAL = "0.2"
FAST = "0.1"
NOBODY = 65534


# ----------------------------------------------------------------- helpers
def remove_files(name: str) -> None:
    for path in shm_files(name):
        os.unlink(path)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_clean_failure(out: subprocess.CompletedProcess, code: int) -> None:
    """Exit ``code`` exactly (a signal gives a negative code), a message, no traceback."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip(), "expected a message on stderr"


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def sigstop_between_writes(pub: Publisher) -> None:
    """SIGSTOP the publisher at a moment when seq is even (not in the middle of a write)."""
    path = L.segment_path(pub.name)
    for _ in range(50):
        os.kill(pub.pid, signal.SIGSTOP)
        wait_for(lambda: process_state(pub.pid) == "T", what="publisher to stop")
        if seq_in_file(path) % 2 == 0:
            return
        os.kill(pub.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("could not stop the publisher outside a write")


class Background:
    """A reader process in the background with stdout/stderr going to files."""

    def __init__(self, tmp_path: Path, *args: str):
        self.out_path = tmp_path / "reader.out"
        self.err_path = tmp_path / "reader.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([*READER, *args], stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def lines(self) -> list[str]:
        # only complete lines: the reader flushes after each one
        text = self.stdout()
        return text.splitlines()[: text.count("\n")]

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def background(tmp_path):
    started: list[Background] = []

    def start(*args: str) -> Background:
        bg = Background(tmp_path, *args)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.kill()


# ----------------------------------------------------------------- --once output
def test_once_json_has_every_key_with_json_types(name, start_publisher):
    pub = start_publisher(name, "--interval", INTERVAL)
    out = run_reader("--name", name, "--once", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1, "one JSON object on one line"
    data = json.loads(out.stdout)
    assert isinstance(data, dict)

    header = ("seq", "sample_time", "full_sample_time", "interval", "publisher_pid", "state", "age", "hostname",
              "layout_version")
    arrays = {"cpus", "net", "disks", "filesystems", "top_cpu", "top_rss", "process_states"}
    expected = set(header) | set(L.SCALARS.names) | arrays | {"rates", "families"}
    assert set(data) == expected
    # node_exporter's families: type, HELP, label names, and each series' labels and value
    families = data["families"]
    assert families["node_load1"]["series"] == [{"labels": {}, "value": data["load1"]}]
    for fam in families.values():
        assert fam["type"] in ("gauge", "counter", "untyped") and isinstance(fam["help"], str) and fam["series"]
        for series in fam["series"]:
            assert list(series["labels"]) == fam["labels"] and isinstance(series["value"], float)

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_float(v) -> bool:
        return isinstance(v, float)

    assert is_int(data["seq"]) and data["seq"] > 0 and data["seq"] % 2 == 0
    assert is_int(data["publisher_pid"]) and data["publisher_pid"] == pub.pid
    assert is_int(data["layout_version"]) and data["layout_version"] == L.LAYOUT_VERSION
    assert is_float(data["sample_time"]) and is_float(data["age"]) and data["age"] >= 0
    assert is_float(data["interval"]) and data["interval"] == float(INTERVAL)
    assert data["state"] == "running"
    assert data["hostname"] == os.uname().nodename

    # scalars: the layout's C type decides the JSON type
    for field in L.SCALARS.fields:
        value = data[field.name]
        if field.is_integer:
            assert is_int(value), (field.name, value)
            assert value >= 0, field.name
        else:
            assert is_float(value), (field.name, value)
    for key, value in data.items():
        if key.endswith("_bytes") or key.endswith("_total") or key.startswith("procs_"):
            assert is_int(value), (key, value)
        if key.endswith("_seconds") or key.startswith("cpu_seconds_") or key.startswith("load"):
            assert is_float(value), (key, value)
    for key in ("boot_time", "uptime_seconds"):
        assert is_float(data[key]) and data[key] > 0
    assert is_int(data["cpu_count"]) and data["cpu_count"] >= 1
    assert 0.0 <= data["cpu_percent"] <= 100.0
    assert data["mem_total_bytes"] > 0

    # arrays
    assert len(data["cpus"]) == data["cpu_count"]
    for row in data["cpus"]:
        assert set(row) == set(L.CPU.names)
        assert is_int(row["cpu"])
        assert is_float(row["percent"]) and 0.0 <= row["percent"] <= 100.0
        for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
            assert is_float(row[mode]) and row[mode] >= 0
    assert [row["cpu"] for row in data["cpus"]] == sorted({row["cpu"] for row in data["cpus"]})
    for rec_name, rec in (("net", L.NET), ("disks", L.DISK), ("filesystems", L.FILESYSTEM)):
        for row in data[rec_name]:
            assert set(row) == set(rec.names), rec_name
            for field in rec.fields:
                value = row[field.name]
                if field.is_string:
                    assert isinstance(value, str) and value, (rec_name, field.name)
                elif field.is_integer:
                    assert is_int(value), (rec_name, field.name, value)
                else:
                    assert is_float(value), (rec_name, field.name, value)
            for key, value in row.items():
                if key.endswith("_bytes"):
                    assert is_int(value), (rec_name, key)
    assert "lo" not in {row["device"] for row in data["net"]}  # node_exporter's default filter
    assert "/" in {row["mountpoint"] for row in data["filesystems"]}
    for row in data["disks"]:
        assert is_float(row["io_time_seconds"])


def test_once_table_is_readable(name, start_publisher):
    pub = start_publisher(name, "--interval", INTERVAL)
    out = run_reader("--name", name, "--once")
    assert out.returncode == 0, out.stderr
    assert f"publisher pid {pub.pid} (running)" in out.stdout
    assert re.search(r"^procs_total\s+\d+$", out.stdout, re.M), out.stdout
    assert re.search(r"^mem_total_bytes\s+\d+\s+\(\d+\.\d (GiB|MiB)\)$", out.stdout, re.M)
    for section in ("cpus:", "net:", "filesystems:"):
        assert re.search(rf"^{section}$", out.stdout, re.M), section
    assert "Traceback" not in out.stderr and out.stderr == ""


def test_once_single_field_prints_bare_integer(name, start_publisher):
    start_publisher(name, "--interval", INTERVAL)
    out = run_reader("--name", name, "--once", "procs_total")
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"\d+\n", out.stdout), repr(out.stdout)
    assert int(out.stdout) > 0


def test_once_several_fields_print_field_value_lines(name, start_publisher):
    start_publisher(name, "--interval", INTERVAL)
    out = run_reader("--name", name, "--once", "procs_total", "load1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    assert re.fullmatch(r"procs_total \d+", lines[0]), lines[0]
    assert re.fullmatch(r"load1 \d+(\.\d+)?", lines[1]), lines[1]
    assert abs(float(lines[1].split()[1]) - os.getloadavg()[0]) < 5


# ----------------------------------------------------------------- usage errors
def test_a_mistyped_field_is_one_short_line_with_the_closest_names(name, start_publisher):
    start_publisher(name, "--interval", INTERVAL)
    out = run_reader("--name", name, "--once", "procs_totl")
    assert_clean_failure(out, 2)
    assert out.stdout == "" and out.stderr.count("\n") == 1 and len(out.stderr) < 150, out.stderr
    assert "'procs_totl'" in out.stderr and "did you mean procs_total" in out.stderr
    nothing_close = run_reader("--name", name, "--once", "zzzz")
    assert_clean_failure(nothing_close, 2)
    assert "--list-fields" in nothing_close.stderr and nothing_close.stderr.count("\n") == 1
    history = run_reader("--name", name, "--history", "load_1")
    assert_clean_failure(history, 2)
    assert "did you mean load1" in history.stderr and history.stderr.count("\n") == 1


def test_every_key_of_json_can_be_asked_for_by_name(name, start_publisher):
    start_publisher(name, "--interval", INTERVAL)
    listed = run_reader("--list-fields")
    assert listed.returncode == 0
    fields = listed.stdout.split()
    wait_for(lambda: json.loads(run_reader("--name", name, "--once", "--json").stdout)["rates"], what="rates")
    keys = list(json.loads(run_reader("--name", name, "--once", "--json").stdout))
    assert set(keys) <= set(fields), set(keys) - set(fields)
    out = run_reader("--name", name, "--once", "--json", *keys)
    assert out.returncode == 0, out.stderr
    assert list(json.loads(out.stdout)) == keys
    rates = run_reader("--name", name, "--once", "rates")
    assert rates.returncode == 0 and set(json.loads(rates.stdout)) >= {"over_seconds", "forks_per_second"}


@pytest.mark.parametrize("args", [
    ["--name", "{name}", "top", "--once", "--json"],
    ["top", "--name", "{name}", "--once", "--json"],
    ["--once", "top", "--name", "{name}", "--json"],
    ["--max-age", "30", "--json", "top", "--once", "--name={name}"],
])
def test_options_mean_the_same_before_and_after_the_subcommand(name, start_publisher, args):
    start_publisher(name, "--interval", INTERVAL)
    out = run_reader(*(a.format(name=name) for a in args))
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) >= {"by_cpu", "by_rss", "states"}


@pytest.mark.parametrize("command", [[], ["top"]])
def test_every_command_takes_version_help_and_checks_max_age_alike(command):
    version = run_reader(*command, "--version")
    assert version.returncode == 0 and re.fullmatch(r"shm-read \S+ \(layout \d+\)\n", version.stdout)
    usage = run_reader(*command, "--help")
    assert usage.returncode == 0 and "SHM_METRICS_NAME" in usage.stdout and "--max-age" in usage.stdout
    for bad in ("-1", "0", "nan", "soon"):
        out = run_reader(*command, "--max-age", bad, "--once")
        assert_clean_failure(out, 2)
        assert out.stderr.count("\n") == 1 and "--max-age" in out.stderr, out.stderr


def test_bad_name_exits_2_with_one_line(name):
    out = run_reader("--name", "bad/name", "--once")
    assert_clean_failure(out, 2)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "bad/name" in out.stderr


# ----------------------------------------------------------------- no segment
def test_no_segment_exits_3(name):
    out = run_reader("--name", name, "--once")
    assert_clean_failure(out, 3)
    assert out.stdout == ""
    assert name in out.stderr
    assert "shm-publisher" in out.stderr and "running under that name" in out.stderr
    assert not shm_files(name), "a reader must never create anything"


def test_no_segment_in_api_raises_nosegment(name):
    with pytest.raises(NoSegment):
        Reader(name)


# ----------------------------------------------------------------- corrupt segments
def _with_u32(data: bytes, field: str, value: int) -> bytes:
    off = L.HEADER.offsets[field]
    return data[:off] + value.to_bytes(4, "little") + data[off + 4:]


CORRUPTIONS = {
    "random-bytes": lambda real: (os.urandom(len(real)), 0o644),
    "random-small": lambda real: (os.urandom(100), 0o644),
    "empty": lambda real: (b"", 0o644),
    "magic-then-random": lambda real: (L.MAGIC + os.urandom(len(real) - 8), 0o644),
    "truncated-100": lambda real: (real[:100], 0o644),
    "truncated-half": lambda real: (real[:len(real) // 2], 0o644),
    "zeroed-magic": lambda real: (bytes(8) + real[8:], 0o644),
    "wrong-layout-version": lambda real: (_with_u32(real, "layout_version", L.LAYOUT_VERSION + 1), 0o644),
    "bad-state": lambda real: (_with_u32(real, "state", 99), 0o644),
    "group-writable": lambda real: (real, 0o666),
}


def test_intact_copy_reads_fine(name, make_segment_file, real_segment_bytes):
    """The control for the corruption tests: the same bytes, unharmed, are a valid segment."""
    make_segment_file(real_segment_bytes)
    out = run_reader("--name", name, "--once", "procs_total", "--max-age", "1e9")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_segment_exits_4(name, make_segment_file, real_segment_bytes, kind):
    data, mode = CORRUPTIONS[kind](real_segment_bytes)
    path = make_segment_file(data, mode)
    if kind.startswith("truncated"):
        # Also truncate in place (as a dying writer would), to be sure of the size on disk.
        os.truncate(path, len(data))
        assert os.path.getsize(path) < len(real_segment_bytes)
    for args in (["--once"], ["--once", "--json"], ["--once", "procs_total"], ["--info"]):
        out = run_reader("--name", name, *args)
        assert_clean_failure(out, 4)  # not -7 (SIGBUS), not 1 (traceback)
        assert out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with open(path, "rb") as f:
        assert f.read() == data, "a reader must never write"


def test_corrupt_segment_follow_waits_instead_of_crashing(name, make_segment_file, real_segment_bytes, background):
    make_segment_file(real_segment_bytes[:len(real_segment_bytes) // 2])
    bg = background("--name", name, "--json", "--count", "1")
    wait_for(lambda: "waiting" in bg.stderr(), what="follow to report the bad segment")
    assert bg.proc.poll() is None
    bg.proc.send_signal(signal.SIGINT)
    assert bg.wait() in (0, 130)
    assert "Traceback" not in bg.stderr()
    assert bg.stdout() == ""


# ----------------------------------------------------------------- stale and stopped
def test_stopped_publisher_with_keep_on_exit_exits_5_with_data(name, start_publisher):
    pub = start_publisher(name, "--interval", INTERVAL, "--keep-on-exit")
    wait_for(lambda: seq_in_file(L.segment_path(name)) >= 4, what="two samples")
    try:
        assert pub.stop() == 0
        assert segment_state(name) == L.STATE_STOPPED
        out = run_reader("--name", name, "--once")
        assert out.returncode == 5, out.stderr
        assert re.search(r"^procs_total\s+\d+$", out.stdout, re.M)
        assert f"pid {pub.pid}" in out.stderr and "stopped" in out.stderr
        assert "Traceback" not in out.stderr

        out = run_reader("--name", name, "--once", "--json")
        assert out.returncode == 5, out.stderr
        data = json.loads(out.stdout)
        assert data["state"] == "stopped" and data["publisher_pid"] == pub.pid and data["procs_total"] > 0

        out = run_reader("--name", name, "--once", "procs_total", "--max-age", "1e9")
        assert out.returncode == 5, "stopped stays stopped whatever --max-age says"
        assert int(out.stdout) > 0
    finally:
        remove_files(name)


def test_sigstopped_publisher_goes_stale(name, start_publisher):
    pub = start_publisher(name, "--interval", INTERVAL)
    wait_for(lambda: seq_in_file(L.segment_path(name)) >= 4, what="two samples")
    sigstop_between_writes(pub)
    try:
        seq = seq_in_file(L.segment_path(name))

        def stale_exit():
            out = run_reader("--name", name, "--once", "procs_total", "--max-age", "0.3")
            return out if out.returncode == 5 else None

        out = wait_for(stale_exit, what="the stopped publisher to go stale")
        assert int(out.stdout) > 0, "stale data is still printed"
        assert "stale" in out.stderr and f"pid {pub.pid}" in out.stderr
        assert "Traceback" not in out.stderr

        out = run_reader("--name", name, "--once", "procs_total", "--max-age", "3600")
        assert out.returncode == 0, out.stderr
        assert out.stderr == ""
        assert seq_in_file(L.segment_path(name)) == seq, "the publisher really was stopped"
    finally:
        os.kill(pub.pid, signal.SIGCONT)
    path = L.segment_path(name)
    wait_for(lambda: pub.proc.poll() is not None or (os.path.exists(path) and seq_in_file(path) > seq),
             what="the publisher to resume")
    assert pub.proc.poll() is None, "SIGCONT must resume the publisher, not stop it"
    wait_for(lambda: run_reader("--name", name, "--once", "procs_total", "--max-age", "0.3").returncode == 0,
             what="fresh samples again")
    assert pub.stop() == 0


# ----------------------------------------------------------------- following
def test_json_count_prints_exactly_n_increasing_samples(name, start_publisher):
    pub = start_publisher(name, "--interval", FAST)
    out = run_reader("--name", name, "--json", "--count", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n")
    lines = json_lines(out.stdout)
    assert len(lines) == 3 == len(out.stdout.splitlines())
    seqs = [d["seq"] for d in lines]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), seqs
    assert all(d["state"] == "running" and d["publisher_pid"] == pub.pid for d in lines)


def test_follow_fields_text(name, start_publisher):
    start_publisher(name, "--interval", FAST)
    out = run_reader("--name", name, "--count", "2", "seq", "procs_total")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout
    assert [line.split()[0] for line in lines] == ["seq", "procs_total"] * 2
    assert int(lines[0].split()[1]) < int(lines[2].split()[1])


def test_follow_waits_for_a_segment_that_does_not_exist_yet(name, start_publisher, background):
    bg = background("--name", name, "--json", "--count", "2")
    wait_for(lambda: "waiting for shm-publisher" in bg.stderr(), what="the reader to say it is waiting")
    assert bg.proc.poll() is None
    assert bg.stdout() == ""
    pub = start_publisher(name, "--interval", FAST)
    assert bg.wait() == 0, bg.stderr()
    lines = json_lines(bg.stdout())
    assert len(lines) == 2
    assert all(d["publisher_pid"] == pub.pid and d["state"] == "running" for d in lines)
    assert bg.stderr().count("waiting for shm-publisher") == 1, bg.stderr()
    assert "Traceback" not in bg.stderr()


def test_follow_survives_a_publisher_restart(name, start_publisher, background):
    first = start_publisher(name, "--interval", "0.3")
    bg = background("--name", name, "--json", "--count", "6")
    wait_for(lambda: len(bg.lines()) >= 2, what="two lines from the first publisher")
    assert first.stop() == 0
    lines_before = len(bg.lines())
    assert lines_before < 6, "the reader finished before the restart; the test proves nothing"
    second = start_publisher(name, "--interval", FAST)
    assert second.pid != first.pid
    assert bg.wait() == 0, bg.stderr()
    lines = json_lines(bg.stdout())
    assert len(lines) == 6
    assert all(d["state"] == "running" for d in lines), [d["state"] for d in lines]
    pids = [d["publisher_pid"] for d in lines]
    assert pids[:lines_before] == [first.pid] * lines_before
    assert pids[-1] == second.pid
    assert set(pids) == {first.pid, second.pid}
    switch = pids.index(second.pid)
    assert pids[switch:] == [second.pid] * (6 - switch), pids
    for run in (lines[:switch], lines[switch:]):
        seqs = [d["seq"] for d in run]
        assert all(a < b for a, b in zip(seqs, seqs[1:])), seqs
    assert "Traceback" not in bg.stderr()


def test_ctrl_c_stops_a_following_reader_cleanly(name, start_publisher, background):
    start_publisher(name, "--interval", FAST)
    bg = background("--name", name, "--json")
    wait_for(lambda: len(bg.lines()) >= 1, what="the first line")
    bg.proc.send_signal(signal.SIGINT)
    assert bg.wait() in (130, 0)
    assert "Traceback" not in bg.stderr(), bg.stderr()
    assert "KeyboardInterrupt" not in bg.stderr()
    for line in bg.lines():
        json.loads(line)


# ----------------------------------------------------------------- --info and --help
def test_info_text_and_json(name, start_publisher):
    pub = start_publisher(name, "--interval", INTERVAL, "--max-interfaces", "7")
    out = run_reader("--name", name, "--info")
    assert out.returncode == 0, out.stderr
    info = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert info["name"] == name
    assert info["path"] == L.segment_path(name)
    assert int(info["size_bytes"]) == os.path.getsize(L.segment_path(name))
    assert int(info["layout_version"]) == L.LAYOUT_VERSION
    assert "net=7" in info["capacities"] and "cpus=" in info["capacities"]
    assert "disks=64" in info["capacities"] and "filesystems=64" in info["capacities"]
    assert info["state"] == "running"
    assert int(info["publisher_pid"]) == pub.pid
    assert int(info["seq"]) > 0
    assert float(info["age_seconds"]) >= 0
    assert float(info["interval_seconds"]) == float(INTERVAL)

    out = run_reader("--name", name, "--info", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["name"] == name and data["publisher_pid"] == pub.pid and data["state"] == "running"
    assert data["layout_version"] == L.LAYOUT_VERSION
    assert data["size_bytes"] == os.path.getsize(L.segment_path(name))
    assert data["capacities"]["net"] == 7 and set(data["capacities"]) == {
        "cpus", "net", "disks", "filesystems", "history", "top_cpu", "top_rss", "process_states",
        "metrics", "strings", "series", "labels"}
    assert data["capacities"]["metrics"] > 100 and data["capacities"]["series"] > 256
    ten_minutes = round(600 / float(INTERVAL))  # the default ring holds ten minutes at any interval
    assert data["capacities"]["history"] == ten_minutes and data["capacities"]["top_cpu"] == L.DEFAULT_TOP
    assert data["history"]["holds_seconds"] == 600
    assert data["seq"] > 0 and data["seq"] % 2 == 0 and data["samples"] == data["seq"] // 2
    assert data["history"]["samples"] == min(data["samples"], ten_minutes)
    assert data["wake"] == "futex"
    assert data["interval_seconds"] == float(INTERVAL) and data["age_seconds"] >= 0


def test_help_documents_exit_codes(name):
    out = run_reader("--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "exit codes" in text
    for code, words in ((3, "no segment"), (4, "corrupt"), (5, "stale")):
        assert re.search(rf"^\s+{code}\s+.*{words}", text, re.M), (code, text)


# ----------------------------------------------------------------- another user
def _nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _package_link_dir() -> str:
    """A directory user nobody can read holding ``shm_metrics`` -> the repository (the package's root)."""
    import atexit
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="shm-metrics-pkg-")
    os.chmod(top, 0o755)
    os.symlink(REPO, os.path.join(top, "shm_metrics"))
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    return top


def _reader_command_for_nobody() -> tuple[list[str], dict]:
    """An interpreter that user nobody can run and that can import the readers package.

    The reader's --once path needs only the standard library, so when the venv
    interpreter is out of nobody's reach (e.g. under /root), a system Python of
    the same minor version with the repository on PYTHONPATH does the same job.
    """
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    candidates = [([*READER], env), (["/usr/bin/python3", "-m", "shm_metrics.readers"],
                                     {**env, "PYTHONPATH": _package_link_dir()})]
    reasons = []
    for cmd, cmd_env in candidates:
        try:
            probe = subprocess.run([cmd[0], "-c", "import sys, shm_metrics.readers.cli; "
                                    "assert sys.version_info >= (3, 11)"],
                                   preexec_fn=_nobody, env=cmd_env, cwd="/", capture_output=True, text=True,
                                   timeout=20)
        except OSError as exc:
            reasons.append(f"{cmd[0]}: {exc.strerror}")
            continue
        if probe.returncode == 0:
            return cmd, cmd_env
        reasons.append(f"{cmd[0]}: {probe.stderr.strip().splitlines()[-1:] or probe.returncode}")
    pytest.skip("no Python interpreter that user nobody can run with the readers package: " + "; ".join(reasons))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to user nobody")
def test_reader_as_another_user_needs_no_semaphore(name, start_publisher):
    cmd, env = _reader_command_for_nobody()
    start_publisher(name, "--interval", INTERVAL)
    seg, sem = L.segment_path(name), L.semaphore_path(name)
    assert os.stat(seg).st_mode & 0o777 == 0o644
    os.chmod(sem, 0o600)  # nobody cannot open the semaphore at all
    out = subprocess.run([*cmd, "--name", name, "--once", "procs_total"], preexec_fn=_nobody, env=env, cwd="/",
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0
    denied = subprocess.run([cmd[0], "-c", f"open({sem!r}, 'rb')"], preexec_fn=_nobody, env=env, cwd="/",
                            capture_output=True, text=True, timeout=20)
    assert denied.returncode != 0 and "PermissionError" in denied.stderr


# ----------------------------------------------------------------- Python API
def psutil_nics() -> list[str]:
    return list(psutil.net_io_counters(pernic=True))


def test_api_read_snapshot(name, start_publisher):
    pub = start_publisher(name, "--interval", INTERVAL)
    with Reader(name) as reader:
        assert reader.publisher_pid == pub.pid and reader.interval == float(INTERVAL)
        snap = reader.read()
        assert snap.seq > 0 and snap.seq % 2 == 0
        assert snap.state == "running" and snap.is_fresh()
        assert snap.publisher_pid == pub.pid
        assert snap.interval == float(INTERVAL)
        assert snap.hostname == os.uname().nodename
        assert snap.layout_version == L.LAYOUT_VERSION
        assert snap.age >= 0 and snap.sample_time > 0
        assert isinstance(snap.procs_total, int) and snap.procs_total > 0
        assert snap["procs_total"] == snap.procs_total
        assert isinstance(snap.load1, float)
        assert snap.mem_total_bytes > snap.mem_available_bytes > 0
        assert snap.threads_total >= snap.procs_total
        assert len(snap.cpus) == snap.cpu_count
        assert {nic["device"] for nic in snap.net} == set(psutil_nics()) - {"lo"}
        assert "/" in {fs["mountpoint"] for fs in snap.filesystems}
        assert snap.overflow() == {"cpus": 0, "net": 0, "disks": 0, "filesystems": 0,
                                   "top_cpu": 0, "top_rss": 0, "process_states": 0, "series": 0}
        # node_exporter's families, decoded one at a time from the same snapshot
        families = snap.families
        assert "node_memory_MemTotal_bytes" in families.names()
        assert families["node_memory_MemTotal_bytes"].series == [((), float(snap.mem_total_bytes))]
        assert families["node_procs_running"].series == [((), float(snap.procs_running))]
        cpu = families["node_cpu_seconds_total"]
        assert cpu.type == "counter" and cpu.labels == ("cpu", "mode") and len(cpu.series) == 8 * snap.cpu_count
        assert families.get("node_no_such_family") is None
        assert set(snap.to_dict()) >= set(L.SCALARS.names) | {"cpus", "net", "disks", "filesystems", "seq"}
        with pytest.raises(AttributeError):
            snap.no_such_field  # noqa: B018
        with pytest.raises(KeyError):
            snap["no_such_field"]

        scalars_only = reader.read(arrays=False)
        assert scalars_only.procs_total > 0
        with pytest.raises(KeyError):
            scalars_only.array("net")

        snap = reader.read()
        assert reader.read_field("mem_total_bytes") == snap.mem_total_bytes
        assert reader.read_field("boot_time") == snap.boot_time
        assert abs(reader.read_field("procs_total") - snap.procs_total) <= 20
        assert abs(reader.read_field("forks_total") - snap.forks_total) <= 1000
        assert abs(reader.read_field("load1") - snap.load1) < 5
        assert isinstance(reader.read_field("uptime_seconds"), float)
        assert reader.read_field("uptime_seconds") >= snap.uptime_seconds
        with pytest.raises(KeyError):
            reader.read_field("no_such_field")
    assert not reader.attached


def test_api_follow_yields_increasing_seq(name, start_publisher):
    pub = start_publisher(name, "--interval", FAST)
    with Reader(name) as reader:
        snaps = list(itertools.islice(reader.follow(), 4))
    seqs = [s.seq for s in snaps]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), seqs
    assert all(s.is_fresh() and s.publisher_pid == pub.pid for s in snaps)
    assert len({s.seq for s in snaps}) == 4


# ----------------------------------------------------------------- numbers that agree
def test_once_table_agrees_with_df_and_with_top_and_aligns_its_columns(name, start_publisher):
    start_publisher(name, "--interval", INTERVAL)
    out = run_reader("--name", name, "--once")
    assert out.returncode == 0, out.stderr
    sections = {block.split(":", 1)[0]: block.splitlines() for block in out.stdout.split("\n\n")}

    fs = sections["filesystems"]
    assert "used / (used + avail), rounded up, as df" in fs[-1]
    head = fs[1].split()
    rows = {line.split()[0]: line.split() for line in fs[2:-1]}
    df = subprocess.run(["df", "--output=pcent", "/"], capture_output=True, text=True).stdout.split()[-1]
    assert rows["/"][head.index("use_percent") - len(head)] + "%" == df

    # The process columns in the order shm-read top shows them, headings aligned as their values.
    top = run_reader("top", "--name", name, "--once").stdout.splitlines()
    top_head = next(line for line in top if line.strip().startswith("pid"))
    for table in ("top_cpu", "top_rss"):
        assert sections[table][1].split() == top_head.split()
        heading, first = sections[table][1], sections[table][2]
        assert heading.index("pid") + 3 == first.index(first.split()[0]) + len(first.split()[0])  # right-aligned

    # Scalars and rates: one column of values, every float with two decimals.
    values = [line for line in out.stdout.splitlines() if re.match(r"^[a-z_0-9]+ +-?[\d.]+( |$)", line)]
    ends = {len(re.match(r"^[a-z_0-9]+ +-?[\d.]+", line).group(0)) for line in values}
    assert len(ends) == 1, ends
    floats = [line.split()[1] for line in values if "." in line.split()[1]]
    assert floats and all(re.fullmatch(r"-?\d+\.\d\d", f) for f in floats), floats

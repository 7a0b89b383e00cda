"""`--top` on the publisher, `shm-read top`, and the exporter's process state counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import READER, PtyProcess, run_reader, wait_for

from shm_metrics import shm_layout as L
from shm_metrics.readers import Reader
from shm_metrics.readers.exporter.collector import node_families


@pytest.fixture
def hogs():
    """A child burning CPU and one holding ~200 MiB resident; both stopped by PID."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nx = bytearray(200 << 20)\n"
                               "for i in range(0, len(x), 4096): x[i] = 1\nprint('ready', flush=True)\n"
                               "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield burner.pid, holder.pid
    finally:
        for p in (burner, holder):
            p.kill()
            p.wait()
        holder.stdout.close()


def ps(pid: int, column: str) -> str:
    return subprocess.run(["ps", "-o", f"{column}=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()


def fresh_top(name: str) -> dict:
    """The tables of a sample taken after this call (so after anything the caller started)."""
    with Reader(name) as reader:
        seq = reader.seq
        wait_for(lambda: reader.seq >= seq + 4, what="two new samples")  # a CPU % needs two scans
    out = run_reader("top", "--name", name, "--once", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_top_agrees_with_ps(name, start_publisher, hogs):
    burner, holder = hogs
    start_publisher(name, "--interval", "0.5")
    data = fresh_top(name)
    assert set(data) >= {"by_cpu", "by_rss", "states"}
    by_cpu, by_rss = data["by_cpu"], data["by_rss"]
    assert len(by_cpu) == len(by_rss) == 10

    # The burner takes a whole CPU: it is among the first (2 CPUs, other tests may run).
    cpu_pids = [row["pid"] for row in by_cpu]
    assert burner in cpu_pids[:3], by_cpu
    row = by_cpu[cpu_pids.index(burner)]
    assert row["cpu_percent"] > 30 and row["state"] == "R"
    assert [r["cpu_percent"] for r in by_cpu] == sorted((r["cpu_percent"] for r in by_cpu), reverse=True)

    # Resident memory: ps's biggest processes are ours, with ps's numbers.
    rss_pids = [r["pid"] for r in by_rss]
    assert holder in rss_pids
    ps_top = subprocess.run(["ps", "-eo", "pid=,rss=", "--sort=-rss"], capture_output=True, text=True).stdout
    ps_rows = [tuple(map(int, line.split())) for line in ps_top.splitlines()[:3]]
    assert {pid for pid, _ in ps_rows} <= set(rss_pids), (ps_rows, by_rss)
    for pid, rss_kib in ps_rows:
        ours = by_rss[rss_pids.index(pid)]["rss_bytes"]
        assert ours == pytest.approx(rss_kib * 1024, rel=0.1), pid
    assert by_rss[rss_pids.index(holder)]["rss_bytes"] >= 200 << 20
    assert [r["rss_bytes"] for r in by_rss] == sorted((r["rss_bytes"] for r in by_rss), reverse=True)

    # Each entry: ps's name, user, thread count for the same pid (entries may have exited since).
    for row in by_cpu + by_rss:
        user, comm, nlwp = ps(row["pid"], "user"), ps(row["pid"], "comm"), ps(row["pid"], "nlwp")
        if not comm:
            continue
        if comm.startswith("kworker/") and row["name"].startswith("kworker/"):
            continue  # a kernel worker renames itself after the work item it runs: no name is stable
        assert comm.startswith(row["name"][:15]) or row["name"].startswith(comm), (row, comm)
        assert user == row["user"] or (user.endswith("+") and row["user"].startswith(user[:-1])), (row, user)
        assert int(nlwp) == row["threads"] or row["pid"] not in (burner, holder)

    # Counts by state cover every process.
    states = data["states"]
    assert states["running"]["state"] == "R" and states["running"]["processes"] >= 1
    total = sum(s["processes"] for s in states.values())
    assert abs(total - data["procs_total"]) <= 2
    assert sum(s["threads"] for s in states.values()) >= total


def test_stopped_and_zombie_processes_are_counted(name, start_publisher):
    start_publisher(name, "--interval", "0.2")
    stopped = subprocess.Popen(["sleep", "600"])
    zombie = subprocess.Popen(["true"])  # not waited for until the end: a zombie meanwhile
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        wait_for(lambda: ps(zombie.pid, "stat").startswith("Z"), what="a zombie")
        states = fresh_top(name)["states"]
        assert states["stopped"]["processes"] >= 1 and states["zombie"]["processes"] >= 1
    finally:
        stopped.kill()
        stopped.wait()
        zombie.wait()


def test_top_text_and_live_view(name, start_publisher, hogs):
    burner, _ = hogs
    start_publisher(name, "--interval", "0.3")
    fresh_top(name)
    out = run_reader("top", "--name", name, "--once")
    assert out.returncode == 0, out.stderr
    assert "top 10 by CPU" in out.stdout and "top 10 by resident memory" in out.stdout
    assert f"\n  {burner} " in out.stdout or f" {burner} " in out.stdout

    view = PtyProcess([*READER, "top", "--name", name])
    try:
        view.read_until(b"COMMAND", count=4)  # two tables a frame, redrawn on the next sample
    finally:
        code = view.stop(signal.SIGINT)
    assert code in (0, 130)
    assert b"COMMAND" in view.output and str(burner).encode() in view.output


def test_top_zero_turns_the_scan_off(name, start_publisher):
    start_publisher(name, "--interval", "0.2", "--top", "0")
    out = run_reader("top", "--name", name, "--once", "--json")
    assert out.returncode == 4 and "--top 0" in out.stderr and out.stderr.count("\n") == 1
    info = json.loads(run_reader("--name", name, "--info", "--json").stdout)
    assert info["capacities"]["top_cpu"] == 0 and info["capacities"]["process_states"] == 0
    with Reader(name) as reader:
        snap = reader.read()
        assert snap.top_cpu == [] and snap.process_states == []
        names = {m.name for m in node_families(snap)}
    assert "node_processes_state" not in names and "node_processes_pids" in names


def test_the_scan_publishes_no_family_and_a_full_sample_does_not_run_it(name, start_publisher):
    """A scrape asks for a full sample; the scan's tables serve only local viewers, so it does not pay for
    them (issue 16): node_processes_state is node_exporter's processes collector's, off by default."""
    start_publisher(name, "--interval", "0.2", "--top", "3")
    with Reader(name) as reader:
        wait_for(lambda: reader.seq >= 4, what="a few samples")
        snap = reader.read_fresh(0.0)  # a full sample, now
        assert snap.full_sample_time == snap.sample_time
        assert snap.top_cpu == [] and snap.process_states == []
        names = {m.name for m in node_families(snap)}
        assert "node_processes_state" not in names and "node_processes_threads_state" not in names
        assert reader.ask(L.DEMAND_SCAN)  # a viewer asks: the next samples carry the tables
        wait_for(lambda: reader.read().process_states, what="the scan's tables")
        assert len(reader.read().top_cpu) == 3


def test_collector_processes_counts_states_like_the_scan(name, start_publisher):
    start_publisher(name, "--interval", "0.2", "--top", "3", "--collector.processes")
    with Reader(name) as reader:
        wait_for(lambda: reader.seq >= 4, what="a few samples")
        assert reader.ask(L.DEMAND_SCAN)
        wait_for(lambda: reader.read().process_states, what="the scan's tables")
        snap = reader.read_fresh(0.0)  # a full sample while the scan is asked for: both in one sample
    assert snap.full_sample_time == snap.sample_time and snap.process_states
    families = {m.name: m for m in node_families(snap)}
    states = families["node_processes_state"]
    threads = families["node_processes_threads_state"]
    assert states.type == threads.type == "gauge"
    assert all(set(s.labels) == {"thread_state"} for s in threads.samples)
    # Two scans of /proc, processes coming and going between them: the totals agree to a few.
    assert abs(sum(s.value for s in states.samples) - sum(r["processes"] for r in snap.process_states)) <= 5


@pytest.mark.parametrize("args", [["--bogus"], ["--once", "extra"]])
def test_top_usage_errors(name, args):
    out = run_reader("top", "--name", name, *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr


def test_the_scan_keeps_its_files_only_while_asked_for():
    """Its stat files stay open between scans (cheaper for a viewer at 1 Hz), and are closed once nobody asks
    any more: a process that exits meanwhile is not held open for hours; nothing is opened before a viewer."""
    from shm_metrics.publisher.sampler import Sampler

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    sampler = Sampler(top_n=3)
    try:
        sampler.sample(full=True, scan=False)  # a full sample (a scrape): no scan
        idle = open_fds()
        scanned = sampler.sample(full=False, scan=True)  # a viewer asks
        assert scanned.process_states and open_fds() > idle + 10
        after = sampler.sample(full=False, scan=False)  # it went away
        assert not after.process_states and open_fds() <= idle
        assert sampler.sample(full=False, scan=True).process_states  # and came back: a scan afresh
    finally:
        sampler.close()

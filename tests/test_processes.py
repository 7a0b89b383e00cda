"""publisher.processes.ProcessTable against the real /proc, ps and children it watches.

Every child is started through the ``spawn`` fixture and killed by its own PID
at teardown.  Other processes (other tests, the other sessions on the host)
come and go while these run, so host-wide comparisons bracket the scan between
a read before and a read after, or retry until two reads agree.  No timing is
asserted.
"""

from __future__ import annotations

import os
import pwd
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import wait_for

from shm_metrics.publisher.processes import PAGE_SIZE_BYTES, ProcessScan, ProcessTable, time_scan

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = {"pid", "name", "user", "state", "cpu_percent", "rss_bytes", "threads"}
EVERYTHING = 1 << 20  # top_n that lists every process in by_cpu and by_rss
IS_ROOT = os.geteuid() == 0


# ----------------------------------------------------------------- helpers
@pytest.fixture
def spawn():
    """spawn(argv, ready=None, **popen) -> Popen; every child is killed by its PID (and reaped) at teardown.

    With ``ready``, waits for that line on the child's stdout.
    """
    started: list[subprocess.Popen] = []

    def start(argv: list[str], ready: str | None = None, **kw) -> subprocess.Popen:
        if ready is not None:
            kw.update(stdout=subprocess.PIPE, text=True)
        proc = subprocess.Popen(argv, **kw)
        started.append(proc)
        if ready is not None:
            line = proc.stdout.readline().strip()
            assert line == ready, f"child {proc.pid} said {line!r}"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def table():
    t = ProcessTable(top_n=10)
    yield t
    t.close()


@pytest.fixture
def full_table():
    """A table whose top lists hold every process (so any child can be looked up by pid)."""
    t = ProcessTable(top_n=EVERYTHING)
    yield t
    t.close()


def python_child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None if the process has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def proc_state(pid: int) -> str | None:
    fields = stat_fields(pid)
    return fields[0] if fields else None


def row_of(rows: list[dict], pid: int) -> dict | None:
    return next((r for r in rows if r["pid"] == pid), None)


def ps(*args: str) -> str:
    return subprocess.run(["ps", *args], capture_output=True, text=True, check=False).stdout


def numeric_proc_entries() -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


def all_tasks() -> int:
    """Entries of /proc/*/task/* (threads of every process), as node_exporter lists them."""
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                total += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return total


def own_fds() -> dict[int, str]:
    """This process's fds -> what they point at."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the fd of the listing itself
            pass
    return out


def user_matches(ours: str, ps_user: str) -> bool:
    """ps prints at most 8 characters of a name: longer ones end in '+' (older procps: the uid)."""
    if ours == ps_user:
        return True
    if ps_user.endswith("+") and len(ps_user) == 8:
        return ours.startswith(ps_user[:-1])
    try:
        return ps_user.isdigit() and pwd.getpwnam(ours).pw_uid == int(ps_user)
    except KeyError:
        return False


BUSY = python_child("""
    print("ready", flush=True)
    while True:
        pass
""")
THREE_THREADS = python_child("""
    import threading, time
    for _ in range(3):
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    print("ready", flush=True)
    time.sleep(600)
""")  # a leader and three other threads
SLEEPER = python_child("""
    import time
    print("ready", flush=True)
    time.sleep(600)
""")


# ----------------------------------------------------------------- API and rows
def test_api_shapes_and_orders(full_table, table):
    full_table.scan()
    scan = full_table.scan()
    assert isinstance(scan, ProcessScan)
    assert scan.procs_total > 0
    for rows in (scan.by_cpu, scan.by_rss):
        assert rows
        for r in rows:
            assert set(r) == ROW_KEYS
            assert isinstance(r["pid"], int) and r["pid"] > 0
            assert isinstance(r["name"], str) and isinstance(r["user"], str)
            assert isinstance(r["state"], str) and len(r["state"]) == 1
            assert isinstance(r["cpu_percent"], float) and r["cpu_percent"] >= 0
            assert isinstance(r["rss_bytes"], int) and r["rss_bytes"] % PAGE_SIZE_BYTES == 0
            assert isinstance(r["threads"], int) and r["threads"] >= 1
    cpu_keys = [(r["cpu_percent"], r["rss_bytes"], -r["pid"]) for r in scan.by_cpu]
    assert cpu_keys == sorted(cpu_keys, reverse=True)
    rss_keys = [(r["rss_bytes"], -r["pid"]) for r in scan.by_rss]
    assert rss_keys == sorted(rss_keys, reverse=True)
    assert {r["pid"] for r in scan.by_cpu} == {r["pid"] for r in scan.by_rss}  # both list everyone
    assert len(scan.by_rss) <= scan.procs_total

    letters = [s["state"] for s in scan.states]
    assert letters == sorted(set(letters))
    for s in scan.states:
        assert set(s) == {"state", "processes", "threads"} and len(s["state"]) == 1
        assert s["processes"] >= 0 and s["threads"] >= s["processes"]  # a process is at least its leader

    small = table.scan()  # top_n bounds both lists
    assert len(small.by_cpu) == len(small.by_rss) == min(10, small.procs_total)


def test_top_n_validation():
    with pytest.raises(ValueError):
        ProcessTable(top_n=-1)
    ProcessTable(top_n=0).close()  # allowed; the publisher just never scans it


def test_comm_with_spaces_and_parentheses(spawn, full_table):
    weird = "we) ird (na)me"[:15]  # comm holds 15 characters
    child = spawn(python_child(f"""
        import time
        with open("/proc/self/comm", "w") as f:
            f.write({weird!r})
        print("ready", flush=True)
        time.sleep(600)
    """), ready="ready")
    wait_for(lambda: proc_state(child.pid) == "S", what="child asleep")
    row = row_of(full_table.scan().by_rss, child.pid)
    assert row is not None
    assert row["name"] == weird == Path(f"/proc/{child.pid}/comm").read_text().rstrip("\n")
    assert row["state"] == "S" and row["threads"] == 1


# ----------------------------------------------------------------- CPU
def test_busy_child_tops_by_cpu(spawn, table):
    child = spawn(BUSY, ready="ready")
    table.scan()
    time.sleep(1)
    scan = table.scan()
    row = row_of(scan.by_cpu, child.pid)
    assert row is not None, f"busy child {child.pid} not in {scan.by_cpu}"
    assert row["cpu_percent"] > 30
    assert row["state"] == "R"
    assert row["name"] == Path(f"/proc/{child.pid}/comm").read_text().rstrip("\n")
    assert row["name"].startswith("python")
    assert row["threads"] == 1


def test_first_scan_gives_the_average_since_start_like_ps(spawn):
    child = spawn(BUSY, ready="ready")
    time.sleep(1)
    t = ProcessTable(top_n=10)
    try:
        row = row_of(t.scan().by_cpu, child.pid)
    finally:
        t.close()
    ps_percent = float(ps("-o", "%cpu=", "-p", str(child.pid)).strip())  # cputime / elapsed, like ours
    assert row is not None
    assert row["cpu_percent"] > 30
    assert row["cpu_percent"] == pytest.approx(ps_percent, abs=15)


def test_sleeping_process_has_no_cpu_after_the_first_scan(spawn, full_table):
    child = spawn(SLEEPER, ready="ready")
    wait_for(lambda: proc_state(child.pid) == "S", what="child asleep")
    full_table.scan()
    time.sleep(0.2)
    row = row_of(full_table.scan().by_cpu, child.pid)
    assert row is not None and row["cpu_percent"] == 0.0 and row["state"] == "S"


# ----------------------------------------------------------------- memory
def test_rss_of_a_200mb_child_matches_ps(spawn, table):
    child = spawn(python_child("""
        import time
        block = b"\\1" * (200 << 20)  # allocated and written: resident
        print("ready", flush=True)
        time.sleep(600)
    """), ready="ready")
    scan = table.scan()
    ps_bytes = int(ps("-o", "rss=", "-p", str(child.pid))) * 1024
    row = row_of(scan.by_rss, child.pid)
    assert row is not None, scan.by_rss
    assert row["rss_bytes"] >= 200 << 20
    assert row["rss_bytes"] == pytest.approx(ps_bytes, rel=0.05)
    assert scan.by_rss[0]["pid"] == child.pid or scan.by_rss[0]["rss_bytes"] >= row["rss_bytes"]


def test_a_sleepers_status_is_read_again_only_when_its_stat_line_changes(spawn, full_table):
    # /proc/PID/status (user, exact VmRSS) is the scan's costliest read: a row whose stat line did not change
    # since it was read keeps it; one whose line changed (it grew) is read again, its new RSS shown.
    child = spawn(python_child("""
        import sys
        block = b"\\1" * (32 << 20)
        print("ready", flush=True)
        sys.stdin.readline()
        more = b"\\2" * (64 << 20)
        print("grown", flush=True)
        sys.stdin.readline()
    """), ready="ready", stdin=subprocess.PIPE)
    reads: list[int] = []
    original = full_table._status
    full_table._status = lambda pid: (reads.append(pid), original(pid))[1]  # counted, still read
    before = row_of(full_table.scan().by_rss, child.pid)
    assert before is not None and child.pid in reads
    reads.clear()
    again = row_of(full_table.scan().by_rss, child.pid)
    if stat_fields(child.pid) is not None and child.pid not in reads:  # (its line may have moved: then read)
        assert again["rss_bytes"] == before["rss_bytes"] and again["user"] == before["user"]
    child.stdin.write("grow\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "grown"
    reads.clear()
    grown = row_of(full_table.scan().by_rss, child.pid)
    assert child.pid in reads and grown["rss_bytes"] >= before["rss_bytes"] + (60 << 20)
    child.stdin.write("done\n")
    child.stdin.flush()


def test_an_unchanged_sleeper_is_not_read_again(spawn, full_table):
    # The same, counted: a child that does nothing between two scans has its status read once.
    child = spawn(["sleep", "600"])
    reads: list[int] = []
    original = full_table._status
    full_table._status = lambda pid: (reads.append(pid), original(pid))[1]
    wait_for(lambda: (stat_fields(child.pid) or ["R"])[0] == "S", what="the child asleep")
    full_table.scan()
    full_table.scan()
    assert reads.count(child.pid) == 1


def test_top_by_rss_agrees_with_ps(spawn, table):
    spawn(python_child("""
        import time
        block = b"\\1" * (64 << 20)
        print("ready", flush=True)
        time.sleep(600)
    """), ready="ready")
    problems = []
    for _ in range(5):  # processes start and exit between the two reads: retry until one pair agrees
        ours = {r["pid"]: r["rss_bytes"] for r in table.scan().by_rss}
        theirs = []
        for line in ps("-eo", "pid=,rss=", "--sort=-rss").splitlines():
            pid, rss = map(int, line.split())
            theirs.append((pid, rss * 1024))
        # ps's own row, and processes that have exited since, are not ours to find
        top3 = [pid for pid, _ in theirs if os.path.exists(f"/proc/{pid}")][:3]
        problems = [f"ps's top pid {pid} not among ours {ours}" for pid in top3 if pid not in ours]
        problems += [f"pid {pid}: ours {ours[pid]} ps {rss}" for pid, rss in theirs[:10]
                     if pid in ours and ours[pid] != pytest.approx(rss, rel=0.10)]
        if not problems:
            return
        time.sleep(0.2)
    pytest.fail("; ".join(problems))


# ----------------------------------------------------------------- users
def test_user_is_the_effective_uids_name_like_ps(spawn, table):
    unknown_uid = next(uid for uid in range(54321, 60000) if not _has_passwd_entry(uid))
    children = {}
    if IS_ROOT:  # processes of other users: one with a name, one with none (its uid, as a number)
        busy_sh = ["sh", "-c", "while :; do :; done"]
        children["nobody"] = spawn(busy_sh, user="nobody")
        children[str(unknown_uid)] = spawn(busy_sh, user=unknown_uid)
    table.scan()
    time.sleep(1)
    scan = table.scan()
    for user, child in children.items():
        row = row_of(scan.by_cpu, child.pid)
        assert row is not None, f"{user}'s busy child not in {scan.by_cpu}"
        assert row["user"] == user and row["name"] == "sh"
    checked = 0
    for row in scan.by_cpu + scan.by_rss:
        ps_user = ps("-o", "user=", "-p", str(row["pid"])).strip()
        if ps_user:  # else the process has gone
            assert user_matches(row["user"], ps_user), (row, ps_user)
            checked += 1
    assert checked


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


# ----------------------------------------------------------------- states
def test_process_counts_by_state_cover_every_process(table):
    for _ in range(5):
        before = numeric_proc_entries()
        scan = table.scan()
        after = numeric_proc_entries()
        counted = sum(s["processes"] for s in scan.states)
        low, high = min(before, after) - 3, max(before, after) + 3
        if low <= counted <= high and low <= scan.procs_total <= high and counted <= scan.procs_total:
            return
    pytest.fail(f"/proc had {before}..{after} processes, scan counted {counted} of {scan.procs_total}")


def test_stopped_and_zombie_children_show_up(spawn, table):
    stopped = spawn(["sleep", "600"])
    os.kill(stopped.pid, signal.SIGSTOP)
    zombie = spawn(["true"])  # exits at once; not waited for (until teardown), so it stays a zombie
    wait_for(lambda: proc_state(stopped.pid) == "T", what="stopped child")
    wait_for(lambda: proc_state(zombie.pid) == "Z", what="zombie child")
    states = {s["state"]: s for s in table.scan().states}
    assert states["T"]["processes"] >= 1 and states["T"]["threads"] >= 1
    assert states["Z"]["processes"] >= 1 and states["Z"]["threads"] >= 1


def test_threads_are_counted(spawn, full_table):
    child = spawn(python_child("""
        import threading, time
        for _ in range(5):
            threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
        print("ready", flush=True)
        time.sleep(600)
    """), ready="ready")
    for _ in range(5):
        before = all_tasks()
        scan = full_table.scan()
        after = all_tasks()
        row = row_of(scan.by_rss, child.pid)
        assert row is not None and row["threads"] >= 6
        threads = sum(s["threads"] for s in scan.states)
        if min(before, after) - 5 <= threads <= max(before, after) + 5:
            break
    else:
        pytest.fail(f"/proc/*/task/* had {before}..{after} entries, scan counted {threads} threads")
    sleeping = next(s for s in scan.states if s["state"] == "S")
    assert sleeping["threads"] >= sleeping["processes"] + 5  # the child's five sleeping threads


def test_thread_states_match_a_read_of_every_task(full_table):
    """node_exporter's way, every task's stat read, gives the same counts (within churn)."""

    def reference() -> dict[str, int]:
        counts: dict[str, int] = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                fields = stat_fields(int(tid)) if tid == pid else _task_state(pid, tid)
                if fields:
                    counts[fields[0]] = counts.get(fields[0], 0) + 1
        return counts

    for _ in range(5):
        before = reference()
        ours = {s["state"]: s["threads"] for s in full_table.scan().states}
        after = reference()
        bad = {st: (before.get(st, 0), ours.get(st, 0), after.get(st, 0)) for st in set(before) | set(ours) | set(after)
               if not min(before.get(st, 0), after.get(st, 0)) - 3 <= ours.get(st, 0)
               <= max(before.get(st, 0), after.get(st, 0)) + 3}
        if not bad:
            return
    pytest.fail(f"state: (before, ours, after): {bad}")


def _task_state(pid: str, tid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


# ----------------------------------------------------------------- fds
def test_a_process_that_exits_between_scans_has_its_fd_closed(spawn, table):
    child = spawn(SLEEPER, ready="ready")
    table.scan()
    path = f"/proc/{child.pid}/stat"
    assert path in own_fds().values(), "the child's stat file is kept open"
    kept = table.kept_fds
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    scan = table.scan()  # must not fail
    assert row_of(scan.by_rss, child.pid) is None
    assert path not in own_fds().values()
    assert table.kept_fds < kept + 5  # churn from elsewhere aside, it did not grow by the dead one


def test_threads_fds_are_closed_when_the_process_exits(spawn, table):
    child = spawn(THREE_THREADS, ready="ready")
    table.scan()
    prefix = f"/proc/{child.pid}/task/"
    assert sum(1 for target in own_fds().values() if target.startswith(prefix)) == 3  # not the leader's
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    table.scan()
    assert not [target for target in own_fds().values() if target.startswith(prefix)]


def test_close_closes_every_kept_fd():
    before = own_fds()
    t = ProcessTable(top_n=5)
    t.scan()
    t.scan()
    assert t.kept_fds > 1
    assert len(own_fds()) > len(before)
    t.close()
    assert own_fds() == before
    assert t.kept_fds == 0


FD_BUDGET_SCRIPT = """
import os, resource, sys
from shm_metrics.publisher.processes import ProcessTable
soft, hard = map(int, sys.argv[1:3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
t = ProcessTable(top_n=5)
t.scan()
s = t.scan()
print(t.kept_fds, resource.getrlimit(resource.RLIMIT_NOFILE)[0], s.procs_total,
      sum(x["processes"] for x in s.states), len(s.by_rss))
t.close()
print(len(os.listdir("/proc/self/fd")))
"""


@pytest.mark.parametrize("room", [False, True], ids=["soft=hard", "soft<hard"])
def test_fd_budget_half_the_soft_limit_then_open_read_close(spawn, room):
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]) if room else 16
    if room and hard <= 16:
        pytest.skip("the hard RLIMIT_NOFILE leaves no room to raise the soft one")
    for _ in range(12):  # more processes than the budget of 8, whatever the host
        spawn(["sleep", "600"])
    done = subprocess.run([sys.executable, "-c", FD_BUDGET_SCRIPT, "16", str(hard)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    kept, soft_after, total, counted, rows = map(int, first.split())
    assert total >= 12 and counted >= total - 3 and rows == 5  # every process read, kept fd or not
    if not room:  # at most 8 kept, the rest opened and closed on each scan
        assert soft_after == 16 and kept <= 8 + 1  # + /proc/uptime
    else:  # the soft limit went up to the hard one, and the budget with it
        assert soft_after == hard and kept > 8 + 1
    assert int(second) <= 4  # after close(): stdin, stdout, stderr and the listing's own fd


def test_time_scan_returns_a_median(table):
    seconds = time_scan(table, 3)
    assert isinstance(seconds, float) and seconds > 0


# ----------------------------------------------------------------- listings
THREAD_ON_LINE = python_child("""
    import sys, threading, time
    print("ready", flush=True)
    sys.stdin.readline()
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    print("started", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def listings(monkeypatch):
    """The directories os.listdir is asked for, in order (the real listing still runs)."""
    import shm_metrics.publisher.processes as processes

    seen: list[str] = []
    real = os.listdir

    def listdir(path="."):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(processes.os, "listdir", listdir)
    return seen


def _exit_and_come(spawn, leaving: subprocess.Popen, listings: list[str]) -> subprocess.Popen:
    """``leaving`` killed and reaped, a newcomer started, the listings forgotten: the newcomer."""
    os.kill(leaving.pid, signal.SIGKILL)
    leaving.wait(10)
    newcomer = spawn(SLEEPER, ready="ready")
    listings.clear()
    return newcomer


def _assert_the_mark_stood(listings: list[str], leaving: subprocess.Popen) -> None:
    # (a host process that gained threads meanwhile has its task/ listed: with the real mark, those moved it)
    assert "/proc" not in listings and not [path for path in listings if str(leaving.pid) in path], \
        "the mark stood: /proc not listed, nor the task/ of a process listed before"


def test_while_the_task_mark_stands_proc_is_not_listed_and_exits_still_show(spawn, full_table, listings,
                                                                           monkeypatch):
    import shm_metrics.publisher.processes as processes

    mark = [b"1 1\n"]
    monkeypatch.setattr(processes, "tasks_mark", lambda fd: mark[0])
    staying, leaving = spawn(SLEEPER, ready="ready"), spawn(SLEEPER, ready="ready")
    first = full_table.scan()
    assert "/proc" in listings
    assert row_of(first.by_rss, staying.pid) and row_of(first.by_rss, leaving.pid)
    newcomer = _exit_and_come(spawn, leaving, listings)
    second = full_table.scan()
    _assert_the_mark_stood(listings, leaving)
    assert row_of(second.by_rss, staying.pid) is not None
    assert row_of(second.by_rss, leaving.pid) is None, "an exit shows without a listing"
    assert row_of(second.by_rss, newcomer.pid) is None, "(the mark was held still: the newcomer is unseen)"
    # others' tasks may exit meanwhile too, but none is read anew while the mark stands
    assert second.procs_total <= first.procs_total - 1 and second.procs_total == len(second.by_rss)
    mark[0] = b"2 2\n"
    third = full_table.scan()
    assert "/proc" in listings and row_of(third.by_rss, newcomer.pid) is not None


def test_a_new_process_and_a_new_thread_show_in_the_next_scan(spawn, full_table):
    """With the real /proc/loadavg: a new task moves its mark, so the next scan lists again."""
    full_table.scan()
    child = spawn(THREAD_ON_LINE, ready="ready", stdin=subprocess.PIPE)
    row = row_of(full_table.scan().by_rss, child.pid)
    assert row is not None and row["threads"] == 1
    sleeping_before = next(s for s in full_table.scan().states if s["state"] == "S")["threads"]
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "started"
    for _ in range(5):  # other threads on the host come and go meanwhile
        scan = full_table.scan()
        sleeping = next(s for s in scan.states if s["state"] == "S")["threads"]
        if row_of(scan.by_rss, child.pid)["threads"] == 2 and sleeping > sleeping_before - 3:
            break
    else:
        pytest.fail(f"the child's new thread was not seen: {row_of(scan.by_rss, child.pid)}")
    assert f"/proc/{child.pid}/task/" in " ".join(own_fds().values()), "its new thread's stat is read"
    child.stdin.close()


def test_another_namespaces_proc_has_no_task_mark(tmp_path):
    """A /proc whose self is not this process (a fixture tree, another PID namespace) is listed every scan."""
    from shm_metrics.publisher.processes import open_loadavg, own_namespace_proc

    (tmp_path / "loadavg").write_text("0.00 0.01 0.05 1/80 4242\n")
    os.symlink("1", tmp_path / "self")
    assert not own_namespace_proc(str(tmp_path)) and open_loadavg(str(tmp_path)) is None
    assert own_namespace_proc("/proc")


# ----------------------------------------------------------------- node_exporter's processes collector
def test_node_processes_counts_as_node_exporter_does_on_this_host():
    """The ``processes`` collector (NodeProcesses, through a ProcessCounter) against Debian's node_exporter
    with only its processes collector, scraped before and after each of our samples: the host's tasks come and
    go meanwhile (node_exporter's own threads included), so each count lies within the two, give or take."""
    from exporter_util import Process, free_port, need, scrape

    from shm_metrics.publisher.collectors.processes import NodeProcesses
    from shm_metrics.publisher.sampler import Sampler

    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    node = Process([binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                    "--collector.processes"])
    sampler = Sampler(collectors=[NodeProcesses])
    try:
        node.wait_for_line("Listening on")
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(8):
            before = scrape(url)
            ours = {(fam.name, labels): value for fam, labels, value in sampler.sample(full=True).all_series()}
            after = scrape(url)
            checks = [("node_processes_pids", {}), ("node_processes_threads", {})]
            for name, label in (("node_processes_state", "state"), ("node_processes_threads_state", "thread_state")):
                seen = before.label_values(name, label) | after.label_values(name, label)
                seen |= {labels[0] for fam, labels in ours if fam == name}
                checks += [(name, {label: value}) for value in sorted(seen)]
            bad = []
            for name, kw in checks:
                theirs = [expo.samples.get(name, {}).get(frozenset(kw.items()), 0.0) for expo in (before, after)]
                mine = ours.get((name, tuple(kw.values())), 0.0)
                if not min(theirs) - 3 <= mine <= max(theirs) + 3:
                    bad.append((name, kw, theirs[0], mine, theirs[1]))
            if not bad:
                break
        else:
            pytest.fail(f"(family, labels, theirs before, ours, theirs after): {bad}")
        assert ours[("node_processes_max_processes", ())] == after.value("node_processes_max_processes")
        assert ours[("node_processes_max_threads", ())] == after.value("node_processes_max_threads")
        assert len(checks) >= 4 and ("node_processes_state", {"state": "S"}) in checks
    finally:
        sampler.close()
        node.stop()


def _stat_line(pid: int, comm: str, state: str, threads: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
    # priority nice num_threads itrealvalue starttime vsize rss ...
    return f"{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 0 0 0 0 0 3 4 0 0 20 0 {threads} 0 100 1000 50 0 0 0\n"


def test_node_processes_on_a_tree_counts_as_node_exporter_and_a_bad_stat_line_fails_it(tmp_path):
    """On a fixture tree: a process without task/ adds no thread by state (as in node_exporter's own fixture), one
    with task/ adds each of its tasks; a stat file that is not a stat line fails the collector's sample."""
    from shm_metrics.publisher.collectors.processes import NodeProcesses
    from shm_metrics.publisher.sampler import Sampler

    proc = tmp_path / "proc"
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "threads-max").write_text("7801\n")
    (proc / "sys" / "kernel" / "pid_max").write_text("123\n")
    for pid, state, threads in ((1, "S", 1), (2, "I", 1), (3, "R", 2)):
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "stat").write_text(_stat_line(pid, f"p {pid})", state, threads))
    (proc / "3" / "task" / "3").mkdir(parents=True)
    (proc / "3" / "task" / "4").mkdir()
    (proc / "3" / "task" / "4" / "stat").write_text(_stat_line(4, "worker", "D", 2))
    sampler = Sampler(procfs=str(proc), collectors=[NodeProcesses])
    try:
        series = {(fam.name, labels): value for fam, labels, value in sampler.sample(full=True).all_series()}
        assert {key: value for key, value in series.items() if key[0].startswith("node_processes")} == {
            ("node_processes_threads", ()): 4, ("node_processes_max_threads", ()): 7801,
            ("node_processes_state", ("I",)): 1, ("node_processes_state", ("R",)): 1,
            ("node_processes_state", ("S",)): 1, ("node_processes_threads_state", ("D",)): 1,
            ("node_processes_threads_state", ("R",)): 1, ("node_processes_pids", ()): 3,
            ("node_processes_max_processes", ()): 123}
        (proc / "2" / "stat").write_text("2 (broken\n")
        fds = len(own_fds())
        for _ in range(3):  # the stat files kept open stay the table's when a sample fails
            series = {(fam.name, labels): value for fam, labels, value in sampler.sample(full=True).all_series()}
            assert series[("node_scrape_collector_success", ("processes",))] == 0
            assert ("node_processes_pids", ()) not in series
        assert len(own_fds()) <= fds
    finally:
        sampler.close()


# ----------------------------------------------------------------- ProcessCounter (the collector's reads)
@pytest.fixture
def counter():
    from shm_metrics.publisher.processes import ProcessCounter

    c = ProcessCounter()
    yield c
    c.close()


def _line(tail: str, comm: str = "c") -> str:
    return f"7 ({comm}) {tail}"


FIELDS = "1 2 3 0 -1 4194560 5 6 7 8 9 10 11 12 20 0 3 0 100 1000 50".split()  # ppid .. rss; num_threads 3


def _fields(**at: str) -> str:
    """FIELDS with some changed: f17="x" is num_threads (the 17th field after the state)."""
    out = list(FIELDS)
    for key, value in at.items():
        out[int(key[1:]) - 1] = value
    return " ".join(out)


STAT_LINES = {  # planted stat files -> (state, num_threads), or None: not a stat line
    _line(f"S {_fields()} 0 0\n"): ("S", 3),
    _line(f"R {_fields()}"): ("R", 3),  # no newline, nothing after rss
    _line(f"D {_fields()}\n", comm="a) b) (c"): ("D", 3),  # the last ")" ends comm
    _line(f"S {_fields(f17='-3')} 9\n"): ("S", -3),
    _line(f"S {_fields(f20='9' * 30)} 9\n"): ("S", 3),  # too large for 64 bits: checked, not read
    _line(f"S {' '.join(FIELDS[:-1])}\n"): None,  # 20 fields
    _line(f"S {_fields(f15='x0')}\n"): None,
    _line(f"S {_fields(f6='5x')}\n"): None,
    _line(f"S {_fields(f6='')}\n"): None,  # two blanks: an empty field
    _line(f"S {_fields(f21='')}\n"): None,  # rss empty
    _line(f"SS {_fields()}\n"): None,
    "7 (no end S 1 2 3\n": None,
    "": None,
    "7 (c) S": None,
}


@pytest.mark.parametrize("c_extension", [True, False], ids=["C", "Python"])
def test_stat_states_takes_a_stat_line_and_nothing_else(tmp_path, c_extension):
    """_scan.stat_states and its Python twin: the state letter and num_threads of every line that has the 21
    integer fields up to rss after one state byte, and the position of every other file (or fd -1)."""
    from array import array

    from shm_metrics.publisher import processes
    from shm_metrics.publisher.collectors import numbers

    if c_extension and numbers.stat_states is None:
        pytest.skip("the C extension is not built here")
    states_of = numbers.stat_states if c_extension else processes._stat_states_python
    lines = list(STAT_LINES)
    fds = array("i")
    try:
        for i, text in enumerate(lines):
            (tmp_path / str(i)).write_text(text)
            fds.append(os.open(tmp_path / str(i), os.O_RDONLY))
        fds.append(-1)
        fds.append(os.open(f"/proc/{os.getpid()}/stat", os.O_RDONLY))
        states, threads = bytearray(len(fds)), array("q", [99] * len(fds))
        failed, counts, threads_total, multithreaded = states_of(fds, states, threads)
        got = {text: (chr(states[i]), threads[i]) if i not in failed else None for i, text in enumerate(lines)}
        assert got == STAT_LINES
        assert len(fds) - 2 in failed and len(fds) - 1 not in failed
        assert chr(states[-1]) in "RS" and threads[-1] == len(os.listdir("/proc/self/task"))
        assert all(states[i] == 0 and threads[i] == 0 for i in failed)
        taken = [i for i in range(len(fds)) if i not in failed]
        assert counts == Counter(states[i] for i in taken)
        assert threads_total == sum(threads[i] for i in taken)
        assert multithreaded == [i for i in taken if threads[i] > 1]
        again = bytearray(len(fds))
        assert states_of(fds, again, None) == (failed, counts, 0, []) and again == states  # without num_threads
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def test_counter_counts_what_a_read_of_every_task_counts(counter):
    """Every process and thread of the host, as node_exporter reads them (retried until no task came or went
    around a count: other tests' and the host's tasks come and go)."""
    for _ in range(100):
        before = (numeric_proc_entries(), all_tasks())
        counts = counter.count()
        after = (numeric_proc_entries(), all_tasks())
        threads_by_state = sum(s["threads"] for s in counts.states)
        if before == after == (counts.procs_total, counts.threads_total) and threads_by_state == before[1]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"processes, threads: {before} {after}; counted {counts.procs_total}, {counts.threads_total}, "
                    f"{threads_by_state} by state")
    assert sum(s["processes"] for s in counts.states) == counts.procs_total


def test_counter_keeps_fds_and_lists_only_when_a_task_came(spawn, counter, listings, monkeypatch):
    """With the mark held still nothing is listed and an exit still shows, its fds closed; a new process shows
    once the mark moves; close() closes every kept fd."""
    import shm_metrics.publisher.processes as processes

    mark = [b"1 1\n"]
    monkeypatch.setattr(processes, "tasks_mark", lambda fd: mark[0])
    before = own_fds()
    staying = spawn(SLEEPER, ready="ready")
    leaving = spawn(THREE_THREADS, ready="ready")
    first = counter.count()
    kept = own_fds().values()
    assert f"/proc/{staying.pid}/stat" in kept and f"/proc/{leaving.pid}/stat" in kept
    assert sum(1 for target in kept if target.startswith(f"/proc/{leaving.pid}/task/")) == 3  # not the leader's
    newcomer = _exit_and_come(spawn, leaving, listings)
    second = counter.count()
    _assert_the_mark_stood(listings, leaving)
    # Others' tasks may exit meanwhile too, but none is counted anew while the mark stands: not the newcomer.
    assert second.procs_total <= first.procs_total - 1, "an exit shows without a listing"
    assert second.threads_total <= first.threads_total - 4
    assert not [target for target in own_fds().values() if target.startswith(f"/proc/{leaving.pid}/")]
    assert f"/proc/{newcomer.pid}/stat" not in own_fds().values()
    assert f"/proc/{staying.pid}/stat" in own_fds().values()
    mark[0] = b"2 2\n"
    counter.count()
    assert "/proc" in listings and f"/proc/{newcomer.pid}/stat" in own_fds().values()
    assert counter.kept_fds == len(own_fds()) - len(before) - 3  # the three children's pipes aside
    counter.close()
    assert counter.kept_fds == 0 and len(own_fds()) == len(before) + 3 - 1  # leaving's pipe was closed by wait


FD_BUDGET_SHARES = """
import os, resource, sys
from shm_metrics.publisher.processes import FdBudget, ProcessCounter
resource.setrlimit(resource.RLIMIT_NOFILE, (16, int(sys.argv[1])))
half, quarter = FdBudget(2, "/proc"), FdBudget(4, "/proc")
print(sum(half.take() for _ in range(100)), sum(quarter.take() for _ in range(100)))
resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
c = ProcessCounter()
s = c.count()
print(c.kept_fds, s.procs_total, sum(x["processes"] for x in s.states), sum(n.isdigit() for n in os.listdir("/proc")))
"""


def test_fd_budgets_grow_once_each_even_after_another_raised_the_limit(spawn):
    """Each table's share of the soft limit; the first to run out raises it to the hard one and the other grows
    too when it runs out.  The counter keeps a quarter (4 of 16) and reads every other process anyway."""
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    if hard <= 64:
        pytest.skip("the hard RLIMIT_NOFILE leaves no room to raise the soft one")
    for _ in range(12):
        spawn(["sleep", "600"])
    done = subprocess.run([sys.executable, "-c", FD_BUDGET_SHARES, str(hard)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    budgets, counts = done.stdout.splitlines()
    assert list(map(int, budgets.split())) == [min(100, hard // 2), min(100, hard // 4)]
    kept, total, counted, floor = map(int, counts.split())
    assert kept <= 4 and total >= 12 and counted == total and total >= floor - 3  # others come and go


def test_counter_an_exit_before_a_multithreaded_process(spawn, counter, monkeypatch):
    """A process gone at a count (dropped after it) does not shift which process the count's multithreaded
    positions name: the newer multithreaded child's threads are still read, each counted by its state."""
    import shm_metrics.publisher.processes as processes

    monkeypatch.setattr(processes, "tasks_mark", lambda fd: b"1 1\n")
    leaving = spawn(SLEEPER, ready="ready")
    threaded = spawn(THREE_THREADS, ready="ready")
    counter.count()
    os.kill(leaving.pid, signal.SIGKILL)
    leaving.wait(10)
    for _ in range(2):  # the count that drops it, and the one after
        counts = counter.count()
        assert sum(1 for target in own_fds().values() if target.startswith(f"/proc/{threaded.pid}/task/")) == 3
        assert sum(s["threads"] for s in counts.states) == counts.threads_total

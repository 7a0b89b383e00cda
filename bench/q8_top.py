"""Q8. The cost of ``--top`` on a host with thousands of processes, against node_exporter and ``top``.

The busy host is simulated: one helper process (``python -S``, started and
stopped by PID through the Lab) forks N children that sleep in ``os.read`` on
a pipe, a few of them with 8 threads each; it prints their PIDs, and on
SIGTERM kills each by PID with SIGKILL and reaps it (the children also exit
if the helper dies: the pipe reads EOF; the helper gets SIGTERM if the
benchmark dies).  The benchmark then checks that none of those PIDs (with its
start time) still runs.  N is sized from pid_max, threads-max and
RLIMIT_NPROC (2000, or 200 with ``--quick``).

* In-process: ``ProcessTable(top_n=10)``: the first scan (it opens a stat fd
  per process and thread) and ``time_scan`` (median, back to back, kept fds),
  per process too.
* Real ``shm-publisher`` processes at the default interval (1 s), ``--top 10``
  and ``--top 0``, side by side: CPU per sample (schedstat, ns) over a window.
* Peers, scraped once per second each: node_exporter with only
  ``--collector.processes``, and with Q4's equivalent collectors
  (``NODE_COLLECTORS``, which include ``processes``): CPU per scrape.
* A viewer's refresh: ``top -b -n 1`` (procps) spawned and waited for with
  ``os.wait4`` (its rusage: user + system CPU); ``shm-read top --once --json``
  the same way; and an in-process ``Reader.read()`` with the three tables
  decoded to rows, once per refresh (cold caches) and back to back.

Steps (publisher window, node_exporter scrapes, refreshes) run in rotating
order each round; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

from bench.common import (
    NODE_COLLECTORS,
    Config,
    Lab,
    Launched,
    Shared,
    Table,
    calibrate,
    connect,
    cpu_seconds,
    get,
    median,
    paired_ratio,
    per_call,
    rss_mib,
    us,
    wait_running,
    x,
)
from shm_metrics.publisher.processes import ProcessTable, time_scan
from shm_metrics.readers import Reader

TOP_N = 10
PUBLISHER_LIMIT, VIEWER_LIMIT = 0.1, 0.01

# The simulated host: argv n, threaded, threads, the benchmark's pid.  Runs under ``python -S``.
HOST = r"""
import ctypes, gc, os, signal, sys
n, threaded, threads, parent = map(int, sys.argv[1:5])
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the benchmark died -> SIGTERM
if os.getppid() != parent:
    sys.exit("the benchmark is gone")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
r, w = os.pipe()
gc.disable()
gc.freeze()
kids = []
try:
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                os.close(w)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                if i < threaded:
                    import threading
                    for _ in range(threads - 1):
                        threading.Thread(target=os.read, args=(r, 1), daemon=True).start()
                os.read(r, 1)  # EOF when the helper is gone
            finally:
                os._exit(0)
        kids.append(pid)
    os.close(r)
    print("pids", *kids, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
finally:
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
    for pid in kids:
        os.waitpid(pid, 0)
    print("stopped", len(kids), flush=True)
"""


def _stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the comm (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def host_size(want: int, threaded: int, threads: int) -> tuple[int, str]:
    """N, reduced if pid_max, threads-max or RLIMIT_NPROC leave less than twice the room it needs."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with open("/proc/sys/kernel/threads-max") as f:
        threads_max = int(f.read())
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    with open("/proc/loadavg") as f:
        tasks = int(f.read().split()[3].split("/")[1])  # every task (thread) on the host now
    limit = min(pid_max, threads_max, nproc if nproc != resource.RLIM_INFINITY else pid_max)
    room = (limit - tasks) // 2 - threaded * (threads - 1)
    n = max(threaded, min(want, room))
    return n, (f"pid_max {pid_max}, threads-max {threads_max}, RLIMIT_NPROC "
               f"{'unlimited' if nproc == resource.RLIM_INFINITY else nproc}, {tasks} tasks before")


class BusyHost:
    """N sleeping processes (``threaded`` of them with ``threads`` threads), stopped by PID."""

    def __init__(self, lab: Lab, n: int, threaded: int, threads: int):
        self.lab, self.n, self.threaded, self.threads = lab, n, threaded, threads
        self.helper = lab.start([sys.executable, "-S", "-c", HOST, str(n), str(threaded), str(threads),
                                 str(os.getpid())],
                                "q8-busy-host")
        self.kids: dict[int, bytes] = {}  # pid -> its start time (ticks after boot): pid reuse can't fool us
        deadline = time.monotonic() + 60
        pids = None
        while pids is None:
            for line in self.helper.log.read_text(errors="replace").splitlines():
                if line.startswith("pids "):
                    pids = [int(p) for p in line.split()[1:]]
            if pids is None:
                if self.helper.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Q8 busy host did not start:\n{self.helper.log.read_text()}")
                time.sleep(0.05)
        while True:  # until every child sleeps, with its threads
            settled = True
            for i, pid in enumerate(pids):
                fields = _stat(pid)
                if fields is None:
                    raise RuntimeError(f"Q8 busy host: child {pid} is gone")
                self.kids[pid] = fields[19]
                if fields[0] != b"S" or int(fields[17]) != (threads if i < threaded else 1):
                    settled = False
            if settled:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("Q8 busy host: children did not settle")
            time.sleep(0.05)

    def alive(self) -> list[int]:
        out = []
        for pid, start in self.kids.items():
            fields = _stat(pid)
            if fields is not None and fields[19] == start and fields[0] not in (b"Z", b"X"):
                out.append(pid)
        return out

    def stop(self) -> str:
        """SIGTERM to the helper (it kills and reaps its children by PID); then check, by PID and start time."""
        self.lab.stop(self.helper, timeout=60)
        left = self.alive()
        for pid in left:  # only if the helper failed: ours by PID and start time
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        still = self.alive()
        if still:
            raise RuntimeError(f"Q8 busy host: {len(still)} children still running: {still[:20]}")
        stopped = "stopped" in self.helper.log.read_text(errors="replace")
        return (f"{self.n} processes of the simulated host stopped by PID by the helper"
                f"{'' if stopped and not left else f' ({len(left)} killed by the benchmark)'}, none left")


def publisher(lab: Lab, top: int) -> Launched:
    name = lab.segment_name(f"q8-top{top}")
    pub = lab.start([*lab.script("shm-publisher", "shm_metrics.publisher"), "--name", name, "--interval", "1",
                     "--top", str(top)], f"publisher-top{top}")
    pub.name = name
    wait_running(name, pub)
    return pub


def spawn_cpu(lab: Lab, argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """(CPU seconds: user + system from the child's rusage, wall seconds) of one run of ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    lab.pids.append(proc.pid)
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # by its PID, with its rusage
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {err}")
    return usage.ru_utime + usage.ru_stime, wall


def header(name: str) -> tuple[int, float]:
    with Reader(name) as r:
        snap = r.read(arrays=False)
        return snap.seq, snap.sample_monotonic


def run(cfg: Config, shared: Shared) -> Table:
    lab = shared.lab
    threaded, threads = cfg.pick(20, 4), 8
    n, limits = host_size(cfg.pick(2000, 200), threaded, threads)
    window, refreshes, rounds = cfg.pick(10.0, 1.5), cfg.pick(5, 2), cfg.pick(3, 1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed: .pyc (see Q3)
    shm_read = [*lab.script("shm-read", "shm_metrics.readers"), "top", "--once", "--json"]
    top_bin = shutil.which("top")
    top_argv = [top_bin, "-b", "-n", "1"] if top_bin else None  # procps; without it its rows say so

    host = BusyHost(lab, n, threaded, threads)
    pubs: dict[int, Launched] = {}
    node_proc = None
    stopped = ""
    try:
        procs_now = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
        # In-process scan: the first one opens the fds, the next ones re-read them.
        scanner = ProcessTable(top_n=TOP_N)
        try:
            t0 = time.perf_counter()
            first = scanner.scan()
            first_scan = time.perf_counter() - t0
            kept = scanner.kept_fds
            scan_med = median(time_scan(scanner, cfg.pick(15, 3)) for _ in range(cfg.pick(3, 1)))
        finally:
            scanner.close()
        scanned = first.procs_total
        threads_seen = sum(s["threads"] for s in first.states)

        pubs = {top: publisher(lab, top) for top in (TOP_N, 0)}
        node_full = shared.node
        node_proc = lab.node_exporter(("processes",), "node_exporter-processes")
        nodes = {"processes": node_proc, "full": node_full}
        conns = {k: connect(v.port) for k, v in nodes.items() if v}
        for conn in conns.values():
            get(conn)  # warm-up
        for _ in range(2):  # warm-up: page cache, bytecode caches (written once, like an installed package)
            if top_argv:
                spawn_cpu(lab, top_argv)
            spawn_cpu(lab, [*shm_read, "--name", pubs[TOP_N].name], env)
        viewer = Reader(pubs[TOP_N].name)

        def refresh() -> tuple:
            snap = viewer.read()
            return snap.top_cpu, snap.top_rss, snap.process_states

        rows = refresh()
        assert rows[0] and rows[2], "the --top 10 publisher's tables are empty"
        time.sleep(cfg.pick(2.0, 0.2))  # the publishers' first scans (opening every fd) are behind them

        per_sample: dict[int, list[float]] = {top: [] for top in pubs}
        cpu_total = dict.fromkeys(pubs, 0.0)
        wall_total = dict.fromkeys(pubs, 0.0)
        samples_total = dict.fromkeys(pubs, 0)
        per_scrape: dict[str, list[float]] = {k: [] for k in conns}
        steps: dict[str, list[float]] = {"top": [], "top_wall": [], "shm-read": [], "shm-read_wall": [],
                                         "cold": []}
        per_round: dict[str, list[float]] = {k: [] for k in ("top", "shm-read", "cold")}

        def pub_window() -> None:
            before = {top: (cpu_seconds(p.pid), time.monotonic(), header(p.name)) for top, p in pubs.items()}
            time.sleep(window)
            for top, p in pubs.items():
                cpu1, t1, (s1, _) = cpu_seconds(p.pid), time.monotonic(), header(p.name)
                cpu0, t0, (s0, _) = before[top]
                samples = (s1 - s0) // 2
                cpu_total[top] += cpu1 - cpu0
                wall_total[top] += t1 - t0
                samples_total[top] += samples
                if samples:
                    per_sample[top].append((cpu1 - cpu0) / samples)

        def scrapes() -> None:
            # Each node_exporter once per second, half a second apart: the publishers' rhythm, caches as cold.
            count = max(1, round(window))
            c0 = {k: cpu_seconds(nodes[k].pid) for k in conns}
            next_at = time.monotonic()
            for _ in range(count):
                for conn in conns.values():
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    get(conn)
                    next_at += 1 / len(conns)
            for k in conns:
                per_scrape[k].append((cpu_seconds(nodes[k].pid) - c0[k]) / count)

        def refresh_step() -> None:
            got: dict[str, list[float]] = {k: [] for k in per_round}
            next_at = time.monotonic()
            for i in range(refreshes):
                order = ["top", "shm-read", "cold"] if top_argv else ["shm-read", "cold"]
                for what in order[i % len(order):] + order[:i % len(order)]:
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += 1 / 3  # a third of a second apart: each starts with caches as cold
                    if what == "top":
                        cpu, wall = spawn_cpu(lab, top_argv)
                    elif what == "shm-read":
                        cpu, wall = spawn_cpu(lab, [*shm_read, "--name", pubs[TOP_N].name], env)
                    else:
                        t0 = time.perf_counter()
                        refresh()
                        cpu = wall = time.perf_counter() - t0
                    got[what].append(cpu)
                    steps[what].append(cpu)
                    if what != "cold":
                        steps[f"{what}_wall"].append(wall)
            for k, v in got.items():
                if v:
                    per_round[k].append(median(v))

        plan = {"pub": pub_window, "node": scrapes, "refresh": refresh_step}
        for r in range(rounds):
            names = list(plan)
            for step in names[r % 3:] + names[:r % 3]:
                plan[step]()
        hot = per_call(refresh, calibrate(refresh, cfg.pick(0.2, 0.02)))
        rss = {top: rss_mib(p.pid) for top, p in pubs.items()}
        top_rows = [len(rows[0]), len(rows[1])]
        viewer.close()
        for conn in conns.values():
            conn.close()
    finally:
        for p in pubs.values():
            lab.stop(p)
        if node_proc:
            lab.stop(node_proc)
        stopped = host.stop()

    table = Table(8, "The cost of `--top` on a busy host: the publisher against node_exporter, a viewer against top",
                  ["what", "µs CPU per sample, scrape or refresh", "µs per process", "CPU % of one core",
                   "x node_exporter per scrape (equivalent collectors)", "x `top -b -n 1` refresh"])
    full = per_scrape.get("full")
    proc_only = per_scrape.get("processes")

    def vs_full(values: list[float]) -> str:
        return x(paired_ratio(values, full)) if full and values else "n/a"

    def vs_top(values: list[float]) -> str:
        return x(paired_ratio(values, per_round["top"])) if per_round["top"] else "n/a"

    def per_proc(seconds: float) -> str:
        return us(seconds / scanned)

    table.add(f"`ProcessTable.scan()` in-process, first scan (opens {kept} stat fds)", us(first_scan),
              per_proc(first_scan), "", "", "")
    table.add("`time_scan` in-process, median, fds kept open, back to back", us(scan_med), per_proc(scan_med), "",
              x(scan_med / median(full)) if full else "n/a", "")
    cpu_pct = {}
    for top in pubs:
        cpu = cpu_total[top] / max(samples_total[top], 1)
        cpu_pct[top] = 100 * cpu_total[top] / max(wall_total[top], 1e-9)
        table.add(f"shm-publisher `--top {top}` at 1 s: CPU / samples written ({samples_total[top]} samples)",
                  us(cpu), per_proc(cpu) if top else "", f"{cpu_pct[top]:.2f}", vs_full(per_sample[top]), "")
    share = [a - b for a, b in zip(per_sample[TOP_N], per_sample[0])]
    table.add(f"the scan's share: `--top {TOP_N}` minus `--top 0`, per sample (median of per-round differences)",
              us(median(share)) if share else "n/a", per_proc(median(share)) if share else "", "",
              vs_full(share), "")
    if full:
        table.add("node_exporter `--collector.processes` only: CPU per scrape, 1 scrape/s", us(median(proc_only)),
                  per_proc(median(proc_only)), f"{100 * median(proc_only):.2f}", vs_full(proc_only), "")
        table.add(f"node_exporter ({', '.join(NODE_COLLECTORS)}): CPU per scrape, 1 scrape/s", us(median(full)),
                  per_proc(median(full)), f"{100 * median(full):.2f}", "1 (peer)", "")
    else:
        table.add("node_exporter: not installed (prometheus-node-exporter)", "n/a", "", "", "", "")
    if top_argv:
        table.add("`top -b -n 1` (procps): one refresh, CPU of the process (rusage)", us(median(steps["top"])),
                  per_proc(median(steps["top"])), "", "", "1 (peer)")
    else:
        table.add("`top`: not installed (procps)", "n/a", "", "", "", "")
    table.add("`shm-read top --once --json`: the whole process (rusage)", us(median(steps["shm-read"])), "", "", "",
              vs_top(per_round["shm-read"]))
    table.add("in-process `Reader.read()` and its three tables as rows, once per refresh (wall)",
              us(median(steps["cold"])), "", "", "", vs_top(per_round["cold"]))
    table.add("the same, back to back (wall)", us(hot), "", "", "",
              x(hot / median(steps["top"])) if top_argv else "n/a")

    table.notes.append(
        f"Simulated host: {n} sleeping processes ({threaded} of them with {threads} threads) forked by one helper; "
        f"{scanned} processes and {threads_seen} threads on the host at the first scan ({procs_now} processes "
        f"before the publishers started; {limits}). {stopped}. {rounds} rounds, each: a {window:g} s window of "
        f"both publishers (1 s, side by side), {max(1, round(window))} scrapes of each node_exporter (once per "
        f"second each, half a second apart), {refreshes} refreshes of each viewer (a third of a second apart), "
        f"in rotating order; ratios: medians of per-round ratios. CPU: schedstat (publishers, node_exporter), "
        f"wait4 rusage (top, shm-read). Wall time per refresh, median: `top -b -n 1` "
        f"{us(median(steps['top_wall'])) if top_argv else 'n/a'} µs, `shm-read top --once --json` "
        f"{us(median(steps['shm-read_wall']))} µs. The --top {TOP_N} publisher's tables hold {top_rows[0]} + "
        f"{top_rows[1]} rows.")
    table.notes.append(f"CPU % of one core at 1 s (the default interval) on this host: --top {TOP_N} "
                       f"{cpu_pct[TOP_N]:.2f} %, --top 0 {cpu_pct[0]:.2f} %. RSS: --top {TOP_N} {rss[TOP_N]:.1f} MiB, "
                       f"--top 0 {rss[0]:.1f} MiB.")
    if share and proc_only:
        table.notes.append(f"The scan alone (--top {TOP_N} minus --top 0) costs "
                           f"{x(paired_ratio(share, proc_only))} node_exporter's processes collector per scrape.")
    if full and per_sample[TOP_N]:
        ratio = paired_ratio(per_sample[TOP_N], full)
        table.target(f"publisher at 1 s with --top {TOP_N} and {scanned} processes: CPU per sample {x(ratio)} "
                     f"node_exporter's CPU per scrape with the equivalent collectors (<= {PUBLISHER_LIMIT}x)",
                     ratio <= PUBLISHER_LIMIT)
    else:
        table.target(f"publisher with --top {TOP_N} <= {PUBLISHER_LIMIT}x node_exporter per scrape: "
                     f"{'no sample in the window' if full else 'prometheus-node-exporter not installed'}", None)
    if per_round["top"]:
        viewer_ratio = paired_ratio(per_round["cold"], per_round["top"])
        table.target(f"a viewer's refresh (in-process read) {x(viewer_ratio)} a `top -b -n 1` refresh "
                     f"(<= {VIEWER_LIMIT}x)", viewer_ratio <= VIEWER_LIMIT)
    else:
        table.target(f"a viewer's refresh <= {VIEWER_LIMIT}x a `top -b -n 1` refresh: procps' top not installed",
                     None)
    return table

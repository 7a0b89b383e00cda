"""Scrape latency of shm-exporter against node_exporter, measured in one run.

    python bench/scrape_latency.py [--scrapes 200] [--interval 1]

Starts a publisher, shm-exporter and Debian's prometheus-node-exporter with
the equivalent collectors (cpu, loadavg, meminfo, stat, filefd, netdev,
diskstats, filesystem, processes) on 127.0.0.1, then scrapes each N times,
alternating, each with its own keep-alive http.client connection (the same
client code for both, no gzip). Prints median and p99 latency, server CPU per
scrape and RSS. Every process is stopped by its own PID; the segment is
removed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTORS = ("cpu", "loadavg", "meminfo", "stat", "filefd", "netdev", "diskstats", "filesystem", "processes")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_http(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/metrics")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on port {port}")


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=1.0, help="publisher interval (s)")
    args = ap.parse_args()
    node_bin = shutil.which("prometheus-node-exporter")
    if not node_bin:
        raise SystemExit("prometheus-node-exporter not found (apt-get install prometheus-node-exporter)")
    sys.path.insert(0, ROOT)
    from publisher import filters

    name = f"/bench-scrape-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        procs.append(p)
        return p

    try:
        start([sys.executable, "-m", "publisher", "--name", name, "--interval", str(args.interval)])
        ours_port, node_port = free_port(), free_port()
        ours = start([sys.executable, "-m", "readers.exporter", "--name", name,
                      "--web.listen-address", f"127.0.0.1:{ours_port}"])
        node = start([node_bin, f"--web.listen-address=127.0.0.1:{node_port}", "--collector.disable-defaults",
                      *(f"--collector.{c}" for c in COLLECTORS),
                      f"--collector.netdev.device-exclude={filters.NET_EXCLUDE}",
                      f"--collector.diskstats.device-exclude={filters.DISK_EXCLUDE}",
                      f"--collector.filesystem.mount-points-exclude={filters.MOUNT_POINT_EXCLUDE}",
                      f"--collector.filesystem.fs-types-exclude={filters.FS_TYPE_EXCLUDE}"])
        wait_http(ours_port)
        wait_http(node_port)
        time.sleep(max(1.0, 2 * args.interval))  # a published sample, warm caches
        targets = {"shm-exporter": (ours, ours_port), "node_exporter": (node, node_port)}
        conns = {k: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for k, (_, port) in targets.items()}
        times: dict[str, list[float]] = {k: [] for k in targets}
        sizes: dict[str, int] = {}
        cpu0 = {k: cpu_seconds(p.pid) for k, (p, _) in targets.items()}
        reconnects = dict.fromkeys(targets, 0)
        for i in range(args.scrapes * 2 + 10):
            key = list(targets)[i % 2]
            conn = conns[key]
            sock = conn.sock
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            dt = time.perf_counter() - t0
            assert resp.status == 200, (key, resp.status)
            if i >= 10:  # 5 warm-up scrapes each
                times[key].append(dt)
                reconnects[key] += sock is not None and conn.sock is not sock
            sizes[key] = len(body)
        cpu1 = {k: cpu_seconds(p.pid) for k, (p, _) in targets.items()}
        for conn in conns.values():
            conn.close()
        print(f"{args.scrapes} scrapes each, alternating, keep-alive http.client, publisher interval {args.interval}s")
        print(f"{'target':<14} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} {'CPU ms/scrape':>14} "
              f"{'RSS MiB':>8} {'bytes':>7} {'reconnects':>10}")
        for key, (proc, _) in targets.items():
            t = sorted(times[key])
            cpu = (cpu1[key] - cpu0[key]) * 1000 / len(t)
            print(f"{key:<14} {percentile(t, 50) * 1000:>10.2f} {percentile(t, 99) * 1000:>8.2f} "
                  f"{t[-1] * 1000:>8.2f} {cpu:>14.2f} {rss_mib(proc.pid):>8.1f} {sizes[key]:>7} "
                  f"{reconnects[key]:>10}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

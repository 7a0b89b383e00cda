"""Q9. The end-to-end fixture tree: shm-publisher sampling it with the script's collectors, against node_exporter.

node_exporter 1.5.0's own end-to-end test (``tests/fixtures/node_exporter-1.5.0``,
unpacked into the lab's temporary directory as ``tests/node_e2e.py`` does) is a
host with everything: RAID, sensors, NFS, ZFS, InfiniBand...  Both programs run
on it with the script's flags (``node_e2e.split_flags``: the publisher gets the
switches and options of the collectors it has):

* shm-publisher at 10 Hz with ``--always-full`` (every collector every sample), CPU per sample =
  CPU delta / samples written over a window (``common.cpu_seconds``, ns);
* Debian's node_exporter with exactly the collectors the publisher runs
  (``--collector.disable-defaults`` and those, with the same options), scraped over a
  keep-alive connection at the same rhythm (10/s), CPU per scrape = CPU delta / scrapes.

Windows and scrape batches alternate in rotating rounds; the ratio is the median of the
per-round ratios.  The textfile collector is not in either: it runs in shm-exporter.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from types import ModuleType

from bench.common import (
    ROOT,
    Config,
    Shared,
    Table,
    connect,
    cpu_seconds,
    free_port,
    get,
    median,
    paired_ratio,
    rss_mib,
    us,
    wait_http,
    wait_running,
    x,
)
from shm_metrics.readers import Reader

RATE = 10.0  # samples and scrapes per second
CPU_LIMIT = 0.2  # issue 12: a sample at most 0.2x node_exporter's scrape on the same tree


def fixture_harness() -> ModuleType:
    """tests/node_e2e.py (the fixture's flags and unpacking), loaded from the repository."""
    spec = importlib.util.spec_from_file_location("node_e2e", ROOT / "tests" / "node_e2e.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def segment_seq(name: str) -> int:
    with Reader(name) as r:
        return r.read(arrays=False).seq


def node_exporter_flags(publisher_flags: list[str], enabled: set[str]) -> list[str]:
    """node_exporter's flags for the same collectors as the publisher: the paths, the per-collector options
    the publisher was given, --collector.disable-defaults and exactly the publisher's collectors."""
    def is_option(flag: str) -> bool:
        key = flag.split("=", 1)[0]
        return key.startswith("--collector.") and "." in key[len("--collector."):]

    out = [f for f in publisher_flags if f.startswith("--path.") or is_option(f)]
    # Debian's build excludes lo by default, and its include/exclude are mutually exclusive (fixture README).
    if any(f.startswith("--collector.netdev.device-include") for f in out):
        out.append("--collector.netdev.device-exclude=")
    return [*out, "--collector.disable-defaults", *(f"--collector.{c}" for c in sorted(enabled))]


def _costliest(root, parser, args, enabled: set[str], cfg: Config, top: int = 8) -> list[tuple[str, float]]:
    """Where a sample's time goes: each collector of the run timed alone in this process on the same tree,
    with the options and filters the publisher got."""
    from shm_metrics.publisher import cli, switches
    from shm_metrics.publisher.collectors import selected
    from shm_metrics.publisher.sampler import Sampler, time_families

    here = os.getcwd()
    os.chdir(root)  # the script's paths are relative to the unpacked directory
    try:
        tree = "collector/fixtures"
        sampler = Sampler(procfs=f"{tree}/proc", sysfs=f"{tree}/sys", rootfs=tree, udev_data=f"{tree}/udev/data",
                          collectors=selected(enabled), options=switches.options(args),
                          filters=cli.filters_of(parser, args))
        try:
            costs = time_families(sampler, cfg.pick(50, 3))
        finally:
            sampler.close()
    finally:
        os.chdir(here)
    return sorted(costs.items(), key=lambda kv: -kv[1])[:top]


def run(cfg: Config, shared: Shared) -> Table:
    from shm_metrics.publisher import cli, switches
    from shm_metrics.publisher.collectors import collector_names

    lab = shared.lab
    harness = fixture_harness()
    root = harness.unpack(lab.tmp / "node-e2e")
    names = collector_names()
    publisher_flags, _, left_out = harness.split_flags(names)
    parser = cli.build_parser(names)
    args, _ = parser.parse_known_args(publisher_flags)
    enabled = switches.enabled(args, names)

    name = lab.segment_name("q9-fixture")
    # --always-full: every sample runs every collector, as node_exporter's every scrape does (the publisher
    # as it comes runs only the CORE tier between scrapes, which would not be like for like).
    pub = lab.start([*lab.script("shm-publisher", "shm_metrics.publisher"), "--name", name, "--interval",
                     str(1 / RATE), "--always-full", *publisher_flags], "q9-publisher", cwd=root)
    pub.name = name
    wait_running(name, pub)
    binary = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
    node = None
    if os.access(binary, os.X_OK):
        port = free_port()
        node = lab.start([binary, f"--web.listen-address=127.0.0.1:{port}",
                          *node_exporter_flags(publisher_flags, enabled)], "q9-node_exporter", cwd=root)
        node.port = port
        wait_http(port, node.proc, "node_exporter on the fixture tree")

    window, scrapes, rounds = cfg.pick(5.0, 0.5), cfg.pick(50, 5), cfg.pick(5, 1)
    pub_cpu: list[float] = []
    node_cpu: list[float] = []
    samples_total = 0
    conn = connect(node.port) if node else None
    try:
        if conn:
            families = get(conn).count(b"# HELP ")
        time.sleep(cfg.pick(1.0, 0.1))
        for r in range(rounds):
            steps = ["pub", "node"] if r % 2 == 0 else ["node", "pub"]
            for step in steps:
                if step == "pub":
                    c0, s0 = cpu_seconds(pub.pid), segment_seq(name)
                    time.sleep(window)
                    c1, s1 = cpu_seconds(pub.pid), segment_seq(name)
                    samples = (s1 - s0) // 2
                    samples_total += samples
                    if samples:
                        pub_cpu.append((c1 - c0) / samples)
                elif conn:
                    c0 = cpu_seconds(node.pid)
                    next_at = time.monotonic()
                    for _ in range(scrapes):
                        next_at += 1 / RATE
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        get(conn)
                    node_cpu.append((cpu_seconds(node.pid) - c0) / scrapes)
        pub_rss = rss_mib(pub.pid)
        node_rss = rss_mib(node.pid) if node else None
    finally:
        if conn:
            conn.close()
        lab.stop(pub)
        if node:
            lab.stop(node)

    table = Table(9, "node_exporter's end-to-end fixture tree: a sample of every collector the script switches on "
                  "that shm-publisher has, against node_exporter's scrape of the same collectors",
                  ["what", "µs CPU per sample / scrape", "RSS MiB", "x node_exporter per scrape"])
    ratio = paired_ratio(pub_cpu, node_cpu) if pub_cpu and node_cpu else None
    table.add(f"shm-publisher at {RATE:g} Hz --always-full on the tree ({len(enabled)} collectors, "
              f"{samples_total} samples)",
              us(median(pub_cpu)) if pub_cpu else "n/a", f"{pub_rss:.1f}", x(ratio) if ratio else "n/a")
    if node_cpu:
        table.add(f"node_exporter, the same collectors and options, {RATE:g} scrapes/s ({families} families)",
                  us(median(node_cpu)), f"{node_rss:.1f}", "1 (peer)")
    table.notes.append(f"collectors: {', '.join(sorted(enabled))}.")
    table.notes.append("costliest collectors on the tree (in process, `time_families`, median wall per call): "
                       + ", ".join(f"{c} {us(t)} µs" for c, t in _costliest(root, parser, args, enabled, cfg))
                       + ".")
    if left_out:
        table.notes.append("in the script but not in shm-publisher yet (in neither run): "
                           f"{', '.join(sorted(left_out))}.")
    table.notes.append(f"{rounds} rounds, each a {window:g} s window of the publisher and {scrapes} paced scrapes, "
                       f"in alternating order; ratio = median of per-round ratios. CPU from "
                       f"/proc/PID/task/*/schedstat (ns).")
    if ratio is not None:
        table.target(f"a sample of the tree costs {x(ratio)} node_exporter's CPU per scrape of it (<= {CPU_LIMIT}x)",
                     ratio <= CPU_LIMIT)
    else:
        table.target("a sample of the tree <= 0.2x node_exporter's scrape: prometheus-node-exporter not installed",
                     None)
    return table


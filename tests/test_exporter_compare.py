"""shm-exporter next to a real node_exporter (Debian's prometheus-node-exporter) on the same host.

Both run with their default device and mount filters: the publisher's
defaults (``publisher/filters.py``) are those of Debian's node_exporter 1.5.0,
so that out of the box both show the same series on the same host.

Same metric names, types, HELP texts and label sets; the same devices,
mount points, filesystem types and CPUs; values equal where they do not move
(MemTotal, filefd maximum, boot time, filesystem sizes) and close where they
do.  Our sample is taken before node_exporter's scrape, so a counter of ours
is never above node_exporter's and never far below it.
"""

from __future__ import annotations

import pytest
from exporter_util import Exporter, Process, free_port, need, scrape, wait_scrape

from shm_metrics.readers.exporter.collector import NODE_FAMILIES

COLLECTORS = ("cpu", "loadavg", "meminfo", "stat", "filefd", "netdev", "diskstats", "filesystem", "processes")
MiB = 1 << 20
STATE_FAMILIES = ("node_processes_state", "node_processes_threads_state")


@pytest.fixture
def node_exporter():
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    proc = Process([binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                    *(f"--collector.{c}" for c in COLLECTORS)])
    try:
        proc.wait_for_line("Listening on")
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.stop()


def _labelsets(expo, name):
    return set(expo.samples[name])


def test_same_names_types_help_labels_and_values(name, start_publisher, node_exporter):
    start_publisher(name, "--interval", "0.5")
    exp = Exporter(name)
    try:
        ours = wait_scrape(exp.url + "/metrics", lambda e: e.value("shm_metrics_up") == 1, what="up 1")
        theirs = scrape(node_exporter)
    finally:
        exp.stop()

    for fam in NODE_FAMILIES:
        n = fam.name
        assert n in theirs.samples, f"node_exporter has no {n}"
        assert ours.types[n] == theirs.types[n], n
        assert ours.help[n] == theirs.help[n], n
        if n in STATE_FAMILIES:  # states come and go between the two scans: compare the settled ones
            assert {k for key in _labelsets(ours, n) for k, _ in key} == {k for key in _labelsets(theirs, n)
                                                                       for k, _ in key}, n
            for key, value in theirs.samples[n].items():
                if value >= 5:
                    assert abs(ours.samples[n].get(key, 0) - value) <= max(10, 0.2 * value), (n, key)
            continue
        # The same label names, and the same devices / mount points / CPUs / modes.
        assert _labelsets(ours, n) == _labelsets(theirs, n), (
            f"{n}: only ours {_labelsets(ours, n) - _labelsets(theirs, n)}, "
            f"only node_exporter's {_labelsets(theirs, n) - _labelsets(ours, n)}")

    def both(n, **labels):
        return ours.value(n, **labels), theirs.value(n, **labels)

    # Values that do not move: equal.
    for n in ("node_memory_MemTotal_bytes", "node_memory_SwapTotal_bytes", "node_filefd_maximum",
              "node_boot_time_seconds"):
        a, b = both(n)
        assert a == b, n
    for key in ours.samples["node_filesystem_size_bytes"]:
        assert ours.samples["node_filesystem_size_bytes"][key] == theirs.samples["node_filesystem_size_bytes"][key]

    # Gauges that move slowly: close.
    close = {
        "node_processes_pids": 20, "node_processes_threads": 40, "node_filefd_allocated": 500,
        "node_load1": 1.0, "node_load5": 0.5, "node_load15": 0.5,
        "node_memory_MemAvailable_bytes": 256 * MiB, "node_memory_MemFree_bytes": 256 * MiB,
        "node_memory_Cached_bytes": 256 * MiB, "node_memory_Buffers_bytes": 64 * MiB,
        "node_memory_SwapFree_bytes": 64 * MiB,
    }
    for n, tolerance in close.items():
        a, b = both(n)
        assert abs(a - b) <= tolerance, f"{n}: ours {a}, node_exporter {b}"
    for fam in ("node_filesystem_free_bytes", "node_filesystem_avail_bytes"):
        for key, a in ours.samples[fam].items():
            b = theirs.samples[fam][key]
            assert abs(a - b) <= max(512 * MiB, 0.01 * b), f"{fam}{dict(key)}: ours {a}, node_exporter {b}"

    # Counters: ours (sampled first) <= theirs, and not far behind.
    for fam in NODE_FAMILIES:
        if fam.kind != "counter":
            continue
        for key, a in ours.samples[fam.name].items():
            b = theirs.samples[fam.name][key]
            assert b >= a - 1e-6, f"{fam.name}{dict(key)}: ours {a} is ahead of node_exporter's {b}"
            if fam.name.endswith("_seconds_total"):
                limit = 30.0
            elif "bytes" in fam.name:
                limit = max(256 * MiB, 0.05 * b)
            else:
                limit = max(100_000, 0.05 * b)
            assert b - a <= limit, f"{fam.name}{dict(key)}: ours {a}, node_exporter {b}"

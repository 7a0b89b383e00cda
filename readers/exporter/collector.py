"""The Prometheus Collector: node_exporter's metric names from one snapshot.

Names, types, label names and HELP texts are those of node_exporter 1.5.0
(collectors cpu, loadavg, meminfo, stat, filefd, netdev, diskstats,
filesystem, processes), so dashboards and alert rules written for
node_exporter work unchanged; ``tests/test_exporter_compare.py`` checks them
against a real node_exporter.  The ``shm_metrics_*`` families describe the
segment itself.

Everything a scrape shows comes from one ``Reading`` (one seqlock-consistent
snapshot taken at scrape time): nothing is copied in the background and no
gauge mirrors a value between scrapes.  ``node_*`` families appear only when
the sample is fresh (running publisher, age <= 2 x interval + 1 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shm_metrics.readers import Snapshot
from shm_metrics.readers.exporter.source import STATES, Reading, SegmentSource

GAUGE, COUNTER = "gauge", "counter"


class Family(NamedTuple):
    """One metric family and the layout field it comes from."""

    name: str
    kind: str  # GAUGE or COUNTER
    help: str
    field: str


def _meminfo(key: str, field: str) -> Family:
    # node_exporter's meminfo collector: node_memory_<Key>_bytes, HELP "Memory information field <Key>_bytes."
    return Family(f"node_memory_{key}_bytes", GAUGE, f"Memory information field {key}_bytes.", field)


# Scalars: one unlabelled sample each.
SCALAR_FAMILIES: tuple[Family, ...] = (
    Family("node_processes_pids", GAUGE, "Number of PIDs", "procs_total"),
    Family("node_processes_threads", GAUGE, "Allocated threads in system", "threads_total"),
    Family("node_procs_running", GAUGE, "Number of processes in runnable state.", "procs_running"),
    Family("node_procs_blocked", GAUGE, "Number of processes blocked waiting for I/O to complete.", "procs_blocked"),
    Family("node_forks_total", COUNTER, "Total number of forks.", "forks_total"),
    Family("node_context_switches_total", COUNTER, "Total number of context switches.", "ctx_switches_total"),
    Family("node_intr_total", COUNTER, "Total number of interrupts serviced.", "interrupts_total"),
    Family("node_boot_time_seconds", GAUGE, "Node boot time, in unixtime.", "boot_time"),
    Family("node_load1", GAUGE, "1m load average.", "load1"),
    Family("node_load5", GAUGE, "5m load average.", "load5"),
    Family("node_load15", GAUGE, "15m load average.", "load15"),
    _meminfo("MemTotal", "mem_total_bytes"),
    _meminfo("MemAvailable", "mem_available_bytes"),
    _meminfo("MemFree", "mem_free_bytes"),
    _meminfo("Buffers", "mem_buffers_bytes"),
    _meminfo("Cached", "mem_cached_bytes"),
    _meminfo("SwapTotal", "swap_total_bytes"),
    _meminfo("SwapFree", "swap_free_bytes"),
    Family("node_filefd_allocated", GAUGE, "File descriptor statistics: allocated.", "filefd_allocated"),
    Family("node_filefd_maximum", GAUGE, "File descriptor statistics: maximum.", "filefd_maximum"),
)

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
CPU_FAMILY = Family("node_cpu_seconds_total", COUNTER, "Seconds the CPUs spent in each mode.", "")


def _netdev(direction: str, stat: str, field: str) -> Family:
    return Family(f"node_network_{direction}_{stat}_total", COUNTER,
                  f"Network device statistic {direction}_{stat}.", field)


# Per network device, label ``device`` (node_exporter's legacy /proc/net/dev names).
NET_FAMILIES: tuple[Family, ...] = tuple(
    _netdev(direction, stat, f"{prefix}_{field}")
    for direction, prefix in (("receive", "rx"), ("transmit", "tx"))
    for stat, field in (("bytes", "bytes"), ("packets", "packets"), ("errs", "errors"), ("drop", "dropped"))
)

# Per block device, label ``device``.
DISK_FAMILIES: tuple[Family, ...] = (
    Family("node_disk_reads_completed_total", COUNTER, "The total number of reads completed successfully.", "reads"),
    Family("node_disk_writes_completed_total", COUNTER, "The total number of writes completed successfully.",
           "writes"),
    Family("node_disk_read_bytes_total", COUNTER, "The total number of bytes read successfully.", "read_bytes"),
    Family("node_disk_written_bytes_total", COUNTER, "The total number of bytes written successfully.",
           "written_bytes"),
    Family("node_disk_io_time_seconds_total", COUNTER, "Total seconds spent doing I/Os.", "io_time_seconds"),
)

# Per mounted filesystem, labels ``device``, ``fstype``, ``mountpoint``.
FILESYSTEM_LABELS = ("device", "fstype", "mountpoint")
FILESYSTEM_FAMILIES: tuple[Family, ...] = (
    Family("node_filesystem_size_bytes", GAUGE, "Filesystem size in bytes.", "size_bytes"),
    Family("node_filesystem_free_bytes", GAUGE, "Filesystem free space in bytes.", "free_bytes"),
    Family("node_filesystem_avail_bytes", GAUGE, "Filesystem space available to non-root users in bytes.",
           "avail_bytes"),
)

# From the publisher's per-process scan (--top); absent when it runs with --top 0.
PROCESS_STATE_FAMILIES: tuple[tuple[Family, str], ...] = (
    (Family("node_processes_state", GAUGE, "Number of processes in each state.", "processes"), "state"),
    (Family("node_processes_threads_state", GAUGE, "Number of threads in each state.", "threads"), "thread_state"),
)

# Every node_* family this exporter can show (the comparison test and the dashboard use it).
NODE_FAMILIES: tuple[Family, ...] = (*SCALAR_FAMILIES, CPU_FAMILY, *NET_FAMILIES, *DISK_FAMILIES,
                                     *FILESYSTEM_FAMILIES, *(fam for fam, _ in PROCESS_STATE_FAMILIES))


# The exporter's own families (shown whatever the segment's state; some only once a sample exists).
OWN_NAMES = ("shm_metrics_up", "shm_metrics_segment_state", "shm_metrics_publisher_info",
             "shm_metrics_interval_seconds", "shm_metrics_seq", "shm_metrics_sample_timestamp_seconds",
             "shm_metrics_sample_age_seconds", "shm_metrics_overflow_entries")


def _family(fam: Family, labels: Iterable[str] = ()) -> Metric:
    cls = CounterMetricFamily if fam.kind == COUNTER else GaugeMetricFamily
    return cls(fam.name, fam.help, labels=list(labels))


def node_families(snap: Snapshot) -> Iterator[Metric]:
    """The node_* families of one snapshot (the caller has checked it is fresh)."""
    for fam in SCALAR_FAMILIES:
        metric = _family(fam)
        metric.add_metric([], snap[fam.field])
        yield metric

    cpu = _family(CPU_FAMILY, ("cpu", "mode"))
    for row in snap.cpus:
        label = str(row["cpu"])
        for mode in CPU_MODES:
            cpu.add_metric([label, mode], row[mode])
    yield cpu

    yield from _per_device(NET_FAMILIES, snap.net)
    yield from _per_device(DISK_FAMILIES, snap.disks)

    rows = snap.filesystems
    for fam in FILESYSTEM_FAMILIES:
        metric = _family(fam, FILESYSTEM_LABELS)
        for row in rows:
            metric.add_metric([row["device"], row["fstype"], row["mountpoint"]], row[fam.field])
        yield metric

    states = snap.process_states
    if states:
        for fam, label in PROCESS_STATE_FAMILIES:
            metric = _family(fam, (label,))
            for row in states:
                if row[fam.field]:  # node_exporter shows only the states it saw
                    metric.add_metric([row["state"]], row[fam.field])
            yield metric


def _per_device(families: Iterable[Family], rows: list[dict]) -> Iterator[Metric]:
    for fam in families:
        metric = _family(fam, ("device",))
        for row in rows:
            metric.add_metric([row["device"]], row[fam.field])
        yield metric


def own_families(reading: Reading, now: float | None = None) -> Iterator[Metric]:
    """The shm_metrics_* families: what the exporter found under the name."""
    up = GaugeMetricFamily("shm_metrics_up", "1 when a running publisher's latest sample is fresh "
                           "(not older than 2 x interval + 1 s), else 0: then no node_* series are exposed.")
    up.add_metric([], 1 if reading.fresh else 0)
    yield up

    state = GaugeMetricFamily("shm_metrics_segment_state", "State of the segment under the name, one series "
                              "per state, 1 for the current one (absent: no segment; incompatible: corrupt "
                              "or foreign; untrusted: owned by a user other than root, the exporter's or "
                              "--publisher-user; dead: the publisher died without stopping).", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1 if name == reading.state else 0)
    yield state

    snap = reading.snapshot
    if snap is None:
        return
    info = GaugeMetricFamily("shm_metrics_publisher_info", "The publisher that created the segment; value 1.",
                             labels=["hostname", "layout_version", "publisher_pid"])
    info.add_metric([snap.hostname, str(snap.layout_version), str(snap.publisher_pid)], 1)
    yield info
    yield GaugeMetricFamily("shm_metrics_interval_seconds", "The publisher's sampling interval.",
                            value=snap.interval)
    yield GaugeMetricFamily("shm_metrics_seq", "Seqlock counter of the segment: even when a sample is whole, "
                            "+2 per sample; restarts with the publisher.", value=snap.seq)
    if snap.seq == 0:
        return  # no sample yet: no time to show
    yield GaugeMetricFamily("shm_metrics_sample_timestamp_seconds", "Unix time the latest sample was taken.",
                            value=snap.sample_time)
    age = (time.time() if now is None else now) - snap.sample_time
    yield GaugeMetricFamily("shm_metrics_sample_age_seconds", "Seconds since the latest sample was taken, "
                            "at scrape time.", value=max(0.0, age))
    overflow = GaugeMetricFamily("shm_metrics_overflow_entries", "Entries the publisher found beyond an "
                                 "array's capacity and left out of the latest sample.", labels=["array"])
    for array, count in snap.overflow().items():
        overflow.add_metric([array], count)
    yield overflow


class ShmCollector(Collector):
    """A prometheus_client Collector over a SegmentSource: reads at scrape time.

    ``collect()`` reads one snapshot and yields the own families, then, when
    the sample is fresh, the node_* families.  The HTTP server renders the
    same families through ``readers.exporter.exposition`` (which caches the
    node_* text per published sample); plain ``generate_latest(registry)``
    gives the same output.
    """

    def __init__(self, source: SegmentSource):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        reading = self.source.read()
        yield from own_families(reading)
        if reading.fresh:
            yield from node_families(reading.snapshot)

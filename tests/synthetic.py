"""Synthetic hosts for the render functions: any number of CPUs, interfaces, disks and filesystems.

The values are made up, but they travel the real way: ``OwnedSegment.publish``
writes them into a real segment (as ``shm-publisher`` would, two samples a
second apart so that rates exist) and ``Reader.read`` gives the snapshots the
views draw, so they are exactly what a live view gets from a segment.
"""

from __future__ import annotations

import time

from shm_metrics import shm_layout as L
from shm_metrics.publisher.sampler import Sample
from shm_metrics.publisher.segment import OwnedSegment
from shm_metrics.readers.reader import Reader, Snapshot

GIB = 1 << 30


def sample(cpus: int, nets: int, disks: int, filesystems: int, top: int, busy: float, scale: float) -> Sample:
    """``scale`` multiplies every counter: two samples with different scales give non-zero rates."""
    scalars = {name: 0 for name in L.SCALARS.names}
    scalars.update(procs_total=412, threads_total=1380, procs_running=3, procs_blocked=1, forks_total=int(9e5 * scale),
                   load1=1.25, load5=0.75, load15=0.5, cpu_count=cpus, cpu_percent=busy,
                   ctx_switches_total=int(5e8 * scale), interrupts_total=int(2e8 * scale),
                   mem_total_bytes=16 * GIB, mem_available_bytes=10 * GIB, mem_used_bytes=6 * GIB,
                   mem_free_bytes=8 * GIB, swap_total_bytes=2 * GIB, swap_used_bytes=GIB // 4,
                   swap_free_bytes=2 * GIB - GIB // 4, boot_time=time.time() - 86400, uptime_seconds=86400.0,
                   filefd_allocated=3392, filefd_maximum=9223372036854775807)
    for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
        scalars[f"cpu_seconds_{mode}"] = 1000.0 * scale
    arrays = {
        "cpus": [{"cpu": i, "percent": float((i * 37) % 101)} for i in range(cpus)],  # CPU 30 is 100 % busy
        "net": [{"device": f"eth{i}", "rx_bytes": int((i + 1) * 1e9 * scale), "tx_bytes": int((i + 1) * 5e8 * scale),
                 "rx_errors": i} for i in range(nets)],
        "disks": [{"device": f"nvme{i}n1", "read_bytes": int((i + 1) * 2e9 * scale),
                   "written_bytes": int((i + 1) * 3e9 * scale), "io_time_seconds": 100.0 * scale + i}
                  for i in range(disks)],
        # df: used 22 GiB, avail 78 GiB -> 22 %; (size - free) / size would say 20 %, 1 - avail/size 30 %
        "filesystems": [{"mountpoint": "/" if i == 0 else f"/srv/data{i}", "device": f"/dev/sd{i}",
                         "fstype": "ext4", "size_bytes": 110 * GIB, "free_bytes": 88 * GIB, "avail_bytes": 78 * GIB}
                        for i in range(filesystems)],
        "top_cpu": [{"pid": 1000 + i, "threads": i + 1, "cpu_percent": 99.5 - 9 * i, "rss_bytes": (i + 1) << 20,
                     "state": "R" if i == 0 else "S", "name": f"busy{i}", "user": "alice"} for i in range(top)],
        "top_rss": [{"pid": 2000 + i, "threads": 4, "cpu_percent": 1.0, "rss_bytes": (top - i) << 28,
                     "state": "S", "name": f"big{i}", "user": "bob"} for i in range(top)],
        "process_states": [{"state": "S", "processes": 400, "threads": 1300},
                           {"state": "R", "processes": 3, "threads": 3},
                           {"state": "I", "processes": 9, "threads": 9}],
    }
    records = {rec.name: rec for rec in L.SAMPLE_ARRAYS}
    # Every field of every row, zero or empty where the host above says nothing.
    full = {name: [{f.name: row.get(f.name, "" if f.is_string else 0) for f in records[name].fields} for row in rows]
            for name, rows in arrays.items()}
    return Sample(scalars=scalars, **full)


def snapshots(name: str, cpus: int = 4, nets: int = 2, disks: int = 2, filesystems: int = 3, top: int = 10,
              busy: float = 37.5) -> tuple[Snapshot, Snapshot]:
    """(before, now): two samples one (monotonic) second apart, published under ``name`` and read back; the
    segment is removed before returning."""
    layout = L.Layout.for_capacities(cpus, nets, disks, filesystems, history=4, top=top)
    segment = OwnedSegment(name, layout, 0o600, interval=1.0)
    try:
        segment.set_state(L.STATE_RUNNING)
        now = time.time()
        read = []
        with Reader(name) as reader:
            for k, scale in enumerate((1.0, 1.01)):
                segment.publish(sample(cpus, nets, disks, filesystems, top, busy, scale), now - 1 + k, 1000.0 + k,
                                0.01, 0)
                read.append(reader.read())
        return read[0], read[1]
    finally:
        segment.close(unlink=True)

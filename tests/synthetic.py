"""Synthetic snapshots for the render functions: any number of CPUs, interfaces, disks, filesystems.

They are built the way ``Reader.read`` builds real ones (the decoded header
span, the directory, the scalars, the arrays as row tuples with NUL-padded
strings), so the views see exactly the types a segment gives them.
"""

from __future__ import annotations

import time

from shm_metrics import shm_layout as L
from shm_metrics.readers.reader import Origin, Snapshot

GIB = 1 << 30


def snapshot(cpus: int = 4, nets: int = 2, disks: int = 2, filesystems: int = 3, seq: int = 20,
             busy: float = 37.5, top: int = 10, hostname: str = "synthetic-host",
             sample_monotonic: float = 1000.0, scale: float = 1.0) -> Snapshot:
    """A running publisher's snapshot; ``scale`` multiplies every counter (two snapshots with different
    scales and monotonic times give non-zero rates)."""
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
        "cpus": [{"cpu": i, "percent": (i * 37) % 101} for i in range(cpus)],
        "net": [{"device": f"eth{i}", "rx_bytes": int((i + 1) * 1e9 * scale), "tx_bytes": int((i + 1) * 5e8 * scale),
                 "rx_errors": i, "tx_errors": 0} for i in range(nets)],
        "disks": [{"device": f"nvme{i}n1", "read_bytes": int((i + 1) * 2e9 * scale),
                   "written_bytes": int((i + 1) * 3e9 * scale), "io_time_seconds": 100.0 * scale + i}
                  for i in range(disks)],
        # df: used 22 GiB, avail 78 GiB -> 22 %; (size - free) / size would say 20 %, 1 - avail/size 28 %
        "filesystems": [{"mountpoint": "/" if i == 0 else f"/srv/data{i}", "device": f"/dev/sd{i}",
                         "fstype": "ext4", "size_bytes": 110 * GIB, "free_bytes": 88 * GIB, "avail_bytes": 78 * GIB}
                        for i in range(filesystems)],
        "top_cpu": [{"pid": 1000 + i, "threads": i + 1, "cpu_percent": 99.5 - 9 * i, "rss_bytes": (i + 1) << 20,
                     "state": "R" if i == 0 else "S", "name": f"busy{i}", "user": "alice"} for i in range(top)],
        "top_rss": [{"pid": 2000 + i, "threads": 4, "cpu_percent": 1.0, "rss_bytes": (top - i) << 28,
                     "state": "S", "name": f"big{i}", "user": "bob"} for i in range(top)],
        "process_states": [{"state": "S", "processes": 400, "threads": 1300},
                           {"state": "R", "processes": 3, "threads": 3}, {"state": "I", "processes": 9,
                                                                           "threads": 9}],
    }
    records = {rec.name: rec for rec in L.SAMPLE_ARRAYS}
    decoded = {}
    for name, rows in arrays.items():
        rec = records[name]
        decoded[name] = [tuple(L.encode_string(str(row.get(f.name, "")), f.size) if f.is_string else
                               row.get(f.name, 0) for f in rec.fields) for row in rows]
    directory = [0] * (len(L.SECTION.names) * len(L.SECTIONS))
    values = (seq, time.time(), sample_monotonic, 0.01, 0, *directory, *(scalars[n] for n in L.SCALARS.names))
    origin = Origin(0x1234, 4242, time.time() - 100, 1.0, hostname)
    return Snapshot(origin, values, decoded, L.STATE_RUNNING, True)

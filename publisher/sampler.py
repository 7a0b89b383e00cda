"""Sampling the host: one function per metric family, all from /proc.

Each family reads a kept-open /proc file with ``pread`` (a read at offset 0
returns fresh data), which is several times cheaper than psutil's
open/parse/close and gives exactly node_exporter's meaning for each value.
psutil is not used on this path: where its meaning matches, it costs more;
where it is cheaper, its meaning differs (e.g. its ``cached`` adds
SReclaimable).  ``tests/test_sampler.py`` checks the values against psutil
and procps.

Units follow the layout: bytes, seconds, counts.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shm_metrics.publisher.filters import Filters

log = logging.getLogger(__name__)

USER_HZ = os.sysconf("SC_CLK_TCK")
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_READ_SIZE = 1 << 16


class ProcFile:
    """A /proc file kept open and re-read from offset 0 on every sample."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> str:
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(self.fd, _READ_SIZE, offset)
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break
            offset += len(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def close(self) -> None:
        os.close(self.fd)


def _busy_percent(now: tuple[float, ...], before: tuple[float, ...] | None) -> float:
    """CPU busy share between two cpu lines: everything but idle and iowait.

    With no earlier line (the first sample) the share is the average since boot,
    which says more than a 0.
    """
    if before is None:
        before = (0.0,) * len(now)
    deltas = [max(0.0, a - b) for a, b in zip(now, before)]
    total = sum(deltas)
    if total <= 0:
        return 0.0
    idle = deltas[3] + deltas[4]
    return min(100.0, max(0.0, 100.0 * (total - idle) / total))


@dataclass
class Sample:
    """One sample: scalars by layout name, arrays as lists of dicts."""

    scalars: dict[str, float | int] = field(default_factory=dict)
    cpus: list[dict] = field(default_factory=list)
    net: list[dict] = field(default_factory=list)
    disks: list[dict] = field(default_factory=list)
    filesystems: list[dict] = field(default_factory=list)
    top_cpu: list[dict] = field(default_factory=list)
    top_rss: list[dict] = field(default_factory=list)
    process_states: list[dict] = field(default_factory=list)


class Sampler:
    """Holds the open /proc files and the previous CPU counters."""

    def __init__(self, procfs: str = "/proc", filters: Filters | None = None, top_n: int = 0):
        """``top_n`` > 0 adds the per-process scan (``--top``): the top tables and
        the counts by state, and ``procs_total`` from the same listing."""
        self.procfs = procfs
        self.filters = filters or Filters()
        self._stat = ProcFile(f"{procfs}/stat")
        self._loadavg = ProcFile(f"{procfs}/loadavg")
        self._meminfo = ProcFile(f"{procfs}/meminfo")
        self._uptime = ProcFile(f"{procfs}/uptime")
        self._filenr = ProcFile(f"{procfs}/sys/fs/file-nr")
        self._netdev = ProcFile(f"{procfs}/net/dev")
        self._diskstats = ProcFile(f"{procfs}/diskstats")
        self._mounts = _MountTable(procfs, self.filters)
        self._prev_cpu: dict[str, tuple[float, ...]] = {}
        self._failed: set[str] = set()
        # Family name -> function filling a Sample.  Order matters only for
        # readability; the benchmark times each entry separately.
        self.families: dict[str, Callable[[Sample], None]] = {
            "procs": self.sample_procs,
            "stat": self.sample_stat,
            "loadavg": self.sample_loadavg,
            "memory": self.sample_memory,
            "uptime": self.sample_uptime,
            "filefd": self.sample_filefd,
            "net": self.sample_net,
            "disks": self.sample_disks,
            "filesystems": self.sample_filesystems,
        }
        self._processes = None
        if top_n:
            from shm_metrics.publisher.processes import ProcessTable

            self._processes = ProcessTable(top_n=top_n, procfs=procfs)
            del self.families["procs"]  # the scan counts them from the same listing
            self.families = {"processes": self.sample_processes, **self.families}

    def sample(self) -> Sample:
        out = Sample()
        for name, fill in self.families.items():
            try:
                fill(out)
            except (OSError, ValueError, IndexError) as exc:
                # One broken family must not stop the others; say so once.
                if name not in self._failed:
                    self._failed.add(name)
                    log.warning("sampling %s failed: %s (further failures not logged)", name, exc)
        return out

    def close(self) -> None:
        for pf in (self._stat, self._loadavg, self._meminfo, self._uptime,
                   self._filenr, self._netdev, self._diskstats):
            pf.close()
        self._mounts.close()
        if self._processes is not None:
            self._processes.close()

    # --- processes
    def sample_processes(self, out: Sample) -> None:
        scan = self._processes.scan()
        out.scalars["procs_total"] = scan.procs_total
        out.top_cpu, out.top_rss, out.process_states = scan.by_cpu, scan.by_rss, scan.states

    def sample_procs(self, out: Sample) -> None:
        # Numeric entries of /proc are the processes (thread groups); this is
        # node_processes_pids' meaning and ~200x cheaper than popen("ps axh").
        with os.scandir(self.procfs) as it:
            out.scalars["procs_total"] = sum(1 for e in it if e.name.isdigit())

    # --- /proc/stat: tasks, forks, context switches, interrupts, CPU times
    def sample_stat(self, out: Sample) -> None:
        s = out.scalars
        cpus = []
        for line in self._stat.read().splitlines():
            key, _, rest = line.partition(" ")
            if key.startswith("cpu"):
                ticks = tuple(int(v) / USER_HZ for v in rest.split()[:8])
                ticks += (0.0,) * (8 - len(ticks))
                percent = _busy_percent(ticks, self._prev_cpu.get(key))
                self._prev_cpu[key] = ticks
                if key == "cpu":
                    s["cpu_percent"] = percent
                    for mode, value in zip(CPU_MODES, ticks):
                        s[f"cpu_seconds_{mode}"] = value
                else:
                    cpus.append({"cpu": int(key[3:]), "percent": percent, **dict(zip(CPU_MODES, ticks))})
            elif key == "ctxt":
                s["ctx_switches_total"] = int(rest)
            elif key == "intr":
                s["interrupts_total"] = int(rest.split(None, 1)[0])
            elif key == "btime":
                s["boot_time"] = float(rest)
            elif key == "processes":
                s["forks_total"] = int(rest)
            elif key == "procs_running":
                s["procs_running"] = int(rest)
            elif key == "procs_blocked":
                s["procs_blocked"] = int(rest)
        s["cpu_count"] = len(cpus)
        out.cpus = cpus

    # --- load
    def sample_loadavg(self, out: Sample) -> None:
        l1, l5, l15, entities, _ = self._loadavg.read().split()
        out.scalars.update(load1=float(l1), load5=float(l5), load15=float(l15),
                           threads_total=int(entities.partition("/")[2]))

    # --- memory and swap
    def sample_memory(self, out: Sample) -> None:
        mem = {}
        for line in self._meminfo.read().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                mem[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
        total = mem["MemTotal"]
        available = mem.get("MemAvailable", mem["MemFree"])
        out.scalars.update(
            mem_total_bytes=total,
            mem_available_bytes=available,
            mem_used_bytes=max(0, total - available),
            mem_free_bytes=mem["MemFree"],
            mem_buffers_bytes=mem.get("Buffers", 0),
            mem_cached_bytes=mem.get("Cached", 0),
            swap_total_bytes=mem.get("SwapTotal", 0),
            swap_used_bytes=max(0, mem.get("SwapTotal", 0) - mem.get("SwapFree", 0)),
            swap_free_bytes=mem.get("SwapFree", 0),
        )

    def sample_uptime(self, out: Sample) -> None:
        out.scalars["uptime_seconds"] = float(self._uptime.read().split()[0])

    def sample_filefd(self, out: Sample) -> None:
        allocated, _, maximum = self._filenr.read().split()[:3]
        out.scalars.update(filefd_allocated=int(allocated), filefd_maximum=int(maximum))

    # --- network
    def sample_net(self, out: Sample) -> None:
        rows = []
        for line in self._netdev.read().splitlines()[2:]:
            name, _, rest = line.partition(":")
            name = name.strip()
            if not name or self.filters.net_excluded(name):
                continue
            v = [int(x) for x in rest.split()]
            rows.append({"device": name, "rx_bytes": v[0], "tx_bytes": v[8], "rx_packets": v[1],
                         "tx_packets": v[9], "rx_errors": v[2], "tx_errors": v[10],
                         "rx_dropped": v[3], "tx_dropped": v[11]})
        out.net = rows
        out.scalars["net_rx_bytes_total"] = sum(r["rx_bytes"] for r in rows)
        out.scalars["net_tx_bytes_total"] = sum(r["tx_bytes"] for r in rows)

    # --- block devices
    def sample_disks(self, out: Sample) -> None:
        rows = []
        for line in self._diskstats.read().splitlines():
            v = line.split()
            if len(v) < 14 or self.filters.disk_excluded(v[2]):
                continue
            rows.append({"device": v[2], "reads": int(v[3]), "writes": int(v[7]),
                         "read_bytes": int(v[5]) * 512, "written_bytes": int(v[9]) * 512,
                         "io_time_seconds": int(v[12]) / 1000.0})
        out.disks = rows
        out.scalars["disk_read_bytes_total"] = sum(r["read_bytes"] for r in rows)
        out.scalars["disk_written_bytes_total"] = sum(r["written_bytes"] for r in rows)

    # --- filesystems
    def sample_filesystems(self, out: Sample) -> None:
        rows = []
        for mount in self._mounts.current():
            try:
                st = os.statvfs(mount["mountpoint"])
            except OSError:
                continue  # node_exporter reports device_error; we leave it out
            rows.append({**mount, "size_bytes": st.f_blocks * st.f_bsize,
                         "free_bytes": st.f_bfree * st.f_bsize, "avail_bytes": st.f_bavail * st.f_bsize})
        out.filesystems = rows


def _unescape_mount(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo.

    Only those octal escapes are decoded: the rest is already text (a codec
    round trip through latin-1 would mangle non-ASCII names such as "Müller").
    """
    if "\\" not in field_:
        return field_
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field_)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class _MountTable:
    """The filtered mount list, re-parsed only when the kernel says it changed.

    mountinfo signals POLLPRI/POLLERR on mount and unmount, so the publisher
    pays for parsing only then (node_exporter re-reads it on every scrape).
    """

    def __init__(self, procfs: str, filters: Filters):
        import select

        self.filters = filters
        path = f"{procfs}/1/mountinfo"
        try:
            self._file = ProcFile(path)
            self._file.read()
        except OSError:  # no access to pid 1: use our own namespace's view
            self._file = ProcFile(f"{procfs}/self/mountinfo")
        self._poll = select.poll()
        self._poll.register(self._file.fd, select.POLLPRI | select.POLLERR)
        self._mounts: list[dict] | None = None

    def current(self) -> list[dict]:
        if self._mounts is None or self._poll.poll(0):
            self._mounts = self._parse(self._file.read())
        return self._mounts

    def _parse(self, text: str) -> list[dict]:
        seen = set()
        mounts = []
        for line in text.splitlines():
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 2:
                continue
            mount = {"mountpoint": _unescape_mount(fields[4]), "device": _unescape_mount(rfields[1]),
                     "fstype": rfields[0]}
            key = tuple(mount.values())
            if key in seen or self.filters.fs_excluded(mount["mountpoint"], mount["fstype"]):
                continue
            seen.add(key)
            mounts.append(mount)
        return mounts

    def close(self) -> None:
        self._file.close()


def time_families(sampler: Sampler, rounds: int) -> dict[str, float]:
    """Median seconds per call of each family over ``rounds`` calls (for the benchmark)."""
    result = {}
    for name, fill in sampler.families.items():
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fill(Sample())
            times.append(time.perf_counter() - t0)
        times.sort()
        result[name] = times[len(times) // 2]
    return result

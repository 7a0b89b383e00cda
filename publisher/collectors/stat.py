"""/proc/stat: node_exporter's ``cpu`` (per-CPU times) and ``stat`` (tasks, forks, switches, interrupts) collectors.

Both read the same file, so one parse serves both.  Also fills the layout's
scalars (totals, busy percent) and its ``cpus`` array.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge

USER_HZ = os.sysconf("SC_CLK_TCK")
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

CPU_SECONDS = counter("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", "cpu", "mode")
CPU_GUEST = counter("node_cpu_guest_seconds_total", "Seconds the CPUs spent in guests (VMs) for each mode.",
                    "cpu", "mode")
INTR = counter("node_intr_total", "Total number of interrupts serviced.")
CTXT = counter("node_context_switches_total", "Total number of context switches.")
FORKS = counter("node_forks_total", "Total number of forks.")
BTIME = gauge("node_boot_time_seconds", "Node boot time, in unixtime.")
RUNNING = gauge("node_procs_running", "Number of processes in runnable state.")
BLOCKED = gauge("node_procs_blocked", "Number of processes blocked waiting for I/O to complete.")


def busy_percent(now: tuple[float, ...], before: tuple[float, ...] | None) -> float:
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


class Stat(Collector):
    name = "stat"
    reports = ("cpu", "stat")
    families = (CPU_SECONDS, CPU_GUEST, INTR, CTXT, FORKS, BTIME, RUNNING, BLOCKED)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/stat")
        self._prev: dict[str, tuple[float, ...]] = {}
        self._mode_labels: dict[str, list[tuple[str, str]]] = {}

    def collect(self, out: Sample) -> None:
        s = out.scalars
        add = out.add
        cpus = []
        for line in self._file.read().splitlines():
            key, _, rest = line.partition(" ")
            if key.startswith("cpu"):
                values = rest.split()
                ticks = tuple(int(v) / USER_HZ for v in values[:8])
                ticks += (0.0,) * (8 - len(ticks))
                percent = busy_percent(ticks, self._prev.get(key))
                self._prev[key] = ticks
                if key == "cpu":
                    s["cpu_percent"] = percent
                    for mode, value in zip(CPU_MODES, ticks):
                        s[f"cpu_seconds_{mode}"] = value
                    continue
                number = key[3:]
                cpus.append({"cpu": int(number), "percent": percent, **dict(zip(CPU_MODES, ticks))})
                labels = self._mode_labels.get(number)
                if labels is None:
                    labels = self._mode_labels[number] = [(number, mode) for mode in CPU_MODES]
                for label, value in zip(labels, ticks):
                    add(CPU_SECONDS, label, value)
                if len(values) >= 10:  # guest time is also in user and nice; node_exporter shows it apart
                    add(CPU_GUEST, labels[0], int(values[8]) / USER_HZ)
                    add(CPU_GUEST, labels[1], int(values[9]) / USER_HZ)
            elif key == "ctxt":
                s["ctx_switches_total"] = v = int(rest)
                add(CTXT, (), v)
            elif key == "intr":
                s["interrupts_total"] = v = int(rest.split(None, 1)[0])
                add(INTR, (), v)
            elif key == "btime":
                s["boot_time"] = v = float(rest)
                add(BTIME, (), v)
            elif key == "processes":
                s["forks_total"] = v = int(rest)
                add(FORKS, (), v)
            elif key == "procs_running":
                s["procs_running"] = v = int(rest)
                add(RUNNING, (), v)
            elif key == "procs_blocked":
                s["procs_blocked"] = v = int(rest)
                add(BLOCKED, (), v)
        s["cpu_count"] = len(cpus)
        out.cpus = cpus

"""/proc/stat: node_exporter's ``cpu`` (per-CPU times) and ``stat`` (tasks, forks, switches, interrupts) collectors.

Both read the same file, so one parse serves both.  Also fills the layout's
scalars (totals, busy percent) and its ``cpus`` array.

The rest of node_exporter's ``cpu`` collector: thermal throttle counts per core
and package and the isolated CPUs (sysfs, when the host has them), and with
``cpu.info`` (or a ``cpu.info.flags-include`` / ``bugs-include`` pattern)
node_cpu_info per CPU and the first CPU's flags and bugs that match the
patterns (/proc/cpuinfo, x86's layout).  Options: ``cpu.guest`` (default on),
``cpu.info``, ``cpu.info.flags-include``, ``cpu.info.bugs-include``,
``stat.softirq`` (node_softirqs_total per vector).
"""

from __future__ import annotations

import glob
import os
import re
import time
from itertools import repeat
from operator import truediv
from typing import TYPE_CHECKING

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import (
    CORE,
    Collector,
    Context,
    ProcFile,
    Sample,
    counter,
    gauge,
    numbers,
    read_file,
    register,
)

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

USER_HZ = os.sysconf("SC_CLK_TCK")
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_HZ = (USER_HZ,) * len(CPU_MODES)
_SCALAR_KEYS = tuple(f"cpu_seconds_{mode}" for mode in CPU_MODES)  # the layout's scalars of the "cpu" line

CPU_SECONDS = counter("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", "cpu", "mode")
CPU_GUEST = counter("node_cpu_guest_seconds_total", "Seconds the CPUs spent in guests (VMs) for each mode.",
                    "cpu", "mode")
INTR = counter("node_intr_total", "Total number of interrupts serviced.")
CTXT = counter("node_context_switches_total", "Total number of context switches.")
FORKS = counter("node_forks_total", "Total number of forks.")
BTIME = gauge("node_boot_time_seconds", "Node boot time, in unixtime.")
RUNNING = gauge("node_procs_running", "Number of processes in runnable state.")
BLOCKED = gauge("node_procs_blocked", "Number of processes blocked waiting for I/O to complete.")
SOFTIRQS = counter("node_softirqs_total", "Number of softirq calls.", "vector")
# The softirq line's columns after its total, in the kernel's order.
SOFTIRQ_VECTORS = ("hi", "timer", "net_tx", "net_rx", "block", "block_iopoll", "tasklet", "sched", "hrtimer", "rcu")

CPU_INFO = gauge("node_cpu_info", "CPU information from /proc/cpuinfo.", "package", "core", "cpu", "vendor",
                 "family", "model", "model_name", "microcode", "stepping", "cachesize")
CPU_FLAG_INFO = gauge("node_cpu_flag_info",
                      "The `flags` field of CPU information from /proc/cpuinfo taken from the first core.", "flag")
CPU_BUG_INFO = gauge("node_cpu_bug_info",
                     "The `bugs` field of CPU information from /proc/cpuinfo taken from the first core.", "bug")
CORE_THROTTLES = counter("node_cpu_core_throttles_total", "Number of times this CPU core has been throttled.",
                         "package", "core")
PACKAGE_THROTTLES = counter("node_cpu_package_throttles_total", "Number of times this CPU package has been throttled.",
                            "package")
ISOLATED = gauge("node_cpu_isolated",
                 "Whether each core is isolated, information from /sys/devices/system/cpu/isolated.", "cpu")
CPUINFO_REFRESH_SECONDS = 60.0  # its labels change only with a microcode update or CPU hotplug

# /proc/cpuinfo keys -> node_cpu_info's labels
_CPUINFO_LABELS = {"physical id": "package", "core id": "core", "vendor_id": "vendor", "vendor": "vendor",
                   "cpu family": "family", "model": "model", "model name": "model_name",
                   "microcode": "microcode", "stepping": "stepping", "cache size": "cachesize"}
_INFO_REST = ("vendor", "family", "model", "model_name", "microcode", "stepping", "cachesize")


# The lines of /proc/stat whose first number is a series and a layout scalar, in the program's order.
_SCALAR_LINES = {"ctxt": CTXT, "intr": INTR, "btime": BTIME, "processes": FORKS, "procs_running": RUNNING,
                 "procs_blocked": BLOCKED}
_SCALAR_FIELDS = (("ctx_switches_total", int), ("interrupts_total", int), ("boot_time", float), ("forks_total", int),
                  ("procs_running", int), ("procs_blocked", int))


def busy_percent(now: tuple[float, ...], before: tuple[float, ...] | None) -> float:
    """CPU busy share between two cpu lines: everything but idle and iowait.

    With no earlier line (the first sample) the share is the average since boot,
    which says more than a 0.
    """
    if before is None:
        before = (0.0,) * len(now)
    deltas = [max(0.0, a - b) for a, b in zip(now, before)]
    total = 0.0
    for delta in deltas:  # added in order, as _scan.c's BUSY does (sum() adds floats otherwise from 3.12 on)
        total += delta
    if total <= 0:
        return 0.0
    idle = deltas[3] + deltas[4]
    return min(100.0, max(0.0, 100.0 * (total - idle) / total))


def parse_cpu_list(text: str) -> list[int]:
    """A kernel CPU list ("1,3-5,9") as numbers; ValueError when it is not one."""
    cpus: list[int] = []
    for item in text.strip().split(","):
        if not item:
            continue
        first, dash, last = item.partition("-")
        if dash:
            cpus.extend(range(int(first), int(last) + 1))
        else:
            cpus.append(int(item))
    return cpus


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo (x86's layout) as one dict per processor: its "key: value" lines, keys stripped.

    A value is what follows the first ": " (a key with nothing after the colon has none)."""
    lines = iter(text.splitlines())
    first = next((line for line in lines if line.strip()), "")
    if not first.startswith("processor") or ":" not in first:
        raise ValueError(f"invalid cpuinfo file: {first!r}")
    cpus = [{"processor": str(int(first.split(": ", 1)[1], 0))}]
    for line in lines:
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        key = key.strip()
        if key == "processor":
            cpus.append({"processor": str(int(value, 0))})
        else:
            cpus[-1][key] = value
    return cpus


def _read_uint(path: str) -> int | None:
    try:
        return int(read_file(path).strip())
    except (OSError, ValueError):
        return None


@register
class Stat(Collector):
    name = "stat"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("cpu", "stat")
    families = (CPU_SECONDS, CPU_GUEST, INTR, CTXT, FORKS, BTIME, RUNNING, BLOCKED)
    described = (
        *((fam.name, fam.type, ", ".join(fam.labels), f"with {option}: {fam.help}") for fam, option in (
            (SOFTIRQS, "stat.softirq"), (CPU_INFO, "cpu.info"), (CPU_FLAG_INFO, "cpu.info.flags-include"),
            (CPU_BUG_INFO, "cpu.info.bugs-include"))),
        *((fam.name, fam.type, ", ".join(fam.labels), f"when sysfs has it: {fam.help}")
          for fam in (CORE_THROTTLES, PACKAGE_THROTTLES, ISOLATED)),
    )

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/stat", whole=True)
        self._prev: dict[str, tuple[float, ...]] = {}
        self._mode_labels: dict[str, list[tuple[str, str]]] = {}
        self._guest = bool(ctx.option("cpu.guest", True))
        self._softirq = bool(ctx.option("stat.softirq", False))
        flags_include = ctx.text_option("cpu.info.flags-include")
        bugs_include = ctx.text_option("cpu.info.bugs-include")
        # As node_exporter: either pattern switches cpu.info on; a bad pattern is a usage error (re.error).
        self._flags_re = re.compile(flags_include) if flags_include else None
        self._bugs_re = re.compile(bugs_include) if bugs_include else None
        self._cpuinfo = None
        if ctx.option("cpu.info", False) or flags_include or bugs_include:
            self._cpuinfo = self.open(f"{ctx.procfs}/cpuinfo")
        self._cpuinfo_series: list[tuple] = []
        self._cpuinfo_read = -1e18
        cpu_dir = f"{ctx.sysfs}/devices/system/cpu"
        try:
            with open(f"{cpu_dir}/isolated") as f:
                self._isolated = parse_cpu_list(f.read())
        except FileNotFoundError:
            self._isolated = []
        self._core_throttles, self._package_throttles = self._throttle_files(cpu_dir)
        families = [CPU_SECONDS, *([CPU_GUEST] if self._guest else []), INTR, CTXT, FORKS, BTIME, RUNNING, BLOCKED]
        if self._softirq:
            families.append(SOFTIRQS)
        if self._cpuinfo is not None:
            families += [CPU_INFO, CPU_FLAG_INFO, CPU_BUG_INFO]
        if self._core_throttles:
            families.append(CORE_THROTTLES)
        if self._package_throttles:
            families.append(PACKAGE_THROTTLES)
        if self._isolated:
            families.append(ISOLATED)
        self.families = tuple(families)
        # A sysfs file per core and per package: read in full samples only, repeated in the others.
        self.on_demand = tuple(fam for fam in (CORE_THROTTLES, PACKAGE_THROTTLES) if fam in families)
        self._throttles: list[tuple] = []  # their series in the latest full sample
        self._numbers = numbers.Numbers.of(self._file) if numbers.AVAILABLE else None
        # The fast path's program (collectors/numbers.py): the series' values (every CPU's modes and guest
        # times, then the scalar lines', then softirqs), then the "cpu" line's modes; with the CPUs' numbers.
        # With it: the CPUs' numbers, and how many columns each has in the program (8, or 10 with guest times).
        self._program: tuple[numbers.Program, list[str], int] | None = None

    def collect(self, out: Sample) -> None:
        s = out.scalars
        add = out.add
        series = out.series
        cpus = []
        start = len(series)
        text, raw, shape = numbers.read_text(self._file, self._numbers)
        for line in text.splitlines():
            key, _, rest = line.partition(" ")
            if key.startswith("cpu"):
                values = rest.split()
                # map/zip in C: this runs every interval with cold caches, where bytecodes cost (issue 16).
                ticks = tuple(map(truediv, map(int, values[:8]), _HZ))
                ticks += (0.0,) * (8 - len(ticks))
                percent = busy_percent(ticks, self._prev.get(key))
                self._prev[key] = ticks
                if key == "cpu":
                    s["cpu_percent"] = percent
                    s.update(zip(_SCALAR_KEYS, ticks))
                    continue
                number = key[3:]
                cpus.append({"cpu": int(number), "percent": percent, **dict(zip(CPU_MODES, ticks))})
                labels = self._mode_labels.get(number)
                if labels is None:
                    labels = self._mode_labels[number] = [(number, mode) for mode in CPU_MODES]
                series.extend(zip(repeat(CPU_SECONDS), labels, ticks))
                if self._guest and len(values) >= 10:  # guest time is also in user and nice; shown apart
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
            elif key == "softirq" and self._softirq:
                for vector, count in zip(SOFTIRQ_VECTORS, rest.split()[1:]):
                    add(SOFTIRQS, (vector,), int(count))
        s["cpu_count"] = len(cpus)
        out.cpus = cpus
        if shape is not None and (self._program is None or self._program[0].shape != shape):
            self._program = self._make_program(raw, shape, series[start:], s)
        self._cpu_extras(out)

    def fast(self, out: Sample) -> bool:
        """The same values from the numbers alone, while /proc/stat keeps its lines (collectors/numbers.py)."""
        if self._program is None:
            return False
        program, cpus, width = self._program
        values = program.values(self._numbers)
        if values is None:
            return False
        out.add_block(program.fixed, values[:8 * len(program.fixed)])
        v = memoryview(values).cast("d").tolist()
        prev, rows = self._prev, []
        for i, number in enumerate(cpus):
            ticks = tuple(v[i * width:i * width + 8])
            key = "cpu" + number
            rows.append({"cpu": int(number), "percent": busy_percent(ticks, prev.get(key)),
                         **dict(zip(CPU_MODES, ticks))})
            prev[key] = ticks
        scalars = v[len(cpus) * width:len(cpus) * width + 6]
        total = tuple(v[-8:])
        s = out.scalars
        s["cpu_percent"] = busy_percent(total, prev.get("cpu"))
        prev["cpu"] = total
        s.update(zip(_SCALAR_KEYS, total))
        for (name, convert), value in zip(_SCALAR_FIELDS, scalars):
            s[name] = convert(value)
        s["cpu_count"] = len(cpus)
        out.cpus = rows
        self._cpu_extras(out)
        return True

    def compile(self, built: Builder) -> bool:
        """The fast path's values, each CPU's busy share and the layout's scalars (publisher/compiled.py);
        not with ``cpu.info``, whose rows are read again every minute."""
        if self._program is None or self._cpuinfo is not None:
            return False
        program, cpus, width = self._program
        regs = built.program(built.file(self._numbers, program.shape), program)
        built.series(program.fixed.families, program.fixed.labels, regs[:len(program.fixed)])
        for i, number in enumerate(cpus):
            ticks = regs[i * width:i * width + 8]
            built.row("cpus", i, "percent", built.busy(ticks, *self._prev_state("cpu" + number)))
            for mode, reg in zip(CPU_MODES, ticks):
                built.row("cpus", i, mode, reg)
        for (name, _), reg in zip(_SCALAR_FIELDS, regs[len(cpus) * width:len(cpus) * width + 6]):
            built.scalar(name, reg)
        total = regs[-8:]
        built.scalar("cpu_percent", built.busy(total, *self._prev_state("cpu")))
        for name, reg in zip(_SCALAR_KEYS, total):
            built.scalar(name, reg)
        return True

    def _prev_state(self, key: str) -> tuple:
        """A cpu line's previous ticks, as a compiled program takes and gives them back."""
        return (lambda: self._prev.get(key)), (lambda ticks: self._prev.__setitem__(key, tuple(ticks)))

    def _make_program(self, raw: bytes, shape: numbers.Shape, series: list[tuple], scalars: dict,
                      ) -> tuple[numbers.Program, list[str], int] | None:
        """Where each series' value and the "cpu" line's modes are among the file's numbers; None when the
        file has a shape this does not cover (fewer than 8 modes, no scalar line) or the Python path's values
        do not come out of them (the Python path then runs every sample)."""
        lines, cpus = {}, []
        for line in numbers.tokens(raw):
            if line and line[0][1] is None:
                key = line[0][0].decode("utf-8", "replace")
                lines.setdefault(key, [index for _, index in line[1:]])
                if key.startswith("cpu") and key != "cpu":
                    cpus.append(key[3:])
        guest = self._guest and all(len(lines["cpu" + n]) >= 10 for n in cpus)
        families, labels, positions, factors = [], [], [], []

        def put(family: FamilyInfo, label_values: tuple[str, ...], at: int | None, factor: float) -> None:
            families.append(family)
            labels.append(label_values)
            positions.append(at)
            factors.append(factor)

        try:
            for number in cpus:
                columns = lines["cpu" + number]
                for mode, at in zip(CPU_MODES, columns[:8]):
                    put(CPU_SECONDS, (number, mode), at, -USER_HZ)  # divided, as the Python parse does
                if guest:
                    for mode, at in zip(("user", "nice"), columns[8:10]):
                        put(CPU_GUEST, (number, mode), at, -USER_HZ)
            for key, family in _SCALAR_LINES.items():
                put(family, (), lines[key][0], 1.0)
            if self._softirq:
                for vector, at in zip(SOFTIRQ_VECTORS, lines["softirq"][1:]):
                    put(SOFTIRQS, (vector,), at, 1.0)
            total = lines["cpu"][:8]
        except (KeyError, IndexError):
            return None
        if len(total) < 8 or any(len(lines["cpu" + n]) < 8 for n in cpus) or None in positions or None in total:
            return None
        fixed = numbers.FixedSeries(families, labels)
        program = numbers.Program(shape, [*positions, *total], [*factors, *(-USER_HZ,) * 8], fixed)
        python = {(family, labels): value for family, labels, value in series}
        expected = [python.get(key) for key in zip(families, labels)]
        if len(python) != len(set(zip(families, labels))) or None in expected:
            return None
        if not program.gives(self._numbers.values, [*expected, *(scalars[k] for k in _SCALAR_KEYS)]):
            return None
        return program, cpus, 10 if guest else 8

    def _throttle_files(self, cpu_dir: str) -> tuple[list, list]:
        """Kept-open throttle counts: one per (package, core) and one per package, from the first CPU
        (in name order) of each that has the file, as node_exporter picks them."""
        cores: dict[tuple[str, str], ProcFile] = {}
        packages: dict[str, ProcFile] = {}
        for cpu in sorted(glob.glob(f"{glob.escape(cpu_dir)}/cpu[0-9]*")):
            package = _read_uint(f"{cpu}/topology/physical_package_id")
            core = _read_uint(f"{cpu}/topology/core_id")
            if package is None or core is None:
                continue
            key = (str(package), str(core))
            for table, table_key, name in ((cores, key, "core"), (packages, key[0], "package")):
                if table_key not in table:
                    try:
                        table[table_key] = self.open(f"{cpu}/thermal_throttle/{name}_throttle_count")
                    except OSError:
                        pass
        return list(cores.items()), list(packages.items())

    def _cpu_extras(self, out: Sample) -> None:
        add = out.add
        if self.on_demand and self.ctx.full:
            self._throttles = [*((CORE_THROTTLES, key, int(pf.read_bytes())) for key, pf in self._core_throttles),
                               *((PACKAGE_THROTTLES, (package,), int(pf.read_bytes()))
                                 for package, pf in self._package_throttles)]
        out.series += self._throttles
        for cpu in self._isolated:
            add(ISOLATED, (str(cpu),), 1)
        if self._cpuinfo is None:
            return
        now = time.monotonic()
        if now - self._cpuinfo_read >= CPUINFO_REFRESH_SECONDS:
            self._cpuinfo_series = self._cpuinfo_rows(parse_cpuinfo(self._cpuinfo.read()))
            self._cpuinfo_read = now
        out.series += self._cpuinfo_series

    def _cpuinfo_rows(self, cpus: list[dict[str, str]]) -> list[tuple]:
        rows = []
        for cpu in cpus:
            info = {}
            for key, value in cpu.items():  # in the file's order: of vendor and vendor_id the last one counts
                label = _CPUINFO_LABELS.get(key)
                if label:
                    info[label] = value
            rows.append((CPU_INFO, (info.get("package", ""), info.get("core", ""), cpu["processor"],
                                    *(info.get(label, "") for label in _INFO_REST)), 1))
        if cpus:
            for family, key, pattern in ((CPU_FLAG_INFO, "flags", self._flags_re),
                                         (CPU_BUG_INFO, "bugs", self._bugs_re)):
                if pattern is None:
                    continue
                for value in cpus[0].get(key, "").split():
                    if pattern.search(value):
                        rows.append((family, (value,), 1))
        return rows

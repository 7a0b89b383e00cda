"""/proc/interrupts: node_exporter's ``interrupts`` collector (off by default).

One series per interrupt line and CPU column.  A numbered IRQ has its chip
and trigger as ``info`` and the devices sharing it as ``devices``; a named
one (``LOC``, ``NMI``...) has its description as ``info`` and no devices.
Lines with fewer values than CPUs (``ERR``, ``MIS``: one global count) are
left out, as node_exporter does.
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

INTERRUPTS = counter("node_interrupts_total", "Interrupt details.", "cpu", "type", "info", "devices")


def parse_interrupts(text: str) -> dict[str, tuple[str, str, list[str]]]:
    """Interrupt name -> (info, devices, one count per CPU column); a repeated name keeps its last line."""
    lines = text.splitlines()
    if not lines:
        raise ValueError("interrupts empty")
    cpus = len(lines[0].split())  # the header names one column per CPU
    found: dict[str, tuple[str, str, list[str]]] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < cpus + 2:
            continue
        name = parts[0][:-1]  # "LOC:" -> "LOC"
        values = parts[1:cpus + 1]
        if name.isdecimal():
            found[name] = (parts[cpus + 1], " ".join(parts[cpus + 2:]), values)
        else:
            found[name] = (" ".join(parts[cpus + 1:]), "", values)
    return found


@register
class Interrupts(Collector):
    name = "interrupts"
    reports = ("interrupts",)
    default_enabled = False
    families = (INTERRUPTS,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/interrupts")
        self._learned = LearnedFile(self._file, filled(self._fill))

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        add = out.add
        for name, (info, devices, values) in parse_interrupts(text).items():
            for cpu, value in enumerate(values):
                add(INTERRUPTS, (str(cpu), name, info, devices), float(value))

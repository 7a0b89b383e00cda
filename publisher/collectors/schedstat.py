"""/proc/schedstat: node_exporter's ``schedstat`` collector (on by default).

Per CPU line, the last three of its nine fields: time spent running and
waiting (nanoseconds, exported in seconds) and the timeslices run.
"""

from __future__ import annotations

import re

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

RUNNING = counter("node_schedstat_running_seconds_total", "Number of seconds CPU spent running a process.", "cpu")
WAITING = counter("node_schedstat_waiting_seconds_total",
                  "Number of seconds spent by processing waiting for this CPU.", "cpu")
TIMESLICES = counter("node_schedstat_timeslices_total", "Number of timeslices executed by CPU.", "cpu")

# "cpu<N>" and at least nine numbers: fields 7, 8 and 9 are run time, wait time (ns) and timeslices.
_CPU_LINE = re.compile(r"cpu(\d+)" + r" (\d+)" * 9)
_NS_PER_SECOND = 1e9


@register
class Schedstat(Collector):
    name = "schedstat"
    reports = ("schedstat",)
    families = (RUNNING, WAITING, TIMESLICES)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/schedstat")
        self._learned = LearnedFile(self._file, filled(self._fill))

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        for line in text.splitlines():
            match = _CPU_LINE.search(line)
            if match is None:
                continue
            cpu = (match.group(1),)
            out.add(RUNNING, cpu, int(match.group(8)) / _NS_PER_SECOND)
            out.add(WAITING, cpu, int(match.group(9)) / _NS_PER_SECOND)
            out.add(TIMESLICES, cpu, int(match.group(10)))

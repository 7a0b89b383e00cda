"""/sys/devices/system/node/node<N>/{meminfo,numastat}: node_exporter's ``meminfo_numa`` collector (off by default).

node_memory_numa_<Field> per NUMA node: each meminfo line (kB x 1024;
``Active(anon)`` becomes ``Active_anon``) as a gauge, each numastat line as
a counter named ``<field>_total``.  The fields are the kernel's, so the
families are declared from the files when a node is first read (at start,
or when it comes online: the nodes are listed again every ``rescan_seconds``).
"""

from __future__ import annotations

import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedFile
from shm_metrics.publisher.collectors.numbers import Block

_PARENS = re.compile(r"\((.*)\)")


def parse_node_meminfo(text: str) -> list[tuple[str, str, float]]:
    """(field, node, value) of each line "Node 0 Active(anon):  1234 kB"."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        value = float(parts[3])
        if len(parts) == 5 and parts[4] == "kB":
            value *= 1024
        elif len(parts) != 4:
            raise ValueError(f"invalid line in meminfo: {line!r}")
        out.append((_PARENS.sub(r"_\1", parts[2].rstrip(":")), parts[1], value))
    return out


def parse_numastat(text: str) -> list[tuple[str, float]]:
    """(field_total, value) of each line "numa_hit 193460335812"."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"numastat line without 2 fields: {line!r}")
        out.append((parts[0] + "_total", float(parts[1])))
    return out


@register
class MeminfoNuma(Collector):
    name = "meminfo_numa"
    reports = ("meminfo_numa",)
    default_enabled = False
    described = (("node_memory_numa_<Field>", "gauge", "node", "every line of a NUMA node's meminfo "
                  "(kB x 1024); HELP \"Memory information field <Field>.\""),
                 ("node_memory_numa_<field>_total", "counter", "node", "every line of a NUMA node's numastat"))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._families: dict[str, FamilyInfo] = {}
        # Nodes come online later (memory hot-add, CXL memory): listed again every rescan_seconds.
        self._nodes = self.devices(f"{ctx.sysfs}/devices/system/node", self._node, r"node[0-9]+", missing_ok=True)
        for _, node in self._nodes.current():
            self._rows(*node)  # declares the families

    def _node(self, entry: str, path: str, opener) -> tuple[LearnedFile, LearnedFile]:
        number = entry.removeprefix("node")
        return (LearnedFile(opener(f"{path}/meminfo"), self._meminfo_rows),
                LearnedFile(opener(f"{path}/numastat"), lambda text: self._numastat_rows(number, text)))

    def _declare(self, field: str, kind) -> FamilyInfo:
        family = self._families.get(field)
        if family is None:  # the families are the fields the kernel prints: a new one joins the catalog
            family = self._families[field] = self.declare(
                kind(f"node_memory_numa_{field}", f"Memory information field {field}.", "node"))
        return family

    def _meminfo_rows(self, text: str) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        families, declare = self._families, self._declare
        return [(families.get(field) or declare(field, gauge), (node,), value)
                for field, node, value in parse_node_meminfo(text)]

    def _numastat_rows(self, number: str, text: str) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        families, declare = self._families, self._declare
        return [(families.get(field) or declare(field, counter), (number,), value)
                for field, value in parse_numastat(text)]

    @staticmethod
    def _rows(meminfo: LearnedFile, numastat: LearnedFile) -> tuple[list | Block, list | Block]:
        return meminfo.rows(), numastat.rows()

    def collect(self, out: Sample) -> None:
        for _, (meminfo, numastat) in self._nodes.each(lambda node: self._rows(*node)):  # offlined: skipped
            out.extend(meminfo)
            out.extend(numastat)

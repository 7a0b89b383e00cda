"""/sys/devices/system/node/node<N>/{meminfo,numastat}: node_exporter's ``meminfo_numa`` collector (off by default).

node_memory_numa_<Field> per NUMA node: each meminfo line (kB x 1024;
``Active(anon)`` becomes ``Active_anon``) as a gauge, each numastat line as
a counter named ``<field>_total``.  The fields are the kernel's, so the
families are declared from the files when the collector starts.
"""

from __future__ import annotations

import glob
import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, gauge, register

_PARENS = re.compile(r"\((.*)\)")
_NODE_NUMBER = re.compile(r".*devices/system/node/node([0-9]*)")


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
        self._nodes: list[tuple[str, ProcFile, ProcFile]] = []
        for path in sorted(glob.glob(f"{ctx.sysfs}/devices/system/node/node[0-9]*")):
            number = _NODE_NUMBER.match(path)
            if number is None:
                raise ValueError(f"NUMA node path does not end in node<N>: {path}")
            self._nodes.append((number.group(1), self.open(f"{path}/meminfo"), self.open(f"{path}/numastat")))
        self._families: dict[str, FamilyInfo] = {}
        for _, meminfo, numastat in self._nodes:
            for field, _, _ in parse_node_meminfo(meminfo.read()):
                self._declare(field, gauge)
            for field, _ in parse_numastat(numastat.read()):
                self._declare(field, counter)
        self.families = tuple(self._families.values())

    def _declare(self, field: str, kind) -> None:
        if field not in self._families:
            self._families[field] = kind(f"node_memory_numa_{field}", f"Memory information field {field}.", "node")

    def collect(self, out: Sample) -> None:
        families = self._families
        for number, meminfo, numastat in self._nodes:
            rows = [(field, node, value) for field, node, value in parse_node_meminfo(meminfo.read())]
            rows += [(field, number, value) for field, value in parse_numastat(numastat.read())]
            for field, node, value in rows:
                family = families.get(field)
                if family is not None:  # a field the kernel did not have at start is not in the catalog
                    out.add(family, (node,), value)

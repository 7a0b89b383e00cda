"""/proc/net/sockstat{,6}: node_exporter's ``sockstat`` collector.

node_sockstat_<PROTOCOL>_<field>; ``mem`` is in pages, so ``mem_bytes`` is
added for it (x page size), as node_exporter does.  The families are the
protocols and fields this kernel prints, declared when the collector starts.
"""

from __future__ import annotations

import os
from functools import partial

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedFile

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_FIELDS = ("inuse", "orphan", "tw", "alloc", "mem", "memory")
USED = gauge("node_sockstat_sockets_used", "Number of IPv4 sockets in use.")


def _values(text: str, v4: bool) -> list[tuple[str, str, int]]:
    """(protocol, field, value), mem_bytes included."""
    out = []
    for line in text.splitlines():
        protocol, _, rest = line.partition(":")
        parts = rest.split()
        if protocol == "sockets":
            if v4 and len(parts) >= 2 and parts[0] == "used":
                out.append(("sockets", "used", int(parts[1])))
            continue
        fields = dict(zip(parts[::2], parts[1::2]))
        for field in _FIELDS:
            if field in fields:
                out.append((protocol, field, int(fields[field])))
        if "mem" in fields:
            out.append((protocol, "mem_bytes", int(fields["mem"]) * PAGE_SIZE))
    return out


@register
class Sockstat(Collector):
    name = "sockstat"
    reports = ("sockstat",)
    described = (("node_sockstat_<PROTOCOL>_<field>", "gauge", "", "every protocol and field of "
                  "/proc/net/sockstat and sockstat6; <PROTOCOL>_mem_bytes = mem x page size"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._files = []
        for path, v4 in ((f"{ctx.procfs}/net/sockstat", True), (f"{ctx.procfs}/net/sockstat6", False)):
            try:  # IPv6 (or IPv4) may be disabled: node_exporter skips the file
                self._files.append((self.open(path, whole=True), v4))
            except FileNotFoundError:
                pass
        if not self._files:
            raise FileNotFoundError("no sockstat files")
        self._by_key: dict[tuple[str, str], FamilyInfo] = {}
        for protocol, field, _ in self._read():
            self._by_key[(protocol, field)] = USED if protocol == "sockets" else gauge(
                f"node_sockstat_{protocol}_{field}", f"Number of {protocol} sockets in state {field}.")
        self.families = tuple(self._by_key.values())
        self._learned = [LearnedFile(pf, partial(self._rows, v4)) for pf, v4 in self._files]

    def _read(self) -> list[tuple[str, str, int]]:
        out = []
        for pf, v4 in self._files:
            out += _values(pf.read(), v4)
        return out

    def collect(self, out: Sample) -> None:
        for learned in self._learned:
            out.extend(learned.rows())

    def _rows(self, v4: bool, text: str) -> list[tuple[FamilyInfo, tuple, float]]:
        by_key = self._by_key
        return [(family, (), value) for protocol, field, value in _values(text, v4)
                if (family := by_key.get((protocol, field))) is not None]

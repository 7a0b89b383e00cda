"""/proc/net/{netstat,snmp,snmp6}: node_exporter's ``netstat`` collector with its default field filter.

Untyped, as node_exporter has them; HELP is ``Statistic <Protocol><Name>.``.
"""

from __future__ import annotations

import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, untyped

FIELDS = re.compile(  # --collector.netstat.fields' default
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|"
    r"TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|"
    r"Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|"
    r"Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$")


def _pairs(text: str) -> list[tuple[str, str, str]]:
    """(protocol, name, value) of a netstat/snmp file: a header line then a value line per protocol."""
    out = []
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        names, values = names.split(" "), values.split(" ")
        protocol = names[0][:-1]
        if len(names) != len(values):
            raise ValueError(f"field count mismatch for {protocol}")
        out += [(protocol, n, v) for n, v in zip(names[1:], values[1:])]
    return out


def _pairs6(text: str) -> list[tuple[str, str, str]]:
    """snmp6 has one "Ip6InReceives 123" line per value: the protocol ends at the "6"."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "6" in parts[0]:
            six = parts[0].index("6") + 1
            out.append((parts[0][:six], parts[0][six:], parts[1]))
    return out


class Netstat(Collector):
    name = "netstat"
    reports = ("netstat",)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._sources: list[tuple[ProcFile, object]] = [
            (self.open(f"{ctx.procfs}/net/netstat"), _pairs), (self.open(f"{ctx.procfs}/net/snmp"), _pairs),
            (self.open(f"{ctx.procfs}/net/snmp6"), _pairs6)]
        self._by_key: dict[tuple[str, str], FamilyInfo] = {}
        for protocol, name, _ in self._read():
            if FIELDS.match(f"{protocol}_{name}"):
                self._by_key[(protocol, name)] = untyped(f"node_netstat_{protocol}_{name}",
                                                         f"Statistic {protocol}{name}.")
        self.families = tuple(self._by_key.values())

    def _read(self) -> list[tuple[str, str, str]]:
        out = []
        for pf, parse in self._sources:
            out += parse(pf.read())
        return out

    def collect(self, out: Sample) -> None:
        by_key = self._by_key
        for protocol, name, value in self._read():
            family = by_key.get((protocol, name))
            if family is not None:
                out.add(family, (), float(value))

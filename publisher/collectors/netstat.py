"""/proc/net/{netstat,snmp,snmp6}: node_exporter's ``netstat`` collector with its default field filter.

Untyped, as node_exporter has them; HELP is ``Statistic <Protocol><Name>.``.
"""

from __future__ import annotations

import re
from functools import partial

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, register, untyped
from shm_metrics.publisher.collectors.learned import LearnedFile

FIELDS = re.compile(  # --collector.netstat.fields' default
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|"
    r"TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|"
    r"Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|"
    r"Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$")


def _pairs6(text: str) -> list[tuple[str, str, str]]:
    """snmp6 has one "Ip6InReceives 123" line per value: the protocol ends at the "6"."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "6" in parts[0]:
            six = parts[0].index("6") + 1
            out.append((parts[0][:six], parts[0][six:], parts[1]))
    return out


@register
class Netstat(Collector):
    name = "netstat"
    reports = ("netstat",)
    described = (("node_netstat_<Protocol>_<Field>", "untyped", "", "/proc/net/netstat, snmp and snmp6 fields "
                  "matching node_exporter's default --collector.netstat.fields"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._netstat = (self.open(f"{ctx.procfs}/net/netstat", whole=True),
                         self.open(f"{ctx.procfs}/net/snmp", whole=True))
        self._snmp6 = self.open(f"{ctx.procfs}/net/snmp6", whole=True)
        families: list[FamilyInfo] = []
        # Where each wanted value is: (file, line of values, column) -> family; the kernel's column
        # order is fixed, so only the wanted columns of the wanted lines are parsed each sample.
        self._columns: list[list[tuple[int, int, FamilyInfo]]] = []
        for pf in self._netstat:
            lines = pf.read().splitlines()
            wanted = []
            for n in range(0, len(lines) - 1, 2):
                names = lines[n].split(" ")
                protocol = names[0][:-1]
                for col, field in enumerate(names[1:], 1):
                    if FIELDS.match(f"{protocol}_{field}"):
                        fam = untyped(f"node_netstat_{protocol}_{field}", f"Statistic {protocol}{field}.")
                        wanted.append((n + 1, col, fam))
                        families.append(fam)
            self._columns.append(wanted)
        # snmp6: one "Ip6InReceives   \t123" line per value, in a fixed order: (line number, key, family).
        self._six: list[tuple[int, str, FamilyInfo]] = []
        for n, line in enumerate(self._snmp6.read().splitlines()):
            pairs = _pairs6(line)
            if pairs and FIELDS.match(f"{pairs[0][0]}_{pairs[0][1]}"):
                protocol, field, _ = pairs[0]
                fam = untyped(f"node_netstat_{protocol}_{field}", f"Statistic {protocol}{field}.")
                self._six.append((n, protocol + field, fam))
                families.append(fam)
        self.families = tuple(families)
        self._learned = [LearnedFile(pf, partial(self._table_rows, wanted))
                         for pf, wanted in zip(self._netstat, self._columns)]
        self._learned.append(LearnedFile(self._snmp6, self._snmp6_rows))

    def collect(self, out: Sample) -> None:
        for learned in self._learned:
            out.extend(learned.rows())

    @staticmethod
    def _table_rows(wanted: list[tuple[int, int, FamilyInfo]], text: str) -> list[tuple[FamilyInfo, tuple, float]]:
        """netstat and snmp: a line of names, then a line of values, per protocol."""
        lines = text.splitlines()
        rows = []
        split: dict[int, list[str]] = {}
        for line_no, col, fam in wanted:
            values = split.get(line_no)
            if values is None:
                values = split[line_no] = lines[line_no].split(" ")
            rows.append((fam, (), float(values[col])))
        return rows

    def _snmp6_rows(self, text: str) -> list[tuple[FamilyInfo, tuple, float]]:
        lines = text.splitlines()
        try:
            found = [(fam, parts) for n, key, fam in self._six if (parts := lines[n].split()) and parts[0] == key]
        except IndexError:
            found = []
        if len(found) != len(self._six):  # lines moved (never seen): look each key up
            by_key = {key: fam for _, key, fam in self._six}
            found = [(by_key[parts[0]], parts) for parts in map(str.split, lines) if parts and parts[0] in by_key]
        return [(fam, (), float(parts[1])) for fam, parts in found]

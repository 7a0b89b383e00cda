"""/proc/net/rpc/nfs: node_exporter's ``nfs`` collector (the NFS client's RPC statistics).

Lines: ``net`` (packets, UDP, TCP, TCP connections), ``rpc`` (calls,
retransmissions, authentication refreshes) and ``procN`` (a count, then one
counter per procedure of NFS version N, in the kernel's order).  A line the
kernel does not write counts as zeros, as in node_exporter.
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register
from shm_metrics.publisher.collectors._go_order import add_in_go_order
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

PACKETS = counter("node_nfs_packets_total", "Total NFSd network packets (sent+received) by protocol type.",
                  "protocol")
CONNECTIONS = counter("node_nfs_connections_total", "Total number of NFSd TCP connections.")
RPCS = counter("node_nfs_rpcs_total", "Total number of RPCs performed.")
RETRANSMISSIONS = counter("node_nfs_rpc_retransmissions_total", "Number of RPC transmissions performed.")
AUTH_REFRESHES = counter("node_nfs_rpc_authentication_refreshes_total",
                         "Number of RPC authentication refreshes performed.")
REQUESTS = counter("node_nfs_requests_total", "Number of NFS procedures invoked.", "proto", "method")

# The procedures of each version in the order the kernel counts them (names as node_exporter labels them).
V2_PROCEDURES = ("Null", "GetAttr", "SetAttr", "Root", "Lookup", "ReadLink", "Read", "WrCache", "Write", "Create",
                 "Remove", "Rename", "Link", "SymLink", "MkDir", "RmDir", "ReadDir", "FsStat")
V3_PROCEDURES = ("Null", "GetAttr", "SetAttr", "Lookup", "Access", "ReadLink", "Read", "Write", "Create", "MkDir",
                 "SymLink", "MkNod", "Remove", "RmDir", "Rename", "Link", "ReadDir", "ReadDirPlus", "FsStat",
                 "FsInfo", "PathConf", "Commit")
V4_CLIENT_PROCEDURES = (
    "Null", "Read", "Write", "Commit", "Open", "OpenConfirm", "OpenNoattr", "OpenDowngrade", "Close", "Setattr",
    "FsInfo", "Renew", "SetClientID", "SetClientIDConfirm", "Lock", "Lockt", "Locku", "Access", "Getattr", "Lookup",
    "LookupRoot", "Remove", "Rename", "Link", "Symlink", "Create", "Pathconf", "StatFs", "ReadLink", "ReadDir",
    "ServerCaps", "DelegReturn", "GetACL", "SetACL", "FsLocations", "ReleaseLockowner", "Secinfo", "FsidPresent",
    "ExchangeID", "CreateSession", "DestroySession", "Sequence", "GetLeaseTime", "ReclaimComplete", "LayoutGet",
    "GetDeviceInfo", "LayoutCommit", "LayoutReturn", "SecinfoNoName", "TestStateID", "FreeStateID",
    "GetDeviceList", "BindConnToSession", "DestroyClientID", "Seek", "Allocate", "DeAllocate", "LayoutStats",
    "Clone")


def procedure_counts(values: list[int], names: tuple[str, ...], minimum: int, pad: bool = False) -> list[int]:
    """The counters of a ``procN`` line (``values`` after the key: the count, then the counters), one per name.

    ``minimum``: the fewest counters accepted; ``pad``: an older kernel's shorter line is padded with zeros.
    """
    count, counters = values[0], values[1:]
    if len(counters) != count or (count < minimum and not pad):
        raise ValueError(f"invalid procedure line {values}")
    counters = counters + [0] * (len(names) - len(counters))
    return counters[:len(names)]


def _expect(values: list[int], length: int, key: str) -> list[int]:
    if len(values) != length:
        raise ValueError(f"invalid {key} line {values}")
    return values


@register
class Nfs(Collector):
    name = "nfs"
    reports = ("nfs",)
    families = (PACKETS, CONNECTIONS, RPCS, RETRANSMISSIONS, AUTH_REFRESHES, REQUESTS)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        try:
            self._file = self.open(f"{ctx.procfs}/net/rpc/nfs")
        except FileNotFoundError as error:
            raise LookupError("no NFS client statistics (nfs module not loaded)") from error
        self._learned = LearnedFile(self._file, filled(self._fill))

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        network, rpc = [0, 0, 0, 0], [0, 0, 0]
        procedures = {"2": [0] * len(V2_PROCEDURES), "3": [0] * len(V3_PROCEDURES),
                      "4": [0] * len(V4_CLIENT_PROCEDURES)}
        for line in text.splitlines():
            key, *fields = line.split()
            if not fields:
                raise ValueError(f"invalid NFS metric line {line!r}")
            values = [int(v) for v in fields]
            if key == "net":
                network = _expect(values, 4, key)
            elif key == "rpc":
                rpc = _expect(values, 3, key)
            elif key == "proc2":
                procedures["2"] = procedure_counts(values, V2_PROCEDURES, 18)
            elif key == "proc3":
                procedures["3"] = procedure_counts(values, V3_PROCEDURES, 22)
            elif key == "proc4":
                procedures["4"] = procedure_counts(values, V4_CLIENT_PROCEDURES, 0, pad=True)
            else:
                raise ValueError(f"unknown NFS metric line {key!r}")
        add_in_go_order(out, ((PACKETS, ("udp",), network[1]), (PACKETS, ("tcp",), network[2])))
        out.add(CONNECTIONS, (), network[3])
        out.add(RPCS, (), rpc[0])
        out.add(RETRANSMISSIONS, (), rpc[1])
        out.add(AUTH_REFRESHES, (), rpc[2])
        names = {"2": V2_PROCEDURES, "3": V3_PROCEDURES, "4": V4_CLIENT_PROCEDURES}
        add_in_go_order(out, ((REQUESTS, (version, name), value) for version, counts in procedures.items()
                              for name, value in zip(names[version], counts)))

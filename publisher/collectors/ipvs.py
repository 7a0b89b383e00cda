"""/proc/net/ip_vs_stats and /proc/net/ip_vs: node_exporter's ``ipvs`` collector (IP Virtual Server).

The totals since the module loaded (hexadecimal in ip_vs_stats), and per
backend (real server) of each virtual service its active and inactive
connections and weight.  The ``ipvs.backend-labels`` option (a comma-separated
string or a list) chooses the backend labels; backends whose chosen labels
are equal are summed, as node_exporter does.
"""

from __future__ import annotations

import ipaddress

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register
from shm_metrics.publisher.collectors._go_order import add_in_go_order

BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto", "local_mark")

CONNECTIONS = counter("node_ipvs_connections_total", "The total number of connections made.")
INCOMING_PACKETS = counter("node_ipvs_incoming_packets_total", "The total number of incoming packets.")
OUTGOING_PACKETS = counter("node_ipvs_outgoing_packets_total", "The total number of outgoing packets.")
INCOMING_BYTES = counter("node_ipvs_incoming_bytes_total", "The total amount of incoming data.")
OUTGOING_BYTES = counter("node_ipvs_outgoing_bytes_total", "The total amount of outgoing data.")
TOTALS = (CONNECTIONS, INCOMING_PACKETS, OUTGOING_PACKETS, INCOMING_BYTES, OUTGOING_BYTES)


def backend_labels(option: object) -> tuple[str, ...]:
    """The chosen backend labels in node_exporter's order; ValueError for an unknown one."""
    chosen = option.split(",") if isinstance(option, str) else list(option)  # type: ignore[arg-type]
    wanted = {label for label in chosen if label}
    unknown = sorted(wanted - set(BACKEND_LABELS))
    if unknown:
        raise ValueError(f"unknown IPVS backend labels: {', '.join(unknown)}")
    return tuple(label for label in BACKEND_LABELS if label in wanted)


def address_and_port(text: str) -> tuple[str, int]:
    """``C0A80016:0CEA`` (IPv4, hex) or ``[2001:db8::1]:0CEA`` (IPv6) as (address, port)."""
    if len(text) == 13:
        address = ipaddress.IPv4Address(bytes.fromhex(text[:8]))
    elif len(text) == 46:
        address = ipaddress.IPv6Address(text[1:40])
        # Go prints an IPv4-mapped IPv6 address as the IPv4 address.
        address = address.ipv4_mapped or address
    else:
        raise ValueError(f"unexpected IP:Port: {text}")
    return str(address), int(text[-4:], 16)


def totals(text: str) -> list[int]:
    """The five totals of ip_vs_stats (its third line, hexadecimal)."""
    lines = text.split("\n", 3)
    if len(lines) != 4:
        raise ValueError("ip_vs_stats corrupt: too short")
    fields = lines[2].split()
    if len(fields) != 5:
        raise ValueError("ip_vs_stats corrupt: unexpected number of fields")
    return [int(field, 16) for field in fields]


def backends(text: str) -> list[tuple[dict[str, str], int, int, int]]:
    """Every backend of /proc/net/ip_vs: (labels by name, weight, active, inactive)."""
    out = []
    proto = mark = local_address = ""
    local_port = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] in ("IP", "Prot") or (len(fields) > 1 and fields[1] == "RemoteAddress:Port"):
            continue
        if fields[0] in ("TCP", "UDP") and len(fields) >= 2:
            proto, mark = fields[0], ""
            local_address, local_port = address_and_port(fields[1])
        elif fields[0] == "FWM" and len(fields) >= 2:
            proto, mark, local_address, local_port = "FWM", fields[1], "", 0
        elif fields[0] == "->" and len(fields) >= 6:
            remote_address, remote_port = address_and_port(fields[1])
            labels = {"local_address": local_address, "local_port": str(local_port),
                      "remote_address": remote_address, "remote_port": str(remote_port), "proto": proto,
                      "local_mark": mark}
            out.append((labels, int(fields[3]), int(fields[4]), int(fields[5])))
    return out


def _backend_families(labels: tuple[str, ...]) -> tuple:
    """The per-backend families (active, inactive, weight) with the chosen labels."""
    return (gauge("node_ipvs_backend_connections_active",
                  "The current active connections by local and remote address.", *labels),
            gauge("node_ipvs_backend_connections_inactive",
                  "The current inactive connections by local and remote address.", *labels),
            gauge("node_ipvs_backend_weight", "The current backend weight by local and remote address.", *labels))


@register
class Ipvs(Collector):
    name = "ipvs"
    reports = ("ipvs",)
    # With the default ipvs.backend-labels (all of them); an instance declares the chosen ones.
    families = (*TOTALS, *_backend_families(BACKEND_LABELS))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._labels = backend_labels(ctx.option("ipvs.backend-labels", ",".join(BACKEND_LABELS)))
        try:
            self._stats = self.open(f"{ctx.procfs}/net/ip_vs_stats")
        except FileNotFoundError as error:
            raise LookupError("no IPVS (ip_vs module not loaded)") from error
        self._backends = self.open(f"{ctx.procfs}/net/ip_vs")
        self._active, self._inactive, self._weight = _backend_families(self._labels)
        self.families = (*TOTALS, self._active, self._inactive, self._weight)

    def collect(self, out: Sample) -> None:
        for family, value in zip(TOTALS, totals(self._stats.read())):
            out.add(family, (), value)
        sums: dict[tuple[str, ...], list[int]] = {}
        for labels, weight, active, inactive in backends(self._backends.read()):
            key = tuple(labels[name] for name in self._labels)
            total = sums.setdefault(key, [0, 0, 0])
            total[0] += active
            total[1] += inactive
            total[2] += weight
        add_in_go_order(out, [(family, key, total[i]) for key, total in sums.items()
                              for i, family in enumerate((self._active, self._inactive, self._weight))])

"""/proc/net/tcp and tcp6: node_exporter's ``tcpstat`` collector (off by default).

node_tcp_connection_states{state}: the number of TCP sockets (IPv4 and IPv6
together) in each state that has any, and the bytes queued in all of them
(``rx_queued_bytes``, ``tx_queued_bytes``).  node_exporter 1.5.0 asks the
kernel through inet_diag netlink; the /proc tables hold the same sockets,
states and queues, with one difference: for a listening socket inet_diag
reports its accept-queue limit (the listen backlog) as its send queue, the
/proc table 0, so ``tx_queued_bytes`` here leaves out that limit of every
listener and counts only bytes actually waiting to be sent.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

STATES = gauge("node_tcp_connection_states", "Number of connection states.", "state")
# The kernel's TCP states (include/net/tcp_states.h), as node_exporter names them.
STATE_NAMES = {1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2", 6: "time_wait",
               7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing"}


def count_states(text: str, counts: dict[str, float]) -> None:
    """Add one /proc/net/tcp[6] table's sockets to ``counts`` (state name -> sockets, and the queue sums)."""
    lines = text.splitlines()
    for line in lines[1:]:  # the first line names the columns
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        # fields: "sl:", local address, remote address, state (hex), "tx_queue:rx_queue" (hex)
        state = STATE_NAMES.get(int(fields[3], 16), "unknown")
        tx_queue, _, rx_queue = fields[4].partition(":")
        counts[state] = counts.get(state, 0) + 1
        counts["tx_queued_bytes"] = counts.get("tx_queued_bytes", 0) + int(tx_queue, 16)
        counts["rx_queued_bytes"] = counts.get("rx_queued_bytes", 0) + int(rx_queue, 16)


@register
class Tcpstat(Collector):
    name = "tcpstat"
    reports = ("tcpstat",)
    default_enabled = False
    families = (STATES,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._tables = [self.open(f"{ctx.procfs}/net/tcp")]
        if os.path.exists(f"{ctx.procfs}/net/tcp6"):  # a kernel without IPv6 has only the IPv4 table
            self._tables.append(self.open(f"{ctx.procfs}/net/tcp6"))

    def counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for table in self._tables:
            count_states(table.read_to_end(), counts)
        return counts

    def collect(self, out: Sample) -> None:
        for state, value in self.counts().items():
            out.add(STATES, (state,), value)

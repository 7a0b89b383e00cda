"""/proc/net/udp{,6}: node_exporter's ``udp_queues`` collector (queued bytes summed over sockets)."""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

QUEUES = gauge("node_udp_queues", "Number of allocated memory in the kernel for UDP datagrams in bytes.",
               "queue", "ip")


def _summary(text: str) -> tuple[int, int]:
    tx = rx = 0
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 4:
            t, _, r = fields[4].partition(":")  # tx_queue:rx_queue, hex
            tx += int(t, 16)
            rx += int(r, 16)
    return tx, rx


@register
class UdpQueues(Collector):
    name = "udp_queues"
    reports = ("udp_queues",)
    families = (QUEUES,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._files = []
        for ip, path in (("v4", f"{ctx.procfs}/net/udp"), ("v6", f"{ctx.procfs}/net/udp6")):
            try:
                self._files.append((ip, self.open(path)))
            except FileNotFoundError:  # that IP version is disabled: node_exporter skips it
                pass
        if not self._files:
            raise FileNotFoundError("no /proc/net/udp or udp6")

    def collect(self, out: Sample) -> None:
        for ip, pf in self._files:
            tx, rx = _summary(pf.read())
            out.add(QUEUES, ("tx", ip), tx)
            out.add(QUEUES, ("rx", ip), rx)

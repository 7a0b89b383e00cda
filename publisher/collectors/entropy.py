"""/proc/sys/kernel/random: node_exporter's ``entropy`` collector."""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

AVAILABLE = gauge("node_entropy_available_bits", "Bits of available entropy.")
POOL_SIZE = gauge("node_entropy_pool_size_bits", "Bits of entropy pool.")


@register
class Entropy(Collector):
    name = "entropy"
    reports = ("entropy",)
    families = (AVAILABLE, POOL_SIZE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._avail = self.open(f"{ctx.procfs}/sys/kernel/random/entropy_avail", whole=True)
        self._pool = self.open(f"{ctx.procfs}/sys/kernel/random/poolsize", whole=True)

    def collect(self, out: Sample) -> None:
        out.add(AVAILABLE, (), int(self._avail.read_bytes()))
        out.add(POOL_SIZE, (), int(self._pool.read_bytes()))

"""/sys/kernel/mm/ksm: node_exporter's ``ksmd`` collector (off by default), one family per file."""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register

_FILES = ("full_scans", "merge_across_nodes", "pages_shared", "pages_sharing", "pages_to_scan", "pages_unshared",
          "pages_volatile", "run", "sleep_millisecs")


def _family(file: str):
    help_ = f"ksmd '{file}' file."
    if file == "full_scans":
        return counter("node_ksmd_full_scans_total", help_)
    if file == "sleep_millisecs":
        return gauge("node_ksmd_sleep_seconds", help_)
    return gauge(f"node_ksmd_{file}", help_)


_FAMILIES = {file: _family(file) for file in _FILES}


@register
class Ksmd(Collector):
    name = "ksmd"
    reports = ("ksmd",)
    default_enabled = False
    families = tuple(_FAMILIES.values())

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        # Kernels without CONFIG_KSM have no directory; every file must be there, as node_exporter fails otherwise.
        self._files = {file: self.open(f"{ctx.sysfs}/kernel/mm/ksm/{file}") for file in _FILES}

    def collect(self, out: Sample) -> None:
        for file, pf in self._files.items():
            value = int(pf.read_bytes())
            if value < 0:
                raise ValueError(f"ksm {file}: negative value {value}")
            out.add(_FAMILIES[file], (), value / 1000 if file == "sleep_millisecs" else value)

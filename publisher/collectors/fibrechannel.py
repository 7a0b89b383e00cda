"""/sys/class/fc_host: node_exporter's ``fibrechannel`` collector (HBAs' identity and state, frame and error counters).

The hosts and their files are found when the collector starts and again
every ``rescan_seconds``; the
attributes that label node_fibrechannel_info (speed, port state...) and the
``statistics`` counters stay open and are re-read every sample (a port goes
from Online to Linkdown).  A counter file the driver lacks counts 0 and a
counter at 2^64-1 (the driver's "not supported") is left out, as there.
Without the fc_host class the collector is unavailable, as there.
"""

from __future__ import annotations

import errno
import os

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import SYSFS_READ_SIZE, go_text, go_uint0

# node_fibrechannel_info's labels after fc_host, and the file each comes from.
INFO_ATTRIBUTES = ("speed", "port_state", "port_type", "port_id", "port_name", "fabric_name", "symbolic_name",
                   "supported_classes", "supported_speeds", "dev_loss_tmo")
# Identities printed as 0x...: shown without the prefix, as there.
_HEX_IDENTITIES = frozenset(("node_name", "port_id", "port_name", "fabric_name"))
INFO = gauge("node_fibrechannel_info", "Non-numeric data from /sys/class/fc_host/<host>, value is always 1.",
             "fc_host", *INFO_ATTRIBUTES)


def _counter(name: str, help_: str):
    return counter(f"node_fibrechannel_{name}", help_, "fc_host")


# statistics file -> family, in node_exporter's order
COUNTERS = {
    "dumped_frames": _counter("dumped_frames_total", "Number of dumped frames"),
    "error_frames": _counter("error_frames_total", "Number of errors in frames"),
    "invalid_crc_count": _counter("invalid_crc_total", "Invalid Cyclic Redundancy Check count"),
    "rx_frames": _counter("rx_frames_total", "Number of frames received"),
    "rx_words": _counter("rx_words_total", "Number of words received by host port"),
    "tx_frames": _counter("tx_frames_total", "Number of frames transmitted by host port"),
    "tx_words": _counter("tx_words_total", "Number of words transmitted by host port"),
    "seconds_since_last_reset": _counter("seconds_since_last_reset_total",
                                         "Number of seconds since last host port reset"),
    "invalid_tx_word_count": _counter("invalid_tx_words_total", "Number of invalid words transmitted by host port"),
    "link_failure_count": _counter("link_failure_total", "Number of times the host port link has failed"),
    "loss_of_sync_count": _counter("loss_of_sync_total",
                                   "Number of failures on either bit or transmission word boundaries"),
    "loss_of_signal_count": _counter("loss_of_signal_total", "Number of times signal has been lost"),
    "nos_count": _counter("nos_total", "Number Not_Operational Primitive Sequence received by host port"),
    "fcp_packet_aborts": _counter("fcp_packet_aborts_total", "Number of aborted packets"),
}
_NOT_SUPPORTED = (1 << 64) - 1
# Read errors that mean "no such counter on this HBA": it counts 0, as in procfs.
_SKIPPED_ERRORS = (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL)


def _read(pf: ProcFile) -> str:
    return go_text(os.pread(pf.fd, SYSFS_READ_SIZE, 0)).strip()


class _Host:
    __slots__ = ("name", "identity", "counters")

    def __init__(self, name: str, identity: list[tuple[str, ProcFile]], counters: dict[str, ProcFile]):
        self.name, self.identity, self.counters = name, identity, counters


@register
class Fibrechannel(Collector):
    name = "fibrechannel"
    reports = ("fibrechannel",)
    families = (INFO, *COUNTERS.values())

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        # No fc_host class: unavailable, as there.
        self._hosts = self.devices(os.path.join(ctx.sysfs, "class", "fc_host"), self._host)

    @staticmethod
    def _host(host: str, path: str, opener) -> _Host:
        # node_name is read (a missing one fails, as there) though no label shows it.
        identity = [(attr, opener(os.path.join(path, attr))) for attr in ("node_name", *INFO_ATTRIBUTES)]
        counters = {}
        with os.scandir(os.path.join(path, "statistics")) as entries:
            for entry in entries:
                if entry.name in COUNTERS and entry.is_file(follow_symlinks=False):
                    counters[entry.name] = opener(entry.path)
        return _Host(host, identity, counters)

    def collect(self, out: Sample) -> None:
        for _, rows in self._hosts.each(self._read):
            for row in rows:
                out.add(*row)

    @staticmethod
    def _read(host: _Host) -> list[tuple]:
        values = {}
        for attr, pf in host.identity:
            text = _read(pf)
            values[attr] = text[2:] if attr in _HEX_IDENTITIES and len(text) > 2 else text
        rows: list[tuple] = [(INFO, (host.name, *(values[attr] for attr in INFO_ATTRIBUTES)), 1)]
        labels = (host.name,)
        for attr, family in COUNTERS.items():
            pf = host.counters.get(attr)
            value = 0
            if pf is not None:
                try:
                    text = _read(pf)
                except OSError as exc:
                    if exc.errno not in _SKIPPED_ERRORS:
                        raise
                    text = "0"
                value = go_uint0(text)
                if value is None:
                    raise ValueError(f"{pf.path}: not a count: {text!r}")
            if value != _NOT_SUPPORTED:
                rows.append((family, labels, value))
        return rows

"""/proc/drbd: node_exporter's ``drbd`` collector (off by default, as in node_exporter).

The file is read as whitespace-separated ``key:value`` words: ``N:`` starts
device ``drbdN``; the counters (ns, nr, dw, dr, al, bm, lo, pe, ua, ap, ep,
oos) become one series each, the ones the kernel counts in KiB scaled to
bytes (node_exporter scales ``nr`` by 1, and so does this); ``ro`` and ``ds``
(``local/remote``) say whether each side is Primary / UpToDate; ``cs`` whether
the device is Connected.
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register
from shm_metrics.publisher.collectors._go_order import add_in_go_order

# key -> (family, multiplier)
_NUMERIC = {
    "ns": (counter("node_drbd_network_sent_bytes_total", "Total number of bytes sent via the network.", "device"),
           1024),
    "nr": (counter("node_drbd_network_received_bytes_total", "Total number of bytes received via the network.",
                   "device"), 1),
    "dw": (counter("node_drbd_disk_written_bytes_total", "Net data written on local hard disk; in bytes.", "device"),
           1024),
    "dr": (counter("node_drbd_disk_read_bytes_total", "Net data read from local hard disk; in bytes.", "device"),
           1024),
    "al": (counter("node_drbd_activitylog_writes_total",
                   "Number of updates of the activity log area of the meta data.", "device"), 1),
    "bm": (counter("node_drbd_bitmap_writes_total", "Number of updates of the bitmap area of the meta data.",
                   "device"), 1),
    "lo": (gauge("node_drbd_local_pending", "Number of open requests to the local I/O sub-system.", "device"), 1),
    "pe": (gauge("node_drbd_remote_pending",
                 "Number of requests sent to the peer, but that have not yet been answered by the latter.", "device"),
           1),
    "ua": (gauge("node_drbd_remote_unacknowledged", "Number of requests received by the peer via the network "
                 "connection, but that have not yet been answered.", "device"), 1),
    "ap": (gauge("node_drbd_application_pending",
                 "Number of block I/O requests forwarded to DRBD, but not yet answered by DRBD.", "device"), 1),
    "ep": (gauge("node_drbd_epochs", "Number of Epochs currently on the fly.", "device"), 1),
    "oos": (gauge("node_drbd_out_of_sync_bytes", "Amount of data known to be out of sync; in bytes.", "device"),
            1024),
}
# key -> (family, the value that means 1)
_PAIRS = {
    "ro": (gauge("node_drbd_node_role_is_primary", "Whether the role of the node is in the primary state.", "device",
                 "node"), "Primary"),
    "ds": (gauge("node_drbd_disk_state_is_up_to_date", "Whether the disk of the node is up to date.", "device",
                 "node"), "UpToDate"),
}
CONNECTED = gauge("node_drbd_connected", "Whether DRBD is connected to the peer.", "device")


def parse(text: str) -> list[tuple]:
    """The series of a /proc/drbd text: (family, label values, value)."""
    series = []
    device = "unknown"
    for word in text.split():
        parts = word.split(":")
        if len(parts) != 2:
            continue
        key, value = parts
        if key.isdigit() and value == "":
            device = f"drbd{int(key)}"
        elif key in _NUMERIC:
            family, multiplier = _NUMERIC[key]
            series.append((family, (device,), float(value) * multiplier))
        elif key in _PAIRS:
            family, good = _PAIRS[key]
            local, _, remote = value.partition("/")
            series.append((family, (device, "local"), 1 if local == good else 0))
            series.append((family, (device, "remote"), 1 if remote.split("/")[0] == good else 0))
        elif key == "cs":
            series.append((CONNECTED, (device,), 1 if value == "Connected" else 0))
    return series


@register
class Drbd(Collector):
    name = "drbd"
    reports = ("drbd",)
    default_enabled = False
    families = (*(f for f, _ in _NUMERIC.values()), *(f for f, _ in _PAIRS.values()), CONNECTED)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        try:
            self._file = self.open(f"{ctx.procfs}/drbd")
        except FileNotFoundError as error:
            raise LookupError("no /proc/drbd (drbd module not loaded)") from error

    def collect(self, out: Sample) -> None:
        add_in_go_order(out, parse(self._file.read()))

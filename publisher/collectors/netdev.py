"""/proc/net/dev: node_exporter's ``netdev`` collector (its legacy names, as it shows them by default).

node_exporter 1.5.0 reads the counters over netlink and folds the detailed
error counters into /proc/net/dev's columns (``legacy()``), so /proc/net/dev
gives the same numbers; ``receive_nohandler``, which only netlink has, comes
from the interface's sysfs statistics file.  Also fills the layout's ``net``
array and its byte totals.

Netlink asks the running kernel about the publisher's own network namespace,
whatever ``--path.procfs`` says: so with ``netdev.netlink`` on (node_exporter's
default) the files read are this process's ``/proc/net/dev`` and
``/sys/class/net`` (``LIVE_PROCFS``/``LIVE_SYSFS``), not the configured trees;
with it off, ``<procfs>/net/dev`` and no ``receive_nohandler``, as node_exporter
does.  Devices: the publisher's ``Filters`` (``--net-exclude``, and node_exporter's
``--collector.netdev.device-include/-exclude``, which the command line maps onto them).
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import CORE, Collector, Context, ProcFile, Sample, counter, numbers, register

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

# /proc/net/dev columns, in order, as node_exporter names them.
_COLUMNS = ("receive_bytes", "receive_packets", "receive_errs", "receive_drop", "receive_fifo", "receive_frame",
            "receive_compressed", "receive_multicast", "transmit_bytes", "transmit_packets", "transmit_errs",
            "transmit_drop", "transmit_fifo", "transmit_colls", "transmit_carrier", "transmit_compressed")


def _family(key: str):
    return counter(f"node_network_{key}_total", f"Network device statistic {key}.", "device")


COLUMN_FAMILIES = tuple(_family(key) for key in _COLUMNS)
NOHANDLER = _family("receive_nohandler")

# Where netlink's view of the running kernel is, as files (tests point these at a fake tree).
LIVE_PROCFS = "/proc"
LIVE_SYSFS = "/sys"


@register
class Netdev(Collector):
    name = "net"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("netdev",)
    families = (*COLUMN_FAMILIES, NOHANDLER)
    on_demand = (NOHANDLER,)  # a sysfs file per interface: read in full samples only

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._netlink = bool(ctx.option("netdev.netlink", True))
        self._file = self.open(f"{LIVE_PROCFS if self._netlink else ctx.procfs}/net/dev")
        self._nohandler: dict[str, ProcFile | None] = {}
        self._nohandler_series: list[tuple] = []  # of the latest full sample, repeated in the others
        self._numbers = numbers.Numbers.of(self._file) if numbers.AVAILABLE else None
        # The fast path's program (collectors/numbers.py): the 16 columns of every interface kept, with
        # their names in file order.
        self._program: tuple[numbers.Program, list[str]] | None = None

    def _nohandler_file(self, device: str) -> ProcFile | None:
        if not self._netlink:
            return None
        if device not in self._nohandler:
            try:
                self._nohandler[device] = ProcFile(f"{LIVE_SYSFS}/class/net/{device}/statistics/rx_nohandler",
                                                   whole=True)
            except OSError:
                self._nohandler[device] = None
        return self._nohandler[device]

    def collect(self, out: Sample) -> None:
        rows = []
        series = out.series
        start = len(series)
        excluded = self.ctx.filters.net_excluded
        text, raw, shape = numbers.read_text(self._file, self._numbers)
        for line in text.splitlines()[2:]:
            name, _, rest = line.partition(":")
            name = name.strip()
            if not name or excluded(name):
                continue
            v = list(map(int, rest.split()))
            rows.append(_row(name, v))
            series.extend(zip(COLUMN_FAMILIES, repeat((name,)), v))  # in C: every interval, cold caches
        if shape is not None and (self._program is None or self._program[0].shape != shape):
            self._program = self._make_program(raw, shape, series[start:], rows)
        self._put(out, rows, same_devices=False)

    def fast(self, out: Sample) -> bool:
        """The same values from the numbers alone, while /proc/net/dev keeps its interfaces
        (collectors/numbers.py)."""
        if self._program is None:
            return False
        program, devices = self._program
        values = program.values(self._numbers)
        if values is None:
            return False
        out.add_block(program.fixed, values)
        v = memoryview(values).cast("d").tolist()
        self._put(out, [_row(device, list(map(int, v[i:i + 16])))
                        for i, device in zip(range(0, len(v), 16), devices)])
        return True

    def compile(self, built: Builder) -> bool:
        """The fast path's values, the net array and its totals (publisher/compiled.py)."""
        if self._program is None:
            return False
        program, devices = self._program
        regs = built.program(built.file(self._numbers, program.shape), program)
        built.series(program.fixed.families, program.fixed.labels, regs)
        for i in range(len(devices)):
            for key, column in _ROW_COLUMNS:
                built.row("net", i, key, regs[16 * i + column])
        built.scalar("net_rx_bytes_total", built.total(regs[0::16]))
        built.scalar("net_tx_bytes_total", built.total(regs[8::16]))
        return True

    def _put(self, out: Sample, rows: list[dict], same_devices: bool = True) -> None:
        """The rows' receive_nohandler (sysfs: read in full samples, repeated in the others, without the
        interfaces gone since), the net array and its totals."""
        if self.ctx.full:
            self._nohandler_series = self._read_nohandler(rows)
        elif not same_devices:
            seen = {row["device"] for row in rows}
            self._nohandler_series = [row for row in self._nohandler_series if row[1][0] in seen]
        out.series += self._nohandler_series
        out.net = rows
        out.scalars["net_rx_bytes_total"] = sum(r["rx_bytes"] for r in rows)
        out.scalars["net_tx_bytes_total"] = sum(r["tx_bytes"] for r in rows)

    def _read_nohandler(self, rows: list[dict]) -> list[tuple]:
        series = []
        for row in rows:
            name = row["device"]
            pf = self._nohandler_file(name)
            if pf is not None:
                try:
                    series.append((NOHANDLER, (name,), int(pf.read_bytes())))
                except (OSError, ValueError):  # the interface went away between the two reads, or was
                    self._nohandler.pop(name)  # made again under its name: its file is opened anew next time
                    pf.close()
        if len(self._nohandler) > len(rows):
            seen = {row["device"] for row in rows}
            for gone in [d for d in self._nohandler if d not in seen]:
                pf = self._nohandler.pop(gone)
                if pf is not None:
                    pf.close()
        return series

    def _make_program(self, raw: bytes, shape: numbers.Shape, series: list[tuple], rows: list[dict],
                      ) -> tuple[numbers.Program, list[str]] | None:
        """Where each interface's 16 columns are among the file's numbers; None when the Python path's values
        do not come out of them (the Python path then runs every sample)."""
        lines = {}
        for line in numbers.tokens(raw):
            if line and line[0][1] is None:
                lines.setdefault(line[0][0].decode("utf-8", "replace"), [index for _, index in line[1:]])
        positions = []
        for row in rows:
            columns = lines.get(row["device"], [])
            if len(columns) != len(COLUMN_FAMILIES) or None in columns:
                return None
            positions += columns
        fixed = numbers.FixedSeries([family for family, _, _ in series], [labels for _, labels, _ in series])
        program = numbers.Program(shape, positions, [1.0] * len(positions), fixed)
        if len(series) != len(positions) or not program.gives(self._numbers.values, [v for _, _, v in series]):
            return None
        return program, [row["device"] for row in rows]

    def close(self) -> None:
        super().close()
        for pf in self._nohandler.values():
            if pf is not None:
                pf.close()
        self._nohandler.clear()


# The net array's fields and their columns of /proc/net/dev.
_ROW_COLUMNS = (("rx_bytes", 0), ("tx_bytes", 8), ("rx_packets", 1), ("tx_packets", 9), ("rx_errors", 2),
                ("tx_errors", 10), ("rx_dropped", 3), ("tx_dropped", 11))


def _row(name: str, v: list[int]) -> dict:
    """The net array's row of an interface, from its /proc/net/dev columns."""
    return {"device": name, **{key: v[column] for key, column in _ROW_COLUMNS}}

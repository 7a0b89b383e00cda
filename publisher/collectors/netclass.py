"""/sys/class/net/<iface>: node_exporter's ``netclass`` collector (every interface, loopback included).

What changes with the link's state (operstate, carrier and its change
counters, dormant) is read from kept-open files every sample; the properties
that change only on reconfiguration (address, MTU, speed, duplex, queue
length, flags, ids...) are re-read every ``PROPERTIES_REFRESH_SECONDS``
(and at once for a new interface).  An attribute the driver cannot report
(``speed`` of a down link: EINVAL) is absent, as in node_exporter.
"""

from __future__ import annotations

import os
import re
import time

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import (
    Collector,
    Context,
    ProcFile,
    Sample,
    counter,
    gauge,
    read_once,
    register,
    same_file,
)
from shm_metrics.publisher.collectors.learned import LearnedGroup
from shm_metrics.publisher.collectors.numbers import Block

PROPERTIES_REFRESH_SECONDS = 30.0

UP = gauge("node_network_up", "Value is 1 if operstate is 'up', 0 otherwise.", "device")
INFO = gauge("node_network_info", "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
             "device", "address", "broadcast", "duplex", "operstate", "ifalias")


def _property(name: str, kind=gauge):
    return kind(f"node_network_{name}", f"Network device property: {name}", "device")


# (family, sysfs attribute, read every sample?)
_NUMERIC = (
    (_property("address_assign_type"), "addr_assign_type", False),
    (_property("carrier"), "carrier", True),
    (_property("carrier_changes_total", counter), "carrier_changes", True),
    (_property("carrier_up_changes_total", counter), "carrier_up_count", True),
    (_property("carrier_down_changes_total", counter), "carrier_down_count", True),
    (_property("device_id"), "dev_id", False),
    (_property("dormant"), "dormant", True),
    (_property("flags"), "flags", False),
    (_property("iface_id"), "ifindex", False),
    (_property("iface_link"), "iflink", False),
    (_property("iface_link_mode"), "link_mode", False),
    (_property("mtu_bytes"), "mtu", False),
    (_property("name_assign_type"), "name_assign_type", False),
    (_property("net_dev_group"), "netdev_group", False),
    (_property("speed_bytes"), "speed", False),
    (_property("transmit_queue_length"), "tx_queue_len", False),
    (_property("protocol_type"), "type", False),
)
_STRINGS = ("address", "broadcast", "duplex", "ifalias")


def _number(text: str | bytes | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


_DYNAMIC = tuple(a for _, a, dynamic in _NUMERIC if dynamic)


class _Interface:
    """One interface's kept-open operstate, its other dynamic attributes (read as one group:
    collectors/learned.py) and its cached properties."""

    def __init__(self, name: str, path: str, ignore_invalid_speed: bool):
        self.name = name
        self.path = path
        self.ignore_invalid_speed = ignore_invalid_speed
        self.operstate = ProcFile(f"{path}/operstate", whole=True)  # OSError: no interface there (any more)
        files = []
        self.present: tuple[str, ...] = ()  # the dynamic attributes this interface has, in the group's order
        for attr in _DYNAMIC:
            try:
                files.append(ProcFile(f"{path}/{attr}", whole=True))
                self.present += (attr,)
            except OSError:
                pass
        self.group = LearnedGroup(files, self._rows) if files else None
        self.state = ""  # operstate as last read (the group's context, with the properties' version)
        self.refreshed = -1e18
        self.version = 0  # bumped when a refresh finds other properties: a learned program serves one version
        self.strings: dict[str, str] = {}
        self.numbers: dict[str, int | None] = {}

    def current(self) -> bool:
        """Read operstate; False when it cannot be read because this is not the interface any more: deleted,
        or deleted and made again under its name (a VPN's tun0 reconnecting, docker0 after a restart), whose
        kept files all answer ENODEV."""
        try:
            self.state = self.operstate.read().strip()
        except OSError:
            if not os.path.lexists(self.path) or not same_file(self.operstate):
                return False
            self.state = ""
        return True

    def refresh(self, now: float) -> None:
        if now - self.refreshed < PROPERTIES_REFRESH_SECONDS:
            return
        self.refreshed = now
        strings = {a: (read_once(f"{self.path}/{a}") or "").strip() for a in _STRINGS}
        numbers = {a: _number(read_once(f"{self.path}/{a}")) for _, a, dynamic in _NUMERIC if not dynamic}
        if (strings, numbers) != (self.strings, self.numbers):
            self.strings, self.numbers = strings, numbers
            self.version += 1

    def rows(self) -> list[tuple[FamilyInfo, tuple[str, ...], float]] | Block:
        """This interface's series now (after ``current``; its operstate and properties: the group's context)."""
        if self.group is None:
            return self._rows([])
        return self.group.rows((self.state, self.version))

    def _rows(self, texts: list[str | None]) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        """The series from the dynamic attributes' texts (None: unreadable now, as a down link's carrier)."""
        read = dict(zip(self.present, (None if t is None else t.strip() for t in texts)))
        operstate = self.state
        name = self.name
        labels = (name,)
        s = self.strings
        rows = [(UP, labels, 1 if operstate == "up" else 0),
                (INFO, (name, s["address"], s["broadcast"], s["duplex"], operstate, s["ifalias"]), 1)]
        for family, attr, dynamic in _NUMERIC:
            value = _number(read.get(attr)) if dynamic else self.numbers.get(attr)
            if value is None:
                continue
            if attr == "speed":
                if value < 0 and self.ignore_invalid_speed:
                    continue
                value = value * 1000 * 1000 // 8  # Mbit/s to bytes/s; -1 (unknown) stays negative, as there
            rows.append((family, labels, value))
        return rows

    def close(self) -> None:
        self.operstate.close()
        if self.group is not None:
            for pf in self.group.files:
                pf.close()


@register
class Netclass(Collector):
    name = "netclass"
    reports = ("netclass",)
    families = (UP, INFO, *(fam for fam, _, _ in _NUMERIC))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = f"{ctx.sysfs}/class/net"
        os.listdir(self._root)  # unavailable without sysfs
        self._interfaces: dict[str, _Interface] = {}
        self._ignored = re.compile(ctx.text_option("netclass.ignored-devices", "^$"))
        self._ignore_invalid_speed = bool(ctx.option("netclass.ignore-invalid-speed", False))

    def _devices(self) -> list[str]:
        # Interfaces are directories (symlinks to them); bonding_masters is a plain file beside them.
        with os.scandir(self._root) as entries:
            return sorted(e.name for e in entries
                          if not e.is_file(follow_symlinks=False) and not self._ignored.search(e.name))

    def collect(self, out: Sample) -> None:
        now = time.monotonic()
        names = self._devices()
        for gone in [n for n in self._interfaces if n not in names]:
            self._interfaces.pop(gone).close()
        for name in names:
            iface = self._interface(name)
            if iface is None:
                continue  # deleted since the listing: no half-empty series
            iface.refresh(now)
            out.extend(iface.rows())

    def _interface(self, name: str) -> _Interface | None:
        """The interface under ``name`` now, its operstate read: made again when the one kept is not it any
        more; None when there is none."""
        iface = self._interfaces.get(name)
        if iface is not None:
            if iface.current():
                return iface
            self._interfaces.pop(name).close()
        try:
            iface = _Interface(name, f"{self._root}/{name}", self._ignore_invalid_speed)
        except OSError:
            return None
        if not iface.current():
            iface.close()
            return None
        self._interfaces[name] = iface
        return iface

    def close(self) -> None:
        super().close()
        for iface in self._interfaces.values():
            iface.close()
        self._interfaces.clear()

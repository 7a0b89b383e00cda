"""systemd units through D-Bus: node_exporter's ``systemd`` collector (off by default).

Asks systemd's manager (org.freedesktop.systemd1 on the system bus) for its
version, its units (ListUnits) and, per unit, the properties node_exporter
exports, with jeepney (a pure-Python D-Bus protocol library, no C parts and
no other dependency; the connection is kept open and made again after an
error).  The bus is the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` or
/run/dbus/system_bus_socket); the option ``systemd.bus-address`` names
another one (tests run a private bus).

Options, as node_exporter's flags:

* ``systemd.unit-include`` (default ``.+``) and ``systemd.unit-exclude``
  (default ``.+\\.(automount|device|mount|scope|slice)``): whole-name
  regular expressions choosing the loaded units that get per-unit series;
  ``node_systemd_units`` counts every unit;
* ``systemd.enable-restarts-metrics``, ``systemd.enable-task-metrics``,
  ``systemd.enable-start-time-metrics``: the optional per-unit families.
"""

from __future__ import annotations

import re
import string

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register

UNIT_STATE = gauge("node_systemd_unit_state", "Systemd unit", "name", "state", "type")
START_TIME = gauge("node_systemd_unit_start_time_seconds", "Start time of the unit since unix epoch in seconds.",
                   "name")
TASKS_CURRENT = gauge("node_systemd_unit_tasks_current", "Current number of tasks per Systemd unit", "name")
TASKS_MAX = gauge("node_systemd_unit_tasks_max", "Maximum number of tasks per Systemd unit", "name")
SYSTEM_RUNNING = gauge("node_systemd_system_running",
                       "Whether the system is operational (see 'systemctl is-system-running')")
UNITS = gauge("node_systemd_units", "Summary of systemd unit states", "state")
RESTARTS = counter("node_systemd_service_restart_total", "Service unit count of Restart triggers", "name")
TIMER_LAST_TRIGGER = gauge("node_systemd_timer_last_trigger_seconds", "Seconds since epoch of last trigger.", "name")
SOCKET_ACCEPTED = counter("node_systemd_socket_accepted_connections_total",
                          "Total number of accepted socket connections", "name")
SOCKET_CURRENT = gauge("node_systemd_socket_current_connections", "Current number of socket connections", "name")
# A gauge in node_exporter despite its name.
SOCKET_REFUSED = gauge("node_systemd_socket_refused_connections_total", "Total number of refused socket connections",
                       "name")
VERSION = gauge("node_systemd_version", "Detected systemd version", "version")

UNIT_STATES = ("active", "activating", "deactivating", "inactive", "failed")
DEFAULT_EXCLUDE = r".+\.(automount|device|mount|scope|slice)"
# Below this version systemd has no SystemState nor timer trigger times.
MIN_VERSION_SYSTEM_STATE = 212
_VERSION = re.compile(r"[0-9]{3,}(\.[0-9]+)?")
_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_NO_TASK_LIMIT = 2**64 - 1  # systemd's "infinity" for TasksCurrent/TasksMax
_CALL_TIMEOUT_SECONDS = 10.0
_PATH_CHARACTERS = frozenset(string.ascii_letters + string.digits)


def unit_path(name: str) -> str:
    """The object path systemd gives a unit: every byte but letters and (not leading) digits as _xx."""
    if not name:
        return f"{_MANAGER_PATH}/unit/_"
    escaped = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        escaped.append(char if char in _PATH_CHARACTERS and not (i == 0 and char.isdigit()) else f"_{byte:02x}")
    return f"{_MANAGER_PATH}/unit/{''.join(escaped)}"


def parse_version(text: str) -> tuple[float, str]:
    """(number, full text) of systemd's Version property ("252.6-1" -> 252.6); (0, "") when it has none."""
    match = _VERSION.search(text)
    return (float(match.group(0)), text) if match else (0.0, "")


class _Bus:
    """A kept-open connection to systemd's manager: property reads and ListUnits."""

    def __init__(self, address: str):
        from jeepney.io.blocking import open_dbus_connection

        self.conn = open_dbus_connection(bus=address)

    def call(self, path: str, interface: str, method: str, signature: str = "", body: tuple = ()) -> tuple:
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import unwrap_msg

        message = new_method_call(DBusAddress(path, bus_name=_SYSTEMD, interface=interface), method, signature, body)
        return unwrap_msg(self.conn.send_and_get_reply(message, timeout=_CALL_TIMEOUT_SECONDS))

    def get(self, path: str, interface: str, name: str):
        """One property's value (jeepney gives a variant as (signature, value))."""
        return self.call(path, "org.freedesktop.DBus.Properties", "Get", "ss", (interface, name))[0][1]

    def list_units(self) -> list[tuple]:
        """(name, description, load state, active state, sub state, ...) per unit systemd has loaded."""
        return self.call(_MANAGER_PATH, f"{_SYSTEMD}.Manager", "ListUnits")[0]

    def close(self) -> None:
        self.conn.close()


def _flag(value: object) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes")


@register
class Systemd(Collector):
    name = "systemd"
    reports = ("systemd",)
    default_enabled = False
    families = (UNIT_STATE, START_TIME, TASKS_CURRENT, TASKS_MAX, SYSTEM_RUNNING, UNITS, RESTARTS,
                TIMER_LAST_TRIGGER, SOCKET_ACCEPTED, SOCKET_CURRENT, SOCKET_REFUSED, VERSION)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        try:
            import jeepney  # noqa: F401
        except ImportError as exc:
            raise LookupError(f"systemd collector needs the jeepney D-Bus library: {exc}") from None
        self._address = str(ctx.option("systemd.bus-address") or "SYSTEM")
        self._include = re.compile(f"^(?:{ctx.option('systemd.unit-include', '.+')})$")
        self._exclude = re.compile(f"^(?:{ctx.option('systemd.unit-exclude', DEFAULT_EXCLUDE)})$")
        self._restarts = _flag(ctx.option("systemd.enable-restarts-metrics", False))
        self._tasks = _flag(ctx.option("systemd.enable-task-metrics", False))
        self._start_time = _flag(ctx.option("systemd.enable-start-time-metrics", False))
        try:
            self._bus: _Bus | None = _Bus(self._address)
        except OSError as exc:  # no bus (no systemd either): unavailable, saying where it looked
            where = "the system bus" if self._address == "SYSTEM" else self._address
            raise OSError(f"no D-Bus connection to {where}: {exc}") from None

    def collect(self, out: Sample) -> None:
        if self._bus is None:
            self._bus = _Bus(self._address)
        from jeepney import DBusErrorResponse

        try:
            self._collect(self._bus, out)
        except (OSError, ValueError, DBusErrorResponse) as exc:
            # A broken connection (systemd or the bus restarted): a new one next sample.  The sampler
            # counts OSError as this collector's failure.
            self._bus.close()
            self._bus = None
            if isinstance(exc, DBusErrorResponse):
                raise OSError(f"systemd: {exc}") from None
            raise

    def _property(self, bus: _Bus, unit: str, interface: str, name: str):
        """A unit's property, or None when systemd does not answer it (node_exporter skips the series)."""
        from jeepney import DBusErrorResponse

        try:
            return bus.get(unit_path(unit), f"{_SYSTEMD}.{interface}", name)
        except DBusErrorResponse:
            return None

    def _collect(self, bus: _Bus, out: Sample) -> None:
        from jeepney import DBusErrorResponse

        add = out.add
        try:
            version, version_text = parse_version(str(bus.get(_MANAGER_PATH, f"{_SYSTEMD}.Manager", "Version")))
        except DBusErrorResponse:
            version, version_text = 0.0, ""
        add(VERSION, (version_text,), version)

        units = bus.list_units()
        summary = dict.fromkeys(UNIT_STATES, 0)
        for unit in units:
            summary[unit[3]] = summary.get(unit[3], 0) + 1
        for state, count in summary.items():
            add(UNITS, (state,), count)

        chosen = [(name, active) for name, _, load, active, *_ in units
                  if load == "loaded" and self._include.match(name) and not self._exclude.match(name)]
        for name, active in chosen:
            kind = name.rpartition(".")[2]
            unit_type = ""
            if kind in ("service", "mount"):
                unit_type = str(self._property(bus, name, kind.capitalize(), "Type") or "")
            for state in UNIT_STATES:
                add(UNIT_STATE, (name, state, unit_type), 1 if state == active else 0)
            if kind == "service" and self._restarts:
                restarts = self._property(bus, name, "Service", "NRestarts")
                if restarts is not None:
                    add(RESTARTS, (name,), restarts)
            if self._start_time:
                self._add_start_time(bus, out, name, active)
            if kind == "service" and self._tasks:
                for family, prop in ((TASKS_CURRENT, "TasksCurrent"), (TASKS_MAX, "TasksMax")):
                    value = self._property(bus, name, "Service", prop)
                    if value is not None and value != _NO_TASK_LIMIT:
                        add(family, (name,), value)
            if kind == "timer" and version >= MIN_VERSION_SYSTEM_STATE:
                trigger = self._property(bus, name, "Timer", "LastTriggerUSec")
                if trigger is not None:
                    add(TIMER_LAST_TRIGGER, (name,), trigger / 1e6)
            if kind == "socket":
                self._add_socket(bus, out, name)
        if version >= MIN_VERSION_SYSTEM_STATE:
            state = bus.get(_MANAGER_PATH, f"{_SYSTEMD}.Manager", "SystemState")
            add(SYSTEM_RUNNING, (), 1 if state == "running" else 0)

    def _add_start_time(self, bus: _Bus, out: Sample, name: str, active: str) -> None:
        if active != "active":
            out.add(START_TIME, (name,), 0)
            return
        entered = self._property(bus, name, "Unit", "ActiveEnterTimestamp")
        if entered is not None:
            out.add(START_TIME, (name,), entered / 1e6)

    def _add_socket(self, bus: _Bus, out: Sample, name: str) -> None:
        # node_exporter stops at the first count systemd does not answer: refused only after the other two.
        for family, prop in ((SOCKET_ACCEPTED, "NAccepted"), (SOCKET_CURRENT, "NConnections"),
                             (SOCKET_REFUSED, "NRefused")):
            value = self._property(bus, name, "Socket", prop)
            if value is None:
                return
            out.add(family, (name,), value)

    def close(self) -> None:
        super().close()
        if self._bus is not None:
            self._bus.close()
            self._bus = None

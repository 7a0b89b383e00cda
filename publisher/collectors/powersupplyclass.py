"""/sys/class/power_supply: node_exporter's ``powersupplyclass`` collector (batteries, AC adapters, UPS).

Every sample lists the supplies and their attribute files (they come and go
with USB supplies and docking; one unplugged while it is read is left out) and reads them through files kept open while
they exist.  Numeric attributes become node_power_supply_<name> (micro-units
as units, tenths of a degree as degrees); the text ones label
node_power_supply_info, which carries only the labels a supply has, as
node_exporter's does.  ``powersupply.ignored-supplies`` (a regex, default
``^$``) leaves supplies out.  Without the class directory the collector is
unavailable, as there.
"""

from __future__ import annotations

import errno
import os
import re
from functools import partial

from shm_metrics.families import ABSENT_LABEL
from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, read_file, register
from shm_metrics.publisher.collectors.sysfs_util import SYSFS_READ_SIZE, go_text


def _family(name: str):
    return gauge(f"node_power_supply_{name}", f"{name} value of /sys/class/power_supply/<power_supply>.",
                 "power_supply")


# attribute file -> (family, divisor)
_PLAIN = {"authentic": "authentic", "calibrate": "calibrate", "capacity": "capacity",
          "capacity_alert_max": "capacity_alert_max", "capacity_alert_min": "capacity_alert_min",
          "cycle_count": "cyclecount", "online": "online", "present": "present",
          "time_to_empty_now": "time_to_empty_seconds", "time_to_full_now": "time_to_full_seconds"}
_MICRO = {"current_boot": "current_boot", "current_max": "current_max", "current_now": "current_ampere",
          "energy_empty": "energy_empty", "energy_empty_design": "energy_empty_design", "energy_full": "energy_full",
          "energy_full_design": "energy_full_design", "energy_now": "energy_watthour",
          "voltage_boot": "voltage_boot", "voltage_max": "voltage_max", "voltage_max_design": "voltage_max_design",
          "voltage_min": "voltage_min", "voltage_min_design": "voltage_min_design", "voltage_now": "voltage_volt",
          "voltage_ocv": "voltage_ocv", "charge_control_limit": "charge_control_limit",
          "charge_control_limit_max": "charge_control_limit_max", "charge_counter": "charge_counter",
          "charge_empty": "charge_empty", "charge_empty_design": "charge_empty_design",
          "charge_full": "charge_full", "charge_full_design": "charge_full_design", "charge_now": "charge_ampere",
          "charge_term_current": "charge_term_current", "constant_charge_current": "constant_charge_current",
          "constant_charge_current_max": "constant_charge_current_max",
          "constant_charge_voltage": "constant_charge_voltage",
          "constant_charge_voltage_max": "constant_charge_voltage_max", "precharge_current": "precharge_current",
          "input_current_limit": "input_current_limit", "power_now": "power_watt"}
_TENTHS = {"temp": "temp_celsius", "temp_alert_max": "temp_alert_max_celsius",
           "temp_alert_min": "temp_alert_min_celsius", "temp_ambient": "temp_ambient_celsius",
           "temp_ambient_max": "temp_ambient_max_celsius", "temp_ambient_min": "temp_ambient_min_celsius",
           "temp_max": "temp_max_celsius", "temp_min": "temp_min_celsius"}
NUMERIC = {attr: (_family(name), divisor)
           for table, divisor in ((_PLAIN, 1), (_MICRO, 1e6), (_TENTHS, 10.0)) for attr, name in table.items()}
# Attributes parsed as numbers without a family of their own (averages): a bad value still fails the sample.
_PARSED_ONLY = ("charge_avg", "current_avg", "energy_avg", "power_avg", "time_to_empty_avg", "time_to_full_avg",
                "voltage_avg")
TEXT_ATTRIBUTES = ("capacity_level", "charge_type", "health", "manufacturer", "model_name", "serial_number",
                   "status", "technology", "type", "usb_type", "scope")
INFO = gauge("node_power_supply_info", "info of /sys/class/power_supply/<power_supply>.",
             "power_supply", *TEXT_ATTRIBUTES)
# Read errors that mean "this driver has no such value now": the attribute is skipped, as in procfs.
_SKIPPED_ERRORS = (errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL)


def _attribute(raw: bytes) -> str:
    """One short read, blanks trimmed, as procfs's SysReadFile."""
    return go_text(raw[:SYSFS_READ_SIZE]).strip()


def _supply_rows(supply: str, path: str, names: tuple[str, ...], texts: list[str | None]) -> list[tuple]:
    """A supply's series from its attributes' texts (None: unreadable now: read again for the error, which
    skips the attribute when the driver has no such value now and fails the sample otherwise)."""
    values = {}
    for name, text in zip(names, texts):
        if text is None:
            try:
                text = _attribute(read_file(f"{path}/{name}"))
            except OSError as exc:
                if exc.errno in _SKIPPED_ERRORS:
                    continue
                raise
        values[name] = text
    rows = []
    labels = (supply,)
    for attr, text in values.items():
        spec = NUMERIC.get(attr)
        if spec is None and attr not in _PARSED_ONLY:
            continue
        number = int(text, 0)  # ValueError fails the sample, as procfs's parse error does
        if spec is not None:
            family, divisor = spec
            rows.append((family, labels, number / divisor if divisor != 1 else number))
    info = tuple(values.get(attr) or ABSENT_LABEL for attr in TEXT_ATTRIBUTES)
    rows.append((INFO, (supply, *info), 1))
    return rows


@register
class PowerSupplyClass(Collector):
    name = "powersupplyclass"
    reports = ("powersupplyclass",)
    families = (*sorted({fam for fam, _ in NUMERIC.values()}, key=lambda f: f.name), INFO)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = os.path.join(ctx.sysfs, "class", "power_supply")
        os.listdir(self._root)  # no power_supply class: unavailable, as there
        self._ignored = re.compile(str(ctx.option("powersupply.ignored-supplies", "^$")))
        self._files = self.learned_paths()

    def collect(self, out: Sample) -> None:
        parts = []
        try:
            for supply in os.listdir(self._root):
                path = os.path.join(self._root, supply)
                try:
                    with os.scandir(path) as entries:
                        names = tuple(e.name for e in entries if e.is_file(follow_symlinks=False))
                    # Every attribute in one C call, learned (collectors/learned.py); the listing decides which.
                    supply_rows = self._files.group_rows(tuple(f"{path}/{name}" for name in names),
                                                         partial(_supply_rows, supply, path, names),
                                                         decode=_attribute)
                except OSError:
                    if not os.path.lexists(path):
                        continue  # unplugged between the listing and the reads
                    raise
                if not self._ignored.search(supply):  # (read first, as procfs reads every supply)
                    parts.append(supply_rows)
        finally:
            self._files.sweep()
        for supply_rows in parts:
            out.extend(supply_rows)


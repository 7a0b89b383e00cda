"""/sys/class/hwmon: node_exporter's ``hwmon`` collector (chips' temperatures, voltages, fans, power...).

Every attribute file ``<type><n>_<property>`` of a known sensor type, in the
chip's directory and in its ``device`` directory, becomes one series of a
family named from the type and the property (``temp1_input`` ->
node_hwmon_temp_celsius, ``fan2_min`` -> node_hwmon_fan_min_rpm, a property
without a unit of its own -> node_hwmon_<type>_<property>).  The chips and
their attribute files are found when the collector starts and again every
``rescan_seconds`` (a chip that appears declares the families no chip had:
the catalog grows) and the files stay open: a sample is one pread per
attribute.  The chip label is the stable name node_exporter derives (bus and
device of the ``device`` link, else the ``name`` file, else ``hwmonN``);
sensor labels (``*_label``) are read once, when the chip is found.
"""

from __future__ import annotations

import os
import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, gauge, read_once, register
from shm_metrics.publisher.collectors.learned import LearnedGroup
from shm_metrics.publisher.collectors.sysfs_util import SYSFS_READ_SIZE, go_float, go_text, sys_read_raw

_INVALID_CHARS = re.compile(r"[^a-z0-9:_]")
_FILENAME = re.compile(r"^([^0-9]+)([0-9]*)?(_(.+))?$")
SENSOR_TYPES = frozenset(("vrm", "beep_enable", "update_interval", "in", "cpu", "fan", "pwm", "temp", "curr",
                          "power", "energy", "humidity", "intrusion"))

CHIP_NAMES = gauge("node_hwmon_chip_names", "Annotation metric for human-readable chip names", "chip", "chip_name")
SENSOR_LABEL = gauge("node_hwmon_sensor_label", "Label for given chip and sensor", "chip", "sensor", "label")


def clean_name(name: str) -> str:
    """Lower case, anything but [a-z0-9:_] as '_', no '_' at the ends (chip names and property suffixes)."""
    return _INVALID_CHARS.sub("_", name.lower()).strip("_")


def split_filename(filename: str) -> tuple[str, str, str | None] | None:
    """``temp1_crit_alarm`` -> ("temp", "temp1", "crit_alarm"); None for a name that is not an attribute."""
    match = _FILENAME.match(filename)
    if match is None:
        return None
    sensor_type, number, _, prop = match.groups()
    return sensor_type, sensor_type + str(int(number) if number else 0), prop or ""


def chip_label(path: str) -> str | None:
    """The chip label: <bus>_<device> of the ``device`` link, else the ``name`` file, else hwmonN."""
    try:
        device = os.path.realpath(os.path.join(path, "device"), strict=True)
    except OSError:
        device = None
    if device is not None:
        prefix, dev_name = os.path.split(device)
        dev_type = os.path.basename(prefix.rstrip("/"))
        dev_name, dev_type = clean_name(dev_name), clean_name(dev_type)
        if dev_type and dev_name:
            return f"{dev_type}_{dev_name}"
        if dev_name:
            return dev_name
    name = read_once(os.path.join(path, "name"))
    if name and clean_name(name):
        return clean_name(name)
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return None
    return clean_name(os.path.basename(real)) or None


def sensor_family(sensor_type: str, element: str, has_plain_value: bool) -> tuple[FamilyInfo, float] | None:
    """The family of one sensor property and the factor its raw value is multiplied by (None: not exported).

    ``has_plain_value``: the sensor also has a file without a property (``pwm1``), so ``*_input`` is named
    ``..._input``.
    """
    labels = ("chip", "sensor")
    if sensor_type == "beep_enable":
        return None  # handled per sensor: 1 only for the text "1"
    if sensor_type == "vrm":
        return (gauge("node_hwmon_voltage_regulator_version", "Hardware voltage regulator", *labels), 1.0) \
            if element == "" else None
    if sensor_type == "update_interval":
        return (gauge("node_hwmon_update_interval_seconds", "Hardware monitor update interval", *labels), 0.001) \
            if element == "" else None
    name = f"node_hwmon_{sensor_type}"
    if element == "input":
        if has_plain_value:
            name += "_input"
    elif element != "":
        name += "_" + clean_name(element)
    if element in ("fault", "alarm"):
        return gauge(name, f"Hardware sensor {element} status ({sensor_type})", *labels), 1.0
    if element == "beep":
        return gauge(name + "_enabled", "Hardware monitor sensor has beeping enabled", *labels), 1.0
    if sensor_type in ("in", "cpu"):
        return gauge(name + "_volts", f"Hardware monitor for voltage ({element})", *labels), 0.001
    if sensor_type == "temp" and element != "type":
        shown = element or "input"
        return gauge(name + "_celsius", f"Hardware monitor for temperature ({shown})", *labels), 0.001
    if sensor_type == "curr":
        return gauge(name + "_amps", f"Hardware monitor for current ({element})", *labels), 0.001
    if sensor_type == "energy":
        return counter(name + "_joule_total", f"Hardware monitor for joules used so far ({element})",
                       *labels), 1e-6
    if sensor_type == "power":
        if element == "accuracy":
            return gauge(name, "Hardware monitor power meter accuracy, as a ratio", *labels), 1e-6
        if element in ("average_interval", "average_interval_min", "average_interval_max"):
            return gauge(name + "_seconds", f"Hardware monitor power usage update interval ({element})",
                         *labels), 0.001
        return gauge(name + "_watt", f"Hardware monitor for power usage in watts ({element})", *labels), 1e-6
    if sensor_type == "humidity":
        return gauge(name, "Hardware monitor for humidity, as a ratio (multiply with 100.0 to get the humidity "
                     f"as a percentage) ({element})", *labels), 1e-6
    if sensor_type == "fan" and element in ("input", "min", "max", "target"):
        return gauge(name + "_rpm", f"Hardware monitor for fan revolutions per minute ({element})", *labels), 1.0
    return gauge(name, f"Hardware monitor {sensor_type} element {element}", *labels), 1.0


BEEP_ENABLED = gauge("node_hwmon_beep_enabled", "Hardware beep enabled", "chip", "sensor")


def _sensor_files(path: str) -> dict[str, dict[str, str]]:
    """sensor ("temp1") -> property ("input", "" for the plain value) -> file, for known sensor types."""
    found: dict[str, dict[str, str]] = {}
    for directory in (path, os.path.join(path, "device")):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for filename in names:
            parts = split_filename(filename)
            if parts is None or parts[0] not in SENSOR_TYPES:
                continue
            _, sensor, prop = parts
            found.setdefault(sensor, {})[prop] = os.path.join(directory, filename)
    return found


class _Chip:
    """One chip: its constant series (names, sensor labels) and its kept-open attribute files."""

    __slots__ = ("constant", "readings")

    def __init__(self) -> None:
        self.constant: list[tuple[FamilyInfo, tuple[str, ...]]] = []
        # (family, labels, file, factor, beep_enable?)
        self.readings: list[tuple[FamilyInfo, tuple[str, str], ProcFile, float, bool]] = []


def _reading_text(raw: bytes) -> str:
    """At most SYSFS_READ_SIZE bytes of a reading, as one read of that size gives them."""
    return raw[:SYSFS_READ_SIZE].decode("utf-8", "replace")


@register
class Hwmon(Collector):
    name = "hwmon"
    reports = ("hwmon",)
    described = (("node_hwmon_<type>_<property>[_<unit>]", "gauge", "chip, sensor",
                  "one family per sensor type and attribute the chips have (temp -> _celsius, in/cpu -> _volts, "
                  "fan input/min/max/target -> _rpm, curr -> _amps, power -> _watt, energy -> _joule_total, "
                  "alarm/fault, beep -> _enabled)"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        # One HELP per name, the first sensor's (the Go client would refuse a second one); kept across
        # rescans, so a chip plugged in later declares only the families no chip had.
        self._rows: list | None = None  # the chips the flattened lists below were built from
        self._constant: list[tuple[FamilyInfo, tuple[str, ...], float]] = []
        self._readings: list[tuple[str, FamilyInfo, tuple[str, str], ProcFile, float, bool]] = []
        self._group: LearnedGroup | None = None
        # No hwmon class: not available, as there.
        self._chips = self.devices(os.path.join(ctx.sysfs, "class", "hwmon"), self._chip)


    def _chip(self, entry: str, path: str, opener) -> _Chip | None:
        if not os.path.isdir(path):
            return None
        chip = chip_label(path)
        if chip is None:
            return None
        found = _Chip()
        human = read_once(os.path.join(path, "name"))
        if human and clean_name(human):
            found.constant.append((self.declare(CHIP_NAMES), (chip, clean_name(human))))
        for sensor, props in _sensor_files(path).items():
            sensor_type = split_filename(sensor)[0]
            labels = (chip, sensor)
            if "label" in props:
                raw = sys_read_raw(props["label"])
                if raw is not None:
                    found.constant.append((self.declare(SENSOR_LABEL), (chip, sensor, go_text(raw).strip("\n"))))
            for element, file in sorted(props.items()):
                if element == "label":
                    continue
                if sensor_type == "beep_enable":
                    if element == "":
                        self._keep(found, opener, self.declare(BEEP_ENABLED), labels, file, 1.0, True)
                    continue
                spec = sensor_family(sensor_type, element, "" in props)
                if spec is not None:
                    self._keep(found, opener, self.declare(spec[0]), labels, file, spec[1], False)
        return found

    @staticmethod
    def _keep(chip: _Chip, opener, family: FamilyInfo, labels: tuple[str, str], path: str, factor: float,
              is_beep: bool) -> None:
        try:
            pf = opener(path)
        except OSError:  # not readable (write-only attributes): never exported
            return
        chip.readings.append((family, labels, pf, factor, is_beep))

    def _flatten(self, rows: list[tuple[str, _Chip]]) -> None:
        """The series of every chip in one list; two chips with one label: the first one's series."""
        seen: set[tuple[str, tuple[str, ...]]] = set()
        self._constant, self._readings = [], []
        for entry, chip in rows:
            for family, labels in chip.constant:
                if (family.name, labels) not in seen:
                    seen.add((family.name, labels))
                    self._constant.append((family, labels, 1))
            for family, labels, pf, factor, is_beep in chip.readings:
                if (family.name, labels) not in seen:
                    seen.add((family.name, labels))
                    self._readings.append((entry, family, labels, pf, factor, is_beep))
        self._rows = rows
        # Every reading in one C call, learned as one program (collectors/learned.py); none while a reading
        # fails, so that each failure asks whether its chip went away.
        self._group = (LearnedGroup([pf for _, _, _, pf, _, _ in self._readings], self._reading_rows,
                                    learn_unreadable=False, decode=_reading_text) if self._readings else None)

    def collect(self, out: Sample) -> None:
        rows = self._chips.current()
        if rows is not self._rows:
            self._flatten(rows)
        out.extend(self._group.rows() if self._group is not None else self._constant)

    def _reading_rows(self, texts: list[str | None]) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        """The series of the readings' texts (None: the read failed), after the constant ones."""
        rows = list(self._constant)
        for (entry, family, labels, _, factor, is_beep), text in zip(self._readings, texts):
            if text is None:
                self._chips.gone(entry)  # unplugged or reloaded: dropped, built again if it is there
                continue
            text = text.strip("\n")
            if is_beep:
                rows.append((family, labels, 1 if text == "1" else 0))
                continue
            value = go_float(text)
            if value is not None:
                rows.append((family, labels, value * factor if factor != 1.0 else value))
        return rows

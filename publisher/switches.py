"""node_exporter 1.5.0's collector flags on shm-publisher: switches, per-collector options, refusals.

``--collector.<name>`` / ``--no-collector.<name>`` switch a collector on or off,
``--collector.disable-defaults`` switches off every collector not named
explicitly (either way) on the command line: node_exporter 1.5.0's semantics.
Per-collector options (``--collector.<name>.<option>``) are parsed into the
``options`` dict the Sampler hands to each collector's ``Context`` (key: the
flag without ``--collector.``; value: bool, str, or list of str for the
repeatable ones), and the device/filesystem filters node_exporter names this
way map onto the publisher's ``Filters``.

What node_exporter has and this publisher does not is refused with one line
and exit 2 (never silently ignored): a collector that is not implemented here,
an option of node_exporter not supported here, and the textfile collector,
which runs in shm-exporter (at scrape time, as in node_exporter).
"""

from __future__ import annotations

import argparse
import re
from typing import NamedTuple

from shm_metrics.readers.cliargs import paragraph

# node_exporter 1.5.0's collectors on Linux, with their default switch (collector/*.go, registerCollector).
NODE_EXPORTER_COLLECTORS: dict[str, bool] = {
    "arp": True, "bcache": True, "bonding": True, "btrfs": True, "buddyinfo": False, "cgroups": False,
    "conntrack": True, "cpu": True, "cpufreq": True, "diskstats": True, "dmi": True, "drbd": False, "drm": False,
    "edac": True, "entropy": True, "ethtool": False, "fibrechannel": True, "filefd": True, "filesystem": True,
    "hwmon": True, "infiniband": True, "interrupts": False, "ipvs": True, "ksmd": False, "lnstat": False,
    "loadavg": True, "logind": False, "mdadm": True, "meminfo": True, "meminfo_numa": False, "mountstats": False,
    "netclass": True, "netdev": True, "netstat": True, "network_route": False, "nfs": True, "nfsd": True,
    "ntp": False, "nvme": True, "os": True, "perf": False, "powersupplyclass": True, "pressure": True,
    "processes": False, "qdisc": False, "rapl": True, "runit": False, "schedstat": True, "selinux": True,
    "slabinfo": False, "sockstat": True, "softnet": True, "stat": True, "supervisord": False, "sysctl": False,
    "systemd": False, "tapestats": True, "tcpstat": False, "textfile": True, "thermal_zone": True, "time": True,
    "timex": True, "udp_queues": True, "uname": True, "vmstat": True, "wifi": False, "xfs": True, "zfs": True,
    "zoneinfo": False,
}

# Where this publisher's default differs from node_exporter's, and why (--help and README say it too).
# None: node_processes_pids, _threads and the --top scan's counts by state are published whatever the
# switch says (layout-only collectors); --collector.processes adds node_exporter's full scan.
ON_HERE_BY_DEFAULT: dict[str, str] = {}

# Collectors node_exporter runs that belong to another program of this project.
ELSEWHERE = {"textfile": "the textfile collector runs in shm-exporter at scrape time: "
                         "give --collector.textfile.directory to shm-exporter"}


class Option(NamedTuple):
    """One node_exporter per-collector option this publisher accepts."""

    flag: str  # node_exporter's flag without "--collector.": the key in Context.options
    kind: type  # bool (a switch, with its --no- form), str, or list (repeatable, each one appended)
    collector: str
    help: str
    regex: bool = False  # checked to compile, so a typo is a usage error and not a failing collector
    filter: str | None = None  # the Filters field it sets, where the publisher already has that filter


# The options node_exporter's end-to-end test passes, and node_exporter's names of the publisher's own filters.
# HELP texts are node_exporter's.
OPTIONS: tuple[Option, ...] = (
    Option("arp.device-include", str, "arp", "Regexp of arp devices to include (mutually exclusive to "
           "device-exclude).", regex=True),
    Option("arp.device-exclude", str, "arp", "Regexp of arp devices to exclude (mutually exclusive to "
           "device-include).", regex=True),
    Option("bcache.priorityStats", bool, "bcache", "Expose expensive priority stats."),
    Option("cpu.info", bool, "cpu", "Enables metric cpu_info"),
    Option("cpu.info.flags-include", str, "cpu", "Filter the `flags` field in cpuInfo with a value that must be "
           "a regular expression", regex=True),
    Option("cpu.info.bugs-include", str, "cpu", "Filter the `bugs` field in cpuInfo with a value that must be "
           "a regular expression", regex=True),
    Option("diskstats.device-exclude", str, "diskstats", "Regexp of diskstats devices to exclude (mutually "
           "exclusive to device-include); same as --disk-exclude", regex=True, filter="disk_exclude"),
    Option("diskstats.device-include", str, "diskstats", "Regexp of diskstats devices to include (mutually "
           "exclusive to device-exclude; given alone it replaces the default exclude)", regex=True,
           filter="disk_include"),
    Option("filesystem.mount-points-exclude", str, "filesystem", "Regexp of mount points to exclude for "
           "filesystem collector; same as --mount-points-exclude", regex=True, filter="mount_point_exclude"),
    Option("filesystem.fs-types-exclude", str, "filesystem", "Regexp of filesystem types to exclude for "
           "filesystem collector; same as --fs-types-exclude", regex=True, filter="fs_type_exclude"),
    Option("netclass.ignored-devices", str, "netclass", "Regexp of net devices to ignore for netclass "
           "collector.", regex=True),
    Option("netclass.ignore-invalid-speed", bool, "netclass", "Ignore devices where the speed is invalid. This "
           "will be the default behavior in 2.x."),
    Option("netdev.device-exclude", str, "netdev", "Regexp of net devices to exclude (mutually exclusive to "
           "device-include); same as --net-exclude", regex=True, filter="net_exclude"),
    Option("netdev.device-include", str, "netdev", "Regexp of net devices to include (mutually exclusive to "
           "device-exclude; given alone it replaces the default exclude)", regex=True, filter="net_include"),
    Option("qdisc.fixtures", str, "qdisc", "test fixtures to use for qdisc collector end-to-end testing"),
    # node_exporter 1.5.0 spells these "qdisk" (qdisc_linux.go), and builds its filter from the exclude flag
    # twice, so the include has no effect there: accepted under its own name for the qdisc collector to read.
    Option("qdisk.device-include", str, "qdisc", "Regexp of qdisk devices to include (mutually exclusive to "
           "device-exclude).", regex=True),
    Option("qdisk.device-exclude", str, "qdisc", "Regexp of qdisk devices to exclude (mutually exclusive to "
           "device-include).", regex=True),
    Option("stat.softirq", bool, "stat", "Export softirq calls per vector"),
    Option("sysctl.include", list, "sysctl", "Select sysctl metrics to include (repeatable)"),
    Option("sysctl.include-info", list, "sysctl", "Select sysctl metrics to include as info metrics "
           "(repeatable)"),
    Option("wifi.fixtures", str, "wifi", "test fixtures to use for wifi collector metrics"),
)
OPTIONS_BY_FLAG = {opt.flag: opt for opt in OPTIONS}

_SWITCHES = "collector_switches"  # namespace attribute: name -> last explicit on/off
_OPTIONS = "collector_options"  # namespace attribute: option flag -> value


class _Switch(argparse.Action):
    """--collector.<name> / --no-collector.<name>: the last one given wins, and the name counts as explicit."""

    def __init__(self, option_strings, dest, collector: str, on: bool, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.collector, self.on = collector, on

    def __call__(self, parser, namespace, values, option_string=None):
        switches = dict(getattr(namespace, _SWITCHES, None) or {})
        switches[self.collector] = self.on
        setattr(namespace, _SWITCHES, switches)


class _OptionValue(argparse.Action):
    def __init__(self, option_strings, dest, option: Option, value: object = None, **kwargs):
        nargs = 0 if option.kind is bool else None
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.option, self.value = option, value

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, _OPTIONS, None) or {})
        opt = self.option
        if opt.kind is bool:
            options[opt.flag] = self.value
        else:
            if opt.regex:
                try:
                    re.compile(values)
                except re.error as exc:
                    parser.error(f"{option_string}: bad regular expression {values!r}: {exc}")
            if opt.kind is list:
                options[opt.flag] = [*options.get(opt.flag, []), values]
            else:
                options[opt.flag] = values
        setattr(namespace, _OPTIONS, options)


def add_arguments(parser: argparse.ArgumentParser, names: dict[str, bool]) -> None:
    """Add the switches of the collectors in ``names`` (name -> on by default) and the options of those
    collectors to ``parser``."""
    parser.set_defaults(**{_SWITCHES: {}, _OPTIONS: {}, "disable_defaults": False})
    group = parser.add_argument_group("collectors", paragraph(
        "node_exporter 1.5.0's switches and default set; --no-collector.<name> turns one off. processes is "
        "off by default, as there: node_processes_pids, _threads and --top's counts by state are published "
        "anyway, and --collector.processes adds node_exporter's full scan of every process and thread."))
    group.add_argument("--collector.disable-defaults", dest="disable_defaults", action="store_true",
                       help="Set all collectors to disabled by default (those named by --collector.<name> or "
                            "--no-collector.<name> keep what they say).")
    for name in sorted(names):
        state = "enabled" if names[name] else "disabled"
        if name in ON_HERE_BY_DEFAULT and names[name] != NODE_EXPORTER_COLLECTORS.get(name):
            state += f"; node_exporter's: {'enabled' if NODE_EXPORTER_COLLECTORS[name] else 'disabled'}"
        group.add_argument(f"--collector.{name}", action=_Switch, collector=name, on=True, dest=argparse.SUPPRESS,
                           help=f"Enable the {name} collector (default: {state}).")
        group.add_argument(f"--no-collector.{name}", action=_Switch, collector=name, on=False,
                           dest=argparse.SUPPRESS, help=argparse.SUPPRESS)
    opts = parser.add_argument_group("collector options", "node_exporter's names and meaning")
    for opt in OPTIONS:
        if opt.filter or opt.collector not in names:
            continue  # the CLI's filter flags carry these; the others are refused with a reason by refusal()
        if opt.kind is bool:
            opts.add_argument(f"--collector.{opt.flag}", action=_OptionValue, option=opt, value=True,
                              dest=argparse.SUPPRESS, help=f"{opt.help} (switch; --no-collector.{opt.flag} off)")
            opts.add_argument(f"--no-collector.{opt.flag}", action=_OptionValue, option=opt, value=False,
                              dest=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            opts.add_argument(f"--collector.{opt.flag}", action=_OptionValue, option=opt, dest=argparse.SUPPRESS,
                              metavar="REGEX" if opt.regex else "VALUE", help=opt.help)


def refusal(argument: str, names: dict[str, bool]) -> str | None:
    """Why ``argument`` (left over by the parser) is refused, in one line; None if it is no collector flag."""
    flag = argument.split("=", 1)[0]
    match = re.fullmatch(r"--(no-)?collector\.([A-Za-z0-9_.-]+)", flag)
    if not match:
        return None
    negated, rest = match.groups()
    name = rest.split(".", 1)[0]
    if name in ELSEWHERE:
        return f"{flag}: {ELSEWHERE[name]}"
    if "." not in rest:
        if rest in NODE_EXPORTER_COLLECTORS:
            return f"{flag}: node_exporter's {rest} collector is not implemented in shm-publisher"
        if rest in names:
            return f"{flag}: takes no value"
        return f"{flag}: not a collector of node_exporter 1.5.0"
    if name in NODE_EXPORTER_COLLECTORS and name not in names:
        return f"{flag}: node_exporter's {name} collector is not implemented in shm-publisher"
    if rest in OPTIONS_BY_FLAG:
        opt = OPTIONS_BY_FLAG[rest]
        if negated and opt.kind is not bool:
            return f"{flag}: not a switch"
        return f"{flag}: expects {'no value' if opt.kind is bool else 'a value'}"
    return f"{flag}: node_exporter option not supported by shm-publisher"


def accepts_negated(name: str) -> bool:
    """``--no-collector.<name>`` for a node_exporter collector this publisher does not have: what it asks for
    (the collector's families are absent) is what happens, so it is accepted."""
    return name in NODE_EXPORTER_COLLECTORS and name not in ELSEWHERE


def enabled(args: argparse.Namespace, names: dict[str, bool]) -> set[str]:
    """The collectors switched on: node_exporter's rule (an explicit switch wins; --collector.disable-defaults
    turns off the rest; otherwise each collector's default)."""
    switches: dict[str, bool] = getattr(args, _SWITCHES, {}) or {}
    out = set()
    for name, default in names.items():
        on = switches.get(name, False if args.disable_defaults else default)
        if on:
            out.add(name)
    return out


def options(args: argparse.Namespace) -> dict[str, object]:
    """The per-collector options given, by node_exporter's flag name without ``--collector.``."""
    return dict(getattr(args, _OPTIONS, {}) or {})

"""shm-publisher's node_exporter flags: --path.*, --collector.<name> switches, per-collector options, refusals."""

from __future__ import annotations

import subprocess

import pytest
from conftest import PUBLISHER
from node_e2e import FIXTURES, unpack

from shm_metrics.publisher import cli, switches
from shm_metrics.publisher.collectors import collector_names, selected
from shm_metrics.readers.reader import Reader

NAMES = collector_names()


def parse(*argv: str, names: dict[str, bool] | None = None):
    """What main() does with argv before it starts: the switches, options and filters it resolves."""
    names = NAMES if names is None else names
    parser = cli.build_parser(names)
    args, leftover = parser.parse_known_args(list(argv))
    assert not leftover, leftover
    return switches.enabled(args, names), switches.options(args), cli.filters_of(parser, args)


def run_refused(name: str, *argv: str) -> str:
    """A real shm-publisher given ``argv``: it must refuse (exit 2, one line) at once.  A separate process
    with a bound, so that a flag accepted by mistake fails the test instead of publishing forever."""
    try:
        done = subprocess.run([*PUBLISHER, "--name", name, *argv], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{argv} was accepted: the publisher ran") from None
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_default_set_is_node_exporters():
    enabled, options, _ = parse()
    assert enabled == {n for n, on in NAMES.items() if on}
    for name, on in NAMES.items():
        expected = switches.NODE_EXPORTER_COLLECTORS[name] or name in switches.ON_HERE_BY_DEFAULT
        assert on == expected, name
    assert "processes" not in enabled and not switches.NODE_EXPORTER_COLLECTORS["processes"]
    assert options == {}


def test_switches_follow_node_exporter_semantics():
    defaults = {n for n, on in NAMES.items() if on}
    assert parse("--no-collector.meminfo")[0] == defaults - {"meminfo"}
    assert parse("--collector.processes")[0] == defaults | {"processes"}
    assert parse("--collector.disable-defaults", "--collector.loadavg")[0] == {"loadavg"}
    assert parse("--collector.disable-defaults", "--no-collector.loadavg")[0] == set()
    assert parse("--collector.arp", "--no-collector.arp")[0] == defaults - {"arp"}  # the last one wins
    assert parse("--collector.disable-defaults", "--no-collector.arp", "--collector.arp")[0] == {"arp"}
    classes = selected(parse("--collector.disable-defaults", "--collector.loadavg")[0])
    assert {r for cls in classes for r in cls.reports} == {"loadavg"}


def test_options_are_typed_by_node_exporters_flag_names():
    names = {**NAMES, "sysctl": False, "bcache": True, "qdisc": False}  # collectors being written elsewhere
    _, options, _ = parse("--collector.cpu.info", "--collector.stat.softirq",
                          "--collector.netclass.ignore-invalid-speed", "--collector.bcache.priorityStats",
                          "--no-collector.stat.softirq",
                          "--collector.arp.device-exclude=nope", "--collector.cpu.info.flags-include=^(aes|avx.?)$",
                          "--collector.sysctl.include=kernel.threads-max", "--collector.sysctl.include", "fs.file-nr",
                          "--collector.sysctl.include-info=kernel.seccomp.actions_avail",
                          "--collector.qdisk.device-include=(wlan0|eth0)", names=names)
    assert options == {"cpu.info": True, "stat.softirq": False, "netclass.ignore-invalid-speed": True,
                       "bcache.priorityStats": True, "arp.device-exclude": "nope",
                       "cpu.info.flags-include": "^(aes|avx.?)$",
                       "sysctl.include": ["kernel.threads-max", "fs.file-nr"],
                       "sysctl.include-info": ["kernel.seccomp.actions_avail"],
                       "qdisk.device-include": "(wlan0|eth0)"}


def test_node_exporter_filter_names_map_onto_the_filters():
    _, _, filters = parse("--collector.netdev.device-include=lo", "--collector.diskstats.device-exclude=^sd",
                          "--collector.filesystem.fs-types-exclude=^tmpfs$",
                          "--collector.filesystem.mount-points-exclude=^/boot")
    assert not filters.net_excluded("lo") and filters.net_excluded("eth0")  # the default ^lo$ gave way
    assert filters.disk_excluded("sda") and not filters.disk_excluded("nvme0n1")
    assert filters.fs_excluded("/x", "tmpfs") and filters.fs_excluded("/boot", "ext4")
    assert not filters.fs_excluded("/", "ext4")
    _, _, same = parse("--disk-exclude=^sd")
    assert same.disk_excluded("sda") and not same.disk_excluded("nvme0n1")
    _, _, default = parse()
    assert default.net_excluded("lo") and not default.net_excluded("eth0")


@pytest.mark.parametrize("argv, words", [
    (["--collector.perf"], ["--collector.perf", "not implemented"]),
    (["--collector.netstat.fields=^x$"], ["--collector.netstat.fields", "not supported"]),
    (["--collector.bogus"], ["--collector.bogus", "not a collector"]),
    (["--collector.textfile.directory=/tmp"], ["--collector.textfile.directory", "shm-exporter"]),
    (["--collector.arp.device-exclude=("], ["--collector.arp.device-exclude", "regular expression"]),
    (["--collector.netdev.device-include=lo", "--collector.netdev.device-exclude=x"], ["mutually exclusive"]),
    (["--collector.cp"], ["--collector.cp"]),  # no abbreviations: a prefix of --collector.cpu is not it
    (["--no-collector.arp.device-exclude=x"], ["not a switch"]),
])
def test_unsupported_node_exporter_flags_are_refused_in_one_line(name, argv, words):
    err = run_refused(name, *argv)
    assert err.startswith("shm-publisher: error: ")
    for word in words:
        assert word in err


def test_turning_off_a_collector_this_publisher_lacks_is_accepted():
    parser = cli.build_parser(NAMES)
    _, leftover = parser.parse_known_args(["--no-collector.perf"])
    assert leftover == ["--no-collector.perf"] and switches.accepts_negated("perf")
    assert not switches.accepts_negated("bogus")


def test_help_lists_every_switch_the_options_and_the_paths():
    text = cli.build_parser(NAMES).format_help()
    for name in NAMES:
        assert f"--collector.{name} " in text or f"--collector.{name}\n" in text, name
    for flag in ("--collector.disable-defaults", "--path.procfs", "--path.sysfs", "--path.rootfs",
                 "--path.udev.data", "--collector.cpu.info", "--collector.stat.softirq",
                 "--collector.netdev.device-include", "--collector.diskstats.device-exclude"):
        assert flag in text, flag
    assert "processes is off by default" in " ".join(text.split())


def test_a_publisher_on_a_fixture_tree_reads_it_not_the_host(tmp_path, name, start_publisher):
    root = unpack(tmp_path) / FIXTURES
    start_publisher(name, "--top", "0", "--interval", "3600", f"--path.procfs={root}/proc",
                    f"--path.sysfs={root}/sys", f"--path.rootfs={root}", f"--path.udev.data={root}/udev/data",
                    "--collector.disable-defaults", "--collector.loadavg", "--collector.meminfo",
                    "--collector.entropy")
    with Reader(name) as reader:
        view = reader.read().families
        # node_exporter's fixture values (its proc/loadavg, proc/meminfo, proc/sys/kernel/random).
        assert view["node_load1"].series == [((), 0.21)]
        assert view["node_memory_MemTotal_bytes"].series == [((), 3831959552.0)]
        assert view["node_entropy_available_bits"].series == [((), 1337.0)]
        assert "node_cpu_seconds_total" not in view.names()  # switched off with the other defaults


def test_publisher_help_runs():
    out = subprocess.run([*PUBLISHER, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--collector.disable-defaults" in out.stdout

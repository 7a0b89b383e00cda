"""node_exporter 1.5.0's end-to-end fixture, for the kernel's odds and ends: interrupts, schedstat, slabinfo,
zoneinfo, buddyinfo, ksmd, lnstat, meminfo_numa, cgroups, sysctl, qdisc and wifi; then tcpstat and qdisc
against ``ss`` and ``tc`` on this host, and systemd against Debian's node_exporter over a private D-Bus bus.

Each collector runs alone through the real publisher and exporter (``node_e2e.exposition_of``) over the
unpacked fixture tree, with the options end-to-end-test.sh passes, and every family of it in
``e2e-output.txt`` must come out byte for byte.  The same collectors then run on this host: each starts or
is cleanly unavailable, and a sample of it does not fail.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from exporter_util import Process, free_port, metrics, need
from node_e2e import FIXTURES, compare, diff_lines, expected_families, exposition_of, families, render, unpack

from shm_metrics.publisher.collectors import Context, Sample
from shm_metrics.publisher.collectors.buddyinfo import Buddyinfo
from shm_metrics.publisher.collectors.cgroups import Cgroups
from shm_metrics.publisher.collectors.interrupts import Interrupts
from shm_metrics.publisher.collectors.ksmd import Ksmd
from shm_metrics.publisher.collectors.lnstat import Lnstat
from shm_metrics.publisher.collectors.meminfo_numa import MeminfoNuma
from shm_metrics.publisher.collectors.qdisc import Qdisc
from shm_metrics.publisher.collectors.schedstat import Schedstat
from shm_metrics.publisher.collectors.slabinfo import Slabinfo
from shm_metrics.publisher.collectors.sysctl import Sysctl
from shm_metrics.publisher.collectors.systemd import Systemd, parse_version, unit_path
from shm_metrics.publisher.collectors.tcpstat import STATE_NAMES, Tcpstat
from shm_metrics.publisher.collectors.wifi import Wifi
from shm_metrics.publisher.collectors.zoneinfo import Zoneinfo

# The script's sysctl flags, as the command line hands them to the collector.
SYSCTL_OPTIONS = {"sysctl.include": ["kernel.threads-max", "fs.file-nr", "fs.file-nr:total,current,max"],
                  "sysctl.include-info": ["kernel.seccomp.actions_avail"]}


def _fixture_options(collector: str, fixtures: Path) -> dict:
    """The options end-to-end-test.sh gives ``collector`` (its fixture directories made absolute)."""
    if collector == "sysctl":
        return SYSCTL_OPTIONS
    if collector == "qdisc":
        return {"qdisc.fixtures": str(fixtures / "qdisc"), "qdisk.device-include": "(wlan0|eth0)"}
    if collector == "wifi":
        return {"wifi.fixtures": str(fixtures / "wifi")}
    return {}


# node_exporter collector name -> our class.
CASES = {"interrupts": Interrupts, "schedstat": Schedstat, "slabinfo": Slabinfo, "zoneinfo": Zoneinfo,
         "buddyinfo": Buddyinfo, "ksmd": Ksmd, "lnstat": Lnstat, "meminfo_numa": MeminfoNuma, "cgroups": Cgroups,
         "sysctl": Sysctl, "qdisc": Qdisc, "wifi": Wifi}
# node_exporter 1.5.0's defaults (registerCollector(..., defaultEnabled/defaultDisabled)).
ON_BY_DEFAULT = {"schedstat"}
# What a collector raises at start when this host lacks what it reads (the Sampler then leaves it out).
UNAVAILABLE = (OSError, LookupError, ValueError)

_TABLE: dict[str, dict[str, list[str]]] = {}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("node-e2e-misc"))


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    if _TABLE:
        print("\nnode_exporter 1.5.0 end-to-end fixture, this branch's collectors:\n" + render(_TABLE))


@pytest.mark.parametrize("collector", list(CASES))
def test_fixture_families_equal(fixture_root, collector):
    expected = expected_families(collector)
    assert expected, f"no expected families for {collector}"
    options = _fixture_options(collector, fixture_root / FIXTURES)
    actual = families(exposition_of(fixture_root, collectors=[CASES[collector]], options=options))
    table = compare(expected, actual)
    _TABLE.update(table)
    wrong = {name: diff_lines(expected[name], actual.get(name, ""))
             for row in table.values() for key in ("different", "missing") for name in row[key]}
    assert not wrong, wrong
    assert len(table[collector]["equal"]) == len(expected)


@pytest.mark.parametrize("collector", [*CASES, "tcpstat", "systemd"])
def test_default_switch_is_node_exporters(collector):
    cls = {**CASES, "tcpstat": Tcpstat, "systemd": Systemd}[collector]
    assert cls.reports == (collector,)
    assert cls.default_enabled == (collector in ON_BY_DEFAULT)


def test_qdisc_include_and_exclude_select_devices(fixture_root):
    fixtures = fixture_root / FIXTURES / "qdisc"
    for options, devices in (({"qdisk.device-include": "^wlan"}, {"wlan0"}),
                             ({"qdisk.device-exclude": "wlan"}, {"eth0"}), ({}, {"wlan0", "eth0"})):
        collector = Qdisc(Context(options={"qdisc.fixtures": str(fixtures), **options}))
        out = Sample()
        collector.collect(out)
        assert {labels[0] for _, labels, _ in out.sampled_series()} == devices, options
    with pytest.raises(ValueError):
        Qdisc(Context(options={"qdisc.fixtures": str(fixtures), "qdisk.device-include": "a",
                               "qdisk.device-exclude": "b"}))


def test_sysctl_refuses_keys_that_do_not_fit(fixture_root):
    procfs = str(fixture_root / FIXTURES / "proc")
    with pytest.raises(ValueError):
        Sysctl(Context(procfs=procfs, options={"sysctl.include": ["fs.file-nr:one,two"]}))
    with pytest.raises(FileNotFoundError):
        Sysctl(Context(procfs=procfs, options={"sysctl.include": ["kernel.no-such-sysctl"]}))


# ---------------------------------------------------------------- this host
def _on_this_host(cls, options: dict | None = None) -> Sample | None:
    """One sample of ``cls`` on this host's /proc and /sys, or None when the host lacks what it reads."""
    try:
        collector = cls(Context(options=options))
    except UNAVAILABLE:
        return None
    try:
        out = Sample()
        collector.collect(out)
        return out
    finally:
        collector.close()


# What each collector reads first on a host: where it can be read, the collector must start and report.
HOST_FILES = {"interrupts": "/proc/interrupts", "schedstat": "/proc/schedstat", "slabinfo": "/proc/slabinfo",
              "zoneinfo": "/proc/zoneinfo", "buddyinfo": "/proc/buddyinfo", "ksmd": "/sys/kernel/mm/ksm/run",
              "lnstat": "/proc/net/stat/arp_cache", "meminfo_numa": "/sys/devices/system/node/node0/meminfo",
              "cgroups": "/proc/cgroups", "sysctl": "/proc/sys/kernel/threads-max"}


def _readable(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("collector", list(HOST_FILES))
def test_runs_on_this_host(collector):
    options = {"sysctl.include": ["kernel.threads-max", "fs.file-nr:total,current,max"],
               "sysctl.include-info": ["kernel.seccomp.actions_avail"]} if collector == "sysctl" else None
    out = _on_this_host(CASES[collector], options)
    if not _readable(HOST_FILES[collector]):
        assert out is None, f"{collector} started without {HOST_FILES[collector]}"
        return
    assert out is not None and out.sampled_series(), f"{collector} read nothing from {HOST_FILES[collector]}"
    for family, labels, value in out.sampled_series():
        assert len(labels) == len(family.labels), family.name
        assert value == value, family.name  # no NaN from a misread field


def test_slabinfo_reads_past_the_first_page():
    # /proc/slabinfo comes a page at a time: a single read gives only the first ~4 kB of it.
    if not _readable("/proc/slabinfo"):
        pytest.skip("/proc/slabinfo not readable here")
    for _ in range(5):  # caches come and go: a few tries for a moment when none does
        slabs = {line.split()[0] for line in Path("/proc/slabinfo").read_text().splitlines()[2:]}
        ours = {labels[0] for _, labels, _ in _on_this_host(Slabinfo).sampled_series()}
        if ours == slabs:
            break
    assert len(slabs) > 0 and ours == slabs


def test_wifi_without_fixtures_is_unavailable_with_its_reason():
    # nl80211 is not read here: with or without wireless interfaces the collector says why it is left out.
    with pytest.raises(OSError, match="wireless"):
        Wifi(Context())


def test_sysctl_values_on_this_host():
    out = _on_this_host(Sysctl, {"sysctl.include": ["kernel.threads-max", "fs.file-nr:total,current,max"]})
    assert out is not None
    values = {fam.name: value for fam, _, value in out.sampled_series()}
    assert values["node_sysctl_kernel_threads_max"] == int(Path("/proc/sys/kernel/threads-max").read_text())
    assert values["node_sysctl_fs_file_nr_max"] == int(Path("/proc/sys/fs/file-nr").read_text().split()[2])


# ss -tan's names for the kernel's TCP states.
_SS_STATES = {"ESTAB": "established", "SYN-SENT": "syn_sent", "SYN-RECV": "syn_recv", "FIN-WAIT-1": "fin_wait1",
              "FIN-WAIT-2": "fin_wait2", "TIME-WAIT": "time_wait", "UNCONN": "close", "CLOSE-WAIT": "close_wait",
              "LAST-ACK": "last_ack", "LISTEN": "listen", "CLOSING": "closing"}


def _ss_counts() -> dict[str, float]:
    """``ss -tan`` (inet_diag, IPv4 and IPv6) per state, with the queues summed as tcpstat sums them."""
    lines = subprocess.run(["ss", "-tan"], capture_output=True, text=True, check=True).stdout.splitlines()[1:]
    counts: dict[str, float] = {}
    for line in lines:
        state, recv_q, send_q = line.split()[:3]
        name = _SS_STATES[state]
        counts[name] = counts.get(name, 0) + 1
        counts["rx_queued_bytes"] = counts.get("rx_queued_bytes", 0) + int(recv_q)
        # For a listener ss shows the backlog limit as Send-Q; /proc/net/tcp (and tcpstat here) 0.
        counts["tx_queued_bytes"] = counts.get("tx_queued_bytes", 0) + (0 if name == "listen" else int(send_q))
    return counts


def test_tcpstat_agrees_with_ss():
    if shutil.which("ss") is None:
        pytest.skip("no ss (iproute2) on this host")
    # Sockets of our own, so there is something in several states whatever the host does.
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.sendall(b"x" * 1000)  # 1000 bytes waiting in server's receive queue
    try:
        collector = Tcpstat(Context())
        # Other programs open and close connections: compare when ss says the same before and after us.
        for _ in range(20):
            before = _ss_counts()
            ours = collector.counts()
            if before == _ss_counts():
                break
        else:
            pytest.fail("the host's TCP sockets never held still for three readings")
        assert ours == before
        assert ours["listen"] >= 1 and ours["established"] >= 2 and ours["rx_queued_bytes"] >= 1000
        assert set(ours) <= {*STATE_NAMES.values(), "rx_queued_bytes", "tx_queued_bytes"}
        collector.close()
    finally:
        for sock in (server, client, listener):
            sock.close()


def _tc_root_qdiscs() -> dict[tuple[str, str], tuple[int, int]]:
    """``tc -s qdisc``: (device, kind) of each root qdisc -> (bytes, packets) sent."""
    text = subprocess.run(["tc", "-s", "qdisc"], capture_output=True, text=True, check=True).stdout
    found = {}
    for match in re.finditer(r"^qdisc (\S+) \S+ dev (\S+) root.*?\n Sent (\d+) bytes (\d+) pkt", text, re.M | re.S):
        kind, device, sent_bytes, packets = match.groups()
        found[(device, kind)] = (int(sent_bytes), int(packets))
    return found


def test_qdisc_reads_the_kernel_as_tc_does():
    if shutil.which("tc") is None:
        pytest.skip("no tc (iproute2) on this host")
    before = _tc_root_qdiscs()
    out = _on_this_host(Qdisc)
    after = _tc_root_qdiscs()
    assert out is not None, "rtnetlink qdisc dump refused"
    ours = {(labels, fam.name): value for fam, labels, value in out.sampled_series()}
    assert {key[0] for key in ours} == set(after) == set(before)
    for key in after:  # counters only grow: ours lies between tc's two readings
        assert before[key][0] <= ours[(key, "node_qdisc_bytes_total")] <= after[key][0], key
        assert before[key][1] <= ours[(key, "node_qdisc_packets_total")] <= after[key][1], key


# ---------------------------------------------------------------- systemd, over D-Bus
HERE = Path(__file__).resolve().parent
SYSTEMD_FIXTURE = HERE / "fixtures" / "systemd" / "debian12.json"
# node_exporter 1.5.0's default exclude (Debian's build adds "target": given explicitly to the oracle).
UPSTREAM_EXCLUDE = r".+\.(automount|device|mount|scope|slice)"
ALL_SYSTEMD_OPTIONS = {"systemd.enable-task-metrics": True, "systemd.enable-restarts-metrics": True,
                       "systemd.enable-start-time-metrics": True}


@pytest.fixture(scope="module")
def systemd_bus(tmp_path_factory):
    """A private D-Bus bus with tests/fake_systemd.py on it answering from SYSTEMD_FIXTURE: its address.

    No systemd runs on the machines this is written on, so the fixture stands in for it; the same bus
    serves Debian's node_exporter (the oracle) and our collector, the real D-Bus protocol both ways.
    """
    daemon = need("dbus-daemon", "dbus-daemon")
    sock = tmp_path_factory.mktemp("bus") / "bus.sock"
    bus = Process([daemon, "--session", "--nofork", f"--address=unix:path={sock}", "--print-address=1"])
    fake = None
    try:
        address = bus.wait_for_line("unix:path=").strip()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
        fake = Process([sys.executable, str(HERE / "fake_systemd.py"), address, str(SYSTEMD_FIXTURE)], env=env)
        fake.wait_for_line("ready")
        yield address
    finally:
        if fake is not None:
            fake.stop()
        bus.stop()


def _oracle_systemd(address: str, *flags: str) -> dict[str, str]:
    """The node_systemd_* families Debian's node_exporter serves with only its systemd collector on."""
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    proc = Process([binary, "--collector.disable-defaults", "--collector.systemd", *flags,
                    f"--web.listen-address=127.0.0.1:{port}"], env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address})
    try:
        proc.wait_for_line("Listening on")
        text = metrics(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.stop()
    assert 'node_scrape_collector_success{collector="systemd"} 1' in text, text[-2000:]
    return {name: block for name, block in families(text).items() if name.startswith("node_systemd_")}


def _ours_systemd(address: str, options: dict) -> dict[str, str]:
    text = exposition_of(Path("/nonexistent"), collectors=[Systemd],
                         options={"systemd.bus-address": address, **options})
    return {name: block for name, block in families(text).items() if name.startswith("node_systemd_")}


@pytest.mark.parametrize("extra", [False, True], ids=["default options", "every optional family"])
def test_systemd_equals_node_exporter_on_the_same_bus(systemd_bus, extra):
    flags = [f"--collector.systemd.unit-exclude={UPSTREAM_EXCLUDE}"]
    if extra:
        flags += ["--collector.systemd.enable-task-metrics", "--collector.systemd.enable-restarts-metrics",
                  "--collector.systemd.enable-start-time-metrics"]
    expected = _oracle_systemd(systemd_bus, *flags)
    actual = _ours_systemd(systemd_bus, ALL_SYSTEMD_OPTIONS if extra else {})
    # 12 families with every option, 8 without (no restarts, tasks, start times).
    assert len(expected) == (12 if extra else 8), sorted(expected)
    table = compare(expected, actual)
    print("\nsystemd against Debian's node_exporter on a private bus:\n" + render(table))
    wrong = {name: diff_lines(expected[name], actual.get(name, ""))
             for row in table.values() for key in ("different", "missing") for name in row[key]}
    assert not wrong, wrong
    assert set(actual) == set(expected)


def test_systemd_filters_and_counts(systemd_bus):
    collector = Systemd(Context(options={"systemd.bus-address": systemd_bus, "systemd.unit-include": "ssh.*",
                                         "systemd.unit-exclude": r".+\.socket"}))
    try:
        out = Sample()
        collector.collect(out)
    finally:
        collector.close()
    names = {labels[0] for fam, labels, _ in out.sampled_series() if fam.name == "node_systemd_unit_state"}
    assert names == {"ssh.service"}
    summary = {labels[0]: value for fam, labels, value in out.sampled_series() if fam.name == "node_systemd_units"}
    # Every unit is counted, filtered or not, "not-found" ones too; a state beyond the five gets its own row.
    assert summary == {"active": 11, "activating": 1, "deactivating": 1, "inactive": 3, "failed": 1, "reloading": 1}


def test_systemd_without_a_bus_is_unavailable(tmp_path):
    with pytest.raises(OSError):
        Systemd(Context(options={"systemd.bus-address": f"unix:path={tmp_path}/no-bus"}))


def test_systemd_object_paths_and_versions():
    assert unit_path("ssh.service") == "/org/freedesktop/systemd1/unit/ssh_2eservice"
    assert unit_path("1password.service") == "/org/freedesktop/systemd1/unit/_31password_2eservice"
    assert unit_path("getty@tty1.service") == "/org/freedesktop/systemd1/unit/getty_40tty1_2eservice"
    assert parse_version("252.36-1~deb12u1") == (252.36, "252.36-1~deb12u1")
    assert parse_version("v99") == (0.0, "")

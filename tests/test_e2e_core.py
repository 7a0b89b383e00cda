"""node_exporter 1.5.0's end-to-end test, for the collectors of issue 11 (the default set and its kin).

Each collector runs alone over the unpacked fixture tree through the real publisher and exporter
(``node_e2e.exposition_of``) with the options end-to-end-test.sh passes it, and every family
``e2e-output.txt`` has for it must come out byte for byte (after the script's skip_re): HELP, TYPE,
label order and escaping, float format and series order.  The last tests run them together (the
table) and feed the fixture's odd tree (/proc/self a link to pid 10, pids without task/ or with a
stray file, no /proc/uptime or /proc/net/dev) through the segment to shm-read.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from conftest import run_reader
from node_e2e import (
    FIXTURES,
    collector_of,
    compare,
    diff_lines,
    expected_families,
    exposition_of,
    families,
    publisher_settings,
    render,
    unpack,
)

from shm_metrics import shm_layout as L
from shm_metrics.publisher.collectors import (
    arp,
    conntrack,
    diskstats,
    entropy,
    filefd,
    loadavg,
    meminfo,
    netclass,
    netdev,
    netstat,
    os_release,
    pressure,
    processes,
    selected,
    selinux,
    sockstat,
    softnet,
    stat,
    time_,
    udp_queues,
    vmstat,
)
from shm_metrics.publisher.sampler import Sampler
from shm_metrics.publisher.segment import OwnedSegment

OPTIONS, FILTERS = publisher_settings()  # as shm-publisher parses end-to-end-test.sh's flags

# node_exporter's collector (as node_e2e.collector_of names the owner of a family) -> our classes that
# give its families.  node_network_transmit_queue_length is netclass's in node_exporter, but its name
# puts it in the netdev row: that row runs both.
CLASSES = {
    "arp": [arp.Arp], "conntrack": [conntrack.Conntrack], "cpu": [stat.Stat], "stat": [stat.Stat],
    "diskstats": [diskstats.Diskstats], "entropy": [entropy.Entropy], "filefd": [filefd.Filefd],
    "loadavg": [loadavg.Loadavg], "meminfo": [meminfo.Meminfo], "netclass": [netclass.Netclass],
    "netdev": [netdev.Netdev, netclass.Netclass], "netstat": [netstat.Netstat], "os": [os_release.OsRelease],
    "pressure": [pressure.Pressure], "processes": [processes.NodeProcesses], "selinux": [selinux.Selinux],
    "sockstat": [sockstat.Sockstat], "softnet": [softnet.Softnet], "time": [time_.Time],
    "udp_queues": [udp_queues.UdpQueues], "vmstat": [vmstat.Vmstat],
}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("node-e2e-core"))


def test_the_script_options_are_read_from_the_script():
    # The options come from end-to-end-test.sh's own flags (node_e2e.flags), parsed by shm-publisher's own
    # command line; the netdev include becomes its device filter.
    assert FILTERS.net_include == "lo" and not FILTERS.net_excluded("lo") and FILTERS.net_excluded("eth0")
    assert OPTIONS["netclass.ignored-devices"] == "(dmz|int)"
    assert OPTIONS["netclass.ignore-invalid-speed"] is True and OPTIONS["stat.softirq"] is True
    assert OPTIONS["cpu.info"] is True and OPTIONS["cpu.info.flags-include"].startswith("^(aes")
    assert OPTIONS["sysctl.include"] == ["kernel.threads-max", "fs.file-nr", "fs.file-nr:total,current,max"]


@pytest.mark.parametrize("collector", sorted(CLASSES))
def test_collector_gives_node_exporters_families(fixture_root, collector):
    expected = expected_families(collector)
    assert expected, f"e2e-output.txt has no family of {collector}"
    text = exposition_of(fixture_root, collectors=CLASSES[collector], options=OPTIONS, filters=FILTERS)
    actual = families(text)
    table = compare(expected, actual)
    print("\n" + render(table))
    wrong = {name: diff_lines(expected[name], actual.get(name, ""))
             for name in expected if actual.get(name) != expected[name]}
    assert not wrong, wrong
    # Nothing of that collector node_exporter does not show (a family of its own name, beyond the expected).
    extra = {name for name in actual if collector_of(name) == collector} - set(expected)
    assert not extra, extra
    # node_exporter says the collector succeeded; so do we.
    scrape = families(text)["node_scrape_collector_success"]
    assert f'node_scrape_collector_success{{collector="{collector}"}} 1\n' in scrape


def test_all_together_as_the_script_runs_them(fixture_root):
    classes = list(dict.fromkeys(cls for group in CLASSES.values() for cls in group))
    expected = expected_families(*CLASSES)
    actual = families(exposition_of(fixture_root, collectors=classes, options=OPTIONS, filters=FILTERS))
    table = compare(expected, actual)
    print("\n" + render(table))
    assert {name: len(row["equal"]) for name, row in table.items()} == \
        {name: len(row["equal"]) + len(row["different"]) + len(row["missing"]) for name, row in table.items()}
    assert sum(len(row["equal"]) for row in table.values()) == 221


def test_the_odd_fixture_tree_goes_through_the_segment_to_shm_read(fixture_root):
    # The default set (and node_exporter's processes and cpu info) with --top over the fixture tree: /proc/self
    # is a link to 10, pid 11 has a stray file, no pid has task/, there is no /proc/uptime and no net/dev; the
    # layout's own arrays get what the tree has, and shm-read shows them.
    tree = fixture_root / FIXTURES
    sampler = Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), rootfs=str(tree),
                      udev_data=str(tree / "udev" / "data"), top_n=5, options=OPTIONS, filters=FILTERS,
                      collectors=[*selected(), processes.NodeProcesses])
    name = f"/shmtest-e2e-core-{uuid.uuid4().hex[:10]}"
    segment = None
    try:
        first = sampler.sample()
        layout = L.Layout.for_capacities(16, 16, 16, 16, history=4, top=5, **sampler.family_capacities(first))
        segment = OwnedSegment(name, layout, 0o600, 1.0, sampler.catalog)
        segment.set_state(L.STATE_RUNNING)
        for sample in (first, sampler.sample()):
            segment.publish(sample, time.time(), time.monotonic(), 0.001, 0)
        snapshot = run_reader("--name", name, "--once", "--json", "--max-age", "600")
        top = run_reader("top", "--name", name, "--once", "--json", "--max-age", "600")
    finally:
        if segment is not None:
            segment.close(unlink=True)
        sampler.close()
    assert snapshot.returncode == 0, snapshot.stderr
    assert top.returncode == 0, top.stderr
    data = json.loads(snapshot.stdout)
    assert data["cpu_count"] == 8 and data["procs_total"] == 3 and data["boot_time"] == 1418183276
    assert len(data["cpus"]) == 8
    assert {d["device"] for d in data["disks"]} >= {"sda", "nvme0n1", "dm-0"}
    rows = json.loads(top.stdout)
    pids = {row["pid"] for table in ("by_cpu", "by_rss") for row in rows[table]}
    assert pids == {1, 10, 11}, rows

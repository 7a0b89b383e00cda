"""node_exporter 1.5.0's end-to-end fixture, for the filesystem and storage collectors of this branch:
zfs, xfs, nfs, nfsd, btrfs, bcache, drbd, ipvs and mountstats.

Each collector alone samples the fixture tree through the real publisher and exporter
(``node_e2e.exposition_of``) and every family node_exporter's ``e2e-output.txt`` has for it must come
out byte for byte (HELP, TYPE, series order, label order, Go's float format); then all of them
together, printing the per-collector table.  On this host, each one either samples without an error
or is left out for the reason the host gives (no ZFS module, no NFS server...).
"""

from __future__ import annotations

import glob
import os

import pytest
from node_e2e import compare, diff_lines, expected_families, exposition_of, families, render, unpack

from shm_metrics.publisher.collectors import SCRAPE_SUCCESS
from shm_metrics.publisher.collectors.bcache import Bcache
from shm_metrics.publisher.collectors.btrfs import INFO as BTRFS_INFO
from shm_metrics.publisher.collectors.btrfs import Btrfs
from shm_metrics.publisher.collectors.drbd import Drbd
from shm_metrics.publisher.collectors.ipvs import Ipvs
from shm_metrics.publisher.collectors.mountstats import AGE as MOUNT_AGE
from shm_metrics.publisher.collectors.mountstats import Mountstats
from shm_metrics.publisher.collectors.nfs import Nfs
from shm_metrics.publisher.collectors.nfsd import Nfsd
from shm_metrics.publisher.collectors.xfs import Xfs
from shm_metrics.publisher.collectors.zfs import Zfs
from shm_metrics.publisher.sampler import Sampler

# The collector classes, and what end-to-end-test.sh passes them (--collector.bcache.priorityStats).
COLLECTORS = [Zfs, Xfs, Nfs, Nfsd, Btrfs, Bcache, Drbd, Ipvs, Mountstats]
OPTIONS = {"bcache.priorityStats": True}
# How many families e2e-output.txt has for each (a collector losing families would pass the equality
# check over fewer families: this pins the count).
EXPECTED_COUNTS = {"zfs": 277, "mountstats": 53, "xfs": 39, "bcache": 28, "drbd": 15, "nfsd": 14, "ipvs": 8,
                   "btrfs": 7, "nfs": 6}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return unpack(tmp_path_factory.mktemp("node-e2e-fs"))


def _wrong(expected: dict[str, str], actual: dict[str, str]) -> dict[str, list[str]]:
    return {name: list(diff_lines(block, actual.get(name, ""))) or ["missing"]
            for name, block in expected.items() if actual.get(name) != block}


@pytest.mark.parametrize("cls", COLLECTORS, ids=lambda c: c.name)
def test_collector_equals_node_exporter_on_the_fixture(fixture_root, cls):
    (name,) = cls.reports
    expected = expected_families(name)
    assert len(expected) == EXPECTED_COUNTS[name]
    actual = families(exposition_of(fixture_root, collectors=[cls], options=OPTIONS))
    table = compare(expected, actual)
    print("\n" + render(table))
    assert not _wrong(expected, actual), _wrong(expected, actual)
    # Nothing beyond node_exporter's families (but the scrape status every collector has).
    extra = {n for n in actual if n not in expected and not n.startswith(("node_scrape_collector_", "shm_metrics_"))}
    assert not extra, extra
    assert f'node_scrape_collector_success{{collector="{name}"}} 1' in actual["node_scrape_collector_success"]


def test_all_together_the_table(fixture_root):
    names = [cls.reports[0] for cls in COLLECTORS]
    expected = expected_families(*names)
    actual = families(exposition_of(fixture_root, collectors=COLLECTORS, options=OPTIONS))
    table = compare(expected, actual)
    print("\n" + render(table))
    assert set(table) == set(names)
    assert sum(len(row["equal"]) for row in table.values()) == sum(EXPECTED_COUNTS.values()) == 447
    assert not _wrong(expected, actual)


def test_priority_stats_only_with_the_option(fixture_root):
    without = families(exposition_of(fixture_root, collectors=[Bcache]))
    assert "node_bcache_priority_stats_unused_percent" not in without
    assert without["node_bcache_written_bytes_total"] == expected_families("bcache")["node_bcache_written_bytes_total"]


def test_ipvs_backend_labels_option_sums_backends(fixture_root):
    text = exposition_of(fixture_root, collectors=[Ipvs], options={"ipvs.backend-labels": "proto"})
    # Every backend of the fixture summed per protocol: TCP and FWM.
    assert 'node_ipvs_backend_weight{proto="FWM"} 120\n' in text
    assert 'node_ipvs_backend_weight{proto="TCP"} 600\n' in text
    # An unknown label leaves the collector out, saying why (node_exporter refuses to start).
    sampler = Sampler(procfs=str(fixture_root / "collector/fixtures/proc"), collectors=[Ipvs],
                      options={"ipvs.backend-labels": "proto,nope"})
    try:
        assert sampler.unavailable == {"ipvs": "unknown IPVS backend labels: nope"}
        assert sampler.sample().values(SCRAPE_SUCCESS)[("ipvs",)] == 0
    finally:
        sampler.close()


# On this host: what the host has decides whether a collector is there (node_scrape_collector_success).
HOST_HAS = {
    "zfs": lambda: os.path.isdir("/proc/spl/kstat/zfs"),
    "nfs": lambda: os.path.exists("/proc/net/rpc/nfs"),
    "nfsd": lambda: os.path.exists("/proc/net/rpc/nfsd"),
    "ipvs": lambda: os.path.exists("/proc/net/ip_vs_stats"),
    "drbd": lambda: os.path.exists("/proc/drbd"),
    # Present with sysfs and procfs, whatever the filesystems: none mounted means no series.
    "btrfs": lambda: True, "xfs": lambda: True, "bcache": lambda: True, "mountstats": lambda: True,
}


@pytest.mark.parametrize("cls", COLLECTORS, ids=lambda c: c.name)
def test_collector_on_this_host(cls):
    (name,) = cls.reports
    sampler = Sampler(collectors=[cls], options=OPTIONS)
    try:
        sample = sampler.sample()
    finally:
        sampler.close()
    success = sample.values(SCRAPE_SUCCESS)[(name,)]
    assert success == (1 if HOST_HAS[name]() else 0), sampler.unavailable
    declared = set(sampler.catalog)
    for family, labels, value in sample.all_series():
        assert family in declared and len(labels) == len(family.labels), family
        assert isinstance(value, (int, float))
    if name == "btrfs":
        assert len(sample.values(BTRFS_INFO)) == len(glob.glob("/sys/fs/btrfs/*-*"))
    if name == "mountstats":
        with open("/proc/self/mountstats") as f:
            nfs_mounts = sum(1 for line in f if " with fstype nfs" in line and "statvers=" in line)
        assert len(sample.values(MOUNT_AGE)) <= nfs_mounts


def test_values_are_printed_as_go_prints_them():
    """Every value of e2e-output.txt (Go's strconv.FormatFloat(v, 'g', -1, 64)) comes back from its float."""
    from node_e2e import EXPECTED

    from shm_metrics.readers.exporter.render import go_float

    lines = [line for line in EXPECTED.read_text().split("\n") if line and not line.startswith("#")]
    # The value follows the labels (whose values may hold spaces), or the name.
    values = [line[line.rindex("}") + 1:].strip() if "{" in line else line.split()[1] for line in lines]
    assert len(values) > 2000
    assert [v for v in values if go_float(float(v)) != v] == []
    assert [go_float(v) for v in (62, 1e6, 123456, 1234567, 1e-4, 1e-5, -3.5, 2 ** 64, float("nan"), -float("inf"))] \
        == ["62", "1e+06", "123456", "1.234567e+06", "0.0001", "1e-05", "-3.5", "1.8446744073709552e+19", "NaN", "-Inf"]

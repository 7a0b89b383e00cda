"""The hardware collectors against node_exporter 1.5.0's end-to-end fixture, family by family, and on this host.

Each collector runs alone over the unpacked fixture tree through the real
publisher and exporter (``exposition_of``), with cwd at the tree and its paths
relative as end-to-end-test.sh passes them (node_rapl_*'s ``path`` label shows
the path node_exporter was given).  Every family ``e2e-output.txt`` has for it
must come out byte for byte, and none it does not have.  Options the script
does not pass (rapl's zone label, the ignore patterns) are checked against
Debian's node_exporter 1.5.0 run on the same tree with the same option.  On
this host each collector must start or be left out cleanly, and publish only
the families it declares.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from exporter_util import Process, free_port, metrics, need
from node_e2e import (
    FIXTURES,
    collector_of,
    compare,
    diff_lines,
    expected_families,
    exposition_of,
    families,
    filtered,
    render,
    unpack,
)

from shm_metrics.publisher.collectors import SCRAPE_SUCCESS
from shm_metrics.publisher.collectors.bonding import Bonding
from shm_metrics.publisher.collectors.cpufreq import Cpufreq
from shm_metrics.publisher.collectors.dmi import Dmi
from shm_metrics.publisher.collectors.edac import Edac
from shm_metrics.publisher.collectors.fibrechannel import Fibrechannel
from shm_metrics.publisher.collectors.hwmon import Hwmon, split_filename
from shm_metrics.publisher.collectors.infiniband import Infiniband, parse_rate
from shm_metrics.publisher.collectors.mdadm import Mdadm, parse_mdstat
from shm_metrics.publisher.collectors.nvme import Nvme
from shm_metrics.publisher.collectors.powersupplyclass import PowerSupplyClass
from shm_metrics.publisher.collectors.rapl import Rapl
from shm_metrics.publisher.collectors.sysfs_util import go_float, go_text, go_uint0
from shm_metrics.publisher.collectors.tapestats import Tapestats
from shm_metrics.publisher.collectors.thermal_zone import ThermalZone
from shm_metrics.publisher.sampler import Sampler

# node_exporter collector name (as collector_of names its families) -> our class, in priority order.
HARDWARE = {"hwmon": Hwmon, "thermal_zone": ThermalZone, "cpufreq": Cpufreq, "mdadm": Mdadm, "bonding": Bonding,
            "powersupplyclass": PowerSupplyClass, "edac": Edac, "rapl": Rapl, "infiniband": Infiniband,
            "fibrechannel": Fibrechannel, "nvme": Nvme, "dmi": Dmi, "tapestats": Tapestats}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return unpack(tmp_path_factory.mktemp("node-e2e-hw"))


def _ours(root: Path, cls: type, options: dict | None = None) -> dict[str, str]:
    """One collector's families on the fixture tree, run from the tree with relative paths as the script does."""
    here = os.getcwd()
    os.chdir(root)
    try:
        return families(exposition_of(Path("."), collectors=[cls], options=options or {}))
    finally:
        os.chdir(here)


@pytest.fixture(scope="module")
def outputs(fixture_root: Path) -> dict[str, dict[str, str]]:
    return {name: _ours(fixture_root, cls) for name, cls in HARDWARE.items()}


@pytest.mark.parametrize("collector", list(HARDWARE))
def test_collector_reproduces_node_exporter_on_the_fixture(outputs, collector):
    expected = expected_families(collector)
    assert expected, f"e2e-output.txt has no family of {collector}"
    actual = outputs[collector]
    wrong = {name: diff_lines(block, actual.get(name, "")) for name, block in expected.items()
             if actual.get(name) != block}
    assert not wrong, wrong
    extra = [name for name in actual if collector_of(name) == collector and name not in expected]
    assert not extra, f"{collector} publishes families node_exporter does not: {extra}"


def test_table_of_the_hardware_collectors(outputs):
    table = {}
    for collector in HARDWARE:
        table.update(compare(expected_families(collector), outputs[collector]))
    print("\n" + render(table))
    assert set(table) == set(HARDWARE)
    equal = sum(len(row["equal"]) for row in table.values())
    assert equal == sum(len(expected_families(c)) for c in HARDWARE) == 134


def _oracle(root: Path, collector: str, *extra_flags: str) -> dict[str, str]:
    """Debian's node_exporter 1.5.0 with only ``collector`` (and ``extra_flags``) on the fixture tree."""
    binary = need("prometheus-node-exporter", "prometheus-node-exporter")
    port = free_port()
    fx = FIXTURES
    argv = [binary, "--collector.disable-defaults", f"--collector.{collector}", *extra_flags,
            f"--path.rootfs={fx}", f"--path.procfs={fx}/proc", f"--path.sysfs={fx}/sys",
            f"--web.listen-address=127.0.0.1:{port}"]
    proc = Process(argv, cwd=str(root))
    try:
        proc.wait_for_line("Listening on")
        text = metrics(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.stop()
    return {name: block for name, block in families(filtered(text)).items() if collector_of(name) == collector}


@pytest.mark.parametrize(("collector", "flag", "options", "changed"), [
    ("rapl", "--collector.rapl.enable-zone-label", {"rapl.enable-zone-label": True}, "node_rapl_joules_total"),
    ("powersupplyclass", "--collector.powersupply.ignored-supplies=^BAT", {"powersupply.ignored-supplies": "^BAT"},
     "node_power_supply_info"),
    ("tapestats", "--collector.tapestats.ignored-devices=^st0$", {"tapestats.ignored-devices": "^st0$"}, None),
])
def test_options_as_node_exporter(fixture_root, collector, flag, options, changed):
    expected = _oracle(fixture_root, collector, flag)
    actual = {name: block for name, block in _ours(fixture_root, HARDWARE[collector], options).items()
              if collector_of(name) == collector}
    assert actual == expected, {name: diff_lines(expected.get(name, ""), actual.get(name, ""))
                                for name in set(expected) | set(actual) if expected.get(name) != actual.get(name)}
    if changed is not None:
        # The option made a difference (the comparison above is not between two default runs).
        assert actual[changed] != expected_families(collector).get(changed)
    else:
        assert not actual  # the only drive is ignored


@pytest.mark.parametrize("collector", list(HARDWARE))
def test_collector_on_this_host(collector):
    """On this host (little of the hardware here): the collector starts and publishes only what it declares,
    or is left out with success 0."""
    cls = HARDWARE[collector]
    sampler = Sampler(collectors=[cls])
    try:
        sample = sampler.sample()
        success = sample.values(SCRAPE_SUCCESS)
        if sampler.collectors:
            declared = set(sampler.collectors[0].families)
            published = {family for family, _, _ in sample.all_series() if family not in (SCRAPE_SUCCESS,)
                         and family.name != "node_scrape_collector_duration_seconds"}
            assert published <= declared
            assert success[(collector,)] == 1
            assert len(sampler.catalog) == len(declared) + 2
        else:
            assert collector in sampler.unavailable
            assert success[(collector,)] == 0
            assert [f.name for f in sampler.catalog] == ["node_scrape_collector_success",
                                                         "node_scrape_collector_duration_seconds"]
    finally:
        sampler.close()


def test_go_number_and_text_rules():
    assert go_float("55000") == 55000.0 and go_float(" 1") is None and go_float("1_0") is None
    assert go_float("abc") is None and go_float("") is None
    assert go_uint0("0x13") == 19 and go_uint0("010") == 8 and go_uint0("0") == 0
    assert go_uint0("0xffffffffffffffff") == (1 << 64) - 1 and go_uint0("0x1ffffffffffffffff") is None
    assert go_uint0("-1") is None and go_uint0("N/A (no PMA)") is None
    # Go's ToValidUTF8: one replacement character per run of invalid bytes.
    assert go_text(b"LNV-45N1\xc0\xc0") == "LNV-45N1\ufffd" and go_text(b"a\xffb\xfe") == "a\ufffdb\ufffd"


def test_hwmon_attribute_names():
    assert split_filename("temp1_crit_alarm") == ("temp", "temp1", "crit_alarm")
    assert split_filename("pwm1") == ("pwm", "pwm1", "")
    assert split_filename("beep_enable") == ("beep_enable", "beep_enable0", "")
    assert split_filename("in10_input") == ("in", "in10", "input")


def test_infiniband_rate_is_parsed_as_procfs_does():
    assert parse_rate("40 Gb/sec (4X QDR)") == 5_000_000_000
    assert parse_rate("2.5 Gb/sec (1X SDR)") == 312_500_000
    # 0.3 as a float32 is 0.300000011920929: x 125000000 gives 37500001.49, truncated, as there (not 37500000).
    assert parse_rate("0.3 Gb/sec") == 37_500_001
    with pytest.raises(ValueError):
        parse_rate("40")


def test_mdstat_pending_resync_counts_no_synced_blocks():
    text = ("Personalities : [raid1]\n"
            "md9 : active raid1 sdb1[1] sda1[0]\n"
            "      1000 blocks [2/2] [UU]\n"
            "        resync=PENDING\n"
            "\n"
            "unused devices: <none>\n")
    (md,) = parse_mdstat(text)
    assert (md.name, md.state, md.blocks, md.synced, md.total, md.active) == ("md9", "resyncing", 1000, 0, 2, 2)


def test_absent_labels_are_left_out_by_the_python_api_too(fixture_root):
    """node_power_supply_info's AC adapter has only a type: the segment holds ABSENT_LABEL for the other
    labels, and Snapshot.families.to_dict() (shm-read --json) shows only the labels the series has."""
    import time
    import uuid

    from shm_metrics import shm_layout as L
    from shm_metrics.families import ABSENT_LABEL
    from shm_metrics.publisher.segment import OwnedSegment
    from shm_metrics.readers import Reader

    fixtures = fixture_root / FIXTURES
    sampler = Sampler(sysfs=str(fixtures / "sys"), collectors=[PowerSupplyClass])
    name = f"/shmtest-e2e-hw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    segment = None
    try:
        layout = L.Layout.for_capacities(64, 64, 64, 64, history=2, top=0, **sampler.family_capacities())
        segment = OwnedSegment(name, layout, 0o600, 1.0, sampler.catalog)
        sample = sampler.sample()
        raw = {labels for family, labels, _ in sample.all_series() if family.name == "node_power_supply_info"}
        assert any(ABSENT_LABEL in labels for labels in raw)  # what the publisher writes for a missing label
        segment.set_state(L.STATE_RUNNING)
        segment.publish(sample, time.time(), time.monotonic(), 0.0, 0)
        with Reader(name) as reader:
            info = reader.read().families.to_dict()["node_power_supply_info"]
    finally:
        if segment is not None:
            segment.close(unlink=True)
        sampler.close()
    by_supply = {row["labels"]["power_supply"]: row["labels"] for row in info["series"]}
    assert by_supply["AC"] == {"power_supply": "AC", "type": "Mains"}
    assert by_supply["BAT0"]["model_name"] == "LNV-45N1\ufffd" and "usb_type" not in by_supply["BAT0"]


def test_a_root_lists_as_glob_and_comes_and_goes(tmp_path, monkeypatch):
    """sysfs_util.Root: what entries() lists, [] while the directory is absent (looked up with access(2), no
    listing tried), and its entries again once it is there."""
    from shm_metrics.publisher.collectors import sysfs_util
    from shm_metrics.publisher.collectors.sysfs_util import Root, entries

    listed: list[str] = []
    real = os.listdir
    monkeypatch.setattr(sysfs_util.os, "listdir", lambda path: listed.append(path) or real(path))
    path = tmp_path / "bcache"
    root = Root(str(path))
    assert root.entries("*-*") == [] and listed == [str(path)]
    assert root.entries("*-*") == [] and listed == [str(path)], "absent: not listed again"
    (path / "ab-cd").mkdir(parents=True)
    (path / "register").write_text("")
    (path / ".hidden-x").mkdir()
    assert root.entries("*-*") == entries(str(path), "*-*") == [str(path / "ab-cd")]
    assert sorted(root.entries()) == sorted([str(path / "ab-cd"), str(path / "register")])
    (path / "ab-cd").rmdir()
    (path / ".hidden-x").rmdir()
    (path / "register").unlink()
    path.rmdir()
    assert root.entries() == []
    path.mkdir()
    (path / "x-y").mkdir()
    assert root.entries("*-*") == [str(path / "x-y")]

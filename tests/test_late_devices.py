"""Collectors and devices that appear after the publisher starts, and devices that go away (issue 15).

The trees are node_exporter's fixtures (tests/fixtures/node_exporter-1.5.0) copied into tmp_path.  What
must appear later is moved aside before the Sampler starts and renamed back (it appears whole, as a
class directory does when its module loads).  ``retry_seconds=0, rescan_seconds=0`` make the sampler
retry and list again at every sample, so no test waits on a clock: each checks that a sampler running
since before the change publishes exactly what a sampler started after it does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Publisher, wait_for
from node_e2e import FIXTURES, unpack

from shm_metrics.publisher.collectors import SCRAPE_DURATION, SCRAPE_SUCCESS, Devices
from shm_metrics.publisher.collectors.bonding import Bonding
from shm_metrics.publisher.collectors.conntrack import Conntrack
from shm_metrics.publisher.collectors.cpufreq import Cpufreq
from shm_metrics.publisher.collectors.edac import Edac
from shm_metrics.publisher.collectors.fibrechannel import Fibrechannel
from shm_metrics.publisher.collectors.hwmon import Hwmon
from shm_metrics.publisher.collectors.infiniband import Infiniband
from shm_metrics.publisher.collectors.lnstat import Lnstat
from shm_metrics.publisher.collectors.mdadm import Mdadm
from shm_metrics.publisher.collectors.meminfo_numa import MeminfoNuma
from shm_metrics.publisher.collectors.netclass import Netclass
from shm_metrics.publisher.collectors.nvme import Nvme
from shm_metrics.publisher.collectors.powersupplyclass import PowerSupplyClass
from shm_metrics.publisher.collectors.rapl import Rapl
from shm_metrics.publisher.collectors.tapestats import Tapestats
from shm_metrics.publisher.collectors.thermal_zone import ZONE_TEMP, ThermalZone
from shm_metrics.publisher.sampler import Sampler
from shm_metrics.readers.reader import Reader


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """node_exporter's unpacked fixture tree (proc, sys, udev), read-only: tests copy what they change."""
    return unpack(tmp_path_factory.mktemp("late-fixtures")) / FIXTURES


# Files a test rewrites in place (hard links would change the shared fixture): real copies.
REWRITTEN = ("sys/class/net/bonding_masters",)


@pytest.fixture
def tree(fixtures, tmp_path) -> Path:
    """A private tree (directories of its own, files hard-linked: renames and removals stay private, and
    the ~900 files cost a link each), and a place beside it for what appears later."""
    root = tmp_path / "root"
    shutil.copytree(fixtures, root, symlinks=True, copy_function=os.link)
    for relative in REWRITTEN:
        (root / relative).unlink()
        shutil.copyfile(fixtures / relative, root / relative)
    (tmp_path / "aside").mkdir()
    return root


def start(tree: Path, cls, **kwargs) -> Sampler:
    return Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), rootfs=str(tree),
                   udev_data=str(tree / "udev" / "data"), collectors=[cls], **kwargs)


def published(sample) -> set[tuple[str, tuple[str, ...], str]]:
    """Every series but the durations (they change); values as the repr of the float the segment holds
    (and NaN equals NaN)."""
    return {(fam.name, labels, repr(float(value))) for fam, labels, value in sample.all_series()
            if fam is not SCRAPE_DURATION}


def fresh(tree: Path, cls) -> set:
    """What a sampler started now publishes."""
    sampler = start(tree, cls)
    try:
        return published(sampler.sample())
    finally:
        sampler.close()


def success(sample, collector: str) -> float | None:
    return sample.values(SCRAPE_SUCCESS).get((collector,))


def hide(tree: Path, relative: str) -> Path:
    """Move ``relative`` aside; returns where it went."""
    target = tree.parent / "aside" / relative.replace("/", "_")
    os.rename(tree / relative, target)
    return target


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def rewrite(path: Path, text: str) -> None:
    """In place (the collector keeps the file open, as the kernel's file stays the same one)."""
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


# collector, what appears later, what goes away then (a path, or a function of the tree), whether the
# collector is available without its files (no such devices on this host: success 1, no series).
CASES = {
    "hwmon": (Hwmon, "sys/class/hwmon", "sys/class/hwmon/hwmon4", False),
    "powersupplyclass": (PowerSupplyClass, "sys/class/power_supply", "sys/class/power_supply/BAT0", False),
    "nvme": (Nvme, "sys/class/nvme", "sys/class/nvme/nvme0", False),
    "infiniband": (Infiniband, "sys/class/infiniband", "sys/class/infiniband/mlx4_0", False),
    "fibrechannel": (Fibrechannel, "sys/class/fc_host", "sys/class/fc_host/host0", False),
    "tapestats": (Tapestats, "sys/class/scsi_tape", "sys/class/scsi_tape/st0", False),
    "rapl": (Rapl, "sys/class/powercap", "sys/class/powercap/intel-rapl:0:0", False),
    "thermal_zone": (ThermalZone, "sys/class/thermal", "sys/class/thermal/thermal_zone0", True),
    "edac": (Edac, "sys/devices/system/edac/mc", "sys/devices/system/edac/mc/mc0", True),
    "cpufreq": (Cpufreq, "sys/devices/system/cpu", "sys/devices/system/cpu/cpu1", True),
    "bonding": (Bonding, "sys/class/net/bonding_masters",
                lambda tree: rewrite(tree / "sys/class/net/bonding_masters", "bond0 dmz\n"), False),
    "mdadm": (Mdadm, "proc/mdstat", None, False),
    "conntrack": (Conntrack, "proc/sys/net/netfilter", None, False),
    "lnstat": (Lnstat, "proc/net/stat", "proc/net/stat/nf_conntrack", True),
    "meminfo_numa": (MeminfoNuma, "sys/devices/system/node", "sys/devices/system/node/node1", True),
}


@pytest.mark.parametrize("case", CASES)
def test_collector_starts_when_its_files_appear_and_drops_devices_that_go_away(tree, case):
    cls, later, gone, available_without = CASES[case]
    aside = hide(tree, later)
    sampler = start(tree, cls, retry_seconds=0, rescan_seconds=0)
    try:
        before = sampler.sample()
        assert success(before, case) == (1 if available_without else 0)
        assert {s[0] for s in published(before)} == {SCRAPE_SUCCESS.name}  # nothing else yet
        catalog, version = sampler.catalog, sampler.catalog_version

        os.rename(aside, tree / later)
        after = sampler.sample()
        assert success(after, case) == 1
        assert published(after) == fresh(tree, cls)
        assert len(published(after)) > 1
        declared = {fam.name for fam in sampler.catalog}
        assert {fam.name for fam, _, _ in after.all_series()} <= declared, "a series whose family the catalog lacks"
        if not available_without:  # its families joined the catalog: a new, larger tuple, the old one first
            assert sampler.catalog_version == version + 1
            assert len(sampler.catalog) > len(catalog) and sampler.catalog[:len(catalog)] == catalog

        if gone is None:
            return
        gone(tree) if callable(gone) else remove(tree / gone)
        later_sample = sampler.sample()
        assert success(later_sample, case) == 1
        assert published(later_sample) == fresh(tree, cls)
        assert published(later_sample) < published(after), "the device that went away is still published"
    finally:
        sampler.close()


def test_thermal_zone_found_later_and_dropped(tree):
    """A zone and a cooling device written in later (aside, then renamed in) are published with their
    values, and go away."""
    sampler = start(tree, ThermalZone, rescan_seconds=0)
    try:
        assert published(sampler.sample()) == fresh(tree, ThermalZone)
        for name, files in (("thermal_zone3", {"type": "x86_pkg_temp", "temp": "45500"}),
                            ("cooling_device1", {"type": "Fan", "cur_state": "2", "max_state": "10"})):
            staged = tree.parent / "aside" / name
            staged.mkdir()
            for file, text in files.items():
                (staged / file).write_text(text + "\n")
            os.rename(staged, tree / "sys/class/thermal" / name)
        sample = sampler.sample()
        assert sample.values(ZONE_TEMP)[("3", "x86_pkg_temp")] == 45.5
        assert {fam.name: value for fam, labels, value in sample.all_series() if labels == ("1", "Fan")} == {
            "node_cooling_device_cur_state": 2, "node_cooling_device_max_state": 10}
        assert published(sample) == fresh(tree, ThermalZone)
        shutil.rmtree(tree / "sys/class/thermal/thermal_zone3")
        assert ("3", "x86_pkg_temp") not in sampler.sample().values(ZONE_TEMP)
        assert published(sampler.sample()) == fresh(tree, ThermalZone)
    finally:
        sampler.close()


def test_hwmon_chip_found_later_declares_its_families(tree):
    """A chip with sensor types no chip had at start: its families join the catalog (the old one is
    the new one's beginning), with the values a sampler started now publishes."""
    aside = hide(tree, "sys/class/hwmon/hwmon3")  # nct6779: the only chip with voltages and pwm
    sampler = start(tree, Hwmon, rescan_seconds=0)
    try:
        sampler.sample()
        catalog = sampler.catalog
        assert not any(fam.name.startswith(("node_hwmon_in_", "node_hwmon_pwm_")) for fam in catalog)
        os.rename(aside, tree / "sys/class/hwmon/hwmon3")
        sample = sampler.sample()
        assert sampler.catalog_version == 1 and sampler.catalog[:len(catalog)] == catalog
        assert "node_hwmon_in_volts" in {fam.name for fam in sampler.catalog[len(catalog):]}
        assert published(sample) == fresh(tree, Hwmon)
        sampler.sample()
        assert sampler.catalog_version == 1, "the catalog changed without a new family"
    finally:
        sampler.close()


def test_a_retried_collector_joins_in_registry_order(tree):
    aside = hide(tree, "sys/class/hwmon")
    sampler = Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), collectors=[Bonding, Hwmon, Nvme],
                      retry_seconds=0)
    try:
        assert [c.name for c in sampler.collectors] == ["bonding", "nvme"]
        assert sampler.unavailable.keys() == {"hwmon"}
        os.rename(aside, tree / "sys/class/hwmon")
        sample = sampler.sample()
        assert [c.name for c in sampler.collectors] == ["bonding", "hwmon", "nvme"]
        assert not sampler.unavailable and "hwmon" in sampler.families
        assert {labels[0] for fam, labels, value in sample.all_series() if fam is SCRAPE_SUCCESS and value == 1} == {
            "bonding", "hwmon", "nvme"}
    finally:
        sampler.close()


def test_nothing_is_retried_or_listed_again_before_its_time(tree):
    """With long intervals a sample does no retry and no listing (their cost is paid every N seconds, not
    every sample); an explicit retry starts the collector at once."""
    aside = hide(tree, "sys/class/hwmon")
    sampler = start(tree, Hwmon, retry_seconds=3600)
    try:
        sampler.sample()
        os.rename(aside, tree / "sys/class/hwmon")
        assert success(sampler.sample(), "hwmon") == 0
        assert sampler.retry_unavailable() == ["hwmon"]
        assert success(sampler.sample(), "hwmon") == 1
    finally:
        sampler.close()
    sampler = start(tree, Nvme, rescan_seconds=3600)
    try:
        shutil.copytree(tree / "sys/class/nvme/nvme0", tree / "sys/class/nvme/nvme1")
        assert {labels[0] for _, labels, _ in sampler.sample().all_series() if labels} == {"nvme0", "nvme"}
    finally:
        sampler.close()


def test_a_retry_waits_for_the_path_the_collector_lacked(tree, monkeypatch):
    """A collector that said which path it lacked (hwmon: its class directory) is not constructed again while
    that path is missing, so the grid samples stay compiled (a retry is a Python sample), but every
    RETRY_ALL_AFTER-th retry all the same; once the path is there, the next retry starts it."""
    from shm_metrics.publisher import sampler as sampler_module

    constructed = []
    original = Hwmon.__init__

    def counting(self, ctx):
        constructed.append(1)
        original(self, ctx)

    monkeypatch.setattr(Hwmon, "__init__", counting)
    aside = hide(tree, "sys/class/hwmon")
    sampler = start(tree, Hwmon, retry_seconds=0)
    try:
        assert len(constructed) == 1
        sampler.sample()  # each sample finds a retry due (retry_seconds=0), and skips it
        assert sampler.grid_compilable(time.monotonic()), "a retry with nothing to start kept the grid in Python"
        for _ in range(sampler_module.RETRY_ALL_AFTER - 3):
            assert success(sampler.sample(full=False), "hwmon") == 0
        assert len(constructed) == 1, "constructed again while its class directory was missing"
        sampler.sample()
        assert len(constructed) == 2, "the periodic retry of every collector did not run"
        os.rename(aside, tree / "sys/class/hwmon")
        assert success(sampler.sample(), "hwmon") == 1
        assert len(constructed) == 3 and not sampler.unavailable
    finally:
        sampler.close()


def test_grid_compilable_follows_the_collectors_without_a_new_plan(tree, monkeypatch):
    """grid_compilable() (asked before every compiled grid sample) is False while a collector would run in a grid
    sample (one started by a retry that never ran), True again once it ran; a full sample (each scrape) does not
    make it build the grid samples' whole plan again (that cost ~170 us of CPU after every scrape)."""
    aside = hide(tree, "sys/class/hwmon")
    sampler = start(tree, Hwmon, retry_seconds=3600)
    plans = []
    original = Sampler._grid_plan
    monkeypatch.setattr(Sampler, "_grid_plan", lambda self, scan: plans.append(scan) or original(self, scan))
    try:
        sampler.sample()
        assert sampler.grid_compilable(time.monotonic())
        sampler.sample(full=True)
        assert sampler.grid_compilable(time.monotonic()) and plans == []
        os.rename(aside, tree / "sys/class/hwmon")
        assert sampler.retry_unavailable() == ["hwmon"]
        assert not sampler.grid_compilable(time.monotonic()), "a collector that never ran counted as replayable"
        grid = sampler.sample(full=False)  # runs it: it was due (its success comes with the next full sample)
        assert any(fam.name.startswith("node_hwmon_") for fam, _, _ in grid.all_series())
        assert sampler.grid_compilable(time.monotonic())
    finally:
        sampler.close()


def test_retrying_leaks_no_descriptor(tree):
    """conntrack half there (its count file, not its max): every retry opens a file and fails; whatever it
    opened is closed again (a retry every 30 s for months)."""
    (tree / "proc/sys/net/netfilter/nf_conntrack_max").unlink()
    sampler = start(tree, Conntrack, retry_seconds=0)
    try:
        sampler.sample()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            assert success(sampler.sample(), "conntrack") == 0
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        sampler.close()


def _temperatures(sample) -> dict:
    return {labels: value for fam, labels, value in sample.all_series() if fam.name == "node_hwmon_temp_celsius"}


def test_a_device_replaced_under_its_name_is_built_again(tree):
    """A driver reloaded, a chip plugged back: the kernel gives it the same hwmonN.  The old files fail to
    read, and the chip under the name is a new one (another inode): it is built again, without waiting
    for the next listing."""
    chip = tree / "sys/class/hwmon/hwmon9"
    chip.mkdir()
    (chip / "name").write_text("late\n")
    (chip / "temp1_input").mkdir()  # opens, fails to read (EISDIR), as a removed device's files do
    sampler = start(tree, Hwmon, rescan_seconds=3600)  # no listing: only the read error can tell
    try:
        assert ("late", "temp1") not in _temperatures(sampler.sample())
        assert ("late", "temp1") not in _temperatures(sampler.sample())  # the same chip: kept
        staged = tree.parent / "aside" / "hwmon9"
        staged.mkdir()
        (staged / "name").write_text("late\n")
        (staged / "temp1_input").write_text("41000\n")
        shutil.rmtree(chip)
        os.rename(staged, chip)
        sampler.sample()  # the old files fail to read, and the name holds another chip: dropped
        assert _temperatures(sampler.sample())[("late", "temp1")] == 41.0
    finally:
        sampler.close()


def test_device_vanishing_while_it_is_read_is_skipped(tmp_path):
    """A device removed between the listing and its reads is left out; a device that cannot be read while
    it is there fails the listing (the sample, as node_exporter's scrape), and the next sample lists again."""
    from shm_metrics.publisher.collectors import Context

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    broken = set()

    def build(name, path, opener):
        if name == "b" and (tmp_path / "b").exists():
            shutil.rmtree(path)  # unplugged while being read
        if name in broken:
            raise OSError(f"{name}: cannot read")
        return name.upper()

    devices = Devices(Context(rescan_seconds=0), str(tmp_path), build)
    assert devices.current() == [("a", "A"), ("c", "C")]
    (tmp_path / "d").mkdir()
    broken.add("d")
    with pytest.raises(OSError):
        devices.current()
    broken.clear()
    assert devices.current() == [("a", "A"), ("c", "C"), ("d", "D")]
    shutil.rmtree(tmp_path / "a")
    assert devices.gone("a") and devices.current() == [("c", "C"), ("d", "D")]


def _family(snapshot, name: str) -> dict:
    fam = snapshot.families.get(name)
    return {} if fam is None else dict(fam.series)


def _segment_series(snap, names: set[str]) -> set:
    return {(name, labels, repr(float(value))) for name in names for labels, value in _family(snap, name).items()}


def test_publisher_publishes_zones_and_collectors_that_appear_later(tree, name):
    """A real shm-publisher on the fixture tree.  A thermal zone written in later is published (its
    families are in the catalog from the start), then removed and gone.  power_supply's and hwmon's
    classes appear later: success flips to 1 and their families, new to the catalog, reach the segment
    (a new generation) with what a sampler started now publishes."""
    asides = {relative: hide(tree, relative) for relative in ("sys/class/power_supply", "sys/class/hwmon")}
    pub = Publisher(name, f"--path.procfs={tree}/proc", f"--path.sysfs={tree}/sys", f"--path.rootfs={tree}",
                    f"--path.udev.data={tree}/udev/data", "--collector.disable-defaults",
                    "--collector.thermal_zone", "--collector.powersupplyclass", "--collector.hwmon",
                    "--interval", "0.05", "--top", "0", "--always-full",  # every family every sample
                    "--collector.retry-interval", "0", "--collector.rescan-interval", "0")
    try:
        with Reader(name) as reader:
            snap = reader.read()
            success_of = _family(snap, "node_scrape_collector_success")
            assert success_of[("powersupplyclass",)] == 0 and success_of[("hwmon",)] == 0
            assert ("7", "acpitz") not in _family(snap, "node_thermal_zone_temp")
            staged = tree.parent / "aside" / "thermal_zone7"
            staged.mkdir()
            (staged / "type").write_text("acpitz\n")
            (staged / "temp").write_text("27800\n")
            os.rename(staged, tree / "sys/class/thermal/thermal_zone7")
            for relative, aside in asides.items():
                os.rename(aside, tree / relative)

            def all_there():
                snap = reader.read()
                success_of = _family(snap, "node_scrape_collector_success")
                ok = success_of.get(("powersupplyclass",)) == 1 and success_of.get(("hwmon",)) == 1
                return snap if ok and ("7", "acpitz") in _family(snap, "node_thermal_zone_temp") else None

            snap = wait_for(all_there, what="the zone, the power supplies and the hwmon chips")
            assert _family(snap, "node_thermal_zone_temp")[("7", "acpitz")] == 27.8
            assert snap.generation > 0, "new families without a new generation"
            for cls in (PowerSupplyClass, Hwmon):
                expected = {row for row in fresh(tree, cls) if row[0] != SCRAPE_SUCCESS.name}
                assert _segment_series(snap, {row[0] for row in expected}) == expected
            shutil.rmtree(tree / "sys/class/thermal/thermal_zone7")
            remove(tree / "sys/class/power_supply/BAT0")
            wait_for(lambda: ("7", "acpitz") not in _family(reader.read(), "node_thermal_zone_temp")
                     and ("BAT0",) not in _family(reader.read(), "node_power_supply_capacity"),
                     what="the zone and the battery gone")
    finally:
        pub.stop()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating veth interfaces and tmpfs mounts needs root")
def test_publisher_publishes_an_interface_and_a_mount_that_appear_later(tmp_path, name):
    """On the real host: a veth pair and a tmpfs mount created under a running publisher are published,
    and gone once removed (netdev, netclass and filesystem families are in the catalog from the start)."""
    veth, peer = f"shmlt{os.getpid() % 100000}a", f"shmlt{os.getpid() % 100000}b"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    pub = Publisher(name, "--collector.disable-defaults", "--collector.netdev", "--collector.netclass",
                    "--collector.filesystem", "--interval", "0.05", "--top", "0", "--always-full")
    mounted = linked = False
    try:
        with Reader(name) as reader:
            assert (veth,) not in _family(reader.read(), "node_network_up")
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            linked = True
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "shmlt", str(mountpoint)], check=True,
                           timeout=30)
            mounted = True
            size = ("shmlt", "tmpfs", str(mountpoint))

            def both():
                snap = reader.read()
                return (snap if (veth,) in _family(snap, "node_network_receive_bytes_total")
                        and (peer,) in _family(snap, "node_network_up")
                        and size in _family(snap, "node_filesystem_size_bytes") else None)

            snap = wait_for(both, what="the veth pair and the mount")
            assert _family(snap, "node_filesystem_size_bytes")[size] == 4 * 1024 * 1024
            _ip("link", "del", veth)
            linked = False
            subprocess.run(["umount", str(mountpoint)], check=True, timeout=30)
            mounted = False

            def gone():
                snap = reader.read()
                return not ((veth,) in _family(snap, "node_network_receive_bytes_total")
                            or (peer,) in _family(snap, "node_network_up")
                            or size in _family(snap, "node_filesystem_size_bytes"))

            wait_for(gone, what="the veth pair and the mount gone")
    finally:
        pub.stop()
        if linked:
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
        if mounted:
            subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)


def test_a_cpu_whose_cpufreq_appears_later_is_published_then(tree):
    """An offline CPU has no cpufreq link; when it comes online the link appears and its frequencies are
    published from the next rescan (a CPU found without one is no device yet, not an empty one kept)."""
    cpu = next(p for p in sorted((tree / "sys/devices/system/cpu").glob("cpu[0-9]*"))
               if os.path.lexists(p / "cpufreq"))
    aside = tree.parent / "aside" / "cpufreq"
    os.rename(cpu / "cpufreq", aside)
    sampler = start(tree, Cpufreq, rescan_seconds=0)
    try:
        number = cpu.name.removeprefix("cpu")

        def its_series() -> list:
            return [labels for fam, labels, _ in sampler.sample().all_series() if labels == (number,)]

        assert not its_series()
        os.rename(aside, cpu / "cpufreq")
        assert its_series()
        assert published(sampler.sample()) == fresh(tree, Cpufreq)
    finally:
        sampler.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="creating veth interfaces needs root")
def test_an_interface_made_again_under_its_name_is_read_anew():
    """A VPN's tun0 reconnecting, docker0 after a restart: the interface is deleted and made again under its
    name between two samples.  The files kept open of the old one answer ENODEV; netclass must read the new
    one (its ifindex, its state), not publish the old one's last state forever."""
    by_name = {family.name: family for family in Netclass.families}
    iface_id, up = by_name["node_network_iface_id"], by_name["node_network_up"]
    veth, peer = f"shmre{os.getpid() % 100000}a", f"shmre{os.getpid() % 100000}b"
    sampler = Sampler(collectors=[Netclass])
    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        for _ in range(3):  # (its program learned)
            first = sampler.sample(full=True)
        assert first.values(iface_id)[(veth,)] == int(Path(f"/sys/class/net/{veth}/ifindex").read_text())
        _ip("link", "del", veth)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", veth, "up")
        _ip("link", "set", peer, "up")
        again = sampler.sample(full=True)
        assert again.values(iface_id)[(veth,)] == int(Path(f"/sys/class/net/{veth}/ifindex").read_text())
        state = Path(f"/sys/class/net/{veth}/operstate").read_text().strip()
        assert again.values(up)[(veth,)] == (1 if state == "up" else 0)
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
        sampler.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="creating veth interfaces needs root")
def test_files_kept_by_path_follow_a_device_made_again_under_its_name():
    """LearnedPaths (btrfs, bcache, xfs, zfs's pools, power supplies): a device deleted and made again under
    its path between two samples (a filesystem mounted again, a battery plugged back) answers ENODEV through
    the kept files; its files are opened again and read at once, not published as unreadable."""
    from shm_metrics.publisher.collectors.learned import LearnedPaths, rows_of

    veth, peer = f"shmkp{os.getpid() % 100000}a", f"shmkp{os.getpid() % 100000}b"
    root = f"/sys/class/net/{veth}"
    kept = LearnedPaths()
    group_parse = lambda texts: [("ifindex", (), None if texts[0] is None else int(texts[0])),  # noqa: E731
                                 ("mtu", (), None if texts[1] is None else int(texts[1]))]
    file_parse = lambda text: [("ifindex", (), int(text))]  # noqa: E731

    def now() -> int:
        return int(Path(f"{root}/ifindex").read_text())

    try:
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        for _ in range(3):  # (their programs learned)
            assert rows_of(kept.group_rows((f"{root}/ifindex", f"{root}/mtu"), group_parse))[0][2] == now()
            assert rows_of(kept.rows(f"{root}/ifindex", file_parse))[0][2] == now()
        _ip("link", "del", veth)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        assert rows_of(kept.group_rows((f"{root}/ifindex", f"{root}/mtu"), group_parse))[0][2] == now()
        assert rows_of(kept.rows(f"{root}/ifindex", file_parse))[0][2] == now()
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
        kept.close()

"""publisher.sampler.Sampler against the real host (and psutil), and against a fake /proc tree.

Values of a live host move between two reads, so each comparison with the host
either brackets the sample between a read before and a read after (counters
only grow), or retries until the value did not change around the sample.
"""

from __future__ import annotations

import logging
import os
import re

import psutil
import pytest

from shm_metrics.publisher import filters as F
from shm_metrics.publisher.sampler import USER_HZ, Sample, Sampler

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
             "pstore", "bpf", "mqueue", "hugetlbfs", "configfs", "fusectl", "autofs", "binfmt_misc", "nsfs",
             "overlay", "squashfs", "rpc_pipefs", "selinuxfs"}


@pytest.fixture
def sampler(name):  # name: nothing here touches /dev/shm, and the fixture checks that
    s = Sampler()
    yield s
    s.close()


def numeric_proc_entries() -> int:
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def stable(read_host, take_sample, tries: int = 50):
    """(host value, sample) where the host value was the same before and after the sample."""
    for _ in range(tries):
        before = read_host()
        sample = take_sample()
        if read_host() == before:
            return before, sample
    pytest.skip("the host value kept changing around every sample")


# ----------------------------------------------------------------- the real host
def test_procs_total_counts_numeric_proc_entries(sampler):
    before, before_psutil = numeric_proc_entries(), len(psutil.pids())
    procs = sampler.sample().scalars["procs_total"]
    after, after_psutil = numeric_proc_entries(), len(psutil.pids())
    churn = 5
    assert min(before, after) - churn <= procs <= max(before, after) + churn
    assert min(before_psutil, after_psutil) - churn <= procs <= max(before_psutil, after_psutil) + churn


def test_procs_total_follows_processes_that_start_and_exit(sampler):
    """The count is kept while /proc/loadavg's task number and last PID stand still: a child started or
    reaped moves them, so the next sample counts again."""
    import subprocess

    first = sampler.sample().scalars["procs_total"]
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(20)]
    try:
        with_them = sampler.sample().scalars["procs_total"]
    finally:
        for child in children:
            child.kill()
            child.wait()
    without = sampler.sample().scalars["procs_total"]
    # Other processes of the host may come and go meanwhile: a margin, far below the 20 children.
    assert with_them - first >= 15 and with_them - without >= 15, (first, with_them, without)


def test_procs_total_counts_again_only_when_tasks_changed(tmp_path):
    """On a procfs showing this process's PID namespace, the listing is repeated when loadavg's task
    number or last PID moved, and only then (a fixture tree: its ``self`` names this process)."""
    from shm_metrics.publisher.collectors import Context
    from shm_metrics.publisher.collectors.processes import Procs

    root = tmp_path / "proc"
    root.mkdir()
    (root / "self").symlink_to(str(os.getpid()))
    for pid in ("1", "42"):
        (root / pid).mkdir()
    write(root / "loadavg", "0.00 0.00 0.00 1/10 42\n")
    procs = Procs(Context(procfs=str(root)))
    try:
        def count() -> int:
            out = Sample()
            procs.collect(out)
            return out.scalars["procs_total"]

        assert count() == 2
        (root / "43").mkdir()
        assert count() == 2  # nothing in loadavg moved: the listing is not repeated
        write(root / "loadavg", "0.00 0.00 0.00 2/11 43\n")  # a new task, PID 43
        assert count() == 3
        (root / "42").rmdir()
        write(root / "loadavg", "0.00 0.00 0.00 1/10 43\n")  # an exit: one task fewer, same last PID
        assert count() == 2
        (root / "self").unlink()
        (root / "self").symlink_to("1")  # another namespace's procfs: listed every time
        other = Procs(Context(procfs=str(root)))
        try:
            out = Sample()
            other.collect(out)
            (root / "44").mkdir()
            other.collect(out)
            assert out.scalars["procs_total"] == 3
        finally:
            other.close()
    finally:
        procs.close()


def test_memory_matches_meminfo_and_psutil(sampler):
    s = sampler.sample().scalars
    assert s["mem_total_bytes"] == psutil.virtual_memory().total == meminfo()["MemTotal"] * 1024
    assert s["mem_used_bytes"] == s["mem_total_bytes"] - s["mem_available_bytes"]
    assert s["swap_total_bytes"] == psutil.swap_memory().total
    assert s["swap_used_bytes"] == s["swap_total_bytes"] - s["swap_free_bytes"]
    for key in ("mem_available_bytes", "mem_free_bytes", "mem_buffers_bytes", "mem_cached_bytes"):
        assert 0 <= s[key] <= s["mem_total_bytes"], key

    # exact, at a moment when meminfo did not change around the sample
    info, s = stable(meminfo, lambda: sampler.sample().scalars)
    assert s["mem_cached_bytes"] == info["Cached"] * 1024  # Cached only: not + SReclaimable like psutil
    assert s["mem_available_bytes"] == info["MemAvailable"] * 1024
    assert s["mem_free_bytes"] == info["MemFree"] * 1024
    assert s["mem_buffers_bytes"] == info["Buffers"] * 1024
    assert s["mem_used_bytes"] == (info["MemTotal"] - info["MemAvailable"]) * 1024
    assert s["swap_free_bytes"] == info["SwapFree"] * 1024

    vm, s = stable(lambda: psutil.virtual_memory().available, lambda: sampler.sample().scalars)
    assert s["mem_available_bytes"] == vm


def test_cpu_times_match_psutil(sampler):
    before = psutil.cpu_times()
    before_per = psutil.cpu_times(percpu=True)
    sample = sampler.sample()
    after = psutil.cpu_times()
    after_per = psutil.cpu_times(percpu=True)
    s = sample.scalars
    for mode in CPU_MODES:
        # iowait may even go backwards on Linux; everything else is bracketed
        slack = 1.0 if mode == "iowait" else 1e-6
        value = s[f"cpu_seconds_{mode}"]
        assert isinstance(value, float)
        assert getattr(before, mode) - slack <= value <= getattr(after, mode) + slack, mode

    with open("/proc/stat") as f:
        cpu_lines = [line for line in f if re.match(r"cpu\d+ ", line)]
    assert s["cpu_count"] == len(cpu_lines) == len(sample.cpus)
    assert len(sample.cpus) == psutil.cpu_count()
    assert [c["cpu"] for c in sample.cpus] == [int(line[3:].split()[0]) for line in cpu_lines]
    for row, b, a in zip(sample.cpus, before_per, after_per):
        for mode in CPU_MODES:
            slack = 1.0 if mode == "iowait" else 1e-6
            assert getattr(b, mode) - slack <= row[mode] <= getattr(a, mode) + slack, (row["cpu"], mode)
    # the per-CPU lines add up to the total line (to a tick per CPU of rounding/race)
    for mode in ("user", "system", "idle"):
        total = sum(row[mode] for row in sample.cpus)
        assert abs(total - s[f"cpu_seconds_{mode}"]) <= len(sample.cpus) * 2 / USER_HZ + 1.0, mode

    for _ in range(2):
        sample = sampler.sample()
        assert 0.0 <= sample.scalars["cpu_percent"] <= 100.0
        assert all(0.0 <= row["percent"] <= 100.0 for row in sample.cpus)


def test_stat_counters_and_load(sampler):
    with open("/proc/stat") as f:
        stat = {line.split()[0]: line.split()[1:] for line in f}
    s = sampler.sample().scalars
    assert s["boot_time"] == float(stat["btime"][0])
    assert abs(s["boot_time"] - psutil.boot_time()) < 2
    assert s["forks_total"] >= int(stat["processes"][0])
    assert s["ctx_switches_total"] >= int(stat["ctxt"][0])
    assert s["interrupts_total"] >= int(stat["intr"][0])
    assert s["procs_running"] >= 1  # this process is running while it samples
    assert s["threads_total"] > s["procs_total"]
    assert s["filefd_maximum"] >= s["filefd_allocated"] > 0
    assert s["uptime_seconds"] > 0

    loads, s = stable(os.getloadavg, lambda: sampler.sample().scalars)
    # /proc/loadavg truncates to two decimals (the kernel's LOAD_FRAC), getloadavg() does not: up to 0.01 apart.
    assert (s["load1"], s["load5"], s["load15"]) == pytest.approx(loads, abs=0.0101)


def test_net_devices_are_psutils(sampler):
    before = psutil.net_io_counters(pernic=True)
    rows = sampler.sample().net
    after = psutil.net_io_counters(pernic=True)
    devices = [row["device"] for row in rows]
    assert len(devices) == len(set(devices))
    assert "lo" not in devices, "Debian's node_exporter leaves out the loopback interface by default"
    expected = {d for d in before if not F.Filters().net_excluded(d)}
    assert set(devices) == expected == {d for d in after if d != "lo"}
    for row in rows:
        b, a = before[row["device"]], after[row["device"]]
        assert b.bytes_recv <= row["rx_bytes"] <= a.bytes_recv
        assert b.bytes_sent <= row["tx_bytes"] <= a.bytes_sent
        assert b.packets_recv <= row["rx_packets"] <= a.packets_recv
        assert b.errin <= row["rx_errors"] <= a.errin
        assert b.dropin <= row["rx_dropped"] <= a.dropin


def test_disks_follow_the_default_exclude(sampler):
    rows = sampler.sample().disks
    with open("/proc/diskstats") as f:
        host = [line.split() for line in f]
    all_names = {v[2] for v in host}
    expected = {v[2] for v in host if len(v) >= 14 and not re.search(F.DISK_EXCLUDE, v[2])}
    names = [row["device"] for row in rows]
    assert set(names) == expected
    assert len(names) == len(set(names))
    for dev in names:
        assert not re.match(r"^(loop|ram)\d+$", dev), dev  # zram stays, as in Debian's node_exporter 1.5.0
        assert not re.match(r"^((h|s|v|xv)d[a-z]+\d+|nvme\d+n\d+p\d+)$", dev), dev
    excluded = all_names - set(names)
    assert all(re.search(F.DISK_EXCLUDE, dev) for dev in excluded)
    for row in rows:
        assert row["read_bytes"] % 512 == 0 and row["written_bytes"] % 512 == 0
        assert isinstance(row["io_time_seconds"], float)


def test_filesystems_exclude_pseudo_and_report_root(sampler):
    rows = sampler.sample().filesystems
    assert rows, "at least / is mounted"
    for row in rows:
        assert not re.match(r"^/(proc|sys|dev)($|/)", row["mountpoint"]), row
        assert row["fstype"] not in PSEUDO_FS, row
        assert not re.search(F.FS_TYPE_EXCLUDE, row["fstype"])
        assert row["size_bytes"] >= row["free_bytes"] >= 0
    keys = [(r["mountpoint"], r["device"], r["fstype"]) for r in rows]
    assert len(keys) == len(set(keys))
    roots = [r for r in rows if r["mountpoint"] == "/"]
    assert roots
    st = os.statvfs("/")
    assert roots[0]["size_bytes"] == st.f_blocks * st.f_bsize
    assert roots[0]["size_bytes"] > 0


# ----------------------------------------------------------------- a fake /proc
STAT_1 = """\
cpu  100 0 50 800 50 0 0 0 0 0
cpu0 60 0 30 400 10 0 0 0 0 0
cpu1 40 0 20 400 40 0 0 0 0 0
intr 12345 1 2 3 4
ctxt 67890
btime 1700000000
processes 4242
procs_running 3
procs_blocked 1
softirq 10 1 2 3
"""
# deltas: cpu user+60 system+20 idle+100 iowait+20 -> 80 busy of 200 = 40 %
#         cpu0 user+40 system+20 idle+20 -> 60 of 80 = 75 %
#         cpu1 user+20 idle+80 iowait+20 -> 20 of 120 = 16.67 %
STAT_2 = """\
cpu  160 0 70 900 70 0 0 0 0 0
cpu0 100 0 50 420 10 0 0 0 0 0
cpu1 60 0 20 480 60 0 0 0 0 0
intr 22345 1 2 3 4
ctxt 77890
btime 1700000000
processes 4300
procs_running 5
procs_blocked 0
"""
MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         2000000 kB
MemAvailable:    9000000 kB
Buffers:          300000 kB
Cached:          4000000 kB
SwapCached:        12345 kB
Active:          5000000 kB
SwapTotal:       1000000 kB
SwapFree:         400000 kB
SReclaimable:     500000 kB
HugePages_Total:       7
Hugepagesize:       2048 kB
"""
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
    "carrier compressed\n"
    "    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0"
    "       0          0\n"
    "  eth0: 123456789   1000    2    3    0     0          0         0 987654321    2000    4    5    0     0"
    "       0          0\n"
    "veth12:5 6 7 8 0 0 0 0 9 10 11 12 0 0 0 0\n"  # no space after the colon (large counters)
)
DISKSTATS = """\
   8       0 sda 100 5 2000 30 200 6 4000 40 0 1500 70 0 0 0 0 0 0
   8       1 sda1 90 5 1800 30 190 6 3800 40 0 1400 70 0 0 0 0 0 0
   8       2 sda2 1 2 3 4
 259       0 nvme0n1 7 0 16 0 9 0 24 0 0 250 0 0 0 0 0 0 0
 259       1 nvme0n1p1 6 0 8 0 8 0 16 0 0 200 0 0 0 0 0 0 0
   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 253       0 zram0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 dm-0 11 0 22 0 33 0 44 0 0 5 0 0 0 0 0 0 0
 202       1 xvda1 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0
"""


def write(path, text: str) -> None:
    """Rewrite a fake /proc file in place: the sampler keeps the same inode open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def mountinfo(tmp_path) -> str:
    return "\n".join([
        "22 27 0:21 / /proc rw,relatime - proc proc rw",
        "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw",
        "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=123k",
        "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw",
        "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard",
        "28 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard",  # same mount twice: one row
        f"40 27 0:40 / {tmp_path}/mnt\\040point rw,relatime - ext4 /dev/sdb\\0401 rw",
        f"41 27 0:41 / {tmp_path}/data rw master:2 shared:3 - xfs /dev/nvme0n1p1 rw",
        "42 27 0:42 / /nonexistent-shm-metrics-test rw - ext4 /dev/sdc rw",  # statvfs fails: left out
        f"43 27 0:43 / {tmp_path}/ovl rw - overlay overlay rw",  # excluded fs type
        "44 27 0:44 / /run/credentials/x.service ro - tmpfs tmpfs ro",  # excluded mount point
        f"45 27 0:45 / {tmp_path}/M\u00fcller\\040Disk rw - ext4 /dev/sdd rw",  # UTF-8 and an escape
        f"46 27 0:46 / {tmp_path}/back\\134slash rw - ext4 /dev/sde rw",
        "garbage line without separator",
    ]) + "\n"


# netdev reads the running kernel by default (netlink, as node_exporter); these tests want the fake net/dev.
FAKE_NET = {"netdev.netlink": False}


@pytest.fixture
def fake_proc(tmp_path):
    root = tmp_path / "proc"
    write(root / "stat", STAT_1)
    write(root / "loadavg", "1.50 0.75 0.25 7/321 9999\n")
    write(root / "meminfo", MEMINFO)
    write(root / "uptime", "12345.67 23456.78\n")
    write(root / "sys/fs/file-nr", "2048\t0\t9223372036854775807\n")
    write(root / "net/dev", NET_DEV)
    write(root / "diskstats", DISKSTATS)
    write(root / "1/mountinfo", mountinfo(tmp_path))
    for entry in ("42", "1000", "self", "12abc", "acpi"):
        (root / entry).mkdir()
    for mount in ("mnt point", "data", "ovl", "M\u00fcller Disk", "back\\slash"):
        (tmp_path / mount).mkdir()
    return root


def test_fake_proc_exact_values(name, fake_proc, tmp_path):
    sampler = Sampler(procfs=str(fake_proc), options=FAKE_NET)
    try:
        first = sampler.sample()
        s = first.scalars
        assert s["procs_total"] == 3  # 1, 42, 1000
        assert (s["load1"], s["load5"], s["load15"]) == (1.5, 0.75, 0.25)
        assert s["threads_total"] == 321
        assert s["procs_running"] == 3 and s["procs_blocked"] == 1
        assert s["forks_total"] == 4242 and s["ctx_switches_total"] == 67890
        assert s["interrupts_total"] == 12345
        assert s["boot_time"] == 1700000000.0
        assert s["uptime_seconds"] == 12345.67
        assert s["filefd_allocated"] == 2048 and s["filefd_maximum"] == 9223372036854775807
        kib = 1024
        assert s["mem_total_bytes"] == 16000000 * kib
        assert s["mem_free_bytes"] == 2000000 * kib
        assert s["mem_available_bytes"] == 9000000 * kib
        assert s["mem_used_bytes"] == 7000000 * kib
        assert s["mem_buffers_bytes"] == 300000 * kib
        assert s["mem_cached_bytes"] == 4000000 * kib  # not SwapCached, not + SReclaimable
        assert s["swap_total_bytes"] == 1000000 * kib
        assert s["swap_free_bytes"] == 400000 * kib
        assert s["swap_used_bytes"] == 600000 * kib

        assert s["cpu_count"] == 2
        assert s["cpu_seconds_user"] == pytest.approx(100 / USER_HZ)
        assert s["cpu_seconds_system"] == pytest.approx(50 / USER_HZ)
        assert s["cpu_seconds_idle"] == pytest.approx(800 / USER_HZ)
        assert s["cpu_seconds_iowait"] == pytest.approx(50 / USER_HZ)
        assert s["cpu_seconds_steal"] == 0.0
        # first sample: no earlier counters, so the average since boot
        assert s["cpu_percent"] == pytest.approx(15.0)
        assert [c["cpu"] for c in first.cpus] == [0, 1]
        assert [c["percent"] for c in first.cpus] == pytest.approx([18.0, 12.0])
        assert first.cpus[1]["iowait"] == pytest.approx(40 / USER_HZ)

        assert first.net == [  # no "lo": excluded by default
            {"device": "eth0", "rx_bytes": 123456789, "tx_bytes": 987654321, "rx_packets": 1000,
             "tx_packets": 2000, "rx_errors": 2, "tx_errors": 4, "rx_dropped": 3, "tx_dropped": 5},
            {"device": "veth12", "rx_bytes": 5, "tx_bytes": 9, "rx_packets": 6, "tx_packets": 10,
             "rx_errors": 7, "tx_errors": 11, "rx_dropped": 8, "tx_dropped": 12},
        ]

        assert [d["device"] for d in first.disks] == ["sda", "nvme0n1", "zram0", "dm-0"]
        sda = first.disks[0]
        assert sda == {"device": "sda", "reads": 100, "writes": 200, "read_bytes": 2000 * 512,
                       "written_bytes": 4000 * 512, "io_time_seconds": 1.5}
        assert first.disks[1]["io_time_seconds"] == 0.25

        fs = first.filesystems
        assert [(r["mountpoint"], r["device"], r["fstype"]) for r in fs] == [
            ("/", "/dev/vda", "ext4"),
            (f"{tmp_path}/mnt point", "/dev/sdb 1", "ext4"),
            (f"{tmp_path}/data", "/dev/nvme0n1p1", "xfs"),
            (f"{tmp_path}/M\u00fcller Disk", "/dev/sdd", "ext4"),
            (f"{tmp_path}/back\\slash", "/dev/sde", "ext4"),
        ]
        for row in fs:
            st = os.statvfs(row["mountpoint"])
            assert row["size_bytes"] == st.f_blocks * st.f_bsize
            assert row["avail_bytes"] <= row["free_bytes"] <= row["size_bytes"]

        # second sample: CPU percentages from the deltas, counters re-read in place
        write(fake_proc / "stat", STAT_2)
        write(fake_proc / "loadavg", "2.00 1.00 0.50 1/400 10000\n")
        (fake_proc / "777").mkdir()
        second = sampler.sample()
        s = second.scalars
        assert s["cpu_percent"] == pytest.approx(40.0)
        assert [c["percent"] for c in second.cpus] == pytest.approx([75.0, 100 * 20 / 120])
        assert s["cpu_seconds_user"] == pytest.approx(160 / USER_HZ)
        assert s["forks_total"] == 4300 and s["procs_running"] == 5 and s["procs_blocked"] == 0
        assert s["interrupts_total"] == 22345 and s["ctx_switches_total"] == 77890
        assert s["load1"] == 2.0 and s["threads_total"] == 400
        assert s["procs_total"] == 4

        # no change at all: 0 %, not a division by zero
        third = sampler.sample()
        assert third.scalars["cpu_percent"] == 0.0
        assert [c["percent"] for c in third.cpus] == [0.0, 0.0]
    finally:
        sampler.close()


def test_counters_going_backwards_never_give_negative_or_over_100_percent(name, fake_proc):
    sampler = Sampler(procfs=str(fake_proc), options=FAKE_NET)
    try:
        sampler.sample()
        # iowait of cpu1 goes backwards (the kernel does that), idle grows a little
        write(fake_proc / "stat", STAT_1.replace("cpu1 40 0 20 400 40", "cpu1 40 0 20 410 0"))
        s = sampler.sample()
        assert s.cpus[1]["percent"] == 0.0
        assert all(0.0 <= c["percent"] <= 100.0 for c in s.cpus)
    finally:
        sampler.close()


def test_a_failing_family_does_not_stop_the_others(name, fake_proc, caplog):
    # net/dev is a directory: it opens, but every read fails (EISDIR); loadavg is garbage
    (fake_proc / "net/dev").unlink()
    (fake_proc / "net/dev").mkdir()
    write(fake_proc / "loadavg", "not a loadavg\n")
    sampler = Sampler(procfs=str(fake_proc), options=FAKE_NET)
    try:
        with caplog.at_level(logging.WARNING, logger="shm_metrics.publisher.sampler"):
            samples = [sampler.sample() for _ in range(3)]
        for sample in samples:
            s = sample.scalars
            assert sample.net == []
            assert "load1" not in s and "threads_total" not in s
            assert s["procs_total"] == 3
            assert s["mem_total_bytes"] == 16000000 * 1024
            assert s["uptime_seconds"] == 12345.67
            assert s["filefd_allocated"] == 2048
            assert s["cpu_count"] == 2
            assert [d["device"] for d in sample.disks] == ["sda", "nvme0n1", "zram0", "dm-0"]
            assert any(r["mountpoint"] == "/" for r in sample.filesystems)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if "sampling net failed" in w]) == 1, warnings
        assert len([w for w in warnings if "sampling loadavg failed" in w]) == 1, warnings
        assert len(warnings) == 2, warnings

        # the family recovers when its file is readable again
        write(fake_proc / "loadavg", "0.10 0.20 0.30 1/50 1\n")
        assert sampler.sample().scalars["load1"] == 0.1
    finally:
        sampler.close()


def test_custom_filters(name, fake_proc):
    sampler = Sampler(procfs=str(fake_proc), options=FAKE_NET,
                      filters=F.Filters(disk_exclude="", net_exclude=r"^(lo|veth.*)$", fs_type_exclude=r"^xfs$"))
    try:
        sample = sampler.sample()
        assert [n["device"] for n in sample.net] == ["eth0"]
        assert {d["device"] for d in sample.disks} == {"sda", "sda1", "nvme0n1", "nvme0n1p1", "loop0", "ram0",
                                                       "zram0", "dm-0", "xvda1"}
        fstypes = {r["fstype"] for r in sample.filesystems}
        assert "xfs" not in fstypes
        mountpoints = {r["mountpoint"] for r in sample.filesystems}
        assert not any(m.startswith(("/proc", "/sys", "/dev")) for m in mountpoints)
    finally:
        sampler.close()


def test_grid_samples_replay_the_latest_full_sample_as_one_block(sampler):
    """Between full samples the CORE collectors run and everything else is the latest full sample's, as one
    tuple that stays the same object until the next full sample (the publisher encodes it once)."""
    from shm_metrics.publisher.collectors import CORE

    core = {fam for c in sampler.collectors if c.tier == CORE for fam in c.families}
    full = sampler.sample(full=True, scan=False)
    grid = sampler.sample(full=False, scan=False)
    again = sampler.sample(full=False, scan=False)
    assert grid.replayed and again.replayed is grid.replayed
    assert {fam for fam, _, _ in grid.series} <= core
    assert set(grid.replayed) == {row for row in full.all_series() if row[0] not in core}
    assert grid.full_time == full.full_time and set(grid.scalars) == set(full.scalars)
    sampler.sample(full=True, scan=False)
    assert sampler.sample(full=False, scan=False).replayed is not grid.replayed


def test_core_collectors_declare_their_families_at_start():
    """A grid sample looks for new families only among the collectors that add them later (not CORE ones)."""
    from shm_metrics.publisher.collectors import CORE

    sampler = Sampler(top_n=3)
    try:
        declared = {c.name: c.families for c in sampler.collectors if c.tier == CORE}
        for full in (True, False, True, False):
            sampler.sample(full=full)
        assert all(c.families is declared[c.name] for c in sampler.collectors if c.tier == CORE)
    finally:
        sampler.close()

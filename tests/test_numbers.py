"""The grid samples' fast path (publisher/_scan.c, publisher/collectors/numbers.py): the numbers it reads are
the ones the Python parse sees, its values are the Python parse's, and a file whose structure changed takes
the Python path again, which makes a new program."""

from __future__ import annotations

import os
import shutil
from array import array
from pathlib import Path

import pytest

from shm_metrics.publisher.collectors import Context, Sample, numbers
from shm_metrics.publisher.collectors.diskstats import Diskstats
from shm_metrics.publisher.collectors.meminfo import Meminfo
from shm_metrics.publisher.collectors.netdev import Netdev
from shm_metrics.publisher.collectors.stat import Stat
from shm_metrics.publisher.sampler import Sampler

pytestmark = pytest.mark.skipif(not numbers.AVAILABLE, reason="publisher/_scan.c not compiled here")

FIXTURE_PROC = Path(__file__).parent / "fixtures/node_exporter-1.5.0/collector/fixtures/proc"
TRICKY = (b"Key_1:  12 kB\n  eth0:1 -2 3.25 0.5\nsda1 18446744073709551615 007 1. .5 - 4/5\n\n"
          b"cpu0 99999999999999999999 1e5\nlast 42 " + b"7" * 70)


def _scan_file(path: Path) -> tuple[int, int, array]:
    fd = os.open(path, os.O_RDONLY)
    try:
        out = array("d", bytes(8 * 4096))
        count, signature, raw = numbers._scan.numbers(fd, out, True)
        assert raw == path.read_bytes()
        return count, signature, out[:count]
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["meminfo", "diskstats", "stat", "loadavg", "vmstat", "tricky"])
def test_numbers_are_the_tokens_python_sees(tmp_path, name):
    path = tmp_path / "tricky" if name == "tricky" else FIXTURE_PROC / name
    if name == "tricky":
        path.write_bytes(TRICKY)
    count, _, values = _scan_file(path)
    expected = [float(token) for line in numbers.tokens(path.read_bytes()) for token, index in line
                if index is not None]
    assert count == len(expected) > 0
    assert values.tolist() == expected
    if name == "tricky":  # words: Key_1, kB, eth0, sda1, 1., .5, -, cpu0, 1e5, last, 70 digits; a slash separates
        assert expected == [12.0, 1.0, -2.0, 3.25, 0.5, 18446744073709551615.0, 7.0, 4.0, 5.0,
                            99999999999999999999.0, 42.0]


def test_the_signature_follows_the_structure_not_the_values(tmp_path):
    def signature(text: bytes) -> int:
        path = tmp_path / "f"
        path.write_bytes(text)
        return _scan_file(path)[1]

    base = signature(b"MemTotal: 10 kB\nMemFree: 5 kB\n")
    assert signature(b"MemTotal: 99999 kB\nMemFree: 0 kB\n") == base  # values move, structure stays
    assert signature(b"MemTotal: 10 kB\nMemFree: 5 kB\nNew: 1 kB\n") != base  # a line more
    assert signature(b"MemTotal: 10 kB\nMemFrees: 5 kB\n") != base  # a word changed
    assert signature(b"MemTotal: 10 11 kB\nMemFree: 5 kB\n") != base  # a number more on a line
    assert signature(b"MemTotal: 10 kB 5\nMemFree: kB\n") != base  # a number moved to another line


def test_take_and_values_check_every_position():
    src = array("d", [1.0, 2.0, 3.0])
    dst = bytearray(24)
    numbers._scan.take(src, array("I", [2, 0]), array("d", [2.0, 10.0]), dst, 8, 0)
    assert memoryview(dst).cast("d").tolist()[:2] == [6.0, 10.0]
    with pytest.raises(ValueError):
        numbers._scan.take(src, array("I", [3]), None, dst, 8, 0)  # beyond the source
    with pytest.raises(ValueError):
        numbers._scan.take(src, array("I", [0, 1, 2, 0]), None, dst, 8, 0)  # beyond the destination
    with pytest.raises(ValueError):
        numbers._scan.take(src, array("I", [0, 1]), array("d", [1.0]), dst, 8, 0)  # fewer factors


def test_values_checks_every_position_and_the_structure(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a 1 2\nb 3\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        work = array("d", bytes(8 * 8))
        count, signature, _ = numbers._scan.numbers(fd, work)
        got = numbers._scan.values(fd, work, signature, count, array("I", [2, 0]), array("d", [2.0, -4.0]))
        assert memoryview(got).cast("d").tolist() == [6.0, 0.25]  # a negative factor divides
        assert numbers._scan.values(fd, work, signature + 1, count, array("I", [0]), array("d", [1.0])) is None
        with pytest.raises(ValueError):
            numbers._scan.values(fd, work, signature, count, array("I", [3]), array("d", [1.0]))  # beyond
        with pytest.raises(ValueError):
            numbers._scan.values(fd, work, signature, count, array("I", [0, 1]), array("d", [1.0]))  # factors
    finally:
        os.close(fd)


NET_DEV = (b"Inter-|   Receive                                                |  Transmit\n"
           b" face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
           b"carrier compressed\n" + b"""    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0
  eth0:123456789 100 1 2 3 4 5 6 987654321 200 7 8 9 10 11 12
docker0: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
""")


@pytest.fixture
def proc(tmp_path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    for name in ("meminfo", "diskstats", "stat"):
        shutil.copyfile(FIXTURE_PROC / name, root / name)
    (root / "net").mkdir()
    (root / "net/dev").write_bytes(NET_DEV)
    return root


def _collector(cls, proc: Path, tmp_path: Path, **options):
    return cls(Context(procfs=str(proc), sysfs=str(tmp_path / "sys"), udev_data=str(tmp_path / "udev"),
                       options={"netdev.netlink": False, **options}))


def _after_a_change(*collectors) -> tuple[Sample, Sample]:
    """Their files changed shape: the fast path declines, the Python parse makes new programs, the fast path
    serves again.  (The Python parse's sample, the fast path's.)"""
    assert not any(collector.fast(Sample()) for collector in collectors)
    slow, fast = Sample(), Sample()
    for collector in collectors:
        collector.collect(slow)
    assert all(collector.fast(fast) for collector in collectors)
    return slow, fast


def _series(sample: Sample, prefix: str) -> dict:
    return {(fam.name, labels): float(value) for fam, labels, value in sample.all_series()
            if fam.name.startswith(prefix)}


@pytest.mark.parametrize("cls, prefix, options", [
    (Meminfo, "node_memory_", {}), (Diskstats, "node_disk_", {}), (Netdev, "node_network_", {}),
    (Stat, "node_", {}), (Stat, "node_", {"cpu.guest": False, "stat.softirq": True})])
def test_the_grid_gives_what_the_python_parse_gives(proc, tmp_path, cls, prefix, options):
    collector = _collector(cls, proc, tmp_path, **options)
    slow, fast = Sample(), Sample()
    collector.collect(slow)
    if cls is Stat:  # its CPU shares are against the previous sample: both sides against the same one
        collector._prev.clear()
        slow = Sample()
        collector.collect(slow)
        collector._prev = {key: tuple(v - 1 for v in ticks) for key, ticks in collector._prev.items()}
        before = dict(collector._prev)
        slow = Sample()
        collector.collect(slow)
        collector._prev = before
    assert collector.fast(fast)
    assert fast.fixed and len(fast.series) < len(slow.series)  # values in blocks, not a tuple per series
    assert _series(fast, prefix) == _series(slow, prefix) and len(_series(slow, prefix)) > 10
    assert fast.scalars == slow.scalars
    assert (fast.disks, fast.net, fast.cpus) == (slow.disks, slow.net, slow.cpus)


def test_a_changed_file_takes_the_python_path_and_a_new_program(proc, tmp_path):
    disks = Diskstats(Context(procfs=str(proc), udev_data=str(tmp_path / "udev")))
    mem = Meminfo(Context(procfs=str(proc)))
    for collector in (disks, mem):
        collector.collect(Sample())
    with open(proc / "diskstats", "a") as f:
        f.write(" 259       9 nvme9n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n")
    with open(proc / "meminfo", "a") as f:
        f.write("Extra_field: 77 kB\n")  # not in the catalog: no series, but the numbers moved
    slow, fast = _after_a_change(disks, mem)
    assert _series(fast, "node_disk_") == _series(slow, "node_disk_")
    assert _series(fast, "node_disk_")[("node_disk_read_bytes_total", ("nvme9n1",))] == 3 * 512
    assert fast.scalars == slow.scalars and fast.disks == slow.disks


def test_without_the_extension_the_python_parse_serves_every_sample(monkeypatch, proc):
    monkeypatch.setattr(numbers, "AVAILABLE", False)
    sampler = Sampler(procfs=str(proc), collectors=[Meminfo, Diskstats])
    full = sampler.sample(full=True)
    grid = sampler.sample(full=False)
    assert not grid.fixed and _series(grid, "node_") == _series(full, "node_")
    sampler.close()


def test_a_sampler_uses_the_fast_path_on_this_host():
    sampler = Sampler(collectors=[Meminfo, Diskstats])
    sampler.sample(full=True)
    grid = sampler.sample(full=False)
    assert len(grid.fixed) == 2
    assert {fam.name for fam, _, _ in grid.all_series()} >= {"node_memory_MemTotal_bytes"}
    sampler.close()


def test_a_program_that_would_give_other_values_is_not_kept(proc):
    """A planted meminfo with a key twice: the program would give the first value for both; the Python
    path, which gives each line's own, serves every sample instead."""
    with open(proc / "meminfo", "a") as f:
        f.write("MemFree: 77 kB\n")
    mem = Meminfo(Context(procfs=str(proc)))
    slow = Sample()
    mem.collect(slow)
    assert not mem.fast(Sample())


def test_a_cpu_or_an_interface_that_comes_takes_the_python_path_once(proc, tmp_path):
    stat, net = _collector(Stat, proc, tmp_path), _collector(Netdev, proc, tmp_path)
    for collector in (stat, net):
        collector.collect(Sample())
    text = (proc / "stat").read_text().splitlines(keepends=True)
    last_cpu = max(i for i, line in enumerate(text) if line.startswith("cpu"))
    text.insert(last_cpu + 1, "cpu99 1 2 3 4 5 6 7 8 0 0\n")  # a CPU brought online
    (proc / "stat").write_text("".join(text))
    (proc / "net/dev").write_bytes(NET_DEV + b"  veth9: 5 6 0 0 0 0 0 0 7 8 0 0 0 0 0 0\n")
    slow, fast = _after_a_change(stat, net)
    assert _series(fast, "node_cpu_seconds_total")[("node_cpu_seconds_total", ("99", "idle"))] == 4 / 100
    assert _series(fast, "node_network_") == _series(slow, "node_network_")
    assert [row["device"] for row in fast.net] == ["eth0", "docker0", "veth9"]  # lo: excluded by default


def test_the_disks_udev_data_is_read_again_through_the_python_path(proc, tmp_path):
    from shm_metrics.publisher.collectors.diskstats import INFO_REFRESH_SECONDS

    disks = _collector(Diskstats, proc, tmp_path)
    disks.collect(Sample())
    assert disks.fast(Sample())
    disks._program_made -= INFO_REFRESH_SECONDS + 1  # a minute on: the Python path reads it, and a new program
    assert not disks.fast(Sample())
    disks.collect(Sample())
    assert disks.fast(Sample())


def test_full_samples_take_the_fast_path_too(proc):
    sampler = Sampler(procfs=str(proc), collectors=[Meminfo, Diskstats])
    first = sampler.sample(full=True)  # the Python parse: it makes the programs
    again = sampler.sample(full=True)
    assert not first.fixed and len(again.fixed) == 2
    assert _series(again, "node_memory_") == _series(first, "node_memory_")
    assert _series(again, "node_disk_") == _series(first, "node_disk_")
    sampler.close()


def test_files_larger_than_the_stack_buffer_are_read_whole(tmp_path):
    """/proc/stat's intr line on a large host runs to tens of KiB: read past the 16 KiB on the stack."""
    path = tmp_path / "stat"
    path.write_bytes(b"intr " + b" ".join(str(i).encode() for i in range(30000)) + b"\nctxt 5\n")
    count, _, values = _scan_file(path)  # into 4096 doubles: the count says how many there are
    assert count == 30001 and values.tolist() == [float(i) for i in range(4096)]
    fd = os.open(path, os.O_RDONLY)
    try:
        small = numbers.Numbers(fd, capacity=4)
        assert small.read()[0] == 30001 and len(small.values) >= 30001  # grew, and read again
        assert small.values[29999] == 29999.0 and small.values[30000] == 5.0
    finally:
        os.close(fd)


def test_a_grid_sample_in_which_a_file_changed_shape_is_whole(proc):
    """A grid sample calls the fast paths straight; when one declines (a disk came), the sample is taken
    again collector by collector: nothing of the attempt kept twice, nothing missing."""
    sampler = Sampler(procfs=str(proc), collectors=[Meminfo, Diskstats])
    sampler.sample(full=True)
    before = sampler.sample(full=False)
    assert len(before.fixed) == 2
    with open(proc / "diskstats", "a") as f:
        f.write(" 259       9 nvme9n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n")
    grid = sampler.sample(full=False)
    keys = [(fam.name, labels) for fam, labels, _ in grid.all_series()]
    assert len(keys) == len(set(keys))
    assert _series(grid, "node_disk_")[("node_disk_read_bytes_total", ("nvme9n1",))] == 3 * 512
    assert _series(grid, "node_memory_") == _series(before, "node_memory_")
    assert grid.disks[-1]["device"] == "nvme9n1" and grid.scalars == {**before.scalars, **grid.scalars}
    assert len(sampler.sample(full=False).fixed) == 2  # the new programs serve the next one
    sampler.close()


@pytest.mark.parametrize("whole_read", ["c", "python"])
def test_a_file_that_comes_whole_is_read_whole_in_one_read(tmp_path, monkeypatch, whole_read):
    """``whole`` (ProcFile, _scan.c): a read shorter than asked ends the file.  A file larger than any one read
    still comes whole (the reads go on while they fill what was asked); the single_open files of this host read
    whole give what reading to the end gives; and a short file takes one read, not two (the Python path's reads
    counted)."""
    from shm_metrics.publisher.collectors import ProcFile

    big = tmp_path / "big"
    big.write_bytes(b"".join(b"key%d %d\n" % (i, i) for i in range(40000)))  # ~500 KB: reads of 64 KiB and more
    for path in (big, *(Path(f"/proc/{name}") for name in ("meminfo", "net/snmp", "net/netstat", "loadavg"))):
        if not path.exists():
            continue
        whole, plain = ProcFile(str(path), whole=True), ProcFile(str(path))
        try:
            if whole_read == "c":
                one, two = numbers.Numbers.of(whole), numbers.Numbers.of(plain)
                (count, signature, raw), (count2, signature2, _) = one.read(text=True), two.read()
                assert (count, signature) == (count2, signature2), path  # their structure: values move
                got = raw
            else:
                got = whole.read_bytes()
                assert len(got.split(b"\n")) == len(plain.read_bytes().split(b"\n")), path
            if path == big:
                assert got == big.read_bytes()
        finally:
            whole.close()
            plain.close()
    small = tmp_path / "small"
    small.write_bytes(b"1 2 3\n")
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(at) or real_pread(fd, n, at))
    for whole, expected in ((True, [0]), (False, [0, 6])):
        pf = ProcFile(str(small), whole=whole)
        try:
            reads.clear()
            assert pf.read_bytes() == b"1 2 3\n" and reads == expected
        finally:
            pf.close()

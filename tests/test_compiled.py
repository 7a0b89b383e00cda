"""Compiled grid samples (publisher/compiled.py, _scan.run and _scan.store): a segment published through a
program holds, byte for byte, what the Python path would have written, across changed values, full samples
and a host that changes shape; a program that would write anything else is never used."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from array import array
from pathlib import Path

import pytest

from shm_metrics import shm_layout as L
from shm_metrics.publisher import compiled
from shm_metrics.publisher.collectors import CORE, SCRAPE_DURATION, registry
from shm_metrics.publisher.collectors.meminfo import Meminfo
from shm_metrics.publisher.collectors.stat import USER_HZ
from shm_metrics.publisher.collectors.vmstat import Vmstat
from shm_metrics.publisher.filters import Filters
from shm_metrics.publisher.sampler import Sampler
from shm_metrics.publisher.segment import OwnedSegment
from shm_metrics.readers import Reader

pytestmark = pytest.mark.skipif(not compiled.AVAILABLE, reason="publisher/_scan.c not compiled here")

# /proc and /sys as the only mounts: their statvfs numbers do not move between the two stacks' reads.
FILTERS = Filters(mount_point_exclude="^/nothing$", fs_type_exclude="^nothing$")
COLLECTORS = [cls for cls in registry() if cls.tier == CORE] + [Vmstat]


def _tree(root: Path, step: int, disks: int = 2, pids: int = 3) -> None:
    """A /proc whose every number moves with ``step``, keeping its structure (but for ``disks``, ``pids``)."""
    k = step * 7

    def write(name: str, text: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    cpus = "".join(f"cpu{n} {100 + k * (n + 1)} {n} {50 + k} {800 + 3 * k} {10 + n * k} 1 2 0 0 0\n"
                   for n in range(2))
    write("stat", f"cpu  {300 + 3 * k} 1 {100 + 2 * k} {1600 + 6 * k} {10 + k} 2 4 0 0 0\n{cpus}"
                  f"intr {12345 + k} 1 2 3\nctxt {67890 + k}\nbtime 1700000000\nprocesses {4242 + step}\n"
                  f"procs_running {1 + step % 3}\nprocs_blocked {step % 2}\nsoftirq {99 + k} 1 2 3 4 5 6 7 8 9 10\n")
    write("meminfo", "".join(f"{key}: {value + 13 * k} kB\n" for key, value in (
        ("MemTotal", 16000000), ("MemFree", 2000000), ("MemAvailable", 9000000), ("Buffers", 300000),
        ("Cached", 4000000), ("SwapTotal", 1000000), ("SwapFree", 400000), ("Dirty", 12))) + "HugePages_Total: 0\n")
    write("loadavg", f"{0.5 + step / 100:.2f} 0.75 0.25 {1 + step % 2}/{321 + step} {9000 + pids}\n")
    write("uptime", f"{12345.67 + step:.2f} 23456.78\n")
    write("sys/fs/file-nr", f"{2048 + k}\t0\t9223372036854775807\n")
    write("net/dev", "Inter-|   Receive\n face |bytes    packets errs drop fifo frame compressed multicast|\n"
          + "".join(f"  eth{n}: {1000 * n + k} {n + k} 0 1 0 0 0 0 {2000 + k} {k} 0 0 0 0 0 0\n" for n in range(2)))
    write("diskstats", "".join(f" 8 {16 * n} sd{chr(97 + n)} {100 + k} 0 {2000 + k} 5 {200 + k} 0 {4000 + 2 * k} 9 0 "
                               f"{1500 + k} 20\n" for n in range(disks)))
    write("vmstat", f"nr_free_pages {1000 + k}\npgfault {55 + k}\n")
    write("1/mountinfo", "22 1 0:5 / /proc rw - proc proc rw\n23 1 0:6 / /sys rw - sysfs sysfs rw\n")
    for pid in range(2, 2 + pids):
        (root / str(pid)).mkdir(exist_ok=True)


class _Stack:
    """A sampler and its segment over the tree, sampled as the publisher loop does (with or without a program)."""

    def __init__(self, root: Path, tmp_path: Path, name: str, compile_: bool):
        self.sampler = Sampler(procfs=str(root), sysfs=str(tmp_path / "sys"), udev_data=str(tmp_path / "udev"),
                               filters=FILTERS, collectors=COLLECTORS, options={"netdev.netlink": False},
                               retry_seconds=3600)
        layout = L.Layout.for_capacities(2, 8, 8, 8, history=16, top=0, **self.sampler.family_capacities())
        self.segment = OwnedSegment(name, layout, 0o600, 1.0, self.sampler.catalog, on_demand=self.sampler.on_demand)
        self.grid = compiled.CompiledGrid(self.sampler) if compile_ else None

    def sample(self, full: bool, wall: float) -> None:
        now = time.monotonic()
        if self.grid is not None and not full and self.grid.sample(self.segment, wall, now, 0):
            return
        if self.grid is not None:
            self.grid.before_python()
        sample = self.sampler.sample(full=full, scan=False, wall_time=wall)
        self.segment = self.segment.publish(sample, wall, now, 0.0, 0)
        if self.grid is not None:
            self.grid.after_python(self.segment, not full)

    def image(self) -> bytearray:
        """The bytes a sample decides, but for node_scrape_collector_duration_seconds' values (timings)."""
        image = self.segment.sample_image()
        duration = self.segment._series.index[SCRAPE_DURATION]
        rows = memoryview(self.segment._series_written[0]).cast("I")[0::L.SERIES.size // 4]
        h = L.SECTION_INDEX["history"]  # left out of the image, before the series
        start = (self.segment.layout.offsets[L.SECTION_INDEX["series"]] + L.SERIES.offsets["value"]
                 - self.segment.layout.capacities[h] * L.HISTORY.size)
        for row, metric in enumerate(rows):
            if metric == duration:
                image[start + row * L.SERIES.size:start + row * L.SERIES.size + 8] = bytes(8)
        return image

    def directory(self) -> bytes:
        """The section directory: counts and overflows (the history ring's count moves every sample)."""
        layout = self.segment.layout
        return bytes(self.segment._bytes[layout.sections_offset:layout.header_size])

    def history(self) -> bytes:
        h = L.SECTION_INDEX["history"]
        start = self.segment.layout.offsets[h]
        return bytes(self.segment._bytes[start:start + self.segment.layout.capacities[h] * L.HISTORY.size])

    def close(self) -> None:
        self.segment.close(unlink=True)
        self.sampler.close()


@pytest.fixture
def stacks(tmp_path, name):
    root = tmp_path / "proc"
    _tree(root, 0)
    made = []
    try:
        for tag, compile_ in (("p", False), ("c", True)):
            made.append(_Stack(root, tmp_path, f"{name}{tag}", compile_))
        yield root, made[0], made[1]
    finally:
        for stack in made:
            stack.close()


def test_compiled_grid_samples_write_what_the_python_path_writes(stacks):
    root, python, fast = stacks
    used = []
    for step in range(14):
        disks = 3 if step >= 9 else 2  # a disk comes: its program no longer holds
        _tree(root, step, disks=disks, pids=4 if step >= 7 else 3)
        full = step in (0, 5)  # a scrape's full sample between grid samples
        wall = 1_700_000_000.0 + step
        before = fast.grid.compiled_samples
        python.sample(full, wall)
        fast.sample(full, wall)
        used.append(fast.grid.compiled_samples > before)
        assert fast.image() == python.image(), f"step {step}"
        assert fast.history() == python.history(), f"step {step}"
        assert fast.directory() == python.directory(), f"step {step}"
    # Python at 0-2 (full, compile, check), compiled 3-4, full at 5, compiled again at once (the program
    # outlives a full sample), the new disk at 9 takes the Python path twice (compile, check).
    assert used == [False, False, False, True, True, False, True, True, True, False, False, True, True, True]
    # What a reader sees of a compiled sample: the values of the tree's last step.
    with Reader(fast.segment.name) as reader:
        snap = reader.read()
    assert snap.uptime_seconds == pytest.approx(12345.67 + 13)
    assert snap.procs_total == 1 + 4  # 1 (mountinfo's) and 2..5
    assert snap.threads_total == 321 + 13
    assert [d["device"] for d in snap.disks] == ["sda", "sdb", "sdc"]
    assert snap.mem_used_bytes == (16000000 - 9000000) * 1024
    assert snap.filefd_maximum == 9223372036854775807  # exactly: no double holds it
    assert snap.families["node_disk_reads_completed_total"].series[2] == (("sdc",), 100.0 + 13 * 7)


def test_the_cpu_share_carries_across_python_and_compiled_samples(stacks):
    root, python, fast = stacks
    for step in range(8):
        _tree(root, step)
        python.sample(step == 4, 1_700_000_000.0 + step)
        fast.sample(step == 4, 1_700_000_000.0 + step)
    with Reader(fast.segment.name) as reader:
        snap = reader.read()
    # Between two steps the "cpu" line moves 3k user + 2k system + 6k idle + k iowait (k = 7): 5/12 busy.
    assert snap.cpu_percent == pytest.approx(100 * 5 / 12)
    assert snap.cpu_seconds_user == pytest.approx((300 + 3 * 49) / USER_HZ)
    assert fast.grid.compiled_samples >= 3


def test_a_program_that_would_write_other_bytes_is_never_used(stacks, monkeypatch, caplog):
    root, _, fast = stacks
    original = Meminfo.compile

    def wrong(self, built):  # free memory where used memory goes
        ok = original(self, built)
        built.places = [(reg, ("scalar", "mem_free_bytes") if place == ("scalar", "mem_used_bytes") else place)
                        for reg, place in built.places]
        return ok

    monkeypatch.setattr(Meminfo, "compile", wrong)
    caplog.set_level("INFO", logger="shm_metrics.publisher.compiled")
    for step in range(10):
        _tree(root, step)
        fast.sample(step == 0, 1_700_000_000.0 + step)
    assert fast.grid.compiled_samples == 0
    assert "did not reproduce the Python path" in caplog.text


def test_run_and_store_check_every_index_before_anything():
    regs = array("d", [1.5, 2.0, 0.0])
    work = array("d", [4.0])
    ops = array("q", [compiled.TAKE, 2, 0, 0, 1])  # R[2] = work[0] * R[1]
    assert compiled._scan.run(((compiled.STATVFS, b"/", work),), ops, regs, False)
    assert regs[2] == 8.0
    for bad in ([compiled.TAKE, 3, 0, 0, 1], [compiled.TAKE, 2, 1, 0, 1], [compiled.TAKE, 2, 0, 1, 1],
                [compiled.SUM, 2, 0, 5, 1], [compiled.BUSY, 0, 0, 0, 0], [99, 0, 0, 0, 0]):
        with pytest.raises(ValueError):
            compiled._scan.run(((compiled.STATVFS, b"/", work),), array("q", bad), regs, False)
    with pytest.raises((TypeError, ValueError)):
        compiled._scan.run(((7, 1),), array("q"), regs, True)
    buffer = bytearray(16)
    with pytest.raises(ValueError):
        compiled._scan.store(regs, array("q", [0, 0, 0, 2, 1, 12]), buffer)  # the second sink ends past 16
    assert buffer == bytearray(16)  # nothing written: every sink is checked first
    compiled._scan.store(array("d", [-3.0, 2.0**70, float("nan"), 7.9]), array("q", [0, 1, 0, 1, 2, 8, 3, 1, 8]),
                         buffer)
    assert array("Q", bytes(buffer)).tolist() == [0, 7]  # negative clamps to 0; the last one truncates
    compiled._scan.store(array("d", [2.0**70]), array("q", [0, 1, 0]), buffer)
    assert array("Q", bytes(buffer[:8]))[0] == 2**64 - 1
    # publish: seq at 0, scalars (8 bytes) at 8, a history ring of 2 records of 24 at 16, its count at 64, the
    # header's five times at 72..104; every offset and the futex word's are checked before seq is touched.
    image = bytearray(112)
    plan = array("q", [0, 8, 8, 16, 2, 24, 16, 64, 72, 80, 88, 96, 104])
    for wake_at in (112, 110, 2, -2):
        with pytest.raises(ValueError):
            compiled._scan.publish(array("d"), array("q"), image, plan, 1.0, 2.0, 0.0, 0, 3.0, wake_at)
        assert image == bytearray(112)
    compiled._scan.publish(array("d"), array("q"), image, plan, 1.0, 2.0, 0.0, 0, 3.0, 0)  # no waiter: no error
    assert array("Q", bytes(image[:8]))[0] == 2  # one sample written: seq even again


def test_the_publisher_samples_compiled_on_this_host(name):
    """A real shm-publisher with its defaults: its grid samples go through a program after the first few."""
    proc = subprocess.Popen([sys.executable, "-m", "shm_metrics.publisher", "--name", name, "--interval", "0.2",
                             "--log.level", "debug"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60  # generous: a loaded test machine
        seen = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if "grid samples compiled" in line or "grid samples run in Python" in line or not line:
                break
        refused = [line for line in seen if "grid samples run in Python" in line]
        if refused:  # a property of this host (a mount whose statvfs fails...), said in one line
            pytest.skip(refused[0].strip())
        assert any("grid samples compiled" in line for line in seen), "".join(seen[-5:])
        with Reader(name) as reader:
            first = reader.read()
            # Compiled samples wake the readers sleeping on the futex (in _scan.publish): each wait ends with the
            # next sample, ~0.2 s; a missed wake would sleep out the whole 20 s (a generous bound, stated as such).
            if reader.wake == "futex":
                for _ in range(3):
                    began = time.monotonic()
                    assert reader.wait_for_sample(reader.seq, timeout=20.0)
                    assert time.monotonic() - began < 10.0
            time.sleep(1.0)
            later = reader.read()
        assert later.uptime_seconds > first.uptime_seconds
        assert later.sample_time > first.sample_time
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
    assert not os.path.exists(f"/dev/shm/{name.lstrip('/')}")


def _udev(tmp_path: Path, serial: str) -> None:
    """sda's udev data (tests/test_compiled's trees: the stacks' udev_data), with this serial."""
    (tmp_path / "udev").mkdir(exist_ok=True)
    (tmp_path / "udev" / "b8:0").write_text(f"E:ID_MODEL=disk\nE:ID_SERIAL_SHORT={serial}\n")


def _disk_info(stack: _Stack) -> set[tuple]:
    with Reader(stack.segment.name) as reader:
        return {labels for labels, _ in reader.read().families["node_disk_info"].series}


def test_a_program_past_its_deadline_holds_while_the_udev_data_does_and_gives_way_when_it_changes(
        stacks, tmp_path, monkeypatch):
    """diskstats reads its disks' udev data again every INFO_REFRESH_SECONDS.  Unchanged, the program is renewed
    at its deadline and goes on (a Python sample and a new program there cost ~3 ms a minute at 1 Hz);
    changed (here: written after the stacks' first sample, then a new serial), the program gives way, the new
    series are published, and a program is made again."""
    from shm_metrics.publisher.collectors import diskstats

    monkeypatch.setattr(diskstats, "INFO_REFRESH_SECONDS", 0.5)
    root, python, fast = stacks
    _udev(tmp_path, "AAA")
    held, used, programs = [], [], []  # held: steps whose program was renewed past its deadline and kept
    for step in range(24):
        _tree(root, step)
        if step == 14:
            assert held and all(used[held[0]:]), (held, used)  # renewed, and compiled throughout since
            assert {labels[6] for labels in _disk_info(fast)} == {"", "AAA"}  # sdb has no udev data
            programs.clear()
            _udev(tmp_path, "BBB")
        before = fast.grid.compiled_samples
        program = fast.grid.program
        deadline = program.valid_until if program is not None else None
        python.sample(step == 0, 1_700_000_000.0 + step)
        fast.sample(step == 0, 1_700_000_000.0 + step)
        used.append(fast.grid.compiled_samples > before)
        if fast.grid.program is not program:
            programs.append(fast.grid.program)
        elif program is not None and program.valid_until > deadline:
            held.append(step)
        time.sleep(0.1)
    assert len([p for p in programs if p is not None]) >= 1 and all(used[-2:]), used  # a new program after BBB
    assert {labels[6] for labels in _disk_info(fast)} == {"", "BBB"}
    assert fast.image() == python.image()


def test_uptime_is_the_boottime_clock_as_proc_uptime_prints_it():
    """On the running kernel's /proc the uptime collector reads CLOCK_BOOTTIME, in /proc/uptime's own format:
    a value between two reads of the file, to the centisecond (and the C source gives the same)."""
    from shm_metrics.publisher.collectors.uptime import boottime_seconds

    def file() -> float:
        return float(Path("/proc/uptime").read_text().split()[0])

    before, clock, after = file(), boottime_seconds(), file()
    assert before <= clock <= after and clock == round(clock, 2)
    work = array("d", [0.0])
    assert compiled._scan.run(((compiled.BOOTTIME, work),), array("q"), array("d"), True)
    assert clock <= work[0] <= file() and work[0] == float(f"{work[0]:.2f}")


def test_a_full_sample_between_compiling_and_checking_does_not_fail_the_check(stacks):
    """Scrapes every few seconds put full samples between a program's making and its check: the check then
    starts from the full sample's bytes (it did not, and such programs counted as failures until a backoff)."""
    root, _, fast = stacks
    used = []
    for step in range(9):
        _tree(root, step)
        before = fast.grid.compiled_samples
        fast.sample(step in (0, 2, 5), 1_700_000_000.0 + step)  # full right after compiling (1), twice
        used.append(fast.grid.compiled_samples > before)
    assert fast.grid._failures == 0
    assert used == [False, False, False, False, True, False, True, True, True], used


def test_a_program_is_checked_over_the_statvfs_the_python_path_just_made(stacks, monkeypatch):
    """A filesystem whose free space moves every second (a busy host's root): the check must run over the
    numbers of the Python sample it checks against, which the collector fills in place into the arrays a
    program holds (it made new arrays each sample, and the check ran over the previous sample's: it failed
    on every busy filesystem, and a backoff kept the publisher in Python)."""
    from shm_metrics.publisher.collectors import filesystem

    calls = []
    real = os.statvfs

    def moving(path):
        st = real(path)
        calls.append(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, 1000, 500 - len(calls), 400 - len(calls), 100,
                                  50 - len(calls), 50, st.f_flag, st.f_namemax))

    monkeypatch.setattr(filesystem.os, "statvfs", moving)
    root, _, fast = stacks
    for step in range(6):
        _tree(root, step)
        fast.sample(step == 0, 1_700_000_000.0 + step)
    assert fast.grid._failures == 0 and fast.grid.compiled_samples >= 2


def _mount_tmpfs(path: Path) -> str | None:
    """Mount a small tmpfs at ``path``; why not, when refused (no root, no CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return "needs root (mount)"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "shmcomp", str(path)], capture_output=True)
    return f"mount refused: {done.stderr.decode().strip()}" if done.returncode else None


def test_a_mount_the_program_saw_first_reaches_the_python_path(tmp_path, name):
    """Polling mountinfo consumes its event: a compiled run that saw a new mount first must make the filesystem
    collector parse mountinfo again (the collector polled, saw nothing, and kept its old list until the next
    mount: CI's 200 new mounts did not show up in time, or ever)."""
    first, second = tmp_path / "a", tmp_path / "b"
    reason = _mount_tmpfs(first)
    if reason:
        pytest.skip(reason)
    filters = Filters(mount_point_exclude=f"^(?!{re.escape(str(tmp_path))}/)", fs_type_exclude="^nothing$")
    sampler = Sampler(procfs="/proc", sysfs="/sys", filters=filters, collectors=COLLECTORS, retry_seconds=3600)
    layout = L.Layout.for_capacities(64, 64, 64, 64, history=16, top=0, **sampler.family_capacities())
    stack = _Stack.__new__(_Stack)
    stack.sampler, stack.grid = sampler, compiled.CompiledGrid(sampler)
    stack.segment = OwnedSegment(name, layout, 0o600, 1.0, sampler.catalog, on_demand=sampler.on_demand)
    mounted = [first]
    try:
        for step in range(8):
            stack.sample(step == 0, time.time())
            if stack.grid.compiled_samples >= 2:
                break
        if not stack.grid.compiled_samples:
            pytest.skip(f"grid samples not compiled on this host: {stack.grid._refused}")
        assert _mount_tmpfs(second) is None
        mounted.append(second)
        stack.sample(False, time.time())  # the program's run sees the event: the Python path samples
        with Reader(name) as reader:
            seen = {f["mountpoint"] for f in reader.read().filesystems}
        assert seen == {str(first), str(second)}, seen
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", str(path)], check=False)
        stack.close()

"""A collector's parse learned as a program of its file's numbers (publisher/collectors/learned.py).

The property that matters: whatever the file says, the rows are the parse's rows.  So each test changes a real
file (the fixture tree's, or one written here) and compares the program's rows with the parse's own."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import node_e2e
import pytest

from shm_metrics.publisher.collectors import Devices, ProcFile, gauge, netclass, numbers, selected
from shm_metrics.publisher.collectors.learned import LearnedFile, LearnedGroup, rows_of
from shm_metrics.publisher.sampler import Sampler

pytestmark = pytest.mark.skipif(not numbers.AVAILABLE, reason="the C extension is not built")

USED = gauge("node_test_used_bytes", "Used.", "node")
FREE = gauge("node_test_free_bytes", "Free.", "node")
STATE = gauge("node_test_state", "A value of a word.", "node")


def parse(text: str) -> list:
    """'Node <n> Used: <kB> kB' lines, and a 'state' word: the shape of a NUMA node's meminfo."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "state":
            rows.append((STATE, ("x",), 1.0 if parts[1] == "up" else 0.0))
            continue
        family = USED if parts[2] == "Used:" else FREE
        rows.append((family, (parts[1],), float(parts[3]) * 1024))
    return rows


def learned(tmp_path: Path, text: str, parse=parse, hex: bool = False) -> tuple[LearnedFile, Path]:
    path = tmp_path / "file"
    path.write_text(text)
    return LearnedFile(ProcFile(str(path)), parse, hex=hex), path


def test_a_program_follows_the_numbers_and_checks_the_structural_ones(tmp_path):
    file, path = learned(tmp_path, "Node 0 Used: 10 kB\nNode 0 Free: 0 kB\nstate up\n")
    try:
        assert rows_of(file.rows()) == parse(path.read_text())
        assert file.program is not None  # the node number is structural, the word a constant
        for text in ("Node 0 Used: 77 kB\nNode 0 Free: 5 kB\nstate up\n",
                     "Node 3 Used: 77 kB\nNode 3 Free: 5 kB\nstate up\n",  # a structural number moved
                     "Node 3 Used: 1 kB\nNode 3 Free: 2 kB\nstate down\n"):  # a word moved: another shape
            path.write_text(text)
            assert rows_of(file.rows()) == parse(text)
        path.write_text("Node 3 Used: 9 kB\nNode 3 Free: 8 kB\nstate down\n")
        uses = file.program.uses
        assert rows_of(file.rows()) == parse(path.read_text())
        assert file.program.uses == uses + 1  # served by the program learned from the last read
    finally:
        file.file.close()


@pytest.mark.parametrize("bad_parse", [
    lambda text: [(USED, ("0",), float(sum(map(int, re.findall(r"\d+", text)))))],  # a sum of two numbers
    lambda text: [(USED, ("0",), float(n)) for n in re.findall(r"\d+", text) if int(n) < 50],  # a value decides
    lambda text: [(USED, ("0",), min(float(n), 60.0)) for n in re.findall(r"\d+", text)],  # not number x factor
])
def test_a_parse_that_is_not_numbers_times_factors_gets_its_own_rows(tmp_path, bad_parse):
    """No program, or one whose numbers are all checked (a value that decides rows is structural)."""
    file, path = learned(tmp_path, "a 10\nb 20\n", bad_parse)
    try:
        assert rows_of(file.rows()) == bad_parse("a 10\nb 20\n")
        for text in ("a 10\nb 20\n", "a 70\nb 20\n", "a 30\nb 90\n", "a 30\nb 40\n", "a 30\nb 40\n"):
            path.write_text(text)
            assert rows_of(file.rows()) == bad_parse(text)
    finally:
        file.file.close()


def group_parse(texts: list) -> list:
    """Two files: 'state <word>' and '<number>' (None: that file could not be read)."""
    state, number = texts
    rows = [(STATE, ("x",), 1.0 if state is not None and state.split()[1] == "up" else 0.0)]
    if number is not None:
        rows.append((USED, ("0",), float(number) * 512))
    return rows


def test_a_group_of_files_is_one_program_and_a_file_it_cannot_read_is_none_to_the_parse(tmp_path):
    (tmp_path / "state").write_text("state up\n")
    (tmp_path / "used").write_text("10\n")
    (tmp_path / "dir").mkdir()
    group = LearnedGroup([ProcFile(str(tmp_path / "state")), ProcFile(str(tmp_path / "used"))], group_parse)
    broken = LearnedGroup([ProcFile(str(tmp_path / "state")), ProcFile(str(tmp_path / "dir"))], group_parse)
    try:
        assert rows_of(group.rows()) == group_parse(["state up\n", "10\n"])
        assert group.program is not None
        served = 0
        for state, used in (("up", "33"), ("down", "33"), ("down", "7"), ("down", "8"), ("down", "9")):
            (tmp_path / "state").write_text(f"state {state}\n")
            (tmp_path / "used").write_text(f"{used}\n")
            before = group.program.uses if group.program is not None else 0
            assert rows_of(group.rows()) == group_parse([f"state {state}\n", f"{used}\n"])
            served += group.program is not None and group.program.uses > before
        assert served >= 2  # (up, 33) by the first program; (down, 8) and (down, 9) by one learned at "down"
        for state in ("down", "down", "down"):  # reading a directory fails (EISDIR): the parse gets None
            (tmp_path / "state").write_text(f"state {state}\n")
            assert rows_of(broken.rows()) == group_parse([f"state {state}\n", None])
        assert broken.program is not None and broken.program.uses == 2  # a program while it fails
        (tmp_path / "state").write_text("state up\n")
        assert rows_of(broken.rows()) == group_parse(["state up\n", None])
        asking = LearnedGroup(broken.files, group_parse, learn_unreadable=False)  # the parse sees every failure
        for _ in range(3):
            assert rows_of(asking.rows()) == group_parse(["state up\n", None])
        assert asking.program is None
    finally:
        for pf in (*group.files, *broken.files):
            pf.close()



def test_a_group_file_holding_the_separator_is_read_file_by_file(tmp_path):
    """A file's text may hold the bytes the C reader puts between a group's files (a device's model name is the
    device's to choose): the group is then read file by file, its rows still right, and no program is made."""
    (tmp_path / "state").write_text("state up\n\x1f\nup\n")
    (tmp_path / "used").write_text("10\n")
    group = LearnedGroup([ProcFile(str(tmp_path / "state")), ProcFile(str(tmp_path / "used"))], group_parse)
    try:
        for used in ("10", "11", "12"):
            (tmp_path / "used").write_text(f"{used}\n")
            assert rows_of(group.rows()) == group_parse(["state up\n\x1f\nup\n", f"{used}\n"])
        assert group.program is None
        (tmp_path / "state").write_text("state up\n")  # an ordinary text again: a program comes
        for _ in range(2):
            assert rows_of(group.rows()) == group_parse(["state up\n", "12\n"])
        assert group.program is not None
    finally:
        for pf in group.files:
            pf.close()

_NUMBER = re.compile(rb"(?<![^ \t\n:\r/])-?[0-9]+(?:\.[0-9]+)?(?![^ \t\n:\r/])")


def _renumber(root: Path, rng: random.Random, share: float, huge: bool, files: list[Path] | None = None) -> None:
    """A ``share`` of the numbers of every file under root (as _scan.c tokenises) replaced by others: the files
    keep their shapes, except where a number is a count or a name (the parse, and the program's checks, must
    see it).  ``huge``: some beyond 2**53, where a double's integers end and a program must stand aside."""
    choices = [0, 1, 7, 1 << 20, 1 << 40] + [1 << 53] * huge

    def other(match: re.Match) -> bytes:
        if rng.random() >= share:
            return match[0]
        if b"." in match[0]:
            return b"%d.%d" % (rng.randrange(1000), rng.randrange(10))
        return b"%d" % (rng.choice(choices) + rng.randrange(1000))
    for path in root.rglob("*") if files is None else files:
        if path.is_file() and (files is not None or not path.is_symlink()):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            path.write_bytes(_NUMBER.sub(other, data))


def _learned_files(sampler: Sampler) -> list[LearnedFile]:
    found = []

    def walk(value, depth=0):
        if isinstance(value, LearnedFile):
            found.append(value)
        elif depth < 4 and isinstance(value, (list, tuple)):
            for item in value:
                walk(item, depth + 1)
        elif isinstance(value, Devices):
            walk(value.current(), depth + 1)
        elif depth < 4 and isinstance(value, dict):
            walk(list(value.values()), depth + 1)
        elif (depth < 4 and type(value).__module__.startswith("shm_metrics.publisher.collectors.")
              and hasattr(value, "__dict__")):
            walk(list(vars(value).values()), depth + 1)  # a collector's own objects (netclass' interfaces)
    for c in sampler.collectors:
        for value in vars(c).values():
            walk(value)
    return found


def untimed(rows: list) -> list:
    """The rows but the collectors' durations (time, not the files)."""
    return [row for row in rows if row[0].name != "node_scrape_collector_duration_seconds"]


LEARNING = ["zoneinfo", "meminfo_numa", "mountstats", "nfs", "nfsd", "interrupts", "schedstat", "vmstat",
            "sockstat", "netstat", "zfs", "mdadm", "xfs", "btrfs", "bcache",
            "powersupplyclass", "softnet", "buddyinfo", "lnstat"]


def _compare_on_fixture(tmp_path: Path, collectors: list[str], files=None, least: int = 20) -> None:
    """Samplers of ``collectors`` on the fixture tree: one that learned its programs, and a new one (the parsers
    alone) after each change of the tree's numbers (``files(tree)``: only those files), give the same rows."""
    root = node_e2e.unpack(tmp_path / "e2e")
    tree = root / "collector" / "fixtures"
    options, filters = node_e2e.publisher_settings()
    here = os.getcwd()
    os.chdir(root)
    try:
        def sampler() -> Sampler:
            return Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), rootfs=str(tree),
                           udev_data=str(tree / "udev" / "data"), collectors=selected(collectors),
                           options=options, filters=filters)
        learning = sampler()
        try:
            for _ in range(2):
                learning.sample(full=True)
            learned = _learned_files(learning)
            assert learned and all(f.program is not None for f in learned)
            rng = random.Random(16)
            served = most = 0
            for round_ in range(6):
                _renumber(tree, rng, 1.0 if round_ % 2 else 0.3, round_ % 3 == 2, files and files(tree))
                before = [(f.program, f.program and f.program.uses) for f in learned]
                got = learning.sample(full=True).all_series()
                python = sampler()  # a new sampler's first sample: the parsers alone
                try:
                    expected = python.sample(full=True).all_series()
                finally:
                    python.close()
                assert untimed(got) == untimed(expected)
                most = max(most, len(untimed(got)))  # (a round may make the collector refuse the files)
                served += sum(f.program is not None and f.program is program and f.program.uses > uses
                              for f, (program, uses) in zip(learned, before))
            assert most > least
            assert served > 0  # the programs served changed files, not only the parsers
        finally:
            learning.close()
    finally:
        os.chdir(here)


def test_on_the_fixture_tree_the_programs_give_the_parsers_rows_whatever_the_numbers(tmp_path):
    _compare_on_fixture(tmp_path, LEARNING)


def test_an_interfaces_attributes_learned_as_a_group_give_netclass_rows_whatever_their_numbers(tmp_path):
    """Only the attributes read every sample change (the others are re-read every 30 s, as properties)."""
    def dynamic(tree: Path) -> list[Path]:
        return [(iface / attr).resolve() for iface in (tree / "sys" / "class" / "net").iterdir()
                for attr in netclass._DYNAMIC if (iface / attr).exists()]
    _compare_on_fixture(tmp_path, ["netclass"], dynamic)


def test_an_interfaces_program_outlives_a_refresh_of_the_same_properties_and_not_a_change(tmp_path, monkeypatch):
    """Properties (MTU, address...) are read again every 30 s: the same values keep the program (a container host's
    hundreds of interfaces would otherwise learn again every 30 s); a new value is served at once."""
    monkeypatch.setattr(netclass, "PROPERTIES_REFRESH_SECONDS", 0.0)  # a refresh at every sample
    root = node_e2e.unpack(tmp_path / "e2e")
    tree = root / "collector" / "fixtures"
    options, filters = node_e2e.publisher_settings()
    sampler = Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), rootfs=str(tree),
                      collectors=selected(["netclass"]), options=options, filters=filters)
    try:
        for _ in range(2):
            sampler.sample(full=True)
        groups = _learned_files(sampler)
        assert groups and all(g.program is not None for g in groups)
        programs = [(g.program, g.program.uses) for g in groups]
        sampler.sample(full=True)
        assert all(g.program is program and g.program.uses > uses for g, (program, uses) in zip(groups, programs))
        mtu = (tree / "sys" / "class" / "net" / "eth0" / "mtu").resolve()
        mtu.write_text("9000\n")
        mtu_family = next(family for family, attr, _ in netclass._NUMERIC if attr == "mtu")
        assert sampler.sample(full=True).values(mtu_family)[("eth0",)] == 9000
    finally:
        sampler.close()


def test_a_chips_readings_learned_as_a_group_give_hwmon_rows_whatever_their_numbers(tmp_path):
    """Only the readings change (a chip's name and labels are read when the chip is found)."""
    def readings(tree: Path) -> list[Path]:
        chips = [chip.resolve() for chip in (tree / "sys" / "class" / "hwmon").iterdir()]
        return [path for chip in chips for path in chip.rglob("*") if path.is_file()
                and path.name != "name" and not path.name.endswith("_label")]
    _compare_on_fixture(tmp_path, ["hwmon"], readings)


def test_a_groups_file_longer_than_a_page_is_read_whole(tmp_path):
    """A group reads each file until a short read (a sysfs attribute comes whole): a longer one still does."""
    long = " ".join(str(n) for n in range(3000)) + "\n"  # ~13 KiB
    (tmp_path / "long").write_text(long)
    (tmp_path / "short").write_text("7\n")
    files = [ProcFile(str(tmp_path / "short")), ProcFile(str(tmp_path / "long"))]
    try:
        work = numbers.Numbers(files[0].fd)
        work.fd = tuple(f.fd for f in files)
        count, _, raw = work.read(text=True)
        assert count == 1 + 3000
        assert raw.split(b"\n\x1f\n") == [b"7\n", long.encode()]
        assert list(work.values[:count]) == [7.0, *map(float, range(3000))]
    finally:
        for pf in files:
            pf.close()


def test_a_devices_ports_learned_as_a_group_give_infiniband_rows_whatever_their_numbers(tmp_path):
    """Only the ports' files change (a device's board and firmware are read when it is found); a rate is
    parsed as a float32, not a number x a factor: a constant while its number stays."""
    def ports(tree: Path) -> list[Path]:
        found = []
        for device in (tree / "sys" / "class" / "infiniband").iterdir():
            for port in (device / "ports").iterdir():
                found += [port / name for name in ("state", "phys_state", "rate")]
                found += [path for sub in ("counters", "counters_ext") if (port / sub).is_dir()
                          for path in (port / sub).iterdir()]
        return [path.resolve() for path in found]
    _compare_on_fixture(tmp_path, ["infiniband"], ports)


def test_the_cpus_frequencies_learned_as_a_group_give_cpufreq_rows_whatever_their_numbers(tmp_path):
    def frequencies(tree: Path) -> list[Path]:
        cpus = (tree / "sys" / "devices" / "system" / "cpu").glob("cpu[0-9]*")
        return [path.resolve() for cpu in cpus for path in (cpu / "cpufreq").glob("*_freq")]
    _compare_on_fixture(tmp_path, ["cpufreq"], frequencies, least=10)


def test_a_number_beyond_a_doubles_integers_is_checked_byte_for_byte(tmp_path):
    """mountstats wraps its times at 2**53: a program keeps such a number as it is, and a change of 1, which
    its double may not show, still reaches the parse."""
    def wrapping(text: str) -> list:
        big, small = text.split()
        return [(USED, ("0",), float(int(big) % (1 << 53))), (FREE, ("0",), float(small))]
    base = (1 << 53) + 4
    file, path = learned(tmp_path, f"{base} 5\n", wrapping)
    try:
        assert rows_of(file.rows()) == wrapping(f"{base} 5\n") and file.program is not None
        for big, small in ((base, 6), (base + 1, 6), (base + 1, 7), (base + 2, 7)):
            path.write_text(f"{big} {small}\n")
            assert rows_of(file.rows()) == wrapping(f"{big} {small}\n")
        assert float(base + 1) == float(base)  # (what a check of the double alone would have missed)
    finally:
        file.file.close()


def _new_data(line: str, value: int) -> str:
    """A uint64 kstat line with another value (one beyond 2**53, a sentinel such as UINT64_MAX, left as is)."""
    return re.sub(r"^(\S+\s+4\s+)(\d+)", lambda m: m[0] if int(m[2]) >= 1 << 53 else f"{m[1]}{value}", line)


def test_a_kstat_files_values_are_mapped_not_kept(tmp_path):
    """zfs's kstats: the type column is structural, the data column is values.  With the values changed
    (as on any live host), the program must still serve: a program that kept them as structural would stand
    down at every read, while serving a static fixture as well as a good one."""
    root = node_e2e.unpack(tmp_path / "e2e")
    tree = root / "collector" / "fixtures"
    options, filters = node_e2e.publisher_settings()
    sampler = Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), rootfs=str(tree),
                      udev_data=str(tree / "udev" / "data"), collectors=selected(["zfs"]), options=options,
                      filters=filters)
    try:
        for _ in range(2):
            sampler.sample(full=True)
        learned = [f for f in _learned_files(sampler) if f.program is not None]
        assert learned
        for round_ in range(3):
            for path in (tree / "proc" / "spl" / "kstat" / "zfs").rglob("*"):
                if path.is_file():  # every uint64 kstat line "name 4 data": a new data
                    lines = path.read_text().splitlines(keepends=True)
                    path.write_text("".join(_new_data(line, round_ * 1000 + n) for n, line in enumerate(lines)))
            before = [(f.program, f.program.uses) for f in learned]
            sampler.sample(full=True)
            assert all(f.program is program and f.program.uses == uses + 1 for f, (program, uses) in
                       zip(learned, before)), "a program stood down when only values changed"
    finally:
        sampler.close()


def test_a_hexadecimal_file_is_learned_in_its_own_digits(tmp_path):
    """softnet_stat: one line of hexadecimal counters per CPU; a counter that gains a letter keeps the shape."""
    def softnet(text: str) -> list:
        return [(USED, (str(cpu),), float(int(line.split()[0], 16) * 8)) for cpu, line in
                enumerate(text.splitlines())]
    file, path = learned(tmp_path, "00000010 00000000\n0000000a 00000001\n", softnet, hex=True)
    try:
        assert rows_of(file.rows()) == softnet(path.read_text()) and file.program is not None
        for text in ("000000ff 00000000\n0000abcd 00000001\n", "00000099 00000000\n00000100 00000001\n"):
            path.write_text(text)
            uses = file.program.uses
            assert rows_of(file.rows()) == softnet(text)
            assert file.program.uses == uses + 1  # digits and letters alike: the same shape
    finally:
        file.file.close()


def test_blocks_sorted_the_go_way_come_out_as_the_same_rows_sorted():
    """The sorted collectors (btrfs, bcache, xfs, zfs's pools) sort blocks by a permutation found once: the rows it
    gives, values included, are those of sorting the blocks' rows, whether a family's label names are declared in
    sorted order or not; a part that is a list of rows sorts everything as rows."""
    from array import array

    from shm_metrics.publisher.collectors import Sample
    from shm_metrics.publisher.collectors._go_order import add_in_go_order, add_parts_in_go_order

    plain = gauge("node_test_sorted", "Label names in order.", "device", "kind")
    reversed_names = gauge("node_test_unsorted", "Label names out of order.", "zone", "device")
    first = numbers.FixedSeries([plain, reversed_names, plain], [("sdb", "x"), ("b", "sda"), ("sda", "y")])
    second = numbers.FixedSeries([reversed_names, plain, reversed_names], [("a", "sdb"), ("sda", "x"), ("a", "sda")])
    for k in (1.0, 2.0):
        blocks = [numbers.Block(first, array("d", [k, k + 1, k + 2]).tobytes()),
                  numbers.Block(second, array("d", [k + 3, k + 4, k + 5]).tobytes())]
        as_blocks, as_rows = Sample(), Sample()
        add_parts_in_go_order(as_blocks, blocks)
        add_in_go_order(as_rows, [row for block in blocks for row in block.rows()])
        assert as_blocks.fixed and as_blocks.sampled_series() == as_rows.sampled_series()
        mixed = Sample()
        add_parts_in_go_order(mixed, [blocks[0], blocks[1].rows()])
        assert not mixed.fixed and mixed.sampled_series() == as_rows.sampled_series()
    labels = [labels for family, labels, _ in as_rows.sampled_series() if family is reversed_names]
    assert labels == [("a", "sda"), ("b", "sda"), ("a", "sdb")]  # by device (its name sorts first), then zone


def test_the_files_kept_by_path_are_closed_with_their_collector(tmp_path):
    """btrfs, bcache, xfs, zfs's pools and the power supplies keep files open by path (Collector.learned_paths):
    closing the sampler closes every one of them."""
    root = node_e2e.unpack(tmp_path / "e2e")
    tree = root / "collector" / "fixtures"
    options, filters = node_e2e.publisher_settings()
    before = len(os.listdir("/proc/self/fd"))
    sampler = Sampler(procfs=str(tree / "proc"), sysfs=str(tree / "sys"), rootfs=str(tree),
                      collectors=selected(["btrfs", "bcache", "xfs", "zfs", "powersupplyclass"]), options=options,
                      filters=filters)
    try:
        for _ in range(2):
            sampler.sample(full=True)
        kept = [files for c in sampler.collectors for files in c._device_sets if files._files or files._groups]
        assert len(kept) >= 4 and len(os.listdir("/proc/self/fd")) > before + 20
    finally:
        sampler.close()
    assert len(os.listdir("/proc/self/fd")) == before

"""Generations: a segment that grows when the host outgrows it (docs/LAYOUT.md, "Generations").

In process: a real ``OwnedSegment`` publishing synthetic samples that need more room, read by real
readers attached before the growth (a mapped one, a ``pread`` one as the exporter reads, and the
C reader).  With real processes: ``shm-publisher`` whose capacity bound is reached.  The real-host
test (tmpfs mounts and veth pairs under a running publisher, exporter and followers, compared with
node_exporter) is ``test_generations_host.py``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import time

import pytest
from conftest import run_reader, wait_for
from synthetic import sample

from shm_metrics import families as F
from shm_metrics import shm_layout as L
from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import gauge
from shm_metrics.publisher.segment import OwnedSegment
from shm_metrics.readers.reader import Reader

MOUNTED = gauge("node_test_mounted", "A family every sample has.", "mountpoint")
LATE = gauge("node_test_late_family", "A family that appears after start (a module loaded later).", "device")


def temp_files(name: str) -> list[str]:
    return glob.glob(f"{L.segment_path(name)}.gen-*")


def synthetic(k: int, filesystems: int, late: int = 0):
    """Sample ``k`` of a host with ``filesystems`` mounts (one series each) and ``late`` series of LATE."""
    out = sample(cpus=2, nets=2, disks=2, filesystems=filesystems, top=3, busy=10.0, scale=1.0 + k / 100)
    out.scalars["procs_total"] = k
    for row in out.filesystems:
        out.add(MOUNTED, (row["mountpoint"],), float(k))
    for i in range(late):
        out.add(LATE, (f"dev{i}",), float(i))
    return out


@pytest.fixture
def segment(name):
    """An OwnedSegment sized for 2 filesystems and 8 series, allowed to grow to 4 MiB."""
    strings = F.chunks(len(F.encode_catalog((MOUNTED,))[1]))
    layout = L.Layout.for_capacities(2, 2, 2, 2, history=16, top=3, metrics=1, strings=strings, series=8, labels=8)
    owned = [OwnedSegment(name, layout, 0o600, 1.0, (MOUNTED,), max_bytes=4 << 20)]
    owned[0].set_state(L.STATE_RUNNING)
    yield owned
    owned[0].close(unlink=True)
    assert not temp_files(name)


def publish(owned: list[OwnedSegment], k: int, **host) -> None:
    owned[0] = owned[0].publish(synthetic(k, **host), 1_700_000_000.0 + k, 1000.0 + k, 0.001, 0)


def test_a_sample_that_does_not_fit_moves_to_a_larger_generation_that_readers_follow(name, segment):
    mapped, copied = Reader(name), Reader(name, pread=True)
    try:
        for k in range(1, 6):
            publish(segment, k, filesystems=2)
        first = mapped.read()
        assert (first.generation, first.seq, first.overflow()["filesystems"]) == (0, 10, 0)
        old_inode = os.stat(L.segment_path(name)).st_ino

        publish(segment, 6, filesystems=40)  # 38 mounts appear: rows, series and label bytes all short

        assert segment[0].generation == 1 and os.stat(L.segment_path(name)).st_ino != old_inode
        assert not temp_files(name)
        for reader in (mapped, copied):
            snap = reader.read()  # the old generation says "replaced": read() follows the name
            assert (snap.generation, snap.instance_id, snap.seq) == (1, first.instance_id, 12)
            assert snap.state == "running" and snap.overflow() == dict.fromkeys(snap.overflow(), 0)
            assert len(snap.array("filesystems")) == 40
            assert len(snap.families["node_test_mounted"].series) == 40
            assert reader.capacities["filesystems"] >= 40 and reader.capacities["series"] >= 40
        # The history ring came along: every sample since the start, in order, none lost.
        assert [e["procs_total"] for e in mapped.history()] == [1, 2, 3, 4, 5, 6]
        assert [e["seq"] for e in mapped.history()] == [2, 4, 6, 8, 10, 12]
    finally:
        mapped.close()
        copied.close()


def test_a_family_that_appears_later_grows_the_catalog(name, segment):
    publish(segment, 1, filesystems=2)
    with Reader(name) as reader:
        assert "node_test_late_family" not in reader.read().families
        publish(segment, 2, filesystems=2, late=3)
        snap = reader.read()
        assert snap.generation == 1 and snap.overflow()["series"] == 0
        assert snap.families["node_test_late_family"].series == [(("dev0",), 0.0), (("dev1",), 1.0),
                                                                 (("dev2",), 2.0)]
        assert len(snap.families["node_test_mounted"].series) == 2
        publish(segment, 3, filesystems=2)  # the module went away: its series are gone with it
        snap = reader.read()
        assert snap.generation == 1 and snap.families["node_test_late_family"].series == []


def test_a_conflicting_redeclaration_is_counted_not_grown_forever(name, segment):
    """A second, different family under a name the catalog has cannot make the segment grow each sample."""
    impostor = FamilyInfo(MOUNTED.name, "counter", "other help", ("mountpoint",))
    out = synthetic(1, filesystems=2)
    out.add(impostor, ("/x",), 1.0)
    segment[0] = segment[0].publish(out, 1_700_000_001.0, 1001.0, 0.001, 0)
    with Reader(name) as reader:
        snap = reader.read()
        assert snap.generation == 0 and snap.overflow()["series"] == 1


def test_the_c_reader_follows_a_generation(name, segment, tmp_path):
    binary = tmp_path / "shm_read"
    source = os.path.join(os.path.dirname(__file__), "..", "examples", "c", "shm_read.c")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), source, "-lm"], check=True)


    for k in range(1, 3):
        segment[0] = segment[0].publish(synthetic(k, filesystems=2), time.time(), 1000.0 + k, 0.001, 0)
    segment[0] = segment[0].publish(synthetic(3, filesystems=30), time.time(), 1003.0, 0.001, 0)
    assert segment[0].generation == 1
    out = subprocess.run([str(binary), name, "node_test_mounted"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 30


def test_growth_stops_at_the_bound_and_what_does_not_fit_is_counted(name, start_publisher):
    """--max-segment-mib 1 with a first segment already above it: a host with more interfaces than the
    initial capacity keeps generation 0 and counts what it leaves out, as before generations."""
    pub = start_publisher(name, "--interval", "0.2", "--history", "3400", "--max-interfaces", "1",
                          "--max-segment-mib", "1", "--collector.netdev.device-exclude", "^$")
    info = wait_for(lambda: json.loads(run_reader("--name", name, "--info", "--json").stdout or "{}")
                    .get("overflow", {}).get("net"), what="net overflow counted")
    assert info >= 1  # every host has lo and at least one other interface here
    result = json.loads(run_reader("--name", name, "--info", "--json").stdout)
    assert result["generation"] == 0 and result["capacities"]["net"] == 1
    pub.proc.terminate()
    _, stderr = pub.proc.communicate(timeout=10)
    assert "cannot grow past --max-segment-mib" in stderr

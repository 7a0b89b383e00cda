"""The seqlock under stress, and reading without copying the segment.

A writer stores invariant samples (every field of sample k equals k) through
the real write path while this process reads.  With the seqlock: zero torn
snapshots over a million reads.  With the protection removed (a bare decode of
the same bytes): torn snapshots appear, so the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import wait_for

from shm_metrics import shm_layout as L
from shm_metrics.readers import NoSegment, Reader, SegmentStarting

WRITER = os.path.join(os.path.dirname(__file__), "invariant_writer.py")
READS = 1_000_000


@pytest.fixture
def writer(name):
    proc = subprocess.Popen([sys.executable, WRITER, name, "0.00002"], stderr=subprocess.PIPE)

    def attached():
        try:
            reader = Reader(name)
        except (NoSegment, SegmentStarting):
            return None
        return reader if reader.seq > 10 else reader.close()

    reader = None
    try:
        reader = wait_for(attached, what="invariant writer")
        yield reader
    finally:
        if reader is not None:
            reader.close()
        proc.terminate()
        code = proc.wait(10)
        err = proc.stderr.read()
        proc.stderr.close()
    assert code == 0, err


def torn(snapshot) -> bool:
    values = set(snapshot.scalars().values())
    if len(values) != 1:
        return True
    (k,) = values
    for rec in L.SAMPLE_ARRAYS:
        rows = snapshot.array(rec.name)
        if len(rows) != 1 + int(k) % 4:
            return True
        strings = {f.name for f in rec.fields if f.is_string}
        for row in rows:
            if {v for key, v in row.items() if key not in strings} != {k}:
                return True
            if any(row[s] != f"k{int(k)}" for s in strings):
                return True
    families = snapshot.families.all()
    if [f.name for f in families] != ["test_invariant", "test_invariant_total"]:
        return True
    for fam in families:
        if len(fam.series) != 1 + int(k) % 4:
            return True
        if any(value != k or set(labels) != {f"k{int(k)}"} for labels, value in fam.series):
            return True
    return False


def test_seqlock_gives_no_torn_snapshot_in_a_million_reads(writer):
    reader = writer
    torn_count = 0
    seqs = set()
    for i in range(READS):
        snap = reader.read(arrays=(i % 16 == 0))  # every 16th read checks the arrays too
        seqs.add(snap.seq)
        values = tuple(snap.scalars().values()) if i % 16 == 0 else snap._values[-len(L.SCALARS.names):]
        if values.count(values[0]) != len(values) or (i % 16 == 0 and torn(snap)):
            torn_count += 1
    assert len(seqs) > 1000, "the writer must really be writing during the reads"
    assert torn_count == 0
    assert reader.retries > 0, "reads must have overlapped writes for the test to mean anything"


def test_history_read_during_writes_is_never_torn(writer):
    reader = writer
    newest = set()
    reads = 0
    # At least 3000 reads, and on until the writer has written 100 samples meanwhile (a loaded machine
    # gives the writer less time; the bound only keeps a stuck writer from hanging the test).
    deadline = time.monotonic() + 60
    while reads < 3000 or (len(newest) <= 100 and time.monotonic() < deadline):
        reads += 1
        entries = reader.history(limit=16)
        assert entries, "the writer has written samples"
        for a, b in zip(entries, entries[1:]):
            assert b["seq"] == a["seq"] + 2, "entries are consecutive samples, oldest first"
        for e in entries:
            values = {v for key, v in e.items() if key not in ("seq", "sample_time")}
            assert values == {e["sample_time"] % 64}, f"torn history entry {e}"  # the writer cycles 64 samples
        newest.add(entries[-1]["seq"])
    assert len(newest) > 100, "the writer must really be writing during the reads"


def test_without_the_seqlock_reads_do_tear(writer):
    """The same bytes decoded with no seq check: proves the test above can fail."""
    reader = writer
    offset = reader.layout.offsets[0]
    unpack = L.SCALARS.struct.unpack_from
    mm = reader._mm
    torn_count = 0
    for _ in range(200_000):
        values = unpack(mm, offset)
        if values.count(values[0]) != len(values):
            torn_count += 1
    assert torn_count > 0


def test_reading_does_not_copy_the_segment(name, start_publisher):
    # A big segment (a couple of MiB) makes any copy of it stand out.
    start_publisher(name, "--interval", "0.1", "--max-filesystems", "8192")
    with Reader(name) as reader:
        size = reader.size
        assert size > 1 << 21
        reader.read()  # warm up caches (struct formats, dicts)
        tracemalloc.start()
        try:
            snap = reader.read()
            value = reader.read_field("procs_total")
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            copy = bytes(reader._mm)  # control: what a copy looks like to tracemalloc
            _, copy_peak = tracemalloc.get_traced_memory()
            del copy
        finally:
            tracemalloc.stop()
    assert snap.procs_total > 0 and value > 0
    assert copy_peak >= size, "control: tracemalloc must see a copy of the segment"
    assert peak < size / 20, f"a read allocated {peak} bytes of a {size}-byte segment"

"""Q1. Read cost: the reader API against a bare decode of the same bytes.

The peer of each reader call is the decode it cannot avoid, done bare: the
same ``struct`` formats over the same span, from a ``bytes`` copy of the
segment taken inside one consistent read.  What the reader adds on top is
the seqlock (seq read before and after, parity and equality checks, the
state word, retries), the count-versus-capacity validation and the Snapshot
object: the target says that costs at most 1.5x the bare decode.

* ``read(arrays=False)`` decodes one span (seqlock part of the header, the
  section directory, every scalar) with one ``unpack_from``: the bare peer is
  that ``unpack_from`` (``readers.reader._SPAN``, the reader's own format).
* ``read()`` adds each array's used records (``iter_unpack`` over
  memoryview slices, counts from the directory): the bare peer does exactly
  that too.
* ``read_field`` reads one scalar: the bare peer is one ``unpack_from`` of
  that u64.

Every variant is called the same way (a ``functools.partial`` in the same
loop), so the loop and call overhead is the same in each row; it is shown as
its own row.
"""

from __future__ import annotations

import os
import struct
from functools import partial

import shm_metrics.readers.reader as R
from bench.common import Config, Shared, Table, alternate, calibrate, median, paired_ratio, per_call, us, x
from shm_metrics import shm_layout as L
from shm_metrics.readers import Reader

LIMIT = 1.5
FIELD = "procs_total"


def consistent_copy(reader: Reader) -> bytes:
    """The whole segment as ``bytes``, taken between two equal even seq values."""
    fd = os.open(reader.path, os.O_RDONLY)
    try:
        while True:
            seq = reader.seq
            data = os.pread(fd, reader.size, 0)
            if not seq & 1 and reader.seq == seq == R._SPAN.unpack_from(data, L.HEADER_SEQ_OFFSET)[0]:
                return data
    finally:
        os.close(fd)


def bare_full_decoder(data: bytes, layout: L.Layout):
    """The reader's work for a full snapshot (the span, then a copy of each array's and each family
    section's used records, decoded later on demand), with no checks."""
    unpack, offset = R._SPAN.unpack_from, L.HEADER_SEQ_OFFSET
    slots = [(rec.name, layout.offsets[i], rec.size, R._DIR_START + i * R._DIR_WIDTH + R._COUNT_POS)
             for i, rec in ((L.SECTION_INDEX[r.name], r) for r in (*L.SAMPLE_ARRAYS, *L.FAMILY_SECTIONS))]

    def decode():
        values = unpack(data, offset)
        return values, {name: data[off:off + values[count] * size] for name, off, size, count in slots}

    return decode


def run(cfg: Config, shared: Shared) -> Table:
    reader = Reader(shared.publisher.name)
    try:
        return _measure(cfg, reader)
    finally:
        reader.close()


def _measure(cfg: Config, reader: Reader) -> Table:
    while True:  # a copy whose values equal a reader snapshot (no sample in between)
        data = consistent_copy(reader)
        snap = reader.read()
        bare_full = bare_full_decoder(data, reader.layout)
        values, arrays = bare_full()
        if snap.seq == values[0]:
            break
    assert snap._values == values and snap._arrays == arrays, "the bare decode must decode what the reader decodes"
    n_scalars = len(values)
    records = {rec.name: rec for rec in (*L.SAMPLE_ARRAYS, *L.FAMILY_SECTIONS)}
    n_all = n_scalars + sum(len(raw) // records[k].size * len(records[k].fields) for k, raw in arrays.items())
    rows_text = ", ".join(f"{len(v) // records[k].size} {k}" for k, v in arrays.items())

    variants = {
        "bare_scalars": partial(R._SPAN.unpack_from, data, L.HEADER_SEQ_OFFSET),
        "read_scalars": partial(reader.read, False),
        "bare_full": bare_full,
        "read_full": reader.read,
        "bare_field": partial(struct.Struct("<Q").unpack_from, data, reader.layout.offset_of("scalars", FIELD)),
        "read_field": partial(reader.read_field, FIELD),
        "overhead": partial(int),  # a no-op C call: what the loop and call cost in every row
    }
    batch_seconds = cfg.pick(0.02, 0.003)
    sizes = {k: calibrate(fn, batch_seconds) for k, fn in variants.items()}
    batches = {k: partial(per_call, fn, sizes[k]) for k, fn in variants.items()}
    retries0 = reader.retries
    t = alternate(batches, cfg.pick(31, 3))
    med = {k: median(v) for k, v in t.items()}
    ratio = {k: paired_ratio(t[f"read_{k}"], t[f"bare_{k}"]) for k in ("scalars", "full", "field")}

    table = Table(1, "Read cost: one consistent snapshot, against a bare decode of the same bytes",
                  ["read", "values", "µs median", "x its bare decode"])
    table.add("bare `unpack_from` of the span (header seqlock part, directory, scalars) from a bytes copy",
              n_scalars, us(med["bare_scalars"]), "1 (peer)")
    table.add("`Reader.read(arrays=False)`: the same span, seqlock-checked, Snapshot", n_scalars,
              us(med["read_scalars"]), x(ratio["scalars"]))
    table.add(f"bare decode of the span and a copy of the used array and family records ({rows_text}) "
              "from a bytes copy", n_all, us(med["bare_full"]), "1 (peer)")
    table.add("`Reader.read()`: the same, seqlock-checked, counts validated, Snapshot (rows decoded on demand)",
              n_all,
              us(med["read_full"]), x(ratio["full"]))
    table.add(f"bare `unpack_from('<Q')` of `{FIELD}` from a bytes copy", 1, us(med["bare_field"]), "1 (peer)")
    table.add(f"`Reader.read_field('{FIELD}')`: seq, value, seq", 1, us(med["read_field"]), x(ratio["field"]))
    table.add("loop and call overhead included in every row (a no-op C call)", 0, us(med["overhead"]), "")
    table.notes.append(f"{len(t['overhead'])} alternating rounds, each a batch of ~{batch_seconds * 1000:.0f} ms "
                       f"per variant; ratio = median of per-round ratios. The bare decodes were checked to return "
                       f"the reader's values. Seqlock retries during the measurement: {reader.retries - retries0} "
                       f"(publisher at 1 Hz).")
    for key, what in (("scalars", "read(arrays=False)"), ("full", "read()"), ("field", "read_field")):
        table.target(f"{what} {x(ratio[key])} its bare decode (<= {LIMIT}x)", ratio[key] <= LIMIT)
    return table

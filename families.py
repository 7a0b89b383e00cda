"""The self-describing family sections: encoding (publisher) and lazy decoding (readers).

Four sections of the segment (``shm_layout.METRICS``, ``STRINGS``, ``SERIES``,
``LABELS``) carry node_exporter's metric families without any reader knowing
them in advance:

* the catalog, written once when the segment is created: one ``metrics`` row
  per family (name, HELP text and label names as offsets into the ``strings``
  blob, the type, the number of labels);
* per sample: one ``series`` row per value (family index, label values as an
  offset into the ``labels`` blob, the value), sorted by family, and the
  ``labels`` blob itself.  Label values are joined by NUL; identical label
  sets (``device="eth0"`` for the 17 netdev families) are stored once.

A reader decodes the catalog once per attach (it never changes) and, per
snapshot, copies the two per-sample sections raw inside the seqlock; a family
is decoded only when asked for (``FamilyView``).
"""

from __future__ import annotations

import operator
from collections import namedtuple
from operator import itemgetter

from shm_metrics import shm_layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing (with re, enum, functools) costs milliseconds: shm-read --once node_load1 imports this
    from array import array
    from collections.abc import Callable, Collection, Iterator, Sequence

GAUGE, COUNTER, UNTYPED = L.METRIC_TYPES
_TYPE_CODE = {t: i for i, t in enumerate(L.METRIC_TYPES)}
_SERIES = L.SERIES.struct
ROW_SIZE = L.SERIES.size  # bytes of one series row
# SeriesEncoder writes the rows column by column: metric, labels_offset, labels_length as u32 words 0-2,
# the value as f64 word 2 of each 24-byte row.
assert [L.SERIES.offsets[n] for n in L.SERIES.names] == [0, 4, 8, 16] and L.SERIES.size == 24
_METRIC = L.METRICS.struct
_CHUNK = L.STRINGS.size  # the blobs are counted in 8-byte chunks


# A label value meaning "this series has no such label": node_exporter gives some info families a label set
# per series (node_power_supply_info carries only the attributes a supply has); the catalog declares every
# possible label and the exporter leaves this value's labels out.  A control character no sysfs text holds.
ABSENT_LABEL = "\x01"


FamilyInfo = namedtuple("FamilyInfo", "name type help labels")
FamilyInfo.__doc__ = ("What the catalog says about one family: name, type (gauge, counter or untyped), HELP text "
                      "and label names (a tuple).")

Family = namedtuple("Family", "name type help labels series")
Family.__doc__ = ("One family of one sample: its catalog entry (name, type, help, labels) and its series, a list "
                  "of (label values, value).")


def chunks(nbytes: int) -> int:
    """8-byte chunks needed for ``nbytes`` of blob."""
    return -(-nbytes // _CHUNK)


# ---------------------------------------------------------------- publisher side
def encode_catalog(infos: Sequence[FamilyInfo], on_demand: Collection[str] = ()) -> tuple[bytes, bytes]:
    """(metrics rows, strings blob padded to 8) for the catalog of ``infos``, in that order; the families
    named in ``on_demand`` are flagged as sampled on demand (their series date from ``full_sample_time``)."""
    blob = bytearray()
    offsets: dict[bytes, int] = {}

    def put(text: str) -> tuple[int, int]:
        raw = text.encode()
        if raw not in offsets:
            offsets[raw] = len(blob)
            blob.extend(raw)
        return offsets[raw], len(raw)

    rows = []
    for info in infos:
        if "\0" in info.help or any("\0" in n or not n for n in (info.name, *info.labels)):
            raise ValueError(f"family {info.name!r}: NUL or empty name")
        name, help_, labels = put(info.name), put(info.help), put("\0".join(info.labels))
        flags = L.METRIC_ON_DEMAND if info.name in on_demand else 0
        rows.append(_METRIC.pack(*name, *help_, *labels, _TYPE_CODE[info.type], len(info.labels), flags, 0))
    blob.extend(bytes(-len(blob) % _CHUNK))
    return b"".join(rows), bytes(blob)


class SeriesEncoder:
    """Packs one sample's series into ``series`` rows and the ``labels`` blob, for one catalog."""

    def __init__(self, index: dict[FamilyInfo, int], take: Callable | None = None):
        """``take``: the publisher's ``_scan.take`` when its extension is built (values dropped into the rows
        in C, none made a Python float); without it, the same in Python."""
        self.index = index  # family -> its row in the catalog
        self.take = take
        # The same FamilyInfo objects come back every sample: looking them up by identity skips
        # hashing their strings (an equal but distinct one is still found through ``index``).
        self._by_id = {id(fam): i for fam, i in index.items()}
        self._keep = list(index)  # the ids stay valid while the objects live
        self._encoded: dict[tuple[str, ...], bytes] = {}  # label values repeat from sample to sample
        self._last: tuple | None = None  # the previous sample's keys and encoding
        self._other: tuple | None = None  # the one before it with other keys (full and grid samples alternate)
        self._replayed: tuple | None = None  # the replayed block last encoded, and its encoding
        self._plan: tuple | None = None  # how the block's rows and the fresh rows interleave
        self._block_encoder: SeriesEncoder | None = None  # the replayed blocks' own encoder

    def encode(self, series: list[tuple[FamilyInfo, tuple[str, ...], float]], max_rows: int = 1 << 30,
               max_bytes: int = 1 << 30, replayed: Sequence[tuple[FamilyInfo, tuple[str, ...], float]] = (),
               fixed: Sequence[tuple[object, bytes]] = (), fixed_at: Sequence[int] = (),
               ) -> tuple[bytes, bytes, int, int]:
        """(series rows, labels blob padded to 8, rows kept, rows left out); rows sorted by family.

        Rows beyond ``max_rows``, whose label values would end beyond
        ``max_bytes`` of blob, or of a family not in the catalog are left out and counted.

        ``replayed``: more series, the same object (compared by identity) from sample to sample while
        its content stays (the families sampled on demand, replayed between full samples).  It is
        encoded once; later samples only splice its rows between the fresh ones, without touching
        its hundreds of series objects again (at 1 Hz that touch is a cache miss each).

        ``fixed``: more series sampled now, as blocks of values: (an object with ``families`` and ``labels``,
        the same object while they stay; the values as doubles in their order), a collector's fast path
        (publisher/collectors/numbers.py, learned.py): no tuple per series.  ``fixed_at``: where each block
        stands among ``series`` (before that index; default: after them all), the order a family's series
        keep.
        """
        if not replayed:
            return self._encode_fresh(series, max_rows, max_bytes, 0, fixed, fixed_at)
        block = self._replayed
        if block is None or block[0] is not replayed or block[1] != (max_rows, max_bytes):
            # A new block (after each full sample): through an encoder of its own, whose fast path serves
            # it when only its values changed since the last one.
            if self._block_encoder is None:
                self._block_encoder = SeriesEncoder(self.index, self.take)
            encoder = self._block_encoder
            block = self._replayed = (replayed, (max_rows, max_bytes),
                                      *encoder._encode_fresh(list(replayed), max_rows, max_bytes, 0), encoder._last)
        _, _, block_rows, block_blob, block_n, block_dropped, block_layout = block
        if block_dropped:  # does not fit: the publisher grows the segment; until then, one encoding of all
            return self._encode_fresh([*replayed, *series], max_rows, max_bytes, 0, fixed,
                                      [len(replayed) + at for at in fixed_at] if fixed_at else ())
        rows, blob, n, dropped = self._encode_fresh(series, max_rows - block_n, max_bytes - len(block_blob),
                                                    len(block_blob), fixed, fixed_at)
        plan = self._plan  # depends on where each side's families are, not on their values
        if plan is None or plan[0] is not block_layout or plan[1] is not self._last or plan[2] != len(rows):
            plan = self._plan = (block_layout, self._last, len(rows), _splice_plan(block_rows, rows))
        sides = (rows, block_rows)
        joined = b"".join([sides[side][start:end] for side, start, end in plan[3]])
        return joined, block_blob + blob, block_n + n, dropped

    def _encode_fresh(self, series: list, max_rows: int, max_bytes: int, base: int,
                      fixed: Sequence[tuple[object, bytes]] = (), fixed_at: Sequence[int] = (),
                      ) -> tuple[bytes, bytes, int, int]:
        """``encode`` without a replayed block; label offsets start at ``base``."""
        if not series and not fixed:
            return b"", b"", 0, 0
        from array import array  # the publisher's side only: readers do not load the extension

        # Three passes in C: zip(*series) would make an iterator per series (~2x slower for thousands).
        families, labels, values = tuple(map(_FAMILY, series)), tuple(map(_LABELS, series)), tuple(map(_VALUE, series))
        blocks = tuple(block for block, _ in fixed)
        at = tuple(fixed_at) if fixed_at else (len(series),) * len(fixed)
        limits = (max_rows, max_bytes, base, at)
        last = self._last
        if not _same_series(last, families, labels, limits, blocks):
            if _same_series(self._other, families, labels, limits, blocks):
                # A full sample between grid samples (or the other way round): two kinds of series alternate.
                last, self._other = self._other, last
                self._last = last
            else:
                last = None
        if last is not None:
            # The same series as the previous sample (the usual case): only the values change, so the
            # rows' other columns and the label blob are reused and the values dropped into place, from one
            # run of doubles: the rows' values, then each block's.
            order, template, blob, n, dropped = last[4:]
            rows = bytearray(template)
            if n:
                run = b"".join([array("d", values).tobytes(), *(v for _, v in fixed)]) if fixed else array("d", values)
                self._place(run, order, rows)
            return bytes(rows), blob, n, dropped
        if fixed:  # every series as a row, in the order added; ``source``: each one's place in ``run``
            series, source = interleave(series, fixed, at, sources=True)
        rows, blob, order, dropped = self._encode(series, max_rows, max_bytes, base)
        n = len(order)
        order = array("I", [source[j] for j in order] if fixed else order)
        self._other = self._last
        self._last = (families, labels, limits, blocks, order, rows, blob, n, dropped)
        return rows, blob, n, dropped

    def _place(self, run: bytes | array, order: array, rows: bytearray) -> None:
        """rows[i]'s value = run[order[i]] (a row is 24 bytes, its value the last 8)."""
        if self.take is not None:
            self.take(run, order, None, rows, _SERIES.size, _SERIES.size - 8)
        else:
            from array import array

            values = memoryview(run)
            if values.format != "d":
                values = values.cast("d")
            memoryview(rows).cast("d")[2::3] = array("d", [values[j] for j in order])

    def _encode(self, series: list, max_rows: int, max_bytes: int, base: int = 0,
                ) -> tuple[bytes, bytes, list[int], int]:
        """The full encoding; also returns, for each row written, the position of its series in ``series``.
        Label offsets start at ``base`` (the blob of a replayed block goes first)."""
        by_id, index = self._by_id, self.index
        known = []
        for j, (f, labels, value) in enumerate(series):
            i = by_id.get(id(f))
            if i is None:
                i = index.get(f)
            if i is not None:
                known.append((i, labels, value, j))
        dropped = len(series) - len(known)
        known.sort(key=_by_family)
        blob = bytearray()
        where: dict[tuple[str, ...], tuple[int, int]] = {}
        encoded = self._encoded
        if len(encoded) > 8192:
            encoded.clear()
        from array import array

        metrics, offsets, lengths, values = array("I"), array("I"), array("I"), array("d")
        order = []
        for i, labels, value, j in known:
            spot = where.get(labels)
            if spot is None:
                raw = encoded.get(labels)
                if raw is None:
                    raw = encoded[labels] = label_bytes(labels)
                if len(blob) + len(raw) > max_bytes:
                    dropped += 1
                    continue
                spot = where[labels] = (len(blob), len(raw))
                blob.extend(raw)
            if len(metrics) >= max_rows:
                dropped += 1
                continue
            metrics.append(i)
            offsets.append(spot[0] + base)
            lengths.append(spot[1])
            values.append(value)
            order.append(j)
        blob.extend(bytes(-len(blob) % _CHUNK))
        # Column by column into the row layout (metric, labels_offset, labels_length, pad | value):
        # four strided copies instead of a struct.pack per row.
        rows = bytearray(len(metrics) * _SERIES.size)
        words = memoryview(rows).cast("I")
        words[0::6], words[1::6], words[2::6] = metrics, offsets, lengths
        memoryview(rows).cast("d")[2::3] = values
        return bytes(rows), bytes(blob), order, dropped


def interleave(series: list, fixed: Sequence[tuple[object, bytes]], at: Sequence[int],
               sources: bool = False) -> tuple[list, list[int]]:
    """Rows and blocks of values (an object with ``families`` and ``labels``, the doubles) as one list of rows,
    each block before the row of its index in ``at``; with ``sources``, also each row's place in the run of
    values (the rows' values, then each block's), else an empty list."""
    out: list = []
    source: list[int] = []
    done, start = 0, len(series)
    for (block, values), where in zip(fixed, at):
        out += series[done:where]
        rows = list(zip(block.families, block.labels, memoryview(values).cast("d").tolist()))
        out += rows
        if sources:
            source += range(done, where)
            source += range(start, start + len(rows))
        start += len(rows)
        done = where
    out += series[done:]
    if sources:
        source += range(done, len(series))
    return out, source


def label_bytes(labels: tuple[str, ...]) -> bytes:
    """A series' label values as the ``labels`` blob holds them: joined by NUL (a NUL inside a value left out)."""
    return "\0".join(v.replace("\0", "") for v in labels).encode("utf-8", "replace")


def _same_series(kept: tuple | None, families: tuple, labels: tuple, limits: tuple, blocks: tuple) -> bool:
    """Whether an encoding kept by SeriesEncoder was made for the same series (all but the values); blocks
    of fixed series are compared by identity (the same object while their families and labels stay)."""
    return (kept is not None and kept[0] == families and kept[1] == labels and kept[2] == limits
            and len(kept[3]) == len(blocks) and all(map(operator.is_, kept[3], blocks)))


_FAMILY, _LABELS, _VALUE = itemgetter(0), itemgetter(1), itemgetter(2)  # of a series row


def _by_family(row: tuple) -> int:
    return row[0]


def _splice_plan(block_rows: bytes, rows: bytes) -> list[tuple[int, int, int]]:
    """How two runs of rows, each sorted by family, merge into one: (side, start, end) byte ranges, side 1
    of ``block_rows`` and 0 of ``rows``.  It depends only on where the families are, so it serves every
    sample whose two sides keep their layouts, whatever their values.  Rows of one family in both keep
    the block's first."""
    from bisect import bisect_left, bisect_right

    size = _SERIES.size
    block = memoryview(block_rows).cast("I")[0::size // 4].tolist()
    fresh = memoryview(rows).cast("I")[0::size // 4].tolist()
    plan: list[tuple[int, int, int]] = []
    i = j = 0
    while i < len(block) or j < len(fresh):
        if j < len(fresh) and (i == len(block) or fresh[j] < block[i]):
            end = len(fresh) if i == len(block) else bisect_left(fresh, block[i], j)
            plan.append((0, j * size, end * size))
            j = end
        else:
            end = len(block) if j == len(fresh) else bisect_right(block, fresh[j], i)
            plan.append((1, i * size, end * size))
            i = end
    return plan


# ---------------------------------------------------------------- reader side
def decode_catalog(metrics_raw: bytes | memoryview, strings_raw: bytes | memoryview) -> tuple[FamilyInfo, ...]:
    """The catalog from its two sections; raises LayoutError on anything out of bounds."""
    return _decode_catalog(metrics_raw, strings_raw)[0]


def _decode_catalog(metrics_raw: bytes | memoryview, strings_raw: bytes | memoryview,
                    ) -> tuple[tuple[FamilyInfo, ...], frozenset[str]]:
    """(the families, the names of those sampled on demand)."""
    strings = bytes(strings_raw)
    size = len(strings)
    if strings.isascii():  # node_exporter's names and HELP texts are: byte offsets are str offsets, so one
        text = strings.decode("ascii")  # decode serves every string

        def cut(start: int, length: int) -> str:
            return text[start:start + length]
    else:
        def cut(start: int, length: int) -> str:
            return strings[start:start + length].decode("utf-8", "replace")
    types = L.METRIC_TYPES
    out = []
    on_demand = set()
    for name_off, name_len, help_off, help_len, labels_off, labels_len, type_code, label_count, flags, _ in \
            _METRIC.iter_unpack(metrics_raw):
        if type_code >= len(types) or name_off + name_len > size or help_off + help_len > size \
                or labels_off + labels_len > size:
            raise L.LayoutError("family catalog points outside its strings")
        labels = tuple(cut(labels_off, labels_len).split("\0")) if label_count else ()
        if len(labels) != label_count:
            raise L.LayoutError("family catalog: label count does not match its label names")
        out.append(FamilyInfo(cut(name_off, name_len), types[type_code], cut(help_off, help_len), labels))
        if flags & L.METRIC_ON_DEMAND:
            on_demand.add(out[-1].name)
    return tuple(out), frozenset(on_demand)


class Catalog:
    """A decoded catalog and the index of each family name (one per attached reader)."""

    def __init__(self, infos: tuple[FamilyInfo, ...], on_demand: frozenset[str] = frozenset()):
        self.infos = infos
        self.on_demand = on_demand  # names of the families whose series date from full_sample_time
        self.index = {info.name: i for i, info in enumerate(infos)}
        self._labels: dict[bytes, tuple[str, ...]] = {}  # raw label values -> decoded, across samples
        self._spot_state: tuple[bytes | None, dict[int, tuple[str, ...]]] = (None, {})

    def labels(self, raw: bytes) -> tuple[str, ...]:
        values = self._labels.get(raw)
        if values is None:
            if len(self._labels) > 8192:
                self._labels.clear()
            values = self._labels[raw] = tuple(raw.decode("utf-8", "replace").split("\0"))
        return values

    def spots(self, blob: bytes) -> dict[int, tuple[str, ...]]:
        """Decoded label values by position (offset << 32 | length) in ``blob``.  The publisher writes
        the same blob sample after sample while the series stay the same, so the positions found in
        one snapshot serve the next ones as long as the blob's bytes are equal.  The blob and its dict
        are swapped as one tuple: a reader thread never gets a dict that belongs to another blob."""
        state = self._spot_state
        if state[0] != blob:
            state = self._spot_state = (blob, {})
        return state[1]


EMPTY_CATALOG = Catalog(())


class FamilyView:
    """The families of one snapshot, decoded on demand from the raw sections copied in the seqlock.

    ``view["node_load1"]`` decodes one family (a binary search over the
    series rows), ``list(view)`` or ``view.all()`` every family that has at
    least one series; ``view.names()`` lists the catalog.
    """

    __slots__ = ("_catalog", "_series", "_labels", "_count", "_metric_column")

    def __init__(self, catalog: Catalog, series_raw: bytes, labels_raw: bytes):
        self._catalog = catalog
        self._series = series_raw
        self._labels = labels_raw
        self._count = len(series_raw) // _SERIES.size
        self._metric_column: memoryview | None = None

    def names(self) -> list[str]:
        return [info.name for info in self._catalog.infos]

    def on_demand(self, name: str) -> bool:
        """True when the family is sampled on demand: its series date from the snapshot's
        ``full_sample_time``, not its ``sample_time``."""
        return name in self._catalog.on_demand

    def __len__(self) -> int:
        return self._count

    def __contains__(self, name: str) -> bool:
        return name in self._catalog.index

    def _column(self) -> memoryview:
        """The rows' ``metric`` column, in place (a strided view: no copy, so finding one family is a
        binary search of O(log n) reads, not a pass over every row)."""
        if self._metric_column is None:
            self._metric_column = memoryview(self._series).cast("I")[0::_SERIES.size // 4]
        return self._metric_column

    def __getitem__(self, name: str) -> Family:
        index = self._catalog.index[name]
        column = self._column()
        lo = _search(column, index, 0)
        hi = _search(column, index + 1, lo)
        return self._family(index, lo, hi)

    def get(self, name: str) -> Family | None:
        """The family, or None when the catalog lacks it; a family this sample has no series for has none."""
        return self[name] if name in self._catalog.index else None

    def _family(self, index: int, lo: int, hi: int) -> Family:
        size = _SERIES.size
        return self.decode(index, self._series[lo * size:hi * size])

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def rows_raw(self) -> bytes:
        """The sample's raw ``series`` rows."""
        return self._series

    @property
    def labels_raw(self) -> bytes:
        """The sample's ``labels`` blob: rows equal in two views with equal blobs (and catalogs) are the
        same series."""
        return self._labels

    def raw_families(self) -> Iterator[tuple[int, int, bytes]]:
        """(catalog index, byte offset of its rows in ``rows_raw``, its raw rows) of every family with series
        in this sample, in catalog order, without decoding any: a renderer keyed by the raw rows decodes
        only what changed."""
        from bisect import bisect_right

        column = self._column()
        size, raw, known = _SERIES.size, self._series, len(self._catalog.infos)
        lo, n = 0, len(column)
        while lo < n:
            index = column[lo]
            hi = max(bisect_right(column, index, lo), lo + 1)  # unsorted (corrupt) rows still advance
            if index < known:
                yield index, lo * size, raw[lo * size:hi * size]
            lo = hi

    def decode(self, index: int, rows_raw: bytes, positions: list[int] | None = None) -> Family:
        """The family at catalog ``index`` from its raw rows (as ``raw_families`` gives them).  ``positions``, when
        given, gets the row (counted in ``rows_raw``) of each series: a corrupt row is left out of the family."""
        info = self._catalog.infos[index]
        rows = _SERIES.iter_unpack(rows_raw)
        nlabels = len(info.labels)
        if not nlabels:
            series = [((), value) for _, _, _, value in rows]
            if positions is not None:
                positions += range(len(series))
        else:
            blob = self._labels
            spots = self._catalog.spots(blob)
            decode = self._catalog.labels
            series = []
            for row, (_, off, length, value) in enumerate(rows):
                key = off << 32 | length
                values = spots.get(key)
                if values is None:
                    values = spots[key] = decode(blob[off:off + length]) if off + length <= len(blob) else ()
                if len(values) == nlabels:
                    series.append((values, value))  # else: corrupt row, left out
                    if positions is not None:
                        positions.append(row)
        return Family(info.name, info.type, info.help, info.labels, series)

    def __iter__(self) -> Iterator[Family]:
        """Every family with series in this sample, in catalog order."""
        from bisect import bisect_right  # a C function for the hundreds of searches of a whole pass

        column = self._column()
        infos = self._catalog.infos
        lo, n = 0, len(column)
        while lo < n:
            index = column[lo]
            hi = max(bisect_right(column, index, lo), lo + 1)  # unsorted (corrupt) rows still advance
            if index < len(infos):
                yield self._family(index, lo, hi)
            lo = hi

    def all(self) -> list[Family]:
        return list(self)

    def to_dict(self, sample_time: float | None = None, full_sample_time: float | None = None) -> dict[str, dict]:
        """JSON-ready: family name -> type, help, labels and its series as {labels: {...}, value}; given the
        snapshot's two times, also the family's own ``sample_time`` (``full_sample_time`` for a family
        sampled on demand), so that no reader of the JSON takes an older value for a current one."""
        out = {}
        for f in self:
            entry = out[f.name] = {"type": f.type, "help": f.help, "labels": list(f.labels),
                                   "series": [{"labels": {n: v for n, v in zip(f.labels, values)
                                                          if v != ABSENT_LABEL}, "value": value}
                                              for values, value in f.series]}
            if sample_time is not None:
                entry["sample_time"] = full_sample_time if f.name in self._catalog.on_demand else sample_time
        return out


def _search(column: memoryview, value: int, lo: int) -> int:
    """The first position from ``lo`` whose value is at least ``value`` in the sorted ``column`` (bisect_left).
    Two of these find one family among a thousand series in ~20 steps: a one-shot read of one family does
    not load the bisect extension for them."""
    hi = len(column)
    while lo < hi:
        mid = (lo + hi) // 2
        if column[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def read_catalog(mv: memoryview, layout: L.Layout) -> Catalog:
    """The catalog of a validated segment (``mv``: its bytes, a mapping or a copy; written before the magic)."""
    sections = []
    for rec in L.STATIC_SECTIONS:
        i = L.SECTION_INDEX[rec.name]
        offset = layout.offsets[i]
        sections.append(mv[offset:offset + layout.capacities[i] * rec.size])
    try:
        return Catalog(*_decode_catalog(*sections)) if len(sections[0]) else EMPTY_CATALOG
    finally:
        for view in sections:
            if isinstance(view, memoryview):
                view.release()

"""Reading a segment in place: attach read-only, validate, seqlock snapshots.

A reader never takes the semaphore (it may have no access to it, and a reader
killed while holding it would wedge the publisher).  Consistency comes from
the seqlock alone: read ``seq``; if odd, a write is in progress; otherwise
decode straight out of the mapping and read ``seq`` again; equal means the
snapshot is whole.  Retries are bounded in time, so a publisher stopped in the
middle of a write (SIGSTOP, or killed) yields ``SegmentBusy``, never a hang.

Nothing is copied out of the mapping but the values themselves:
``struct.unpack_from`` decodes from the mapped pages, and array records are
decoded from memoryview slices (which do not copy).
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections import namedtuple
from math import isfinite

from shm_metrics import shm_layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start; the one-shot CLI does not pay them
    from collections.abc import Callable, Iterator
    from typing import Any

    from shm_metrics.families import FamilyView
    from shm_metrics.readers.selector import Sample, Selector

# Everything a sample changes is one contiguous span: the seqlock part of the
# header (seq .. overruns_total), the section directory and the scalars.  One
# unpack_from of that span is a whole snapshot of the scalars.
_DYNAMIC = ("seq", "sample_time", "sample_monotonic", "sample_duration_seconds", "overruns_total",
            "full_sample_time")
assert list(L.HEADER.names[-len(_DYNAMIC):]) == list(_DYNAMIC) and L.HEADER.size == L.HEADER_SEQ_OFFSET + 48
_FIXED = L.Layout.for_capacities(1, 1, 1, 1)  # header geometry does not depend on capacities
_SPAN = struct.Struct("<QdddQd" + "".join(L.SECTION.struct.format[1:] for _ in L.SECTIONS)
                      + f"{_FIXED.header_size - _FIXED.sections_offset - len(L.SECTIONS) * L.SECTION.size}x"
                      + L.SCALARS.struct.format[1:])
assert _SPAN.size == _FIXED.header_size + L.SCALARS.size - L.HEADER_SEQ_OFFSET
_DIR_START = len(_DYNAMIC)
_DIR_WIDTH = len(L.SECTION.names)
_COUNT_POS = L.SECTION.names.index("count")
_SCALARS_START = _DIR_START + _DIR_WIDTH * len(L.SECTIONS)
_fence = None if L.STRONGLY_ORDERED else L.memory_fence

# Generations a read follows at most (each one is a doubling: more in one read would be a publisher gone mad).
_GENERATION_HOPS = 4
BUSY_TIMEOUT_SECONDS = 0.25  # a write takes tens of microseconds; this is far beyond
# How long read_fresh waits for the full sample it asked for: one takes milliseconds; a publisher that
# does not answer by then is reported through the families' age, not waited for.
DEMAND_TIMEOUT_SECONDS = 2.0
_SPIN_TRIES = 200
# A sample stamped later than now by more than this is from the future: never fresh (a hostile or
# broken clock would otherwise keep it fresh forever).  NTP steps are far smaller.
CLOCK_SKEW_SECONDS = 1.0
PUBLISHER_USER_ENV = "SHM_METRICS_PUBLISHER_USER"
# Reader-side state of a segment whose header says init, starting or running while no process holds
# its liveness lock: the publisher died (SIGKILL, a crash, power) without marking it stopped.
STATE_DEAD = "dead"


def _max_age(interval: float) -> float:
    """The staleness limit of a publisher sampling every ``interval``: 2 x interval + 1 s."""
    return 2 * interval + 1.0

class ReaderError(Exception):
    """Base of everything a reader can report about a segment."""


class NoSegment(ReaderError):
    """Nothing under the name: no publisher has created it (or it stopped)."""


class IncompatibleSegment(ReaderError):
    """Something is under the name, but not a segment this reader can trust."""


class SegmentStarting(IncompatibleSegment):
    """Empty or without magic yet: a publisher is creating it, or died doing so."""


class UntrustedSegment(IncompatibleSegment):
    """The segment's owner is not trusted: not root, not this user, not the named publisher user."""


class SegmentBusy(ReaderError):
    """``seq`` stayed odd or kept moving: the publisher stopped mid-write."""


Origin = namedtuple("Origin", "instance_id publisher_pid publisher_start_time interval hostname catalog generation "
                    "size_bytes", defaults=(None, 0, 0))
Origin.__doc__ = ("The static header facts of one segment instance, fixed at attach time, and its family "
                  "catalog (a LazyCatalog: decoded on first use).")


class LazyCatalog:
    """The segment's family catalog, decoded from the reader's bytes the first time it is asked for.

    A one-shot ``shm-read --once procs_total`` never decodes hundreds of families (nor imports the
    module that knows how); the exporter asks at attach (``Reader.load_catalog``), so a bad catalog is
    reported there.  The catalog is written before the magic and never changes.
    """

    __slots__ = ("_reader", "_value", "_kept")

    def __init__(self, reader: Reader | None):
        self._reader = reader
        self._value = None
        self._kept: tuple | None = None  # (bytes, layout) once the reader closed before a decode

    def keep(self) -> None:
        """The reader is closing: keep a private copy of the catalog's two sections (a memcpy, no decode),
        so that snapshots read before the close can still name their families."""
        reader = self._reader
        if self._value is not None or reader is None or reader._fd is None:
            return
        layout = reader.layout
        spans = [(layout.offsets[L.SECTION_INDEX[rec.name]],
                  layout.offsets[L.SECTION_INDEX[rec.name]] + layout.capacities[L.SECTION_INDEX[rec.name]] * rec.size)
                 for rec in L.STATIC_SECTIONS]
        self._reader = None
        needed = max(end for _, end in spans)
        if not reader._pread and os.fstat(reader._fd).st_size < needed:
            self._kept = ()  # truncated under us: touching those pages would be SIGBUS; the catalog is lost
            return
        copy = bytearray(needed)  # the sections at their own offsets, zeros elsewhere
        for start, end in spans:
            copy[start:end] = reader._mv[start:end]
        self._kept = (memoryview(copy), layout)

    def get(self):
        if self._value is None:
            from shm_metrics import families

            reader = self._reader
            if self._kept == ():
                raise IncompatibleSegment("the segment shrank before its family catalog was read")
            if self._kept is not None:
                self._value = families.read_catalog(*self._kept)
                self._kept = None
            elif reader is None:
                self._value = families.EMPTY_CATALOG
            else:
                if reader._fd is None:
                    raise NoSegment(f"not attached to {reader.name}")
                try:
                    self._value = families.read_catalog(reader._mv, reader.layout)
                except L.LayoutError as exc:
                    raise IncompatibleSegment(f"{reader.name}: {exc}") from None
                self._reader = None  # decoded: the reader may go
        return self._value


class Snapshot:
    """One consistent sample.  Scalars by attribute or key; arrays as lists of dicts; node_exporter's
    families through ``families`` (a FamilyView).

    Units are in the names: ``*_bytes``, ``*_seconds``, ``*_total`` counters.
    Arrays and families are copied raw inside the seqlock and decoded only when
    asked for.
    """

    __slots__ = ("_origin", "_values", "_arrays", "state_code", "alive")

    def __init__(self, origin: Origin, values: tuple, arrays: dict[str, bytes], state_code: int,
                 alive: bool | None = None):
        self._origin = origin
        self._values = values  # the decoded span: dynamic header, directory, scalars
        self._arrays = arrays
        self.state_code = state_code
        self.alive = alive  # the publisher holds the liveness lock; None: not checked (read(check_alive=False))

    # header facts
    seq = property(lambda self: self._values[0])
    sample_time = property(lambda self: self._values[1], doc="Unix time of the sample, seconds")
    sample_monotonic = property(lambda self: self._values[2])
    sample_duration_seconds = property(lambda self: self._values[3])
    overruns_total = property(lambda self: self._values[4])
    full_sample_time = property(lambda self: self._values[5], doc="Unix time of the latest sample that ran every "
                                "collector: the families sampled on demand date from it (0: none yet)")

    def family_time(self, name: str) -> float:
        """When the values of family ``name`` were sampled: ``full_sample_time`` for a family sampled on
        demand, ``sample_time`` for the others."""
        return self.full_sample_time if self.families.on_demand(name) else self.sample_time
    @property
    def state(self) -> str:
        """The header's state, or "dead" when it claims a live publisher that holds no liveness lock."""
        if self.alive is False and self.state_code not in (L.STATE_STOPPED, L.STATE_REPLACED):
            return STATE_DEAD
        return L.STATE_NAMES[self.state_code]

    interval = property(lambda self: self._origin.interval)
    publisher_pid = property(lambda self: self._origin.publisher_pid)
    hostname = property(lambda self: self._origin.hostname)
    instance_id = property(lambda self: self._origin.instance_id)
    generation = property(lambda self: self._origin.generation,
                          doc="0 for the publisher's first segment, +1 for each larger one that replaced it")
    size_bytes = property(lambda self: self._origin.size_bytes, doc="size of the segment (this generation)")
    layout_version = property(lambda self: L.LAYOUT_VERSION)

    @property
    def age(self) -> float:
        """Seconds since the sample was taken (wall clock)."""
        return max(0.0, time.time() - self.sample_time)

    def max_age(self) -> float:
        """The staleness limit: 2 x interval + 1 s."""
        return _max_age(self.interval)

    def is_fresh(self, max_age: float | None = None) -> bool:
        """Running (and, if checked, live) publisher, at least one sample, not older than ``max_age``
        and not from the future (beyond CLOCK_SKEW_SECONDS)."""
        limit = self.max_age() if max_age is None else max_age
        delay = time.time() - self.sample_time
        return (self.state_code == L.STATE_RUNNING and self.alive is not False and self.seq > 0
                and -CLOCK_SKEW_SECONDS <= delay <= limit)

    def from_future(self) -> bool:
        """The sample is stamped later than now by more than the clock-skew allowance."""
        return self.sample_time - time.time() > CLOCK_SKEW_SECONDS

    def overflow(self) -> dict[str, int]:
        """Entries per array left out because the capacity was too small."""
        return {rec.name: self._values[_DIR_START + L.SECTION_INDEX[rec.name] * _DIR_WIDTH + _COUNT_POS + 1]
                for rec in (*L.SAMPLE_ARRAYS, L.SERIES)}

    def __getitem__(self, name: str) -> Any:
        index = _SCALAR_INDEX.get(name)
        if index is not None:
            return self._values[index]
        if name in _ARRAY_RECORDS:
            return self.array(name)
        raise KeyError(name)

    def __getattr__(self, name: str) -> Any:
        index = _SCALAR_INDEX.get(name)
        if index is None:
            if name in _ARRAY_RECORDS:
                return self.array(name)
            raise AttributeError(name)
        return self._values[index]

    def scalars(self) -> dict[str, int | float]:
        return dict(zip(L.SCALARS.names, self._values[_SCALARS_START:]))

    @property
    def families(self) -> FamilyView:
        """node_exporter's families of this sample (``snap.families["node_load1"].series``)."""
        from shm_metrics.families import FamilyView

        arrays = self._arrays
        if L.SERIES.name not in arrays:
            raise KeyError("families: read with arrays=False")
        catalog = self._origin.catalog
        return FamilyView(catalog.get() if catalog is not None else LazyCatalog(None).get(),
                          arrays[L.SERIES.name], arrays[L.LABELS.name])

    def select(self, selector: str | Selector) -> list[Sample]:
        """The series of one family that a PromQL selector matches, in the exporter's order:
        ``snap.select('node_filesystem_avail_bytes{mountpoint="/"}')`` -> ``[Sample(name, labels, value)]``.

        Only that family is decoded.  ``selector`` is a string (``readers.selector`` has the syntax) or a
        parsed ``Selector``.  Raises SelectorError (a ValueError) for bad syntax, UnknownFamily (a KeyError)
        when the segment's catalog has no such family; a known family without matching series gives [].
        A snapshot read with ``arrays=False`` has no families (KeyError, as ``families``).
        """
        from shm_metrics.readers.selector import Selector

        if not isinstance(selector, Selector):
            selector = Selector.parse(selector)
        return selector.select(self.families)

    def array(self, name: str) -> list[dict[str, Any]]:
        rec = _ARRAY_RECORDS[name]
        raw = self._arrays.get(name)
        if raw is None:
            raise KeyError(f"{name}: read with arrays=False")
        rows = rec.struct.iter_unpack(raw)
        strings = [i for i, f in enumerate(rec.fields) if f.is_string]
        out = []
        for row in rows:
            if strings:
                row = list(row)
                for i in strings:
                    row[i] = L.decode_string(row[i])
            out.append(dict(zip(rec.names, row)))
        return out

    def header(self) -> dict[str, Any]:
        return {"seq": self.seq, "sample_time": self.sample_time, "full_sample_time": self.full_sample_time,
                "interval": self.interval,
                "publisher_pid": self.publisher_pid, "state": self.state, "age": self.age,
                "hostname": self.hostname, "layout_version": self.layout_version}

    def to_dict(self) -> dict[str, Any]:
        """Header keys, every scalar and (if read) every array: JSON-ready."""
        out = self.header()
        out.update(self.scalars())
        for name in _ARRAY_RECORDS:
            if name in self._arrays:
                out[name] = self.array(name)
        if L.SERIES.name in self._arrays:
            out["families"] = self.families_dict()
        return out

    def families_dict(self) -> dict[str, dict]:
        """The families as JSON-ready dicts, each with the time its values were sampled."""
        return self.families.to_dict(self.sample_time, self.full_sample_time)


_SCALAR_INDEX = {n: _SCALARS_START + i for i, n in enumerate(L.SCALARS.names)}
_DIR_NAMES = {_DIR_START + i * _DIR_WIDTH + _COUNT_POS: rec.name for i, rec in enumerate(L.SECTIONS)}
_COUNTS = slice(_DIR_START + _COUNT_POS, _SCALARS_START, _DIR_WIDTH)  # every section's count, in directory order
_FINITE_HEADER = tuple((name, _DYNAMIC.index(name)) for name in
                       ("sample_time", "sample_monotonic", "sample_duration_seconds", "full_sample_time"))
_ARRAY_RECORDS = {rec.name: rec for rec in L.SAMPLE_ARRAYS}


class Reader:
    """A read-only attachment to a segment.

    >>> with Reader("/sysmetrics") as r:
    ...     print(r.read().procs_total)

    Trust: a segment is accepted only when its owner is root, the reader's own
    user or ``publisher_user`` (a name or uid; default: env
    SHM_METRICS_PUBLISHER_USER), as the JVM trusts hsperfdata files since
    CVE-2015-0383.  Anyone else may have planted it; UntrustedSegment says so.

    ``pread=True`` reads through ``pread`` into a private buffer instead of a
    long-lived mapping: a segment truncated under the reader then gives a short
    read (IncompatibleSegment), never SIGBUS.  The exporter, which must outlive
    any segment, reads that way; it costs a copy of the segment per read.  It
    still sleeps on the futex, through a mapping of the header's page that only
    the kernel reads.  Mapped readers re-check the file size in
    ``check_size()`` (``follow()`` does, before each read).
    """

    def __init__(self, name: str | None = None, *, attach: bool = True, publisher_user: str | int | None = None,
                 pread: bool = False):
        self.name = L.validate_name(name or L.env_segment_name())
        self.path = L.segment_path(self.name)
        self._publisher_user = publisher_user
        self._trusted_uids: frozenset[int] | None = None  # resolved on first use: most owners are us or root
        self._pread = pread
        self._mm: mmap.mmap | None = None
        self._fd: int | None = None
        self.retries = 0  # seqlock retries over this reader's life (for the benchmark)
        self._demand = None  # the publisher's demand socket, connected on the first ask (readers/demand.py)
        self._header_map: mmap.mmap | None = None  # pread mode: the header's page, for the futex only
        if attach:
            self.attach()

    # --- attaching
    @property
    def attached(self) -> bool:
        return self._fd is not None

    def trusted_uids(self) -> frozenset[int]:
        """root, this process's effective uid and the publisher user's uid, if one is named."""
        if self._trusted_uids is None:
            uids = {0, os.geteuid()}
            spec = self._publisher_user
            if spec is None:
                spec = os.environ.get(PUBLISHER_USER_ENV) or None
            if spec is not None:
                uids.add(resolve_user(spec, PUBLISHER_USER_ENV if self._publisher_user is None else None))
            self._trusted_uids = frozenset(uids)
        return self._trusted_uids

    def _check_owner(self, st: os.stat_result) -> None:
        if st.st_uid in (0, os.geteuid()) or st.st_uid in self.trusted_uids():
            return
        owner = user_name(st.st_uid)
        raise UntrustedSegment(f"{self.path} is owned by {owner} (uid {st.st_uid}), which is not trusted: if "
                               f"{owner} runs shm-publisher, pass --publisher-user {owner} "
                               f"(env {PUBLISHER_USER_ENV})")

    def attach(self) -> None:
        """Open, validate and map the segment; raises NoSegment or IncompatibleSegment (or a subclass)."""
        self.close()
        try:
            fd, st = L.open_checked(self.path)
        except FileNotFoundError:
            raise NoSegment(f"no segment {self.name}: is shm-publisher running under that name?") from None
        except L.LayoutError as exc:
            raise IncompatibleSegment(str(exc)) from None
        try:
            self._check_owner(st)
            if st.st_mode & 0o022:
                raise IncompatibleSegment(f"{self.path} is writable by group or others: refusing to trust it")
            # Validate from a plain read first: a short or truncated file must
            # never be mapped beyond its end (that is a SIGBUS, not an error).
            head = os.pread(fd, _FIXED.header_size, 0)
            try:
                hdr, layout = L.parse_header(head, st.st_size)
            except L.NotInitialised as exc:
                raise SegmentStarting(f"{self.name}: {exc}") from None
            except L.LayoutError as exc:
                raise IncompatibleSegment(f"{self.name}: {exc}") from None
            if self._pread:
                buffer = bytearray(layout.total_size)
                self._mv = memoryview(buffer)
                def span(rec: L.Record) -> tuple[int, int]:
                    i = L.SECTION_INDEX[rec.name]
                    return layout.offsets[i], layout.offsets[i] + layout.capacities[i] * rec.size

                # What read() copies: everything but the history ring (history() copies it on request)
                # and the static catalog (copied once, below: it never changes).
                self._history_range = span(L.HISTORY)
                skipped = sorted([self._history_range, *map(span, L.STATIC_SECTIONS)])
                starts = [0, *(end for _, end in skipped)]
                ends = [*(start for start, _ in skipped), layout.total_size]
                self._copy_ranges = tuple((a, b) for a, b in zip(starts, ends) if b > a)
                self._static_ranges = tuple(map(span, L.STATIC_SECTIONS))
            else:
                self._mm = mmap.mmap(fd, layout.total_size, mmap.MAP_SHARED, mmap.PROT_READ)
                self._mv = memoryview(self._mm)
        except BaseException:
            self._mm = None
            os.close(fd)
            raise
        # The descriptor stays open: the liveness lock is tested through it, the size re-checked
        # with fstat, and (pread mode) every read goes through it.
        self._fd = fd
        self._identity = (st.st_dev, st.st_ino)
        self._q = self._mv.cast("Q")
        self._i = self._mv.cast("I")
        self.layout = layout
        if self._pread:  # the catalog is static: its one copy (and the rest) before it is read
            try:
                self._copy(self._static_ranges + self._copy_ranges)
            except IncompatibleSegment:
                self._field_slots = {}  # not built yet: close() releases what exists
                self.close()
                raise
        self.origin = Origin(hdr["instance_id"], hdr["publisher_pid"], hdr["publisher_start_time"],
                             hdr["interval_seconds"], hdr["hostname"], LazyCatalog(self), hdr["generation"],
                             layout.total_size)
        self.instance_id, self.publisher_pid, self.publisher_start_time, self.interval, self.hostname = self.origin[:5]
        self.size = layout.total_size
        self.capacities = dict(zip((r.name for r in L.SECTIONS), layout.capacities))
        self._seq_index = L.HEADER_SEQ_OFFSET // 8
        self._state_index = L.HEADER_STATE_OFFSET // 4
        views = {code: self._mv.cast(code) for code in ("Q", "d")}
        self._field_slots = {f.name: (views[f.code], layout.offset_of("scalars", f.name) // f.size)
                             for f in L.SCALARS.fields}
        # Per section read: its name, its count's place in the span, offset, record size and capacity.
        self._array_slots = [(rec.name, _DIR_START + i * _DIR_WIDTH + _COUNT_POS, layout.offsets[i], rec.size,
                              layout.capacities[i])
                             for rec, i in ((r, L.SECTION_INDEX[r.name])
                                            for r in (*L.SAMPLE_ARRAYS, *L.FAMILY_SECTIONS))]
        self._count_limits = [(at, cap) for _, at, _, _, cap in self._array_slots]
        self._valid_counts: tuple = ()  # the directory's counts as last validated: unchanged counts need no loop
        self._wake: tuple[int, str] | None = None  # (futex address or 0, reason), decided on first wait

    def replaced(self) -> bool:
        """True when the name no longer refers to the object we map (restart or removal)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def check_size(self) -> None:
        """IncompatibleSegment if the file no longer has the size we mapped (someone truncated it).

        A mapped reader that touched a page beyond the new end would die of SIGBUS; readers that keep
        a mapping for long call this before reading (``follow()`` does).  Only the segment's owner, a
        trusted user, can truncate it, so the window between this check and the read is theirs alone.
        """
        if self._fd is None:
            raise NoSegment(f"not attached to {self.name}")
        # lseek to the end, not fstat: the same size without a stat_result object of 20 fields, at every
        # sample of a follower (every read goes through pread or the mapping: the offset is not used).
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size != self.size:
            raise IncompatibleSegment(f"{self.name}: the segment changed size under the reader "
                                      f"({self.size} -> {size} bytes): truncated by its owner?")

    def publisher_alive(self) -> bool:
        """True when a process holds the segment's liveness lock (its publisher lives); never takes it."""
        if self._fd is None:
            raise NoSegment(f"not attached to {self.name}")
        return L.publisher_alive(self._fd)

    def load_catalog(self) -> None:
        """Decode the family catalog now (IncompatibleSegment if it is bad), not at the first families use."""
        self.origin.catalog.get()

    def close(self) -> None:
        if self._demand is not None:  # the segment's publisher may be another one when we attach again
            self._demand.close()
            self._demand = None
        if self._header_map is not None:
            self._header_map.close()
            self._header_map = None
        if self._fd is not None:
            origin = getattr(self, "origin", None)
            if origin is not None and origin.catalog is not None:
                origin.catalog.keep()
            for view in (self._q, self._i, *(v for v, _ in self._field_slots.values()), self._mv):
                view.release()
            if self._mm is not None:
                self._mm.close()
                self._mm = None
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading
    @property
    def state(self) -> str:
        if self._pread:
            self._copy(((L.HEADER_STATE_OFFSET, L.HEADER_STATE_OFFSET + 4),))
        return L.STATE_NAMES.get(self._i[self._state_index], "corrupt")

    @property
    def seq(self) -> int:
        if self._pread:
            return self._file_seq()
        return self._q[self._seq_index]

    def read(self, arrays: bool = True, *, check_alive: bool = False) -> Snapshot:
        """One consistent snapshot, decoded in place.  Raises SegmentBusy, IncompatibleSegment.

        ``check_alive``: also test the liveness lock (one system call), so that the snapshot's
        ``state`` says "dead" and ``is_fresh()`` is False when the publisher died without saying so.
        A segment that says "replaced" (the publisher moved to a larger generation under the same
        name) is followed: the reader attaches the name again and reads there (NoSegment or
        IncompatibleSegment if that fails).
        """
        snap = self._read(arrays, check_alive)
        for _ in range(_GENERATION_HOPS):
            if snap.state_code != L.STATE_REPLACED:
                break
            self.attach()
            snap = self._read(arrays, check_alive)
        return snap

    def _read(self, arrays: bool, check_alive: bool) -> Snapshot:
        if self._fd is None:
            raise NoSegment(f"not attached to {self.name}")
        mm, q, si = self._mv, self._q, self._seq_index
        copy = self._pread
        deadline = None
        tries = 0
        while True:
            if copy:
                self._copy(self._copy_ranges)
            s1 = q[si]
            if not s1 & 1:
                if _fence:
                    _fence()
                values = _SPAN.unpack_from(mm, L.HEADER_SEQ_OFFSET)
                decoded = self._decode_arrays(values) if arrays else {}
                state = self._i[self._state_index]
                if _fence:
                    _fence()
                if (self._file_seq() if copy else q[si]) == s1 == values[0]:
                    # The cheap test first (one slice, one compare, one float expression: a NaN or an
                    # infinity anywhere makes it NaN); the full check only when something changed or is off.
                    if (values[_COUNTS] != self._valid_counts or decoded is None or state not in L.STATE_NAMES
                            or (values[1] + values[2] + values[3] + values[5]) * 0.0 != 0.0):
                        self._validate(values, decoded, state)
                    alive = L.publisher_alive(self._fd) if check_alive else None
                    return Snapshot(self.origin, values, decoded, state, alive)
            tries += 1
            self.retries += 1
            if tries > _SPIN_TRIES or copy:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BUSY_TIMEOUT_SECONDS
                elif now > deadline:
                    raise SegmentBusy(f"{self.name}: publisher stopped in the middle of a write "
                                      f"(seq {self.seq} stays odd or keeps moving)")
                time.sleep(0.0005)

    def _validate(self, values: tuple, decoded: dict | None, state: int) -> None:
        """The one rule for a consistent snapshot's dynamic values: every read path goes through it."""
        for index, capacity in self._count_limits:
            if values[index] > capacity:
                raise IncompatibleSegment(f"{self.name}: section {_DIR_NAMES[index]} claims "
                                          f"{values[index]} records in {capacity} slots")
        if decoded is None or state not in L.STATE_NAMES:
            raise IncompatibleSegment(f"{self.name}: a count exceeds its capacity, or a bad state ({state})")
        for name, index in _FINITE_HEADER:
            if not isfinite(values[index]):
                raise IncompatibleSegment(f"{self.name}: header value {name} is {values[index]!r}")
        self._valid_counts = values[_COUNTS]

    def _copy(self, ranges: tuple[tuple[int, int], ...]) -> None:
        """pread mode: copy ``ranges`` of the file into the buffer; a short read means it shrank."""
        fd, mv = self._fd, self._mv
        for start, end in ranges:
            if end > start and os.preadv(fd, [mv[start:end]], start) != end - start:
                raise IncompatibleSegment(f"{self.name}: the segment shrank under the reader "
                                          f"(truncated by its owner?)")

    def _file_seq(self) -> int:
        """``seq`` as the file holds it now (pread mode's second look of the seqlock)."""
        raw = os.pread(self._fd, 8, L.HEADER_SEQ_OFFSET)
        if len(raw) != 8:
            raise IncompatibleSegment(f"{self.name}: the segment shrank under the reader (truncated by its owner?)")
        return int.from_bytes(raw, "little")

    def _decode_arrays(self, values: tuple) -> dict[str, bytes] | None:
        # A copy of each array's valid rows, decoded later only if asked for: a memcpy inside the seqlock is far
        # cheaper than unpacking every row.  A slice of the mapping is that copy (bytes); in pread mode, a view
        # of the buffer (which the next read overwrites), copied at the end.
        out = {}
        source = self._mv if self._mm is None else self._mm
        for name, at, offset, size, capacity in self._array_slots:
            count = values[at]
            if count > capacity:
                return None  # torn (retried) or corrupt (reported)
            out[name] = source[offset:offset + count * size]
        if self._mm is None:
            return {name: rows.tobytes() for name, rows in out.items()}
        return out

    def read_field(self, name: str) -> int | float:
        """One scalar with the seqlock check, without decoding the rest."""
        view, index = self._field_slots[name]
        q, si = self._q, self._seq_index
        for _ in range(_SPIN_TRIES):
            s1 = q[si]
            if _fence:
                _fence()
            value = view[index]
            if _fence:
                _fence()
            if not s1 & 1 and q[si] == s1:
                return value
            self.retries += 1
        return self.read(arrays=False)[name]  # slow path: bounded wait, SegmentBusy

    # --- asking for a sample (docs/LAYOUT.md, "Demand")
    def ask(self, kind: bytes = L.DEMAND_FULL) -> bool:
        """Ask the publisher for a full sample (``L.DEMAND_FULL``) or for the per-process scan in its next
        samples (``L.DEMAND_SCAN``); False when it has no demand channel (then it samples everything
        every interval) or the channel is not trusted."""
        if self._demand is None:
            from shm_metrics.readers.demand import DemandSocket

            self._demand = DemandSocket(self.name)
        return self._demand.ask(kind, self.trusted_uids())

    def read_fresh(self, max_age: float, timeout: float = DEMAND_TIMEOUT_SECONDS, arrays: bool = True, *,
                   check_alive: bool = False) -> Snapshot:
        """A snapshot whose families are all at most ``max_age`` seconds old: when the families sampled on
        demand are older, asks the publisher for a full sample and waits for it, at most ``timeout``
        seconds (then the snapshot it has: ``Snapshot.family_time`` says how old each family is)."""
        asked_at = time.time()
        deadline = time.monotonic() + timeout
        asked = self._pread and self._ask_early(asked_at - max_age, deadline)
        snap = self.read(arrays, check_alive=check_alive)
        if asked_at - snap.full_sample_time <= max_age or not snap.is_fresh():
            return snap
        if not asked and not self.ask(L.DEMAND_FULL):
            return snap
        while asked_at - snap.full_sample_time > max_age:  # one begun just before we asked will do
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._pread:
                self._wait_seq_moves(snap.seq, deadline)
            else:
                self.wait_for_sample(snap.seq, remaining)
            snap = self.read(arrays, check_alive=check_alive)
        return snap

    def _ask_early(self, oldest: float, deadline: float) -> bool:
        """pread mode: when the header's ``full_sample_time`` is before ``oldest`` and the publisher lives,
        ask for a full sample and wait (8-byte reads of ``seq``) until a sample ends, before the one copy
        of the segment (not one copy to find it old, then another).  True when it asked."""
        if self._fd is None:
            return False
        head = os.pread(self._fd, L.HEADER.size, 0)
        if len(head) != L.HEADER.size:
            return False
        hdr = dict(zip(L.HEADER.names, L.HEADER.struct.unpack(head)))  # outside the seqlock: only a hint
        # Only a running publisher whose samples are fresh (Snapshot.is_fresh's rule) answers soon; for any
        # other segment (stopped, replaced by a new generation), or an odd value, the usual path decides.
        if not (hdr["state"] == L.STATE_RUNNING and hdr["seq"] & 1 == 0 and hdr["full_sample_time"] < oldest
                and 0 <= time.time() - hdr["sample_time"] <= _max_age(self.interval)):
            return False
        if not self.publisher_alive() or not self.ask(L.DEMAND_FULL):
            return False
        self._wait_seq_moves(hdr["seq"], deadline)
        return True

    def _wait_seq_moves(self, seq: int, deadline: float) -> None:
        """pread mode: look at ``seq`` alone (8 bytes) until it moves or ``deadline`` (monotonic) passes,
        not at a copy of the whole segment; asleep on the futex in between (woken when the sample is in: one
        wake-up, where polling every 2 ms woke ~3 times during a full sample), else polling."""
        address, _ = self._wake_method()
        while (now := time.monotonic()) < deadline and self._file_seq() == seq:
            if not address:
                time.sleep(0.002)
            elif self._futex_wait(seq, deadline - now) and self._file_seq() == seq:
                time.sleep(0.002)  # back with nothing new (a signal, or a wait the kernel refused): never a spin

    # --- history
    def history(self, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The ring's samples, oldest first: dicts of ``seq``, ``sample_time`` and every scalar.

        ``since``: only samples taken within that many seconds of the newest;
        ``limit``: at most that many of the newest.  Only the slots needed are
        decoded.  Raises SegmentBusy and IncompatibleSegment like read().
        """
        self.read(arrays=False)  # the one validation of the directory and the header values
        h = L.SECTION_INDEX["history"]
        base, capacity, size = self.layout.offsets[h], self.layout.capacities[h], L.HISTORY.size
        wanted = capacity if limit is None else max(0, min(limit, capacity))
        if since is not None:  # slots are interval apart or more (a missed slot is skipped)
            wanted = min(wanted, int(since / self.interval) + 2)
        unpack = L.HISTORY.struct.iter_unpack
        mv, q, si = self._mv, self._q, self._seq_index
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        copy = self._pread
        while True:
            s1 = self._file_seq() if copy else q[si]
            if not s1 & 1:
                if _fence:
                    _fence()
                if copy:
                    self._copy((self._history_range,))
                count = min(s1 // 2, wanted)
                first = (s1 // 2 - count) % capacity
                end = first + count
                rows = list(unpack(mv[base + first * size:base + min(end, capacity) * size]))
                if end > capacity:  # wrapped
                    rows += unpack(mv[base:base + (end - capacity) * size])
                if _fence:
                    _fence()
                if (self._file_seq() if copy else q[si]) == s1:
                    break
            self.retries += 1
            if time.monotonic() > deadline:
                raise SegmentBusy(f"{self.name}: publisher stopped in the middle of a write")
            time.sleep(0.0002)
        # Each slot names its sample: anything else is a slot not written yet, or corrupt.
        expected = s1 - 2 * (len(rows) - 1)
        names = _HISTORY_NAMES
        out = [dict(zip(names, row)) for k, row in enumerate(rows) if row[0] == expected + 2 * k]
        if since is not None and out:
            cutoff = out[-1]["sample_time"] - since
            out = [e for e in out if e["sample_time"] >= cutoff]
        return out

    # --- waiting for the next sample
    @property
    def wake(self) -> str:
        """How this reader waits for samples: "futex", or "poll (<why>)"."""
        address, reason = self._wake_method()
        return "futex" if address else f"poll ({reason})"

    def _wake_method(self) -> tuple[int, str]:
        if self._wake is None:
            from shm_metrics import shm_wake  # ctypes: only readers that wait pay for it

            reason = shm_wake.UNAVAILABLE_REASON
            address = 0
            if self._pread:
                address, reason = self._header_futex(shm_wake)
            elif shm_wake.AVAILABLE:
                address = shm_wake.buffer_address(self._mm) + L.FUTEX_WORD_OFFSET
                self.check_size()  # the import above takes milliseconds: check right before touching the page
                reason = shm_wake.probe(address, self._i[L.FUTEX_WORD_OFFSET // 4])
                if reason:
                    address = 0
            self._wake = (address, reason)
            if address:
                self._futex_wait = shm_wake.Waiter(address).wait
        return self._wake

    def _header_futex(self, shm_wake) -> tuple[int, str]:
        """pread mode: the futex word's address in a mapping of the header's page alone, which this process
        never reads.  Only the kernel does, for FUTEX_WAIT: a page truncated away fails that wait (EFAULT)
        where a read of ours would die of SIGBUS.  (0, why) when there is none."""
        if not shm_wake.AVAILABLE:
            return 0, shm_wake.UNAVAILABLE_REASON
        try:
            self._header_map = mmap.mmap(self._fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, ValueError) as exc:  # shorter than a page: truncated since it was checked
            return 0, f"no mapping of the header: {exc}"
        address = shm_wake.buffer_address(self._header_map) + L.FUTEX_WORD_OFFSET
        return address, shm_wake.probe(address, self._file_seq())

    def wait_for_sample(self, seq: int, timeout: float) -> bool:
        """Sleep until ``seq`` changes (a sample is being or has been written), at most ``timeout`` s.

        Sleeps in the kernel on the publisher's futex (no CPU while waiting,
        woken within microseconds of the write); polls every
        ``poll_interval()`` where the futex is unavailable.  True if it changed.
        A mapped reader's size is checked before each look at ``seq`` (``check_size``), the last one just before
        this returns: a ``read()`` right after it needs no check of its own.
        """
        address, _ = self._wake_method()
        current = self._file_seq if self._pread else self._mapped_seq
        deadline = time.monotonic() + timeout
        while current() == seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if address:
                self._futex_wait(seq, remaining)
            else:
                time.sleep(min(self.poll_interval(), remaining))
        return True

    def _mapped_seq(self) -> int | None:
        """``seq`` in the mapping, the file's size checked first (a wait sleeps for up to its timeout: the file
        may have been truncated meanwhile); None in a replaced generation, whose seq stays put (the next
        sample is in the new one)."""
        self.check_size()
        if self._i[self._state_index] == L.STATE_REPLACED:
            return None
        return self._q[self._seq_index]

    def poll_interval(self) -> float:
        """The fallback poll period: 1/20 of the interval, within 2-100 ms."""
        return min(max(self.interval / 20, 0.002), 0.1)

    def follow(self, on_status: Callable[[str], None] | None = None,
               max_age: float | None = None, arrays: bool = True) -> Iterator[Snapshot]:
        """Yield each new fresh snapshot, forever; survives publisher restarts.

        ``for snap in reader.follow(): ...`` sleeps between samples (see
        ``wait_for_sample``).  Waits (calling ``on_status`` once per change of
        situation) while there is no segment, or the publisher is starting,
        stopped or stale.  Never yields a stopped or stale sample, never the
        same sample twice; a reader slower than the publisher skips samples
        (``Snapshot.seq`` says which).
        """
        status = None
        last = None
        last_identity_check = 0.0
        size_checked = False  # by wait_for_sample(), last thing: the read after it needs no check
        # Whether seq moved in the last wait: a publisher that just published lives, and its liveness lock
        # (a system call) is tested only when no sample came (the first read, a wait that timed out).
        woken = False

        def say(text: str) -> None:
            nonlocal status
            if text != status and on_status:
                on_status(text)
            status = text

        while True:
            if not self.attached:
                try:
                    self.attach()
                except NoSegment:
                    say(f"waiting for shm-publisher to create {self.name}")
                    time.sleep(0.1)
                    continue
                except IncompatibleSegment as exc:
                    say(f"waiting: {exc}")
                    time.sleep(0.5)
                    continue
            try:
                if not size_checked:
                    self.check_size()  # a mapping kept for long: never touch pages a truncation took away
                size_checked = False
                snap = self.read(arrays=arrays, check_alive=not woken)
            except SegmentBusy as exc:
                say(str(exc))
                snap = None
            except IncompatibleSegment as exc:
                say(f"waiting: {exc}")
                self.close()
                time.sleep(0.5)
                continue
            fresh = snap is not None and snap.is_fresh(max_age)
            key = (self.instance_id, snap.seq) if snap else None
            if fresh and key != last:
                last = key
                status = None
                yield snap
            elif snap and (snap.seq > 0 or snap.state == STATE_DEAD) and not fresh:
                from shm_metrics.readers.format import describe_not_fresh  # presentation: only when said

                say(f"{describe_not_fresh(snap, max_age)}; waiting for new samples")
            now = time.monotonic()
            if not fresh or now - last_identity_check > 1.0:
                last_identity_check = now
                if self.replaced():
                    self.close()
                    continue
            # Bounded sleep: a publisher that died or was replaced never wakes us,
            # so look at the name and the sample's age at least this often.
            limit = (snap.max_age() if max_age is None else max_age) if snap else 1.0
            try:
                woken = self.wait_for_sample(snap.seq if snap else self.seq, min(1.0, max(limit / 2, 0.01)))
                size_checked = True
            except IncompatibleSegment as exc:
                say(f"waiting: {exc}")
                self.close()
                time.sleep(0.5)


_HISTORY_NAMES = L.HISTORY.names


# --- names and users from the environment: one place, one message naming the variable
def resolve_user(spec: str | int, source: str | None = None) -> int:
    """A user name or numeric uid -> uid; ValueError (naming ``source``, e.g. the variable) if unknown."""
    import pwd

    if isinstance(spec, int) or spec.isdigit():
        return int(spec)
    try:
        return pwd.getpwnam(spec).pw_uid
    except KeyError:
        raise ValueError(f"{source + ': ' if source else ''}no such user {spec!r}") from None


def user_name(uid: int) -> str:
    """The name of ``uid``, or the number when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

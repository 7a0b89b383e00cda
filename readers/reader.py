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

from shm_metrics import families as _families
from shm_metrics import shm_layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start; the one-shot CLI does not pay them
    from collections.abc import Callable, Iterator
    from typing import Any

# Everything a sample changes is one contiguous span: the seqlock part of the
# header (seq .. overruns_total), the section directory and the scalars.  One
# unpack_from of that span is a whole snapshot of the scalars.
_DYNAMIC = ("seq", "sample_time", "sample_monotonic", "sample_duration_seconds", "overruns_total")
assert list(L.HEADER.names[-len(_DYNAMIC):]) == list(_DYNAMIC) and L.HEADER.size == L.HEADER_SEQ_OFFSET + 40
_FIXED = L.Layout.for_capacities(1, 1, 1, 1)  # header geometry does not depend on capacities
_SPAN = struct.Struct("<QdddQ" + "".join(L.SECTION.struct.format[1:] for _ in L.SECTIONS)
                      + f"{_FIXED.header_size - _FIXED.sections_offset - len(L.SECTIONS) * L.SECTION.size}x"
                      + L.SCALARS.struct.format[1:])
assert _SPAN.size == _FIXED.header_size + L.SCALARS.size - L.HEADER_SEQ_OFFSET
_DIR_START = len(_DYNAMIC)
_DIR_WIDTH = len(L.SECTION.names)
_COUNT_POS = L.SECTION.names.index("count")
_SCALARS_START = _DIR_START + _DIR_WIDTH * len(L.SECTIONS)
_fence = None if L.STRONGLY_ORDERED else L.memory_fence

BUSY_TIMEOUT_SECONDS = 0.25  # a write takes tens of microseconds; this is far beyond
_SPIN_TRIES = 200


class ReaderError(Exception):
    """Base of everything a reader can report about a segment."""


class NoSegment(ReaderError):
    """Nothing under the name: no publisher has created it (or it stopped)."""


class IncompatibleSegment(ReaderError):
    """Something is under the name, but not a segment this reader can trust."""


class SegmentStarting(IncompatibleSegment):
    """Empty or without magic yet: a publisher is creating it, or died doing so."""


class SegmentBusy(ReaderError):
    """``seq`` stayed odd or kept moving: the publisher stopped mid-write."""


Origin = namedtuple("Origin", "instance_id publisher_pid publisher_start_time interval hostname catalog",
                    defaults=(_families.EMPTY_CATALOG,))
Origin.__doc__ = "The static header facts of one segment instance (and its family catalog), fixed at attach time."


class Snapshot:
    """One consistent sample.  Scalars by attribute or key; arrays as lists of dicts; node_exporter's
    families through ``families`` (a FamilyView).

    Units are in the names: ``*_bytes``, ``*_seconds``, ``*_total`` counters.
    Arrays and families are copied raw inside the seqlock and decoded only when
    asked for.
    """

    __slots__ = ("_origin", "_values", "_arrays", "state_code")

    def __init__(self, origin: Origin, values: tuple, arrays: dict[str, bytes], state_code: int):
        self._origin = origin
        self._values = values  # the decoded span: dynamic header, directory, scalars
        self._arrays = arrays
        self.state_code = state_code

    # header facts
    seq = property(lambda self: self._values[0])
    sample_time = property(lambda self: self._values[1], doc="Unix time of the sample, seconds")
    sample_monotonic = property(lambda self: self._values[2])
    sample_duration_seconds = property(lambda self: self._values[3])
    overruns_total = property(lambda self: self._values[4])
    state = property(lambda self: L.STATE_NAMES[self.state_code])
    interval = property(lambda self: self._origin.interval)
    publisher_pid = property(lambda self: self._origin.publisher_pid)
    hostname = property(lambda self: self._origin.hostname)
    instance_id = property(lambda self: self._origin.instance_id)
    layout_version = property(lambda self: L.LAYOUT_VERSION)

    @property
    def age(self) -> float:
        """Seconds since the sample was taken (wall clock)."""
        return max(0.0, time.time() - self.sample_time)

    def max_age(self) -> float:
        """The staleness limit: 2 x interval + 1 s."""
        return 2 * self.interval + 1.0

    def is_fresh(self, max_age: float | None = None) -> bool:
        """Running publisher, at least one sample, and not older than ``max_age``."""
        limit = self.max_age() if max_age is None else max_age
        return self.state_code == L.STATE_RUNNING and self.seq > 0 and self.age <= limit

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
    def families(self) -> _families.FamilyView:
        """node_exporter's families of this sample (``snap.families["node_load1"].series``)."""
        arrays = self._arrays
        if L.SERIES.name not in arrays:
            raise KeyError("families: read with arrays=False")
        return _families.FamilyView(self._origin.catalog, arrays[L.SERIES.name], arrays[L.LABELS.name])

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
        return {"seq": self.seq, "sample_time": self.sample_time, "interval": self.interval,
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
            out["families"] = self.families.to_dict()
        return out


_SCALAR_INDEX = {n: _SCALARS_START + i for i, n in enumerate(L.SCALARS.names)}
_ARRAY_RECORDS = {rec.name: rec for rec in L.SAMPLE_ARRAYS}


class Reader:
    """A read-only attachment to a segment.

    >>> with Reader("/sysmetrics") as r:
    ...     print(r.read().procs_total)
    """

    def __init__(self, name: str | None = None, *, attach: bool = True):
        self.name = L.validate_name(name or os.environ.get(L.NAME_ENV) or L.DEFAULT_NAME)
        self.path = L.segment_path(self.name)
        self._mm: mmap.mmap | None = None
        self.retries = 0  # seqlock retries over this reader's life (for the benchmark)
        if attach:
            self.attach()

    # --- attaching
    @property
    def attached(self) -> bool:
        return self._mm is not None

    def attach(self) -> None:
        """Open, validate and map the segment; raises NoSegment or IncompatibleSegment."""
        self.close()
        try:
            fd, st = L.open_checked(self.path)
        except FileNotFoundError:
            raise NoSegment(f"no segment {self.name}: is shm-publisher running under that name?") from None
        except L.LayoutError as exc:
            raise IncompatibleSegment(str(exc)) from None
        try:
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
            mm = mmap.mmap(fd, layout.total_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)  # the mapping keeps the object alive
        self._identity = (st.st_dev, st.st_ino)
        self._mm = mm
        self._mv = memoryview(mm)
        self._q = self._mv.cast("Q")
        self._i = self._mv.cast("I")
        self.layout = layout
        try:
            catalog = _families.read_catalog(self._mv, layout)
        except L.LayoutError as exc:
            self._field_slots = {}  # not built yet: close() releases what exists
            self.close()
            raise IncompatibleSegment(f"{self.name}: {exc}") from None
        self.origin = Origin(hdr["instance_id"], hdr["publisher_pid"], hdr["publisher_start_time"],
                             hdr["interval_seconds"], hdr["hostname"], catalog)
        self.instance_id, self.publisher_pid, self.publisher_start_time, self.interval, self.hostname = self.origin[:5]
        self.size = layout.total_size
        self.capacities = dict(zip((r.name for r in L.SECTIONS), layout.capacities))
        self._seq_index = L.HEADER_SEQ_OFFSET // 8
        self._state_index = L.HEADER_STATE_OFFSET // 4
        views = {code: self._mv.cast(code) for code in ("Q", "d")}
        self._field_slots = {f.name: (views[f.code], layout.offset_of("scalars", f.name) // f.size)
                             for f in L.SCALARS.fields}
        self._array_slots = [(rec, i, layout.offsets[i], layout.capacities[i])
                             for rec, i in ((r, L.SECTION_INDEX[r.name])
                                            for r in (*L.SAMPLE_ARRAYS, *L.FAMILY_SECTIONS))]
        self._wake: tuple[int, str] | None = None  # (futex address or 0, reason), decided on first wait

    def replaced(self) -> bool:
        """True when the name no longer refers to the object we map (restart or removal)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def close(self) -> None:
        if self._mm is not None:
            for view in (self._q, self._i, *(v for v, _ in self._field_slots.values()), self._mv):
                view.release()
            self._mm.close()
            self._mm = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading
    @property
    def state(self) -> str:
        return L.STATE_NAMES.get(self._i[self._state_index], "corrupt")

    @property
    def seq(self) -> int:
        return self._q[self._seq_index]

    def read(self, arrays: bool = True) -> Snapshot:
        """One consistent snapshot, decoded in place.  Raises SegmentBusy."""
        mm, q, si = self._mm, self._q, self._seq_index
        if mm is None:
            raise NoSegment(f"not attached to {self.name}")
        deadline = None
        tries = 0
        while True:
            s1 = q[si]
            if not s1 & 1:
                if _fence:
                    _fence()
                values = _SPAN.unpack_from(mm, L.HEADER_SEQ_OFFSET)
                decoded = self._decode_arrays(values) if arrays else {}
                state = self._i[self._state_index]
                if _fence:
                    _fence()
                if q[si] == s1 == values[0]:
                    if decoded is None or state not in L.STATE_NAMES:
                        raise IncompatibleSegment(f"{self.name}: a count exceeds its capacity, or a bad state")
                    return Snapshot(self.origin, values, decoded, state)
            tries += 1
            self.retries += 1
            if tries > _SPIN_TRIES:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BUSY_TIMEOUT_SECONDS
                elif now > deadline:
                    raise SegmentBusy(f"{self.name}: publisher stopped in the middle of a write "
                                      f"(seq {q[si]} stays odd or keeps moving)")
                time.sleep(0.0005)

    def _decode_arrays(self, values: tuple) -> dict[str, bytes] | None:
        # A copy of each array's valid rows, decoded later only if asked for: a
        # memcpy inside the seqlock is far cheaper than unpacking every row.
        out = {}
        mv = self._mv
        for rec, i, offset, capacity in self._array_slots:
            count = values[_DIR_START + i * _DIR_WIDTH + _COUNT_POS]
            if count > capacity:
                return None  # torn (retried) or corrupt (reported)
            out[rec.name] = mv[offset:offset + count * rec.size].tobytes()
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

    # --- history
    def history(self, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The ring's samples, oldest first: dicts of ``seq``, ``sample_time`` and every scalar.

        ``since``: only samples taken within that many seconds of the newest;
        ``limit``: at most that many of the newest.  Only the slots needed are
        decoded.  Raises SegmentBusy like read().
        """
        h = L.SECTION_INDEX["history"]
        base, capacity, size = self.layout.offsets[h], self.layout.capacities[h], L.HISTORY.size
        wanted = capacity if limit is None else max(0, min(limit, capacity))
        if since is not None:  # slots are interval apart or more (a missed slot is skipped)
            wanted = min(wanted, int(since / self.interval) + 2)
        unpack = L.HISTORY.struct.iter_unpack
        mv, q, si = self._mv, self._q, self._seq_index
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            s1 = q[si]
            if not s1 & 1:
                if _fence:
                    _fence()
                count = min(s1 // 2, wanted)
                first = (s1 // 2 - count) % capacity
                end = first + count
                rows = list(unpack(mv[base + first * size:base + min(end, capacity) * size]))
                if end > capacity:  # wrapped
                    rows += unpack(mv[base:base + (end - capacity) * size])
                if _fence:
                    _fence()
                if q[si] == s1:
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

            self._futex_wait = shm_wake.wait
            reason = shm_wake.UNAVAILABLE_REASON
            address = 0
            if shm_wake.AVAILABLE:
                address = shm_wake.buffer_address(self._mm) + L.FUTEX_WORD_OFFSET
                reason = shm_wake.probe(address, self._i[L.FUTEX_WORD_OFFSET // 4])
                if reason:
                    address = 0
            self._wake = (address, reason)
        return self._wake

    def wait_for_sample(self, seq: int, timeout: float) -> bool:
        """Sleep until ``seq`` changes (a sample is being or has been written), at most ``timeout`` s.

        Sleeps in the kernel on the publisher's futex (no CPU while waiting,
        woken within microseconds of the write); polls every
        ``poll_interval()`` where the futex is unavailable.  True if it changed.
        """
        address, _ = self._wake_method()
        q, si = self._q, self._seq_index
        deadline = time.monotonic() + timeout
        while q[si] == seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if address:
                self._futex_wait(address, seq, remaining)
            else:
                time.sleep(min(self.poll_interval(), remaining))
        return True

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
                snap = self.read(arrays=arrays)
            except SegmentBusy as exc:
                say(str(exc))
                snap = None
            key = (self.instance_id, snap.seq) if snap else None
            if snap and snap.is_fresh(max_age) and key != last:
                last = key
                status = None
                yield snap
            elif snap and snap.seq > 0 and not snap.is_fresh(max_age):
                say(f"publisher pid {self.publisher_pid} is {snap.state if snap.state != 'running' else 'stale'}"
                    f"; waiting for new samples")
            now = time.monotonic()
            stalled = snap is None or not snap.is_fresh(max_age)
            if stalled or now - last_identity_check > 1.0:
                last_identity_check = now
                if self.replaced():
                    self.close()
                    continue
            # Bounded sleep: a publisher that died or was replaced never wakes us,
            # so look at the name and the sample's age at least this often.
            limit = (snap.max_age() if max_age is None else max_age) if snap else 1.0
            self.wait_for_sample(snap.seq if snap else self.seq, min(1.0, max(limit / 2, 0.01)))


_HISTORY_NAMES = L.HISTORY.names

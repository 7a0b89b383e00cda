"""Owning a segment name: claiming it safely, writing samples, letting it go.

Liveness is an exclusive ``flock`` held on the segment for the publisher's
whole life (the JVM's hsperfdata answer to pid reuse): a second publisher that
cannot take the lock knows the first is alive, even if it is stopped with
SIGSTOP; one that can take it knows the owner is gone, whatever its pid is now.
Beside it the publisher holds the liveness lock of ``shm_layout`` (an OFD write
lock) that readers can *test* without taking; the kernel drops both however
the process dies, so a segment whose header still says "running" reads as dead
after a SIGKILL.

The semaphore only serialises writes, and the flock holder is the only
legitimate writer: a semaphore that stays taken past a timeout was left by a
dead or rogue holder and is replaced, so nobody can stop publishing for good.

Takeover never rewrites an old object in place: the stale name is unlinked and
a new object created, so readers still mapping the old one keep valid memory
(no shrinking under them, no SIGBUS) and notice the new ``instance_id`` / inode.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import re
import stat
import struct
import time
from array import array
from collections.abc import Collection, Sequence
from operator import itemgetter

import posix_ipc

from shm_metrics import families as F
from shm_metrics import shm_layout as L
from shm_metrics import shm_wake
from shm_metrics.publisher.collectors import Sample, numbers

log = logging.getLogger(__name__)

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1
_HISTORY_INDEX, _SERIES_INDEX, _LABELS_INDEX = (L.SECTION_INDEX[n] for n in ("history", "series", "labels"))


class NameInUse(Exception):
    """The name is held by a live publisher or by something that is not ours."""


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_GLIBC_SEM_TEMP = re.compile(r"sem\.[A-Za-z0-9]{6}")


def _sem_open_temp_link(path: str, st: os.stat_result) -> str | None:
    """The other name of a semaphore whose creator died inside glibc's sem_open.

    sem_open(O_CREAT) builds the semaphore in /dev/shm/sem.XXXXXX, links it to
    the real name, then unlinks the temporary; killed in between, it leaves the
    semaphore with two links.  Returns that temporary's path, or None if the
    second link is anything else.
    """
    if st.st_nlink != 2:
        return None
    with os.scandir(os.path.dirname(path)) as entries:
        for entry in entries:
            if _GLIBC_SEM_TEMP.fullmatch(entry.name) and entry.inode() == st.st_ino:
                other = entry.stat(follow_symlinks=False)
                if other.st_dev == st.st_dev and stat.S_ISREG(other.st_mode):
                    return entry.path
    return None


def _check_semaphore_not_foreign(path: str) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not os.path.isfile(path) or os.path.islink(path) or (
            st.st_nlink != 1 and _sem_open_temp_link(path, st) is None):
        raise NameInUse(f"{path} exists and is not a semaphore file; left untouched")
    if st.st_uid != os.geteuid():
        raise NameInUse(f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); left untouched")


def _left_mid_creation(head: bytes) -> bool:
    """True for what a publisher of ours leaves when it dies before writing the
    magic: the header it writes first (our table hash), magic still zero.  Like
    an empty file, it is ours and may be taken over once locked; without this,
    one such crash would block the name until removed by hand.  Anything else
    non-empty without our magic (even all zeros) is foreign.
    """
    hash_at = L.HEADER.offsets["table_hash"]
    return (len(head) >= L.MIN_HEADER_BYTES and head[:8] == bytes(8)
            and int.from_bytes(head[hash_at:hash_at + 8], "little") == L.TABLE_HASH)


def _inspect_existing(path: str) -> int | None:
    """Decide what to do with an existing file under our name.

    Returns an fd holding the exclusive lock of a stale segment of ours (the
    caller may unlink it), None if it vanished meanwhile; raises NameInUse for a
    live publisher or anything foreign, which is then left byte-for-byte alone.
    """
    try:
        fd, st = L.open_checked(path)  # read-only: inspecting never writes
    except FileNotFoundError:
        return None
    except L.LayoutError as exc:
        raise NameInUse(f"{exc}; left untouched") from None
    try:
        if st.st_uid != os.geteuid():
            raise NameInUse(f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); "
                            "left untouched")
        pid = None
        if st.st_size > 0:
            head = os.pread(fd, L.MIN_HEADER_BYTES, 0)
            if len(head) == L.MIN_HEADER_BYTES and head[:8] == L.MAGIC:
                pid = int.from_bytes(head[L.HEADER.offsets["publisher_pid"]:][:4], "little")
            elif not _left_mid_creation(head):
                raise NameInUse(f"{path} holds data that is not a shm-metrics segment; left untouched")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = f"pid {pid}" if pid else "a publisher that is starting"
            raise NameInUse(f"another shm-publisher ({who}) is running on {path}") from None
        # Readers judge liveness by this lock alone: a segment that still has it held reads as
        # alive to them, so it is not stale, whoever holds it.
        if L.publisher_alive(fd):
            raise NameInUse(f"another process holds the liveness lock of {path}; left untouched")
        log.warning("taking over stale segment %s (publisher pid %s is gone)", path, pid or "unknown")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _create_locked(path: str) -> int:
    """Create the segment file exclusively and lock it; takes over a stale one."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            stale_fd = _inspect_existing(path)
            if stale_fd is not None:
                try:
                    st = os.fstat(stale_fd)
                    if _inode(path) == (st.st_dev, st.st_ino):  # not replaced meanwhile
                        os.unlink(path)
                finally:
                    os.close(stale_fd)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Taken before the header goes in, so a reader never sees a header of a live
            # publisher without it; held (like the flock) until the fd and the mapping's
            # duplicate of it are closed, or the process dies.
            L.hold_liveness_lock(fd)
            st = os.fstat(fd)
        except BlockingIOError:
            os.close(fd)
            raise NameInUse(f"another shm-publisher took {path} while this one was creating it") from None
        except BaseException:  # e.g. no OFD locks (ENOLCK, EINVAL): leave no empty file behind
            try:
                st = os.fstat(fd)
                if _inode(path) == (st.st_dev, st.st_ino):
                    os.unlink(path)
            finally:
                os.close(fd)
            raise
        # Someone may have judged our empty file stale and replaced it before we locked it.
        if _inode(path) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise NameInUse(f"another shm-publisher took {path} while this one was creating it")
        return fd
    raise NameInUse(f"could not create {path}: it keeps reappearing")


def _create_temp_locked(path: str) -> tuple[int, str]:
    """A new, locked file beside ``path`` under a random name (the next generation, before its rename).

    O_EXCL and O_NOFOLLOW: a file or symlink another user planted under the name we drew is never
    opened; we draw another name instead.
    """
    for _ in range(5):
        temp = f"{path}.gen-{os.urandom(8).hex()}"
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            L.hold_liveness_lock(fd)
        except BaseException:
            os.unlink(temp)
            os.close(fd)
            raise
        return fd, temp
    raise OSError(f"could not create a file beside {path}: every name drawn was taken")


class OwnedSegment:
    """The publisher's side of a segment: exclusive, writable, locked."""

    def __init__(self, name: str, layout: L.Layout, mode: int, interval: float,
                 catalog: tuple[F.FamilyInfo, ...] = (), *, max_bytes: int | None = None,
                 predecessor: OwnedSegment | None = None, on_demand: Collection[str] = ()):
        """``catalog``: the families the samples will carry (``Sampler.catalog``); the layout's
        ``metrics`` and ``strings`` capacities must be exactly its size.

        ``max_bytes``: when a sample does not fit, ``publish`` moves to a larger generation of the
        segment up to this size (docs/LAYOUT.md, "Generations"); None: never, what does not fit is
        left out and counted.  ``predecessor``: the generation this one will replace (``_grow``): the
        file is created under a temporary name, with the predecessor's instance, seq and history.
        ``on_demand``: the names of the families sampled on demand (flagged in the catalog; the
        Sampler's live set, so that a next generation flags families that joined since).
        """
        self.name = L.validate_name(name)
        self.path = L.segment_path(name)
        self.layout = layout
        self.sem_name = L.semaphore_name(name)
        self.sem_path = L.semaphore_path(name)
        self._fd: int | None = None
        self._mm: mmap.mmap | None = None
        self.sem: posix_ipc.Semaphore | None = None
        self._mode = mode
        self._interval = interval
        self._sem_replace_failed = False
        self._overflow_logged: set[str] = set()
        self.max_bytes = max_bytes
        self._grow_after = 0.0  # monotonic time before which no growth is tried (after a failure)
        self._replaced = False
        self.catalog = tuple(catalog)
        self.generation = predecessor.generation + 1 if predecessor else 0
        self._on_demand = on_demand
        self._catalog_rows, self._catalog_strings = F.encode_catalog(catalog, on_demand)
        self._series = F.SeriesEncoder({fam: i for i, fam in enumerate(catalog)}, numbers.take)
        caps = dict(zip((r.name for r in L.SECTIONS), layout.capacities))
        if (caps["metrics"] * L.METRICS.size, caps["strings"] * L.STRINGS.size) != (
                len(self._catalog_rows), len(self._catalog_strings)):
            raise ValueError("the layout's metrics/strings capacities do not fit the catalog")
        if predecessor is None:
            _check_semaphore_not_foreign(self.sem_path)
            self._fd = _create_locked(self.path)
            self._file_path = self.path
        else:
            self._fd, self._file_path = _create_temp_locked(self.path)
        try:
            st = os.fstat(self._fd)
            self._identity = (st.st_dev, st.st_ino)
            os.fchmod(self._fd, mode)  # exactly, whatever the umask
            # The header (magic still zero) goes in with the very first byte: from
            # the moment the file is non-empty it carries our table hash, so a
            # publisher killed during creation leaves something the next one
            # recognises as ours instead of an anonymous run of zeros.
            os.pwrite(self._fd, self._header_image(interval, predecessor), 0)
            try:
                os.posix_fallocate(self._fd, 0, layout.total_size)  # ENOSPC now, not SIGBUS later
            except OSError as exc:
                raise NameInUse(f"cannot size {self.path}: {exc.strerror}") from None
            self._mm = mmap.mmap(self._fd, layout.total_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if predecessor is None:
                self._open_semaphore(mode)
            self._init_views()
            self._write_catalog()
            if predecessor is not None:
                self._copy_history(predecessor)
            L.memory_fence()
            self._bytes[0:8] = L.MAGIC  # publish-last: readers trust nothing before this
        except BaseException:
            self.close(unlink=True)
            raise

    # --- setup
    def _open_semaphore(self, mode: int) -> None:
        """Put a new semaphore (value 1, exactly ``mode``) under the name, replacing one of ours.

        Only called while we hold the segment's flock, so no live publisher uses the
        semaphore it replaces: a leftover one (maybe wedged at 0 by a holder killed
        mid-write) is unlinked, never reused.  Anything foreign is left untouched
        (NameInUse).  ``self.sem`` is only changed once the new one is complete.
        """
        _check_semaphore_not_foreign(self.sem_path)
        if _inode(self.sem_path) is not None:
            temp = _sem_open_temp_link(self.sem_path, os.stat(self.sem_path, follow_symlinks=False))
            posix_ipc.unlink_semaphore(self.sem_name)
            if temp is not None:  # the dead creator's leftover name of the same semaphore
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
        try:
            sem = posix_ipc.Semaphore(self.sem_name, posix_ipc.O_CREX, mode=mode, initial_value=1)
        except posix_ipc.ExistentialError:
            raise NameInUse(f"{self.sem_path} appeared meanwhile; left untouched") from None
        try:
            sem_fd = os.open(self.sem_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(sem_fd, mode)
                st = os.fstat(sem_fd)
            finally:
                os.close(sem_fd)
        except BaseException:
            sem.close()  # not unlinked: the name may no longer be ours
            raise
        if self.sem is not None:
            self.sem.close()
        self.sem, self._sem_identity = sem, (st.st_dev, st.st_ino)

    def _acquire(self) -> bool:
        """Take the semaphore; replace it if it stays taken.  False: skip this sample.

        We hold the flock, so nobody else may write; the window itself is a few
        memcpys.  A semaphore still taken after the timeout was therefore left by
        a dead (SIGKILLed mid-write) or rogue holder, and waiting longer would
        freeze seq forever: it is replaced and taken again at once.
        """
        try:
            self.sem.acquire(_SEM_TIMEOUT)
            return True
        except posix_ipc.BusyError:
            pass
        except posix_ipc.SignalError:
            return False  # a stop signal: the loop sees it next, no traceback
        try:
            self._open_semaphore(self._mode)
        except (NameInUse, OSError, posix_ipc.Error) as exc:
            if not self._sem_replace_failed:  # once per wedged spell, not once per interval
                self._sem_replace_failed = True
                log.error("semaphore %s stayed taken for %g s and cannot be replaced (%s); "
                          "samples are skipped until it can", self.sem_name, _SEM_TIMEOUT, exc)
            return False
        self._sem_replace_failed = False
        log.warning("semaphore %s stayed taken for %g s (its holder died or is stuck holding it); "
                    "replaced it with a new one", self.sem_name, _SEM_TIMEOUT)
        try:
            self.sem.acquire(_SEM_TIMEOUT)
            return True
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            return False  # taken again already (a rogue): the next sample replaces it again

    def _init_views(self) -> None:
        mv = memoryview(self._mm)
        self._bytes = mv
        self._q = mv.cast("Q")
        self._i = mv.cast("I")
        self._d = mv.cast("d")
        self._seq_index = L.HEADER_SEQ_OFFSET // 8
        self._header_indexes = tuple(L.HEADER.offsets[n] // 8 for n in (
            "sample_time", "sample_monotonic", "sample_duration_seconds", "overruns_total", "full_sample_time"))
        self._counts_index = [(self.layout.section_entry_offset(i) + L.SECTION.offsets["count"]) // 4
                              for i in range(len(L.SECTIONS))]
        self._packers = {rec.name: _row_packer(rec) for rec in L.SECTIONS}
        # What _prepare does per section, worked out once: (directory index, record, offset, capacity, packer)
        # of the scalars and arrays; the other sections' counts are set on their own.
        layout = self.layout
        self._row_sections = [(i, rec, layout.offsets[i], layout.capacities[i], self._packers[rec.name])
                              for i, rec in enumerate(L.SECTIONS)
                              if rec not in L.STATIC_SECTIONS and rec not in (L.HISTORY, L.SERIES, L.LABELS)]
        self._counts_template = [(layout.capacities[i], 0) if rec in L.STATIC_SECTIONS else (0, 0)
                                 for i, rec in enumerate(L.SECTIONS)]
        self._written_counts: list[tuple[int, int]] | None = None  # what the directory holds (ours alone)
        # The series rows and label blob last written (a compiled grid sample's places: publisher/compiled.py).
        self._series_written: tuple[bytes, bytes] = (b"", b"")
        self._publish_plan: array | None = None
        self._futex_address = shm_wake.buffer_address(self._mm) + L.FUTEX_WORD_OFFSET if shm_wake.AVAILABLE else 0

    @property
    def seq(self) -> int:
        return self._q[self._seq_index]

    def _copy_history(self, predecessor: OwnedSegment) -> None:
        """The predecessor's history ring, byte for byte: its capacity never changes across generations,
        so every sample stays in the slot its seq names."""
        h = L.SECTION_INDEX["history"]
        if predecessor.layout.capacities[h] != self.layout.capacities[h]:
            raise ValueError("a next generation keeps the history ring's capacity")
        size = self.layout.capacities[h] * L.HISTORY.size
        src, dst = predecessor.layout.offsets[h], self.layout.offsets[h]
        self._bytes[dst:dst + size] = predecessor._bytes[src:src + size]

    def _write_catalog(self) -> None:
        """The family catalog goes in once, before the magic: readers may decode it outside the seqlock."""
        for rec, data in ((L.METRICS, self._catalog_rows), (L.STRINGS, self._catalog_strings)):
            offset = self.layout.offsets[L.SECTION_INDEX[rec.name]]
            self._bytes[offset:offset + len(data)] = data

    def _header_image(self, interval: float, predecessor: OwnedSegment | None = None) -> bytes:
        """Header and section directory, magic left zero; a next generation continues its predecessor's
        instance (id, start time) and seq."""
        layout = self.layout
        values = {
            "magic": bytes(8), "layout_version": L.LAYOUT_VERSION, "header_size": layout.header_size,
            "total_size": layout.total_size, "table_hash": L.TABLE_HASH,
            "instance_id": int.from_bytes(os.urandom(8), "little"), "publisher_pid": os.getpid(),
            "state": L.STATE_STARTING,
            "publisher_start_time": time.time(), "interval_seconds": interval,
            "section_count": len(L.SECTIONS), "section_size": L.SECTION.size,
            "sections_offset": layout.sections_offset,
            "hostname": L.encode_string(os.uname().nodename, L.HEADER.by_name["hostname"].size),
            "seq": 0, "sample_time": 0.0, "sample_monotonic": 0.0, "sample_duration_seconds": 0.0,
            "overruns_total": 0, "generation": self.generation, "full_sample_time": 0.0,
        }
        if predecessor is not None:
            values.update(instance_id=predecessor.instance_id, seq=predecessor.seq,
                          publisher_start_time=predecessor.publisher_start_time, state=L.STATE_RUNNING)
        self.instance_id = values["instance_id"]
        self.publisher_start_time = values["publisher_start_time"]
        image = bytearray(layout.header_size)
        L.HEADER.struct.pack_into(image, 0, *(values[n] for n in L.HEADER.names))
        for i, rec in enumerate(L.SECTIONS):
            static = layout.capacities[i] if rec in L.STATIC_SECTIONS else 0  # the catalog is whole from the start
            L.SECTION.struct.pack_into(image, layout.section_entry_offset(i),
                                       layout.offsets[i], rec.size, layout.capacities[i], static, 0)
        return bytes(image)

    # --- sampling
    def _prepare(self, sample: Sample, wall_time: float, short: dict[str, int] | None = None,
                 ) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]]]:
        """Turn a Sample into (offset, bytes) stores and the directory's (count, overflow) per section,
        outside the write window.

        Conversion, clamping and packing happen here so that nothing can raise
        while seq is odd (an exception there would leave readers 'busy'
        forever), and the window itself is a few memcpys.  ``short`` collects
        the sections whose rows did not all fit (name -> rows found).
        """
        stores: list[tuple[int, bytes]] = []
        counts = self._counts_template.copy()
        scalars = b""
        for i, rec, offset, cap, pack in self._row_sections:
            rows = [sample.scalars] if rec is L.SCALARS else getattr(sample, rec.name)
            if len(rows) > cap:
                overflow = len(rows) - cap
                rows = rows[:cap]
                if short is not None:
                    short[rec.name] = cap + overflow
                elif rec.name not in self._overflow_logged:
                    self._overflow_logged.add(rec.name)
                    log.warning("%d %s entries beyond capacity %d left out (counted in the header; "
                                "raise the capacity option to keep them)", overflow, rec.name, cap)
                counts[i] = (cap, min(overflow, _U32_MAX))
            else:
                counts[i] = (len(rows), 0)
            if rows:
                packed = b"".join([pack(row) for row in rows])
                stores.append((offset, packed))
                if rec is L.SCALARS:
                    scalars = packed
        self._prepare_series(sample, stores, counts, short)
        # The ring slot of this sample: the only writer knows the seq it will end with.
        seq_after = (self._q[self._seq_index] | 1) + 1
        slot, filled = self._history_slot(seq_after)
        stores.append((slot, _HISTORY_STAMP.pack(seq_after, wall_time) + scalars))
        counts[_HISTORY_INDEX] = (filled, 0)
        return stores, counts

    def _history_slot(self, seq_after: int) -> tuple[int, int]:
        """The offset of the history ring's slot for the sample whose seq ends at ``seq_after``, and how
        many slots are filled then."""
        capacity = self.layout.capacities[_HISTORY_INDEX]
        return (self.layout.offsets[_HISTORY_INDEX] + ((seq_after // 2 - 1) % capacity) * L.HISTORY.size,
                min(seq_after // 2, capacity))

    def _prepare_series(self, sample: Sample, stores: list[tuple[int, bytes]], counts: list[tuple[int, int]],
                        short: dict[str, int] | None = None) -> None:
        """The family series and their label blob (sections series and labels), within capacity."""
        layout = self.layout
        s, lb = _SERIES_INDEX, _LABELS_INDEX
        rows, blob, kept, dropped = self._series.encode(sample.series, layout.capacities[s],
                                                        layout.capacities[lb] * L.LABELS.size, sample.replayed,
                                                        sample.fixed, sample.fixed_at)
        self._series_written = (rows, blob)
        if dropped and short is not None:
            short["series"] = dropped  # more rows, more label bytes or new families: _grow finds out which
        elif dropped and "series" not in self._overflow_logged:
            self._overflow_logged.add("series")
            log.warning("%d family series beyond the segment's capacity left out (counted in the header)", dropped)
        if rows:
            stores.append((layout.offsets[s], rows))
        if blob:
            stores.append((layout.offsets[lb], blob))
        counts[s] = (kept, min(dropped, _U32_MAX))
        counts[lb] = (len(blob) // L.LABELS.size, 0)

    def publish(self, sample: Sample, wall_time: float, monotonic: float, duration: float,
                overruns: int) -> OwnedSegment:
        """Write one sample under the seqlock.  Returns the segment now under the name: this one, or the
        larger generation that replaced it because the sample did not fit (publish there from now on)."""
        short: dict[str, int] | None = {} if self._may_grow() else None
        stores, counts = self._prepare(sample, wall_time, short)
        if short:
            successor = self._grow(sample, short)
            if successor is not None and self._hand_over(successor, sample, wall_time, monotonic, duration,
                                                         overruns):
                return successor
            stores, counts = self._prepare(sample, wall_time)  # as it is, what does not fit counted
        self._write(stores, counts, wall_time, monotonic, duration, overruns,
                    wall_time if sample.full_time is None else sample.full_time)
        return self

    # --- compiled grid samples (publisher/compiled.py)
    def shape(self) -> tuple:
        """What a compiled sample's places rest on, as the latest sample of the Python path wrote it: the series
        rows but for their values, the label blob, the directory's counts but the history ring's.  Asked for
        only while grid samples are compiled, not on every publish."""
        rows, blob = self._series_written
        counts = self._written_counts or []
        words = memoryview(rows).cast("Q")
        return (counts[:_HISTORY_INDEX], counts[_HISTORY_INDEX + 1:], words[0::3].tobytes(), words[1::3].tobytes(),
                blob)

    def locate(self, places: Sequence[tuple[int, tuple]]) -> array | None:
        """The sinks of a compiled grid sample: (register, kind, offset) for ``_scan.store`` per place, a
        place being ("scalar", field), ("row", section, index, field) or ("series", family, labels) of the
        latest sample written.  None when a place is not there (a row beyond what was written, a series
        left out or written twice): that program is not used."""
        layout, counts = self.layout, self._written_counts or []
        rows, blob = self._series_written
        words = memoryview(rows).cast("I")
        found: dict[tuple[int, bytes], int | None] = {}
        for row, (metric, start, length) in enumerate(zip(words[0::6], words[1::6], words[2::6])):
            key = (metric, blob[start:start + length])
            found[key] = None if key in found else row
        series_at = layout.offsets[_SERIES_INDEX] + L.SERIES.offsets["value"]
        index = self._series.index
        sinks = array("q")
        for register, place in places:
            if place[0] == "series":
                metric = index.get(place[1])
                row = None if metric is None else found.get((metric, F.label_bytes(place[2])))
                if row is None:
                    return None
                sinks.extend((register, 0, series_at + row * L.SERIES.size))
                continue
            section, row_index, name = ("scalars", 0, place[1]) if place[0] == "scalar" else place[1:]
            i = L.SECTION_INDEX.get(section)
            field = None if i is None else L.SECTIONS[i].by_name.get(name)
            if field is None or field.is_string or row_index >= (counts[i][0] if i < len(counts) else 0):
                return None
            kind = {"f64": 0, "u64": 1, "u32": 2}.get(field.ctype)
            if kind is None:
                return None
            sinks.extend((register, kind, layout.offset_of(section, name, row_index)))
        start, end = self._history_bounds()
        if any(offset + 8 > layout.total_size or start - 8 < offset < end for offset in sinks[2::3]):
            return None
        return sinks

    def sample_image(self) -> bytearray:
        """A copy of the bytes a grid sample decides, for checking a compiled program against the Python path:
        the segment but for its header and directory (zeros there) and its history ring (left out: at 100 Hz
        it is most of the segment).  ``image_sinks`` places sinks in it."""
        start, end = self._history_bounds()
        image = bytearray(self._bytes[:start])
        image[:self.layout.header_size] = bytes(self.layout.header_size)
        image += self._bytes[end:]
        return image

    def image_sinks(self, sinks: array) -> array:
        """``sinks`` (of ``locate``) with their offsets in ``sample_image``'s bytes."""
        start, end = self._history_bounds()
        moved = array("q", sinks)
        for k in range(2, len(moved), 3):
            if moved[k] >= end:
                moved[k] -= end - start
        return moved

    def _history_bounds(self) -> tuple[int, int]:
        start = self.layout.offsets[_HISTORY_INDEX]
        return start, start + self.layout.capacities[_HISTORY_INDEX] * L.HISTORY.size

    def publish_registers(self, registers: array, sinks: array, wall_time: float, monotonic: float,
                          duration: float, overruns: int, full_time: float) -> None:
        """A compiled grid sample under the seqlock: its registers into their places, the scalars into the
        history ring, the header; every other byte stays as the latest sample left it."""
        from shm_metrics.publisher import _scan  # only a publisher with the extension compiles

        plan = self._publish_plan
        if plan is None:
            plan = self._publish_plan = self._compiled_plan()
        if not self._acquire():
            return
        try:  # checks everything before its first write: it raises, if ever, with seq untouched
            # The readers' futex is woken in C, right after the write (see wake_readers).
            _scan.publish(registers, sinks, self._bytes, plan, wall_time, monotonic, duration,
                          min(overruns, _U64_MAX), full_time, L.FUTEX_WORD_OFFSET if self._futex_address else -1)
        finally:
            self.sem.release()

    def _compiled_plan(self) -> array:
        """Where _scan.publish writes, as _write and _prepare do: the layout's offsets it needs."""
        layout, h = self.layout, _HISTORY_INDEX
        header = [L.HEADER.offsets[n] for n in ("sample_time", "sample_monotonic", "sample_duration_seconds",
                                                "overruns_total", "full_sample_time")]
        return array("q", [L.HEADER_SEQ_OFFSET, layout.offsets[L.SECTION_INDEX["scalars"]], L.SCALARS.size,
                           layout.offsets[h], layout.capacities[h], L.HISTORY.size, _HISTORY_STAMP.size,
                           self._counts_index[h] * 4, *header])

    def _write(self, stores: list[tuple[int, bytes]], counts: list[tuple[int, int]], wall_time: float,
               monotonic: float, duration: float, overruns: int, full_time: float) -> None:
        counts_index = self._counts_index
        t_wall, t_mono, t_duration, t_overruns, t_full = self._header_indexes
        d, q, i, raw = self._d, self._q, self._i, self._bytes
        if not self._acquire():
            return
        try:
            seq = q[self._seq_index]
            q[self._seq_index] = seq + 1 if seq % 2 == 0 else seq  # odd: write in progress
            L.memory_fence()
            for offset, data in stores:
                raw[offset:offset + len(data)] = data
            if counts != self._written_counts:  # a grid sample after another: the same rows, nothing to write
                for idx, (count, overflow) in zip(counts_index, counts):
                    i[idx] = count
                    i[idx + 1] = overflow
                self._written_counts = counts
            d[t_wall] = wall_time
            d[t_mono] = monotonic
            d[t_duration] = duration
            q[t_overruns] = min(overruns, _U64_MAX)
            d[t_full] = full_time
            L.memory_fence()
            q[self._seq_index] = (seq | 1) + 1  # even: done
        finally:
            self.sem.release()
        self.wake_readers()

    # --- generations (docs/LAYOUT.md, "Generations")
    def _may_grow(self) -> bool:
        return self.max_bytes is not None and time.monotonic() >= self._grow_after

    def _grow(self, sample: Sample, short: dict[str, int]) -> OwnedSegment | None:
        """The next generation, sized for ``sample`` with room to spare, not yet under the name; None
        when it would not be larger (nothing to gain), would exceed ``max_bytes`` or cannot be created:
        then what does not fit is left out and counted, and growth is not tried again for a while."""
        catalog = self._grown_catalog(sample)
        layout = self._grown_layout(sample, short, catalog)
        if layout is None or (layout == self.layout and catalog == self.catalog):
            self._hold_growth("the sample does not fit and the segment cannot grow "
                              f"past --max-segment-mib ({self.max_bytes / 2**20:g} MiB)")
            return None
        try:
            return OwnedSegment(self.name, layout, self._mode, self._interval, catalog,
                                max_bytes=self.max_bytes, predecessor=self, on_demand=self._on_demand)
        except (OSError, NameInUse, ValueError) as exc:
            self._hold_growth(f"cannot create a larger segment: {exc}")
            return None

    def _hold_growth(self, why: str) -> None:
        """No growth for a minute; what does not fit is left out and counted meanwhile."""
        self._grow_after = time.monotonic() + _GROWTH_RETRY_SECONDS
        if "growth" not in self._overflow_logged:
            self._overflow_logged.add("growth")
            log.warning("%s: what does not fit is left out (counted in the header)", why)

    def _grown_catalog(self, sample: Sample) -> tuple[F.FamilyInfo, ...]:
        """This catalog plus the families the sample brought under a new name, in the sample's order.
        A family under a name already declared (a collector that changed its mind) is not added: its
        series stay counted as left out, so two declarations cannot make the segment grow forever."""
        names = {fam.name for fam in self.catalog}
        added: dict[str, F.FamilyInfo] = {}
        known = self._series.index
        for fam, _, _ in sample.all_series():
            if fam not in known and fam.name not in names and fam.name not in added:
                added[fam.name] = fam
        return (*self.catalog, *added.values())

    def _grown_layout(self, sample: Sample, short: dict[str, int],
                      catalog: tuple[F.FamilyInfo, ...]) -> L.Layout | None:
        """Capacities for ``sample`` and ``catalog``: max(2 x capacity, need x 1.5) for each section
        that fell short; the needs exactly when that would exceed ``max_bytes``; None if even that does."""
        caps = dict(zip((r.name for r in L.SECTIONS), self.layout.capacities))
        rows, strings = F.encode_catalog(catalog, self._on_demand)
        index = {fam: i for i, fam in enumerate(catalog)}
        _, blob, n, _ = F.SeriesEncoder(index).encode(sample.all_series())
        needs = {name: found for name, found in short.items() if name != "series"}
        needs.update(series=n, labels=F.chunks(len(blob)))
        needs = {name: min(need, L.MAX_CAPACITY) for name, need in needs.items() if need > caps[name]}
        exact = {**caps, **needs, "metrics": len(rows) // L.METRICS.size, "strings": len(strings) // L.STRINGS.size}
        roomy = {**exact, **{name: min(L.MAX_CAPACITY, max(2 * caps[name], need + need // 2))
                             for name, need in needs.items()}}
        for top in ("top_cpu", "top_rss"):  # the two --top tables share one capacity
            exact[top] = roomy[top] = max(exact["top_cpu"], exact["top_rss"])
        for caps_try in (roomy, exact):
            layout = L.Layout.for_capacities(
                caps_try["cpus"], caps_try["net"], caps_try["disks"], caps_try["filesystems"],
                history=caps_try["history"], top=caps_try["top_cpu"], states=caps_try["process_states"],
                metrics=caps_try["metrics"], strings=caps_try["strings"], series=caps_try["series"],
                labels=caps_try["labels"])
            if layout.total_size <= self.max_bytes:
                return layout
        return None

    def _hand_over(self, successor: OwnedSegment, sample: Sample, wall_time: float, monotonic: float,
                   duration: float, overruns: int) -> bool:
        """Publish ``sample`` in ``successor`` and put it under the name; False (successor removed,
        this generation still in charge) if that fails."""
        successor.sem, successor._sem_identity = self.sem, self._sem_identity  # one semaphore for all
        try:
            successor.publish(sample, wall_time, monotonic, duration, overruns)
            successor._replace(self)
            return True
        except (OSError, NameInUse) as exc:
            successor.sem = None
            successor.close(unlink=False)  # never renamed: its temporary file goes
            self._hold_growth(f"cannot switch to a larger segment: {exc}")
            return False

    def _replace(self, predecessor: OwnedSegment) -> None:
        """Put this (new, already published) generation under the name and retire ``predecessor``:
        the rename is atomic, then the old file says "replaced" and wakes its readers."""
        predecessor_identity = predecessor._identity
        if _inode(self.path) != predecessor_identity:
            raise NameInUse(f"{self.path} no longer refers to this publisher's segment")
        os.rename(self._file_path, self.path)
        self._file_path = self.path
        predecessor._replaced = True
        predecessor.set_state(L.STATE_REPLACED)
        predecessor.wake_readers()
        log.info("segment %s grew to generation %d (%d bytes): %s", self.name, self.generation,
                 self.layout.total_size, _growth_summary(predecessor.layout, self.layout,
                                                         len(self.catalog) - len(predecessor.catalog)))
        predecessor.sem = None  # ours now
        predecessor.close(unlink=False)

    def wake_readers(self) -> None:
        """FUTEX_WAKE everyone sleeping on seq (readers waiting for the next sample)."""
        if self._futex_address:
            shm_wake.wake_all(self._futex_address)

    def set_state(self, state: int) -> None:
        self._i[L.HEADER_STATE_OFFSET // 4] = state
        if state == L.STATE_STOPPED:
            self.wake_readers()  # followers learn at once, not at their next timeout

    # --- teardown
    def close(self, unlink: bool) -> None:
        """Mark stopped and release; unlink only names that are still ours."""
        if self._mm is not None and self._bytes[0:8] == L.MAGIC and not self._replaced:
            self.set_state(L.STATE_STOPPED)
        path = getattr(self, "_file_path", self.path)
        if unlink or path != self.path:  # a next generation that never got the name: always removed
            if self._fd is not None and _inode(path) == getattr(self, "_identity", None):
                os.unlink(path)
            if self.sem is not None and _inode(self.sem_path) == getattr(self, "_sem_identity", None):
                self.sem.unlink()
        if self.sem is not None:
            self.sem.close()
            self.sem = None
        if self._mm is not None:
            self._q = self._i = self._d = self._bytes = None
            self._futex_address = 0
            try:
                self._mm.close()
            except BufferError:
                pass  # a view is still alive somewhere; the fd close below still drops the lock
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


# After a failed or refused growth (bound reached, /dev/shm full), samples are published as they fit
# (the rest counted) for this long before growing is tried again.
_GROWTH_RETRY_SECONDS = 60.0


def _growth_summary(old: L.Layout, new: L.Layout, families_added: int) -> str:
    grown = [f"{rec.name} {a}->{b}" for rec, a, b in zip(L.SECTIONS, old.capacities, new.capacities)
             if a != b and rec not in L.STATIC_SECTIONS]
    if families_added:
        grown.append(f"{families_added} new families")
    return ", ".join(grown) or "catalog rewritten"


# How long a sample waits for the semaphore before replacing it: the legitimate
# holder (this process) keeps it for a few memcpys, so this only ever expires on
# a dead or rogue holder.
_SEM_TIMEOUT = 1.0


_HISTORY_STAMP = L.Record("stamp", L.HISTORY.fields[:2]).struct
assert _HISTORY_STAMP.size == L.HISTORY_SCALARS_OFFSET and L.HISTORY.size == _HISTORY_STAMP.size + L.SCALARS.size


def _row_packer(rec: L.Record):
    """A function packing one row (a dict, missing keys 0) into the record's bytes.

    Integers are clamped into their type's range and strings encoded and cut
    here, so a hostile or odd value never raises inside the write window.
    Rows often repeat from one sample to the next (idle processes, filesystem
    sizes, state counts): their bytes are remembered, keyed by their values.
    A row whose numbers are already in range (the usual case) is packed as it
    is, with its strings encoded: the per-field conversion is the fallback,
    since at 1 Hz every bytecode per field runs with cold caches (issue 16).
    """
    keys = rec.names
    converters = [_converter(f) for f in rec.fields]
    strings = [(i, converters[i]) for i, f in enumerate(rec.fields) if f.is_string]
    pick = itemgetter(*keys) if len(keys) > 1 else (lambda row, key=keys[0]: (row[key],))
    pack = rec.struct.pack
    remembered: dict[tuple, bytes] = {}

    def converted(values: tuple) -> bytes:
        return pack(*[convert(v) for convert, v in zip(converters, values)])

    def packer(row: dict) -> bytes:
        try:
            values = pick(row)
        except KeyError:
            values = tuple([row.get(key, 0) for key in keys])
        try:
            return remembered[values]
        except KeyError:
            pass
        except TypeError:  # an unhashable value: convert it, do not remember
            return converted(values)
        fields = values
        if strings:
            fields = list(values)
            for i, convert in strings:
                fields[i] = convert(fields[i])
        try:
            packed = pack(*fields)  # struct refuses a float, a negative or a too large number for an integer
        except (struct.error, TypeError, ValueError, OverflowError):
            packed = converted(values)
        if len(remembered) >= _REMEMBERED_ROWS:
            remembered.clear()
        remembered[values] = packed
        return packed

    return packer


_REMEMBERED_ROWS = 1024  # per record: a few samples' worth of rows


def _converter(f: L.Field):
    if f.is_string:
        encoded: dict[str, bytes] = {}  # device names, mount points, users repeat

        def encode(value, size=f.size) -> bytes:
            text = str(value)
            raw = encoded.get(text)
            if raw is None:
                if len(encoded) >= _REMEMBERED_ROWS:
                    encoded.clear()
                raw = encoded[text] = L.encode_string(text, size)
            return raw

        return encode
    if f.ctype == "f64":
        return float
    top = _U32_MAX if f.ctype == "u32" else _U64_MAX
    return lambda value: min(max(int(value), 0), top)

"""Owning a segment name: claiming it safely, writing samples, letting it go.

Liveness is an exclusive ``flock`` held on the segment for the publisher's
whole life (the JVM's hsperfdata answer to pid reuse): a second publisher that
cannot take the lock knows the first is alive, even if it is stopped with
SIGSTOP; one that can take it knows the owner is gone, whatever its pid is now.

Takeover never rewrites an old object in place: the stale name is unlinked and
a new object created, so readers still mapping the old one keep valid memory
(no shrinking under them, no SIGBUS) and notice the new ``instance_id`` / inode.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import secrets
import time

import posix_ipc

import shm_layout as L
from publisher.sampler import Sample

log = logging.getLogger(__name__)

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


class NameInUse(Exception):
    """The name is held by a live publisher or by something that is not ours."""


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _check_semaphore_not_foreign(path: str) -> None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not os.path.isfile(path) or os.path.islink(path) or st.st_nlink != 1:
        raise NameInUse(f"{path} exists and is not a semaphore file; left untouched")
    if st.st_uid != os.geteuid():
        raise NameInUse(f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}); left untouched")


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
            if len(head) < L.MIN_HEADER_BYTES or head[:8] != L.MAGIC:
                raise NameInUse(f"{path} holds data that is not a shm-metrics segment; left untouched")
            pid = int.from_bytes(head[L.HEADER.offsets["publisher_pid"]:][:4], "little")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = f"pid {pid}" if pid else "a publisher that is starting"
            raise NameInUse(f"another shm-publisher ({who}) is running on {path}") from None
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
            st = os.fstat(fd)
        except BlockingIOError:
            os.close(fd)
            raise NameInUse(f"another shm-publisher took {path} while this one was creating it") from None
        # Someone may have judged our empty file stale and replaced it before we locked it.
        if _inode(path) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise NameInUse(f"another shm-publisher took {path} while this one was creating it")
        return fd
    raise NameInUse(f"could not create {path}: it keeps reappearing")


class OwnedSegment:
    """The publisher's side of a segment: exclusive, writable, locked."""

    def __init__(self, name: str, layout: L.Layout, mode: int, interval: float):
        self.name = L.validate_name(name)
        self.path = L.segment_path(name)
        self.layout = layout
        self.sem_name = L.semaphore_name(name)
        self.sem_path = L.semaphore_path(name)
        self._fd: int | None = None
        self._mm: mmap.mmap | None = None
        self.sem: posix_ipc.Semaphore | None = None
        self._overflow_logged: set[str] = set()
        _check_semaphore_not_foreign(self.sem_path)
        self._fd = _create_locked(self.path)
        try:
            st = os.fstat(self._fd)
            self._identity = (st.st_dev, st.st_ino)
            os.fchmod(self._fd, mode)  # exactly, whatever the umask
            try:
                os.posix_fallocate(self._fd, 0, layout.total_size)  # ENOSPC now, not SIGBUS later
            except OSError as exc:
                raise NameInUse(f"cannot size {self.path}: {exc.strerror}") from None
            self._mm = mmap.mmap(self._fd, layout.total_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._open_semaphore(mode)
            self._init_views()
            self._write_header(interval)
        except BaseException:
            self.close(unlink=True)
            raise

    # --- setup
    def _open_semaphore(self, mode: int) -> None:
        # We hold the segment lock, so no live publisher uses this semaphore: a
        # leftover one (maybe wedged at 0 by a publisher killed mid-write) is reset.
        _check_semaphore_not_foreign(self.sem_path)
        if _inode(self.sem_path) is not None:
            posix_ipc.unlink_semaphore(self.sem_name)
        try:
            self.sem = posix_ipc.Semaphore(self.sem_name, posix_ipc.O_CREX, mode=mode, initial_value=1)
        except posix_ipc.ExistentialError:
            raise NameInUse(f"{self.sem_path} appeared while starting; left untouched") from None
        sem_fd = os.open(self.sem_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(sem_fd, mode)
            st = os.fstat(sem_fd)
            self._sem_identity = (st.st_dev, st.st_ino)
        finally:
            os.close(sem_fd)

    def _init_views(self) -> None:
        mv = memoryview(self._mm)
        self._bytes = mv
        self._views = {code: mv.cast(code) for code in ("I", "Q", "q", "d")}
        self._q = self._views["Q"]
        self._i = self._views["I"]
        self._seq_index = L.HEADER_SEQ_OFFSET // 8
        self._plans = {rec.name: self._store_plan(rec) for rec in L.SECTIONS}
        self._counts_index = [(self.layout.section_entry_offset(i) + L.SECTION.offsets["count"]) // 4
                              for i in range(len(L.SECTIONS))]

    def _store_plan(self, rec: L.Record) -> list[tuple]:
        """For each field: (key, view, first index, stride, converter)."""
        base = self.layout.offsets[L.SECTION_INDEX[rec.name]]
        plan = []
        for f in rec.fields:
            off = base + rec.offsets[f.name]
            if f.is_string:
                plan.append((f.name, None, off, rec.size, f.size))
            else:
                plan.append((f.name, self._views[f.code], off // f.size, rec.size // f.size, f.ctype))
        return plan

    def _write_header(self, interval: float) -> None:
        layout = self.layout
        values = {
            "magic": bytes(8), "layout_version": L.LAYOUT_VERSION, "header_size": layout.header_size,
            "total_size": layout.total_size, "table_hash": L.TABLE_HASH,
            "instance_id": secrets.randbits(64), "publisher_pid": os.getpid(), "state": L.STATE_STARTING,
            "publisher_start_time": time.time(), "interval_seconds": interval,
            "section_count": len(L.SECTIONS), "section_size": L.SECTION.size,
            "sections_offset": layout.sections_offset,
            "hostname": L.encode_string(os.uname().nodename, L.HEADER.by_name["hostname"].size),
            "seq": 0, "sample_time": 0.0, "sample_monotonic": 0.0, "sample_duration_seconds": 0.0,
            "overruns_total": 0,
        }
        self.instance_id = values["instance_id"]
        self._bytes[:L.HEADER.size] = L.HEADER.struct.pack(*(values[n] for n in L.HEADER.names))
        for i, rec in enumerate(L.SECTIONS):
            entry = L.SECTION.struct.pack(layout.offsets[i], rec.size, layout.capacities[i], 0, 0)
            off = layout.section_entry_offset(i)
            self._bytes[off:off + L.SECTION.size] = entry
        L.memory_fence()
        self._bytes[0:8] = L.MAGIC  # publish-last: readers trust nothing before this

    # --- sampling
    def _prepare(self, sample: Sample) -> tuple[list[tuple], list[tuple[int, int]]]:
        """Turn a Sample into ready stores, outside the write window.

        Conversion and clamping happen here so that nothing can raise while
        seq is odd (an exception there would leave readers 'busy' forever).
        """
        stores: list[tuple] = []
        counts: list[tuple[int, int]] = []
        for i, rec in enumerate(L.SECTIONS):
            rows = [sample.scalars] if rec is L.SCALARS else getattr(sample, rec.name)
            cap = self.layout.capacities[i]
            kept, overflow = rows[:cap], max(0, len(rows) - cap)
            if overflow and rec.name not in self._overflow_logged:
                self._overflow_logged.add(rec.name)
                log.warning("%d %s entries beyond capacity %d left out (counted in the header; "
                            "raise the capacity option to keep them)", overflow, rec.name, cap)
            for n, row in enumerate(kept):
                for key, view, first, stride, kind in self._plans[rec.name]:
                    value = row.get(key, 0)
                    if view is None:
                        start = first + n * stride
                        stores.append((self._bytes, slice(start, start + kind), L.encode_string(str(value), kind)))
                    else:
                        stores.append((view, first + n * stride, _convert(value, kind)))
            counts.append((len(kept), min(overflow, _U32_MAX)))
        return stores, counts

    def publish(self, sample: Sample, wall_time: float, monotonic: float, duration: float,
                overruns: int) -> None:
        stores, counts = self._prepare(sample)
        counts_index = self._counts_index
        hdr = L.HEADER.offsets
        d, q, i = self._views["d"], self._q, self._i
        if not _acquire(self.sem):
            log.error("semaphore %s stayed taken for 1 s; sample skipped", self.sem_name)
            return
        try:
            seq = q[self._seq_index]
            q[self._seq_index] = seq + 1 if seq % 2 == 0 else seq  # odd: write in progress
            L.memory_fence()
            for view, index, value in stores:
                view[index] = value
            for idx, (count, overflow) in zip(counts_index, counts):
                i[idx] = count
                i[idx + 1] = overflow
            d[hdr["sample_time"] // 8] = wall_time
            d[hdr["sample_monotonic"] // 8] = monotonic
            d[hdr["sample_duration_seconds"] // 8] = duration
            q[hdr["overruns_total"] // 8] = min(overruns, _U64_MAX)
            L.memory_fence()
            q[self._seq_index] = (seq | 1) + 1  # even: done
        finally:
            self.sem.release()

    def set_state(self, state: int) -> None:
        self._i[L.HEADER_STATE_OFFSET // 4] = state

    # --- teardown
    def close(self, unlink: bool) -> None:
        """Mark stopped and release; unlink only names that are still ours."""
        if self._mm is not None and self._bytes[0:8] == L.MAGIC:
            self.set_state(L.STATE_STOPPED)
        if unlink:
            if self._fd is not None and _inode(self.path) == getattr(self, "_identity", None):
                os.unlink(self.path)
            if self.sem is not None and _inode(self.sem_path) == getattr(self, "_sem_identity", None):
                self.sem.unlink()
        if self.sem is not None:
            self.sem.close()
            self.sem = None
        if self._mm is not None:
            self._views = {}
            self._q = self._i = self._bytes = None
            self._plans = {}
            try:
                self._mm.close()
            except BufferError:
                pass  # a view is still alive somewhere; the fd close below still drops the lock
            self._mm = None
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _acquire(sem: posix_ipc.Semaphore) -> bool:
    try:
        sem.acquire(1.0)
        return True
    except posix_ipc.BusyError:
        return False


def _convert(value, kind: str):
    if kind == "f64":
        return float(value)
    top = _U32_MAX if kind == "u32" else _U64_MAX
    return min(max(int(value), 0), top)

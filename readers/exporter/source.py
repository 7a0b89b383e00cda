"""Where a scrape's values come from: one consistent snapshot, read at scrape time.

The source owns one ``Reader`` and keeps it attached across scrapes.  Each
``read()`` first checks whether the name still refers to the object it reads (a
restarted publisher creates a new one), attaches when needed, and reads one
seqlock-consistent snapshot.  Whatever state the segment is in, ``read()``
returns a ``Reading``; it never raises for a missing, stopped, dead, stale,
busy, untrusted or corrupt segment.

The reader copies through ``pread`` instead of keeping a mapping: the exporter
must outlive any segment, and a mapped file that shrinks kills its reader with
SIGBUS, where ``pread`` gives a short read.  A copy of the sample part of the
segment per scrape is cheap next to rendering it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple

from shm_metrics.readers import IncompatibleSegment, NoSegment, Reader, SegmentBusy, Snapshot, UntrustedSegment
from shm_metrics.readers.reader import STATE_DEAD

# Values of Reading.state: the header's states a reader can see, plus two of ours.
ABSENT = "absent"  # nothing under the name
INCOMPATIBLE = "incompatible"  # something under the name we cannot trust (corrupt, foreign, other layout)
UNTRUSTED = "untrusted"  # a segment owned by a user that is not root, us or --publisher-user
STATES = (ABSENT, INCOMPATIBLE, UNTRUSTED, "starting", "running", "stopped", STATE_DEAD)

log = logging.getLogger("shm-exporter")


def _state(header_state: str) -> str:
    if header_state == "init":  # header not finished: the publisher is still creating the segment
        return "starting"
    return header_state if header_state in STATES else INCOMPATIBLE


class Reading(NamedTuple):
    """What one scrape found: the segment's state and, if readable, a snapshot."""

    state: str  # one of STATES
    snapshot: Snapshot | None  # None when absent, incompatible, or the publisher stopped mid-write
    fresh: bool  # the core staleness rule: running and age <= 2 x interval + 1 s
    error: str | None = None  # why there is no snapshot, for the log


class SegmentSource:
    """Reads the segment ``name`` for each scrape; safe to call from many threads."""

    def __init__(self, name: str | None = None, publisher_user: str | int | None = None):
        self._reader = Reader(name, attach=False, publisher_user=publisher_user, pread=True)
        self.name = self._reader.name
        self._lock = threading.Lock()  # a Reader is not thread-safe; reads take microseconds
        self._last: tuple | None = None

    def read(self) -> Reading:
        reading = self._read()
        situation = (reading.state, reading.fresh, reading.snapshot.publisher_pid if reading.snapshot else None)
        if situation != self._last:  # say it once per change, not once per scrape
            self._last = situation
            self._report(reading)
        return reading

    def _report(self, reading: Reading) -> None:
        snap = reading.snapshot
        if reading.fresh:
            log.info("segment %s: publisher pid %d running, samples fresh", self.name, snap.publisher_pid)
        elif snap is not None and reading.state == "running" and snap.seq:
            log.warning("segment %s: publisher pid %d is stale (last sample %.1f s ago, limit %.1f s): "
                        "shm_metrics_up 0", self.name, snap.publisher_pid, snap.age, snap.max_age())
        elif snap is not None and reading.state == STATE_DEAD:
            log.warning("segment %s: publisher pid %d is not running (died without stopping: no process holds "
                        "the segment's lock): shm_metrics_up 0", self.name, snap.publisher_pid)
        elif snap is not None and snap.from_future():
            log.warning("segment %s: the latest sample is stamped %.1f s in the future: not fresh, "
                        "shm_metrics_up 0", self.name, snap.sample_time - time.time())
        elif snap is not None:
            log.warning("segment %s: publisher pid %d is %s: shm_metrics_up 0", self.name, snap.publisher_pid,
                        reading.state)
        else:
            log.warning("%s: shm_metrics_up 0", reading.error)  # the reader's message names the segment

    def _read(self) -> Reading:
        with self._lock:
            reader = self._reader
            if reader.attached and reader.replaced():
                reader.close()  # publisher restarted (new object) or removed: look again
            if not reader.attached:
                try:
                    reader.attach()
                except NoSegment as exc:
                    return Reading(ABSENT, None, False, str(exc))
                except UntrustedSegment as exc:
                    return Reading(UNTRUSTED, None, False, str(exc))
                except IncompatibleSegment as exc:
                    return Reading(INCOMPATIBLE, None, False, str(exc))
                try:
                    reader.load_catalog()  # every scrape renders the families: a bad catalog is found here
                except IncompatibleSegment as exc:
                    reader.close()
                    return Reading(INCOMPATIBLE, None, False, str(exc))
            origin = reader.origin
            try:
                # node_exporter samples at scrape time; the families the publisher samples on demand are
                # at most max(interval, 1 s) old when served: asked for and waited for when older.
                snap = reader.read_fresh(max(reader.interval, 1.0), check_alive=True)
                if reader.origin is not origin:  # read() followed a new generation: check its catalog too
                    reader.load_catalog()
            except SegmentBusy as exc:
                state = _state(reader.state) if reader.publisher_alive() else STATE_DEAD
                return Reading(state, None, False, str(exc))
            except IncompatibleSegment as exc:
                reader.close()
                return Reading(INCOMPATIBLE, None, False, str(exc))
        return Reading(_state(snap.state), snap, snap.is_fresh(), None)

    def close(self) -> None:
        with self._lock:
            self._reader.close()

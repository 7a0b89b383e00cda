"""A publisher stand-in that writes invariant samples as fast as it is allowed to.

Every numeric field of sample k holds k (as int or float), every string holds
"k<k>", each array and each family holds 1 + k % 4 rows (a family's label
values are "k<k>" too), and the sample time is k (so each
history slot holds k everywhere but its seq).  A snapshot in which any value
differs from the others is torn.  Used by the consistency stress test and the
benchmark; runs the real write path (OwnedSegment.publish).

    python tests/invariant_writer.py NAME PAUSE_SECONDS
Stops on SIGTERM, removing its segment and semaphore.
"""

from __future__ import annotations

import signal
import sys
import time

from shm_metrics import families as F
from shm_metrics import shm_layout as L
from shm_metrics.publisher.sampler import Sample
from shm_metrics.publisher.segment import OwnedSegment

CATALOG = (F.FamilyInfo("test_invariant", F.GAUGE, "k everywhere", ("a",)),
           F.FamilyInfo("test_invariant_total", F.COUNTER, "k everywhere", ("a", "b")))


def invariant_sample(k: int) -> Sample:
    def row(rec: L.Record) -> dict:
        return {f.name: (f"k{k}" if f.is_string else float(k) if f.ctype == "f64" else k) for f in rec.fields}

    rows = 1 + k % 4
    series = [(fam, (f"k{k}",) * len(fam.labels), float(k)) for fam in CATALOG for _ in range(rows)]
    return Sample(scalars=row(L.SCALARS), series=series, **{rec.name: [row(rec)] * rows for rec in L.SAMPLE_ARRAYS})


def main() -> None:
    name, pause = sys.argv[1], float(sys.argv[2])
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rows, strings = F.encode_catalog(CATALOG)
    layout = L.Layout.for_capacities(4, 4, 4, 4, history=64, top=4, states=4, metrics=len(CATALOG),
                                     strings=F.chunks(len(strings)), series=16, labels=16)
    # Writes as fast as it can; the header states the smallest interval a reader accepts.
    segment = OwnedSegment(name, layout, 0o644, interval=L.MIN_INTERVAL, catalog=CATALOG)
    samples = [invariant_sample(k) for k in range(64)]  # precomputed: the loop only writes
    try:
        segment.set_state(L.STATE_RUNNING)
        k = 0
        while not stop:
            k += 1
            segment.publish(samples[k % 64], float(k), float(k), 0.0, 0)
            if pause:
                deadline = time.perf_counter() + pause
                while time.perf_counter() < deadline:
                    pass
    finally:
        segment.close(unlink=True)


if __name__ == "__main__":
    main()

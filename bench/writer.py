"""Q5's publisher: real samples through the real write path at a fixed rate, timing every publish.

    python -m bench.writer NAME INTERVAL OUTFILE

Takes a few real samples of this host once (so the writes have this host's
sizes: its CPUs, NICs, disks, filesystems) and publishes them in turn with
``OwnedSegment.publish`` on a drift-free grid of INTERVAL seconds, sleeping
in between (a busy-waiting writer would take a whole core of the two).  For
each publish it records when it started (CLOCK_MONOTONIC, ns, the clock every
process shares) and how long it took: preparing the stores, taking the
semaphore, the seqlock write window.  On SIGTERM it removes its segment and
writes both arrays to OUTFILE (int64 pairs: start, duration), so that the
benchmark can cut them into the windows in which 0, 4, 16 or 64 readers ran.
"""

from __future__ import annotations

import signal
import sys
import time
from array import array

from shm_metrics import shm_layout as L
from shm_metrics.publisher.cli import possible_cpus
from shm_metrics.publisher.sampler import Sampler
from shm_metrics.publisher.segment import OwnedSegment


def main() -> int:
    name, interval, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sampler = Sampler()
    samples = []
    for _ in range(4):
        samples.append(sampler.sample())
        time.sleep(0.02)
    capacities, catalog = sampler.family_capacities(samples[0]), sampler.catalog
    sampler.close()
    # The header states at least the smallest interval readers accept (the publisher's own range);
    # this writer may write faster, to load the readers.
    segment = OwnedSegment(name, L.Layout.for_capacities(possible_cpus(), 64, 64, 64, **capacities), 0o644,
                           max(interval, L.MIN_INTERVAL), catalog)
    starts, durations = array("q"), array("q")
    now_ns, period = time.monotonic_ns, int(interval * 1e9)
    try:
        k = overruns = 0
        grid = now_ns()
        while not stop:
            t0 = now_ns()
            segment.publish(samples[k % len(samples)], time.time(), t0 / 1e9, 0.0, overruns)
            t1 = now_ns()
            starts.append(t0)
            durations.append(t1 - t0)
            if k == 0:
                segment.set_state(L.STATE_RUNNING)
            k += 1
            behind = (t1 - grid) // period - k
            if behind > 0:  # missed slots are skipped, never bunched (as shm-publisher does)
                overruns += behind
                k += behind
            delay = grid + k * period - now_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
    finally:
        segment.close(unlink=True)
        with open(out, "wb") as f:
            starts.tofile(f)
            durations.tofile(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the long-running processes (shm-publisher, shm-exporter) set up for themselves."""

from __future__ import annotations

import gc

# Python's cyclic collector runs after every 700 net allocations of container objects.  A full sample or a
# scrape allocates thousands (a tuple per series, then their encoding or text), so it ran several times per
# sample, each time walking the young objects with cold caches: ~90 us a collection at 10 Hz on node_exporter's
# fixture tree (Q9), 6 % of the publisher's CPU.  Almost all of that garbage is freed by reference counting
# anyway; collecting every 10,000 allocations keeps what cycles leave bounded (~1 MiB) at a fraction of the cost.
GC_THRESHOLD = (10_000, 10, 10)


def tune_gc() -> None:
    """The cyclic collector's thresholds for a service that allocates in bursts (see GC_THRESHOLD)."""
    gc.set_threshold(*GC_THRESHOLD)

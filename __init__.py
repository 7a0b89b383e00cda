"""shm-metrics: a Linux host's metrics in POSIX shared memory, for any number of local readers.

The import package of the distribution.  Its modules:

- ``shm_metrics.shm_layout``: the binary layout (the single source of truth for every byte);
- ``shm_metrics.readers``: the Python reader API (``Reader``, ``Snapshot``), ``shm-read`` and ``shm-exporter``;
- ``shm_metrics.publisher``: ``shm-publisher``, which samples the host into the segment;
- ``shm_metrics.shm_wake``: the futex that wakes readers on publish.

``from shm_metrics import Reader`` is the short form of ``from shm_metrics.readers import Reader``.
Nothing is imported eagerly here: the one-shot ``shm-read`` pays only for what it uses.
"""

from __future__ import annotations

_READER_API = ("Reader", "Snapshot", "ReaderError", "NoSegment", "IncompatibleSegment", "SegmentStarting",
               "SegmentBusy", "UntrustedSegment")

__all__ = list(_READER_API)


def __getattr__(name: str):
    if name in _READER_API:
        from shm_metrics import readers

        return getattr(readers, name)
    raise AttributeError(f"module 'shm_metrics' has no attribute {name!r}")

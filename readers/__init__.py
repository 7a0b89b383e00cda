"""Reading shm-metrics segments: the Python reader API.

    from shm_metrics.readers import Reader
    with Reader("/sysmetrics") as reader:
        snap = reader.read()              # one consistent snapshot, read in place
        print(snap.procs_total, snap.load1, snap.mem_available_bytes)
        for nic in snap.net:              # arrays are lists of dicts
            print(nic["device"], nic["rx_bytes"])
        for s in snap.select('node_cpu_seconds_total{mode="idle"}'):   # node_exporter's families, by
            print(s.labels, s.value)      # PromQL selector (readers.selector); only that family is decoded
        for entry in reader.history(since=60):   # the segment's ring: the last samples' scalars
            print(entry["sample_time"], entry["load1"])
        for snap in reader.follow():      # each new sample (sleeping until the publisher wakes
            ...                           # it), across publisher restarts

``shm_metrics.readers.rates`` turns history entries into per-second rates; ``shm_wake``
is the futex underneath ``Reader.wait_for_sample``.

Errors: NoSegment (nothing under the name), IncompatibleSegment (corrupt,
foreign or another layout version; SegmentStarting, a subclass, while a
publisher is still creating it; UntrustedSegment, a subclass, when its owner
is not root, you or the publisher user), SegmentBusy (the publisher stopped in the
middle of a write); all derive from ReaderError.
"""

from shm_metrics.readers.reader import (
    IncompatibleSegment,
    NoSegment,
    Reader,
    ReaderError,
    SegmentBusy,
    SegmentStarting,
    Snapshot,
    UntrustedSegment,
)

__all__ = ["Reader", "Snapshot", "ReaderError", "NoSegment", "IncompatibleSegment", "SegmentStarting", "SegmentBusy",
           "UntrustedSegment"]

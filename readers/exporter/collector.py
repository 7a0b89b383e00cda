"""The Prometheus Collector: node_exporter's families, rendered generically from the segment.

The segment describes its families itself (``docs/LAYOUT.md``, "Metric
families"): name, type, HELP and label names are in its catalog, declared by
the publisher's collectors (``publisher/collectors/``) with node_exporter
1.5.0's exact names, so dashboards and alert rules written for node_exporter
work unchanged; ``tests/test_exporter_compare.py`` checks them against a real
node_exporter.  Nothing here knows a family: a new one in the publisher shows
up here without a change.  The ``shm_metrics_*`` families describe the
segment itself.

Everything a scrape shows comes from one ``Reading`` (one seqlock-consistent
snapshot taken at scrape time): nothing is copied in the background and no
gauge mirrors a value between scrapes.  ``node_*`` families appear only when
the sample is fresh (running publisher, age <= 2 x interval + 1 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from operator import attrgetter

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shm_metrics.families import ABSENT_LABEL, COUNTER, GAUGE, UNTYPED, Family
from shm_metrics.readers import Snapshot
from shm_metrics.readers.exporter.render import sorted_series
from shm_metrics.readers.exporter.source import STATES, Reading, SegmentSource


def node_families(snap: Snapshot) -> Iterator[Metric]:
    """The node_* families of one snapshot as prometheus_client Metrics (the caller has checked it is fresh),
    in node_exporter's order (``render.render_families``).

    prometheus_client names a counter family without its ``_total`` (and adds it
    back when rendering); every node_exporter counter ends in ``_total``.
    """
    for fam in sorted(snap.families, key=lambda fam: fam.name):
        if fam.type == COUNTER and fam.name.endswith("_total"):
            metric = Metric(fam.name[:-6], fam.help, "counter")
        else:
            metric = Metric(fam.name, fam.help, "unknown" if fam.type == UNTYPED else fam.type)
        labels = fam.labels
        for values, value in sorted_series(fam):
            metric.add_sample(fam.name, {n: v for n, v in zip(labels, values) if v != ABSENT_LABEL}, value)
        yield metric


_NAME = attrgetter("name")

# The exporter's own families (shown whatever the segment's state; some only once a sample exists).
OWN_NAMES = ("shm_metrics_up", "shm_metrics_segment_state", "shm_metrics_publisher_info",
             "shm_metrics_interval_seconds", "shm_metrics_seq", "shm_metrics_sample_timestamp_seconds",
             "shm_metrics_sample_age_seconds", "shm_metrics_overflow_entries", "shm_metrics_segment_generation",
             "shm_metrics_segment_size_bytes", "shm_metrics_full_sample_timestamp_seconds")


def own_families(reading: Reading, now: float | None = None) -> list[Family]:
    """The shm_metrics_* families: what the exporter found under the name, sorted by name (as the Go client
    sorts a registry's families).  Plain tuples: every scrape renders them (``Exposition``), and a
    prometheus_client Metric per family cost more than the rest of these lines."""
    families = [
        _gauge("shm_metrics_up", "1 when a running publisher's latest sample is fresh (not older than 2 x "
               "interval + 1 s), else 0: then no node_* series are exposed.", (), [((), 1 if reading.fresh else 0)]),
        _gauge("shm_metrics_segment_state", "State of the segment under the name, one series per state, 1 for the "
               "current one (absent: no segment; incompatible: corrupt or foreign; untrusted: owned by a user "
               "other than root, the exporter's or --publisher-user; dead: the publisher died without stopping).",
               ("state",), [((name,), 1 if name == reading.state else 0) for name in STATES]),
    ]
    snap = reading.snapshot
    if snap is not None:
        families += [
            _gauge("shm_metrics_publisher_info", "The publisher that created the segment; value 1.",
                   ("hostname", "layout_version", "publisher_pid"),
                   [((snap.hostname, str(snap.layout_version), str(snap.publisher_pid)), 1)]),
            _gauge("shm_metrics_interval_seconds", "The publisher's sampling interval.", (), [((), snap.interval)]),
            _gauge("shm_metrics_seq", "Seqlock counter of the segment: even when a sample is whole, +2 per "
                   "sample; restarts with the publisher.", (), [((), snap.seq)]),
            _gauge("shm_metrics_segment_generation", "How many times the publisher moved to a larger segment "
                   "because the host outgrew it (0: the first one).", (), [((), snap.generation)]),
            _gauge("shm_metrics_segment_size_bytes", "Size of the segment's current generation.", (),
                   [((), snap.size_bytes)]),
        ]
    if snap is not None and snap.seq:  # no sample yet: no time to show
        age = (time.time() if now is None else now) - snap.sample_time
        families += [
            _gauge("shm_metrics_sample_timestamp_seconds", "Unix time the latest sample was taken.", (),
                   [((), snap.sample_time)]),
            _gauge("shm_metrics_full_sample_timestamp_seconds", "Unix time of the latest sample that ran every "
                   "collector: the families sampled on demand date from it.", (), [((), snap.full_sample_time)]),
            _gauge("shm_metrics_sample_age_seconds", "Seconds since the latest sample was taken, at scrape time.",
                   (), [((), max(0.0, age))]),
            _gauge("shm_metrics_overflow_entries", "Entries the publisher found beyond an array's capacity and "
                   "left out of the latest sample.", ("array",),
                   [((array,), count) for array, count in snap.overflow().items()]),
        ]
    families.sort(key=_NAME)
    return families


def _gauge(name: str, help_: str, labels: tuple[str, ...], series: list[tuple[tuple[str, ...], float]]) -> Family:
    return Family(name, GAUGE, help_, labels, sorted(series))  # series by label values, as the Go client


def as_metric(fam: Family) -> Metric:
    """A Family as a prometheus_client Metric (a registry's collect() yields these)."""
    kind = fam.type
    metric = Metric(fam.name[:-6] if kind == COUNTER else fam.name, fam.help, kind)
    for values, value in fam.series:
        metric.add_sample(fam.name, dict(zip(fam.labels, values)), value)
    return metric


class ShmCollector(Collector):
    """A prometheus_client Collector over a SegmentSource: reads at scrape time.

    ``collect()`` reads one snapshot and yields the own families, then, when
    the sample is fresh, the node_* families.  The HTTP server renders the
    same families through ``readers.exporter.exposition`` (which caches the
    node_* text per published sample); plain ``generate_latest(registry)``
    gives the same output.
    """

    def __init__(self, source: SegmentSource):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        reading = self.source.read()
        yield from map(as_metric, own_families(reading))
        if reading.fresh:
            yield from node_families(reading.snapshot)

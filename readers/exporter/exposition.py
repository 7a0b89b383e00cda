"""The text exposition a scrape returns, with the node_* block cached per sample.

The node_* families change only when the publisher publishes a new sample,
so their rendered text is kept for the current ``(instance_id, seq)`` and
reused by every scrape of that sample.  Everything else is computed on every
scrape: the snapshot is read, the staleness rule applied (a cached block is
served only while its sample is fresh), and the own and process metrics
rendered.  The result equals ``generate_latest`` over the exporter's registry
but for the node_* values, written as node_exporter writes them (``3``, not
prometheus_client's ``3.0``; the tests check this).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from shm_metrics.readers.exporter.collector import ShmCollector, own_families, render_node_text

# The text format generate_latest writes, and what node_exporter 1.5.0 serves by default.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Families:
    """A one-off collector over ready families (generate_latest wants .collect())."""

    def __init__(self, families: Iterable[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class Exposition:
    """Renders the registry's text: own metrics, node_* (cached per sample), then the process metrics."""

    def __init__(self, shm: ShmCollector, extra: Collector | None = None):
        self.shm = shm
        self.extra = extra
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._node_text = b""
        self.renders = 0  # node_* blocks rendered (cache misses), for tests and curiosity

    def render(self) -> bytes:
        reading = self.shm.source.read()
        parts = [generate_latest(_Families(own_families(reading)))]
        if reading.fresh:
            snap = reading.snapshot
            key = (snap.instance_id, snap.seq)
            with self._lock:
                text = self._node_text if key == self._key else None
            if text is None:
                text = render_node_text(snap)
                with self._lock:
                    self._key, self._node_text = key, text
                    self.renders += 1
            parts.append(text)
        if self.extra is not None:
            parts.append(generate_latest(self.extra))
        return b"".join(parts)


def build(source, process_metrics: bool = True) -> tuple[CollectorRegistry, Exposition]:
    """The exporter's own registry (our collector, plus the process collector) and its renderer."""
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    shm = ShmCollector(source)
    registry.register(shm)
    process = ProcessCollector(registry=registry) if process_metrics else None
    return registry, Exposition(shm, process)

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

from shm_metrics.families import Family
from shm_metrics.readers.exporter.collector import FamilyRenderer, ShmCollector, own_families, render_node_text
from shm_metrics.readers.exporter.textfile import Textfile

# The families node_exporter reports each collector's scrape in: the textfile collector's row is added to
# them at scrape time, so with a textfile directory they are rendered per scrape, not cached per sample.
_SCRAPE_FAMILIES = ("node_scrape_collector_success", "node_scrape_collector_duration_seconds")

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

    def __init__(self, shm: ShmCollector, extra: Collector | None = None, textfile: Textfile | None = None):
        self.shm = shm
        self.extra = extra
        self.textfile = textfile
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._node_text = b""
        self._scrape: list[Family] = []  # with a textfile directory: the scrape families, completed per scrape
        self._names: frozenset[str] = frozenset()  # the segment's family names (a textfile cannot take them)
        self.renders = 0  # node_* blocks rendered (cache misses), for tests and curiosity
        # Each keeps the lines of its own stream of renders (the node block; the scrape families per scrape).
        self.node_renderer = FamilyRenderer()
        self._scrape_renderer = FamilyRenderer()

    def render(self) -> bytes:
        reading = self.shm.source.read()
        parts = [generate_latest(_Families(own_families(reading)))]
        scrape: list[Family] = []
        names: frozenset[str] = frozenset()
        if reading.fresh:
            snap = reading.snapshot
            key = (snap.instance_id, snap.seq)
            with self._lock:
                text = self._node_text if key == self._key else None
                scrape, names = self._scrape, self._names
            if text is None:
                if self.textfile is None:
                    text = render_node_text(snap, self.node_renderer)
                else:
                    families = list(snap.families)
                    scrape = [fam for fam in families if fam.name in _SCRAPE_FAMILIES]
                    text = self.node_renderer.render(fam for fam in families if fam.name not in _SCRAPE_FAMILIES)
                    names = frozenset(fam.name for fam in families)
                with self._lock:
                    self._key, self._node_text, self._scrape, self._names = key, text, scrape, names
                    self.renders += 1
            parts.append(text)
        if self.textfile is not None:
            # Read at scrape time, as node_exporter does; served even while the publisher is away (the files
            # are as fresh as they are), the textfile's scrape row only beside the segment's.
            textfile = self.textfile.read(names)
            parts.append(self._scrape_renderer.render(_with_textfile_row(fam, textfile.duration) for fam in scrape))
            parts.append(textfile.text)
        if self.extra is not None:
            parts.append(generate_latest(self.extra))
        return b"".join(parts)


def _with_textfile_row(fam: Family, duration: float) -> Family:
    """A scrape family with the textfile collector's row (success 1: node_exporter's textfile collector
    reports problems in node_textfile_scrape_error instead), series in the Go client's order."""
    value = 1.0 if fam.name == _SCRAPE_FAMILIES[0] else duration
    series = sorted([*(s for s in fam.series if s[0] != ("textfile",)), (("textfile",), value)])
    return fam._replace(series=series)


def build(source, process_metrics: bool = True, textfile: Textfile | None = None
          ) -> tuple[CollectorRegistry, Exposition]:
    """The exporter's own registry (our collector, plus the process collector) and its renderer; with
    ``textfile``, the renderer adds node_exporter's textfile collector (read per scrape; not in the
    registry, whose collect() stays the segment's view)."""
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    shm = ShmCollector(source)
    registry.register(shm)
    process = ProcessCollector(registry=registry) if process_metrics else None
    return registry, Exposition(shm, process, textfile)

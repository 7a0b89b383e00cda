"""The text exposition a scrape returns, with the node_* block cached per sample and per filter.

The node_* families change only when the publisher publishes a new sample,
so their rendered text is kept for the current ``(instance_id, seq)`` and
reused by every scrape of that sample; with node_exporter's ``collect[]``
filter, one text per filter (the last few filters used).  Everything else is
computed on every scrape: the snapshot is read, the staleness rule applied (a
cached block is served only while its sample is fresh), the textfile collector
read (as node_exporter reads it, at scrape time), and the own, process and
promhttp metrics rendered.  The result equals ``generate_latest`` over the
exporter's registry, for the families the registry has, but for the values,
written as node_exporter writes them (``3``, not prometheus_client's ``3.0``;
the tests check this).
"""

from __future__ import annotations

import collections
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from shm_metrics.families import Family
from shm_metrics.readers import Snapshot
from shm_metrics.readers.exporter.collector import ShmCollector, as_metric, node_families, own_families
from shm_metrics.readers.exporter.owners import SCRAPE_FAMILIES, TEXTFILE, check_filter, owner
from shm_metrics.readers.exporter.render import FamilyRenderer, go_float
from shm_metrics.readers.exporter.selfmetrics import HandlerMetrics, process_families
from shm_metrics.readers.exporter.textfile import Textfile

# The text format generate_latest writes, and what node_exporter 1.5.0 serves by default.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CACHED_FILTERS = 8  # node_* texts kept per sample: the unfiltered one and the last filters used


class _Block(NamedTuple):
    """The node_* text of one sample for one filter, and what the scrape-time parts need of it."""

    key: tuple[int, int]  # (instance_id, seq) of the sample
    head: bytes  # the node_* families named before the scrape ones (the text is in name order, as node_exporter's)
    tail: bytes  # and after them
    scrape: list[Family]  # node_scrape_collector_*: the textfile collector's row is added per scrape
    names: frozenset[str]  # every family name of the segment (a textfile cannot take them)
    # Unfiltered: the scrape families' texts cut where the textfile collector's line goes, (name, before, after)
    # (rendered with the rest of the view: no decoding or sorting per scrape); else None, and ``scrape`` is used.
    scrape_cut: tuple[tuple[str, str, str], ...] | None = None


def enabled_collectors(snap: Snapshot | None) -> frozenset[str] | None:
    """node_exporter's collectors that run: the publisher's (each has a node_scrape_collector_success series,
    as in node_exporter) and the exporter's textfile; None when no sample tells."""
    if snap is None or not snap.seq:
        return None
    fam = snap.families.get(SCRAPE_FAMILIES[0])
    return frozenset([TEXTFILE, *(values[0] for values, _ in fam.series)] if fam else [TEXTFILE])


class Exposition:
    """Renders a scrape: own metrics, node_* (cached per sample and filter), textfile, process and promhttp."""

    def __init__(self, shm: ShmCollector, process_metrics: bool = True, textfile: Textfile | None = None,
                 handler: HandlerMetrics | None = None):
        self.shm = shm
        self.process_metrics = process_metrics
        self.textfile = textfile if textfile is not None else Textfile("")  # on without a directory too
        self.handler = handler if handler is not None else HandlerMetrics()
        self._lock = threading.Lock()
        self._blocks: collections.OrderedDict[frozenset[str] | None, _Block] = collections.OrderedDict()
        self.renders = 0  # node_* blocks rendered (cache misses), for tests and curiosity
        # One renderer per filter (the unfiltered one under None), kept as long as its block: each keeps the
        # lines of its own stream of renders, bounded by the series it renders (issue 15).
        self._renderers: dict[frozenset[str] | None, FamilyRenderer] = {}
        self._scrape_renderer = FamilyRenderer()
        self._scrape_lock = threading.Lock()
        self._own_renderer = FamilyRenderer()  # shm_metrics_*: their lines change at every sample
        self._own_lock = threading.Lock()

    def render(self, collect: list[str] | None = None) -> bytes:
        """The exposition; with ``collect`` (node_exporter's ``collect[]`` values) only those collectors'
        families and scrape rows.  FilterError (node_exporter's 400) for a name it would refuse."""
        reading = self.shm.source.read()
        chosen = check_filter(collect, enabled_collectors(reading.snapshot)) if collect else None
        with self._own_lock:
            parts = [self._own_renderer.render(own_families(reading))]
        block = self._block(reading.snapshot, chosen) if reading.fresh else None
        if block is not None:
            parts.append(block.head)
        if chosen is None or TEXTFILE in chosen:
            # Read at scrape time, as node_exporter does; served even while the publisher is away (the files
            # are as fresh as they are), the textfile's scrape row only beside the segment's.
            textfile = self.textfile.read(block.names if block is not None else frozenset())
            if block is not None and block.scrape_cut is not None:
                parts.append(_with_textfile_line(block.scrape_cut, textfile.duration))
                parts.append(block.tail)
            elif block is not None:
                parts.append(self._render_each_scrape(_with_textfile_row(fam, textfile.duration)
                                                      for fam in block.scrape))
                parts.append(block.tail)
            parts.append(textfile.text)
        elif block is not None:
            parts.append(self._render_each_scrape(block.scrape))
            parts.append(block.tail)
        own = process_families() if self.process_metrics else []
        parts.append(self._render_each_scrape([*own, *self.handler.families(requests=self.process_metrics)]))
        return b"".join(parts)

    def _render_each_scrape(self, families: Iterable[Family]) -> bytes:
        """Families whose values change at every scrape (node_scrape_collector_*, process_*, promhttp_*),
        through one renderer that keeps their lines (each scrape formats only the values that changed)."""
        families = list(families)
        with self._scrape_lock:
            return self._scrape_renderer.render(families)

    def _block(self, snap: Snapshot, chosen: frozenset[str] | None) -> _Block:
        key = (snap.instance_id, snap.seq)
        with self._lock:
            block = self._blocks.get(chosen)
            if block is not None and block.key == key:
                self._blocks.move_to_end(chosen)
                return block
        view = snap.families
        if chosen is None:  # the scrape families rendered with the rest, their textfile line put in per scrape
            scrape = []
        else:  # their rows limited to the chosen collectors
            scrape = [fam._replace(series=[s for s in fam.series if s[0][0] in chosen])
                      for fam in map(view.get, SCRAPE_FAMILIES) if fam is not None and fam.series]

        def keep(name: str) -> bool:
            return chosen is None or (name not in SCRAPE_FAMILIES and owner(name) in chosen)

        with self._lock:
            renderer = self._renderers.get(chosen)
            if renderer is None:
                renderer = self._renderers[chosen] = FamilyRenderer()
        # Two scrapes of one filter that both miss render alike, twice (each view it keeps is whole).
        texts, names = renderer.render_view(view, keep)
        # The texts are in name order: the scrape families' span found by bisection, the ~300 texts on either
        # side joined in C (a loop over them in Python was ~1/3 of this function's cost at a scrape's cold start).
        low = bisect_left(texts, (_FIRST_SCRAPE,))
        high = bisect_right(texts, (_LAST_SCRAPE, _AFTER_ANY_TEXT), low)
        cut = [(name, *_cut_at_textfile(text)) for name, text in texts[low:high] if name in SCRAPE_FAMILIES]
        between = [text for name, text in texts[low:high] if name not in SCRAPE_FAMILIES]  # other names: tail
        head = "".join(map(_TEXT, texts[:low]))
        tail = "".join([*between, *map(_TEXT, texts[high:])])
        block = _Block(key, head.encode(), tail.encode(), scrape, frozenset(names),
                       tuple(cut) if chosen is None else None)
        with self._lock:
            self._blocks[chosen] = block
            self._blocks.move_to_end(chosen)
            while len(self._blocks) > MAX_CACHED_FILTERS:
                # The oldest filter goes; never the unfiltered one: clients choosing collect[] subsets must
                # not make the plain scrape render everything again.
                del self._blocks[next(k for k in self._blocks if k is not None)]
            for gone in [k for k in self._renderers if k not in self._blocks]:
                del self._renderers[gone]  # its filter's block went (or its render failed)
            self.renders += 1
        return block

    def node_renderer(self) -> FamilyRenderer | None:
        """The unfiltered node_* renderer (for tests: what it keeps), once a scrape has used it."""
        return self._renderers.get(None)


_FIRST_SCRAPE, _LAST_SCRAPE = min(SCRAPE_FAMILIES), max(SCRAPE_FAMILIES)
_AFTER_ANY_TEXT = "\U0010ffff"  # above every family's text (each begins "# HELP"): (name, this) ends name's span
_TEXT = itemgetter(1)


def _cut_at_textfile(text: str) -> tuple[str, str]:
    """A scrape family's text (HELP, TYPE, then a line per collector, in the collectors' order) cut where the
    textfile collector's line goes.  A line the segment has for a collector named textfile (the publisher runs
    none: a planted one) is left out, as ``_with_textfile_row`` leaves its row out."""
    lines = [f"{line}\n" for line in text.split("\n")[:-1]]  # (only a newline ends a line: labels are escaped)
    start = bisect_left(lines, TEXTFILE, 2, key=_collector)  # after HELP and TYPE
    end = bisect_right(lines, TEXTFILE, start, key=_collector)
    return "".join(lines[:start]), "".join(lines[end:])


def _collector(line: str) -> str:
    return line.partition('{collector="')[2].partition('"}')[0]


def _with_textfile_line(cut: tuple[tuple[str, str, str], ...], duration: float) -> bytes:
    """The scrape families' text with the textfile collector's lines (``_with_textfile_row``'s values)."""
    return "".join([f'{before}{name}{{collector="{TEXTFILE}"}} '
                    f'{go_float(1.0 if name == SCRAPE_FAMILIES[0] else duration)}\n{after}'
                    for name, before, after in cut]).encode()


def _with_textfile_row(fam: Family, duration: float) -> Family:
    """A scrape family with the textfile collector's row (success 1: node_exporter's textfile collector
    reports problems in node_textfile_scrape_error instead), series in the Go client's order."""
    value = 1.0 if fam.name == SCRAPE_FAMILIES[0] else duration
    series = sorted([*(s for s in fam.series if s[0] != (TEXTFILE,)), ((TEXTFILE,), value)])
    return fam._replace(series=series)


class ProcessCollector(Collector):
    """The process_* families for a prometheus_client registry (the Go client's names and values)."""

    def collect(self) -> Iterator[Metric]:
        return map(as_metric, process_families())


def build(source, process_metrics: bool = True, textfile: Textfile | None = None,
          handler: HandlerMetrics | None = None) -> tuple[CollectorRegistry, Exposition]:
    """The exporter's own registry (our collector, plus the process collector) and its renderer, which
    adds node_exporter's textfile collector (read per scrape, ``textfile`` or one without a directory) and
    promhttp's handler metrics (``handler``); the registry's collect() stays the segment's view."""
    registry = CollectorRegistry(auto_describe=False)
    shm = ShmCollector(source)
    registry.register(shm)
    if process_metrics:
        registry.register(ProcessCollector())
    return registry, Exposition(shm, process_metrics, textfile, handler)


__all__ = ["CONTENT_TYPE", "Exposition", "build", "enabled_collectors", "node_families"]

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
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shm_metrics.families import ABSENT_LABEL, COUNTER, UNTYPED, Family
from shm_metrics.readers import Snapshot
from shm_metrics.readers.exporter.source import STATES, Reading, SegmentSource


def node_families(snap: Snapshot) -> Iterator[Metric]:
    """The node_* families of one snapshot as prometheus_client Metrics (the caller has checked it is fresh),
    in node_exporter's order (``render_families``).

    prometheus_client names a counter family without its ``_total`` (and adds it
    back when rendering); every node_exporter counter ends in ``_total``.
    """
    for fam in sorted(snap.families, key=_by_name):
        if fam.type == COUNTER and fam.name.endswith("_total"):
            metric = Metric(fam.name[:-6], fam.help, "counter")
        else:
            metric = Metric(fam.name, fam.help, "unknown" if fam.type == UNTYPED else fam.type)
        labels = fam.labels
        for values, value in sorted_series(fam):
            metric.add_sample(fam.name, {n: v for n, v in zip(labels, values) if v != ABSENT_LABEL}, value)
        yield metric


_INF = float("inf")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def go_float(value: float) -> str:
    """``value`` as node_exporter writes it (Go's expfmt: ``strconv.FormatFloat(v, 'g', -1, 64)``).

    prometheus_client writes 3 as ``3.0`` and 1234567 as ``1234567.0``; Go writes ``3`` and
    ``1.234567e+06``: the shortest digits that round-trip (Python's repr finds the same ones), in
    exponent form when the decimal exponent is below -4 or at least 6 (Go's rule for the shortest form).
    """
    if value != value:
        return "NaN"
    if value in (_INF, -_INF):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"  # expfmt writes 0 for -0 too
    text = repr(float(value))
    sign = "-" if text[0] == "-" else ""
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # Where the decimal point sits relative to the first significant digit.
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:
        rest = "." + digits[1:] if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{rest}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


class FamilyRenderer:
    """Renders families as node_exporter writes them, keeping what repeats from sample to sample.

    A family's HELP/TYPE lines and each series' whole line are kept, the line with the value it was
    written for: a new sample costs a lookup per series and formatting only the values that changed.
    What is kept is bounded by the series rendered, never by the values seen: counters take a new value
    at every sample, and a cache keyed by value grows for as long as the exporter runs (issue 15).
    One renderer per stream of like renders (the bound follows the size of the last render).
    """

    SLACK = 1024  # series that may go away before the kept lines are dropped and rebuilt

    def __init__(self) -> None:
        self._heads: dict[tuple, tuple[str, list[tuple[str, int]]]] = {}
        self._lines: dict[tuple[str, tuple[str, ...]], tuple[str, float, str]] = {}  # key -> (prefix, value, line)

    def kept(self) -> int:
        """Series lines kept (for tests: bounded by the series of the last render)."""
        return len(self._lines)

    def render(self, families: Iterable[Family]) -> bytes:
        """The text exposition of ``families``: families sorted by name, series sorted by their label values
        (in label-name order, as the Go client's registry sorts them), labels sorted by name, Go's float
        format (``go_float``); without building a Metric per family.

        ``generate_latest`` over ``node_families`` gives the same lines but for prometheus_client's float
        format (``3.0`` where node_exporter writes ``3``).
        """
        out: list[str] = []
        append = out.append
        lines = self._lines
        series = 0
        for fam in sorted(families, key=_by_name):
            name = fam.name
            head, labels = self._head(fam)
            append(head)
            for values, value in sorted_series(fam):
                series += 1
                key = (name, values)
                kept = lines.get(key)
                if kept is not None and kept[1] == value:
                    append(kept[2])
                    continue
                prefix = kept[0] if kept is not None else _prefix(name, labels, values)
                line = f"{prefix}{go_float(value)}\n"
                lines[key] = (prefix, value, line)
                append(line)
        if len(lines) > 2 * (series + self.SLACK):  # devices and mounts came and went: forget the gone ones
            lines.clear()
            self._heads.clear()
        return "".join(out).encode()

    def _head(self, fam: Family) -> tuple[str, list[tuple[str, int]]]:
        """The HELP and TYPE lines, and the label names in output order with their positions."""
        head = self._heads.get(fam[:4])
        if head is None:
            help_ = fam.help.replace("\\", r"\\").replace("\n", r"\n")
            order = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
            head = self._heads[fam[:4]] = (f"# HELP {fam.name} {help_}\n# TYPE {fam.name} {fam.type}\n",
                                           [(fam.labels[i], i) for i in order])
        return head


def _prefix(name: str, labels: list[tuple[str, int]], values: tuple[str, ...]) -> str:
    """``name{labels} ``: labels in ``labels``' order (by name), absent ones left out."""
    if not labels:
        return f"{name} "
    pairs = ",".join(f'{n}="{_escape(values[i])}"' for n, i in labels if values[i] != ABSENT_LABEL)
    return f"{name}{{{pairs}}} "


def render_families(families: Iterable[Family]) -> bytes:
    """``FamilyRenderer().render(families)``, without keeping anything for the next sample."""
    return FamilyRenderer().render(families)


def _by_name(fam: Family) -> str:
    return fam.name


def sorted_series(fam: Family) -> list[tuple[tuple[str, ...], float]]:
    """A family's series in the Go client's order: by label values, compared in label-name order."""
    series = fam.series
    if len(series) < 2 or not fam.labels:
        return series
    order = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
    return sorted(series, key=lambda row: [row[0][i] for i in order])


def render_node_text(snap: Snapshot, renderer: FamilyRenderer | None = None) -> bytes:
    """The node_* block of one fresh snapshot (through ``renderer``, which keeps lines across samples)."""
    return (renderer or FamilyRenderer()).render(snap.families)


# The exporter's own families (shown whatever the segment's state; some only once a sample exists).
OWN_NAMES = ("shm_metrics_up", "shm_metrics_segment_state", "shm_metrics_publisher_info",
             "shm_metrics_interval_seconds", "shm_metrics_seq", "shm_metrics_sample_timestamp_seconds",
             "shm_metrics_sample_age_seconds", "shm_metrics_overflow_entries")


def own_families(reading: Reading, now: float | None = None) -> Iterator[Metric]:
    """The shm_metrics_* families: what the exporter found under the name."""
    up = GaugeMetricFamily("shm_metrics_up", "1 when a running publisher's latest sample is fresh "
                           "(not older than 2 x interval + 1 s), else 0: then no node_* series are exposed.")
    up.add_metric([], 1 if reading.fresh else 0)
    yield up

    state = GaugeMetricFamily("shm_metrics_segment_state", "State of the segment under the name, one series "
                              "per state, 1 for the current one (absent: no segment; incompatible: corrupt "
                              "or foreign; untrusted: owned by a user other than root, the exporter's or "
                              "--publisher-user; dead: the publisher died without stopping).", labels=["state"])
    for name in STATES:
        state.add_metric([name], 1 if name == reading.state else 0)
    yield state

    snap = reading.snapshot
    if snap is None:
        return
    info = GaugeMetricFamily("shm_metrics_publisher_info", "The publisher that created the segment; value 1.",
                             labels=["hostname", "layout_version", "publisher_pid"])
    info.add_metric([snap.hostname, str(snap.layout_version), str(snap.publisher_pid)], 1)
    yield info
    yield GaugeMetricFamily("shm_metrics_interval_seconds", "The publisher's sampling interval.",
                            value=snap.interval)
    yield GaugeMetricFamily("shm_metrics_seq", "Seqlock counter of the segment: even when a sample is whole, "
                            "+2 per sample; restarts with the publisher.", value=snap.seq)
    if snap.seq == 0:
        return  # no sample yet: no time to show
    yield GaugeMetricFamily("shm_metrics_sample_timestamp_seconds", "Unix time the latest sample was taken.",
                            value=snap.sample_time)
    age = (time.time() if now is None else now) - snap.sample_time
    yield GaugeMetricFamily("shm_metrics_sample_age_seconds", "Seconds since the latest sample was taken, "
                            "at scrape time.", value=max(0.0, age))
    overflow = GaugeMetricFamily("shm_metrics_overflow_entries", "Entries the publisher found beyond an "
                                 "array's capacity and left out of the latest sample.", labels=["array"])
    for array, count in snap.overflow().items():
        overflow.add_metric([array], count)
    yield overflow


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
        yield from own_families(reading)
        if reading.fresh:
            yield from node_families(reading.snapshot)

"""Sampling the host: node_exporter's collectors (``publisher/collectors/``), run once per interval.

Each collector reads kept-open /proc and /sys files with ``pread`` (a read at
offset 0 returns fresh data), which is several times cheaper than psutil's
open/parse/close and gives exactly node_exporter's meaning for each value.
psutil is not used on this path: where its meaning matches, it costs more;
where it is cheaper, its meaning differs (e.g. its ``cached`` adds
SReclaimable).  ``tests/test_sampler.py`` checks the values against psutil
and procps, ``tests/test_exporter_compare.py`` against node_exporter.

The Sampler owns the collectors, the family catalog they declare (the
segment's self-description), and node_exporter's
``node_scrape_collector_success``/``_duration_seconds`` for each of them.
Units follow the layout: bytes, seconds, counts.
"""

from __future__ import annotations

import logging
import math
import os
import time
from array import array
from collections.abc import Callable
from operator import attrgetter, is_
from typing import TYPE_CHECKING

from shm_metrics import families as F
from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import (
    ARRAYS,
    CORE,
    ON_DEMAND,
    PROCESS_SCAN,
    RESCAN_SECONDS,
    SCRAPE_DURATION,
    SCRAPE_SUCCESS,
    Collector,
    Context,
    ProcFile,
    Sample,
    check_unique,
    missing_path,
    selected,
)
from shm_metrics.publisher.collectors.numbers import FixedSeries
from shm_metrics.publisher.collectors.stat import CPU_MODES, USER_HZ
from shm_metrics.publisher.collectors.stat import busy_percent as _busy_percent
from shm_metrics.publisher.filters import Filters

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

log = logging.getLogger(__name__)

__all__ = ["CPU_MODES", "USER_HZ", "ProcFile", "Sample", "Sampler", "_busy_percent", "time_families"]

# What the sampler catches from a collector: one broken family must not stop the others.
_COLLECT_ERRORS = (OSError, ValueError, IndexError, KeyError, ZeroDivisionError)
# How often a collector unavailable at start (its files missing: a kernel module not loaded yet) is
# tried again: a constructor costs little, but some open a D-Bus connection or a netlink socket.
RETRY_SECONDS = 30.0
# A collector whose constructor said which file it lacks is retried when that file exists, else only every
# RETRY_ALL_AFTER-th time (in case it could start for another reason): a retry costs a Python sample in place
# of a compiled one (~1.3 ms of CPU at 1 Hz instead of ~0.3), where looking for the files costs a stat each.
RETRY_ALL_AFTER = 10
_FAMILIES = attrgetter("families")
_RUN, _SKIP, _DUE, _REPLAY = "run", "skip", "due", "replay"  # Sampler._grid_role


class Sampler:
    """Holds the collectors (their open files and previous counters) and the family catalog.

    ``catalog`` is every family the collectors declare now, ``node_scrape_collector_*`` included.  It
    grows while the publisher runs (a collector retried successfully, a collector declaring a family
    for a sensor type or zone it found later) and never shrinks: a new catalog is a new tuple whose
    beginning is the old one, and ``catalog_version`` counts the changes (compare it between samples;
    a change is seen by the sample that brings the new families).
    """

    def __init__(self, procfs: str = "/proc", filters: Filters | None = None, top_n: int = 0,
                 sysfs: str = "/sys", rootfs: str = "/", collectors: list[type[Collector]] | None = None,
                 udev_data: str = "/run/udev/data", options: dict[str, object] | None = None,
                 retry_seconds: float = RETRY_SECONDS, rescan_seconds: float = RESCAN_SECONDS,
                 grid_samples: bool = True):
        """``top_n`` > 0 adds the per-process scan (``--top``): the top tables and
        the counts by state (``procs_total`` is counted every sample whatever ``top_n``).  ``collectors``: the classes
        to run (default: ``selected()``, node_exporter's default set and the layout's own).
        ``retry_seconds``: how often a collector unavailable at start is tried again (when the path it lacked
        appeared, else every RETRY_ALL_AFTER-th time);
        ``rescan_seconds``: how often collectors list their devices again (``Context``);
        ``grid_samples``: False when every sample is full (``--always-full``): full samples then write their
        series in one run, as no grid sample follows to share their layout."""
        self.procfs = procfs
        self.filters = filters or Filters()
        self._ctx = ctx = Context(procfs=procfs, sysfs=sysfs, filters=self.filters, top_n=top_n, rootfs=rootfs,
                                  udev_data=udev_data, options=options, rescan_seconds=rescan_seconds)
        self.collectors: list[Collector] = []
        self.unavailable: dict[str, str] = {}  # node_exporter collector name -> why it is left out
        self._classes = selected() if collectors is None else list(collectors)
        ctx.enabled = frozenset(name for cls in self._classes for name in cls.reports)
        # Classes whose constructor failed, tried again, with the path whose absence stopped each (or None).
        self._retry: dict[type[Collector], str | None] = {}
        self._retries_skipped = 0  # retries due since the last one that ran, skipped as no missing path appeared
        for cls in self._classes:
            collector = self._start(cls)
            if collector is not None:
                self.collectors.append(collector)
        for c in self.collectors:
            for name in c.reports:
                self.unavailable.pop(name, None)
        self.retry_seconds = retry_seconds
        self._grid_samples = grid_samples
        self._next_retry = time.monotonic() + retry_seconds
        self.catalog: tuple[FamilyInfo, ...] = (
            *(fam for c in self.collectors for fam in c.families), SCRAPE_SUCCESS, SCRAPE_DURATION)
        check_unique(self.catalog)
        self.catalog_version = 0
        self._declared = [c.families for c in self.collectors]  # what the catalog was built from
        self._failed: set[str] = set()
        self._pending: Sample | None = None
        # Collector -> its last run: (monotonic time, what it filled, success, seconds it took).
        self._cached: dict[str, tuple[float, Sample, int, float]] = {}
        # The families whose series date from the last full sample (flagged so in the catalog): every family
        # of a collector outside the CORE tier, and a CORE one's ``on_demand``; grows with the catalog.
        self.on_demand: set[str] = set()
        self._add_on_demand(self.collectors)
        # node_exporter's node_scrape_collector_* of each collector in the latest full sample (what a scrape,
        # which asks for one, reports); grid samples repeat them, so they are on demand too.
        self.on_demand.update((SCRAPE_SUCCESS.name, SCRAPE_DURATION.name))
        self._status: Sample | None = None
        self._status_series: tuple[tuple[str, ...], FixedSeries] | None = None  # (names, their status rows)
        # The latest full sample's replayed series (Sample.replayed) and the outputs they are of (_grid_plan).
        self._full_block: tuple[list[Sample], tuple | None] = ([], None)
        # Grid samples' plans (Sampler._grid), by what they depend on: changes of the cached outputs of the
        # collectors outside the per-process scan ([0]) and of the scan's ([1]).
        self._versions = [0, 0]
        self._scanning = False  # whether the latest sample ran the per-process scan (a viewer asked)
        self._plans: dict[tuple[bool, int, int], tuple] = {}
        # Whether a grid sample without the scan would run a collector beyond the CORE ones (grid_compilable),
        # by (collectors, collectors that ran): both only grow, so equal counts are the same sets.  Not by the
        # plan's key, which every full sample changes: the plan made again cost ~170 us cold after each scrape.
        self._none_due: tuple[tuple[int, int], bool] | None = None
        self.last_full_time = 0.0  # Unix time the latest full sample began
        # Family name -> function filling a Sample (the benchmark times each entry separately).
        self.families = {c.name: _filler(c) for c in self.collectors}

    def _start(self, cls: type[Collector], quiet: bool = False) -> Collector | None:
        """The collector, or None when its constructor fails (its name then in ``unavailable``, its
        class in the retry list, and whatever it had opened closed again: a retry every 30 s for
        months must not leak a descriptor each time)."""
        collector = cls.__new__(cls)
        try:
            collector.__init__(self._ctx)
        except (OSError, LookupError, ValueError) as exc:
            _close_partial(collector)
            # Not on this host (no PSI, no conntrack module...): no families, success 0.
            for name in cls.reports:
                self.unavailable.setdefault(name, str(exc))
            self._retry[cls] = missing_path(exc)
            if cls.reports and not quiet:
                log.info("collector %s unavailable: %s", cls.name, exc)
            return None
        return collector

    def _add_on_demand(self, collectors: list[Collector]) -> None:
        """Flag the families of ``collectors`` that are sampled on demand.  A collector's series are of the
        families it declares (a new one through ``declare``, which the catalog follows), so this runs when
        they change, not over every series of every full sample."""
        self.on_demand.update(fam.name for c in collectors
                              for fam in (c.families if c.tier != CORE else c.on_demand))

    def retry_unavailable(self) -> list[str]:
        """Try the collectors unavailable so far again (``sample()`` does when ``_retry_ready``); those that
        start now join in registry order, the next retry is ``retry_seconds`` away.  Returns their names."""
        started = []
        self._retries_skipped = 0
        self._next_retry = time.monotonic() + self.retry_seconds
        for cls in list(self._retry):
            del self._retry[cls]
            collector = self._start(cls, quiet=True)
            if collector is None:
                continue
            order = {c: i for i, c in enumerate(self._classes)}
            at = sum(1 for c in self.collectors if order.get(type(c), -1) < order[cls])
            self.collectors.insert(at, collector)
            self._declared.insert(at, ())  # its families are new to the catalog
            self.families[collector.name] = _filler(collector)
            for name in cls.reports:
                self.unavailable.pop(name, None)
            self._failed.discard(cls.name)
            started.append(cls.name)
            log.info("collector %s available now", cls.name)
        if started:
            self._versions[0] += 1  # grid samples run or replay it from now on
        self._update_catalog()
        return started

    def _retry_ready(self, now: float) -> bool:
        """Whether the collectors unavailable so far are to be tried again now: it is time, and one of them may
        start (the path it lacked exists now, or it did not say which), or RETRY_ALL_AFTER retries were skipped.
        A skipped retry is looked at again ``retry_seconds`` later; the sample stays a grid sample."""
        if not self._retry or now < self._next_retry:
            return False
        if self._retries_skipped + 1 < RETRY_ALL_AFTER and all(
                path is not None and not os.path.exists(path) for path in self._retry.values()):
            self._retries_skipped += 1
            self._next_retry = now + self.retry_seconds
            return False
        return True

    def _update_catalog(self) -> None:
        """A new, larger ``catalog`` when a collector declares families it did not (cheap when nothing
        changed: one identity check per collector)."""
        declared = self._declared
        if len(declared) == len(self.collectors) and all(map(is_, map(_FAMILIES, self.collectors), declared)):
            return  # map() in C: this runs every sample
        self._declared = [c.families for c in self.collectors]
        self._add_on_demand(self.collectors)  # before the catalog's new rows are flagged from it
        known = {fam.name for fam in self.catalog}
        new = []
        for fam in (fam for c in self.collectors for fam in c.families):
            if fam.name not in known:  # a second HELP for a known name: the first one stands
                known.add(fam.name)
                new.append(fam)
        if new:
            self.catalog = (*self.catalog, *new)
            self.catalog_version += 1
            log.info("catalog: %d new families (%s)", len(new), ", ".join(f.name for f in new[:5]))

    def sample(self, full: bool = True, scan: bool = True, wall_time: float | None = None) -> Sample:
        """One sample.  Every collector runs when ``full``; otherwise the CORE ones run and the others'
        last output is replayed (their families say so: ``Sample.full_time``), but the per-process scan
        runs when ``scan``.  Collectors with ``refresh_seconds`` run no more often than that.
        ``wall_time``: the sample's time as the segment will say it (default: now)."""
        if self._pending is not None:  # the one family_capacities() took: the first sample published
            out, self._pending = self._pending, None
            out.full_time = self.last_full_time = time.time() if wall_time is None else wall_time
            return out
        if self._retry_ready(time.monotonic()):
            self.retry_unavailable()
        if scan != self._scanning:
            self._scanning = scan
            if not scan:  # nobody asks for the per-process scan any more: what it keeps between scans goes
                for c in self.collectors:
                    if c.tier == PROCESS_SCAN:
                        c.release()
        out = Sample()
        if full or self._status is None:  # a grid sample replays a full one: the first one is full
            self.last_full_time = time.time() if wall_time is None else wall_time
            self._ctx.full = True
            self._full(out, scan)
            self._update_catalog()
        else:
            self._ctx.full = False
            self._grid(out, scan)
        out.full_time = self.last_full_time
        return out

    def _full(self, out: Sample, scan: bool) -> None:
        """Every collector (those with ``refresh_seconds`` when due), and node_scrape_collector_* for each."""
        clock = time.perf_counter
        now = time.monotonic()
        status = []
        rest = Sample()  # the collectors a grid sample replays: their series go in one block, as there
        rest_parts = []  # their outputs merged into it
        for c in self.collectors:
            if c.tier == CORE and not c.refresh_seconds:
                t0 = clock()
                ok = self._run(c, out, fast=True)
                duration = clock() - t0
            else:
                ok, duration = self._run_or_replay(c, out if c.tier == CORE else rest, True, scan, now)
                if c.tier != CORE and c.name in self._cached:
                    rest_parts.append(self._cached[c.name][1])
            for name in c.reports:
                status.append((name, ok, duration / len(c.reports)))
        for name in self.unavailable:
            status.append((name, 0, 0.0))
        self._status = self._status_sample(status)
        # Encoded as the grid samples after it encode theirs (replayed block first): the segment's series and
        # label bytes keep their places from a full sample to the grid samples, and a compiled grid sample's
        # program stays valid across scrapes (publisher/compiled.py).
        if self._grid_samples:
            _merge(out, rest, series=False)
            out.replayed = (*rest.sampled_series(), *self._status.sampled_series())
            # The grid samples' plan replays the same outputs: the same tuple, which the encoder then knows.
            self._full_block = (_with_series([*rest_parts, self._status]), out.replayed)
        else:
            _merge(out, rest)
            _merge(out, self._status)
        self._versions[0] += 1

    def _status_sample(self, status: list[tuple[str, int, float]]) -> Sample:
        """node_scrape_collector_success and _duration_seconds of each (name, ok, duration) as one block: the
        same FixedSeries while the collectors stay."""
        names = tuple(name for name, _, _ in status)
        if self._status_series is None or self._status_series[0] != names:
            self._status_series = (names, FixedSeries([SCRAPE_SUCCESS, SCRAPE_DURATION] * len(names),
                                                      [(name,) for name in names for _ in range(2)]))
        out = Sample()
        out.add_block(self._status_series[1], array("d", [v for _, ok, duration in status
                                                           for v in (ok, duration)]).tobytes())
        return out

    def _grid(self, out: Sample, scan: bool) -> None:
        """The CORE collectors (and the per-process scan when ``scan``); the rest as the latest full sample
        left it, through a plan that stays the same from sample to sample: a grid sample at 1 Hz runs with
        cold caches, where each collector looked at costs microseconds even when it only replays."""
        run, fills, due, scalars, arrays, block = self._plan_for(scan)
        try:
            # Each CORE collector's fast path, or its parse when it has none or it declines (its file changed
            # shape), called straight: no bookkeeping per collector while every one succeeds, the usual case.
            for fast, collect in fills:
                if fast is None or not fast(out):
                    collect(out)
        except _COLLECT_ERRORS:
            # A read failed: the sample again, collector by collector, as a full sample runs them (the
            # failure logged, that collector's series left out).
            out.__init__()  # nothing of the attempt kept
            for c in run:
                self._run(c, out, fast=True)
        if due:
            now = time.monotonic()
            for c in due:
                self._run_or_replay(c, out, False, scan, now)
            self._update_catalog()  # the CORE collectors' families are theirs from the start: only these may add
        out.scalars.update(scalars)
        for name, rows in arrays:
            setattr(out, name, rows)
        out.replayed = block

    def _plan_for(self, scan: bool) -> tuple:
        """The grid samples' plan as things stand (made when they changed)."""
        key = (scan, self._versions[0], 0 if scan else self._versions[1])
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 2:  # one with the scan (a top viewer asks), one without
                self._plans.clear()
            plan = self._plans[key] = self._grid_plan(scan)
        return plan

    def _grid_plan(self, scan: bool) -> tuple:
        """(collectors run every grid sample, their fast paths (None: none) and parses, collectors run when
        due, the scalars and arrays replayed, the series replayed as one tuple: the publisher encodes it
        once)."""
        run, due, parts = [], [], []
        scalars: dict[str, float | int] = {}
        arrays: dict[str, list[dict]] = {}
        for c in self.collectors:
            role = self._grid_role(c, scan)
            if role is _RUN:
                run.append(c)
            elif role is _SKIP:
                continue
            elif role is _DUE:
                due.append(c)
            else:
                part = self._cached[c.name][1]
                scalars.update(part.scalars)
                if c.tier != PROCESS_SCAN:  # the per-process tables only from a scan of this very sample
                    arrays.update((name, rows) for name in ARRAYS if (rows := getattr(part, name)))
                parts.append(part)
        parts.append(self._status)
        fills = [(c.fast if type(c).fast is not Collector.fast else None, c.collect) for c in run]
        kept_parts, block = self._full_block
        with_series = _with_series(parts)
        if block is None or len(with_series) != len(kept_parts) or not all(map(is_, with_series, kept_parts)):
            block = tuple(row for part in parts for row in part.sampled_series())
        return run, fills, due, scalars, list(arrays.items()), block

    def _grid_role(self, c: Collector, scan: bool) -> str:
        """What a grid sample does with a collector: runs it every time (the CORE ones), skips it (the per-process
        scan nobody asked for yet), runs it when due (a CORE one with a refresh, the scan while asked for, one
        that never ran), or replays its last output."""
        if c.tier == CORE and not c.refresh_seconds:
            return _RUN
        never_ran = c.name not in self._cached
        if c.tier == PROCESS_SCAN and not scan and never_ran:
            return _SKIP  # not asked for yet: nothing to run or replay
        if c.tier == CORE or (c.tier == PROCESS_SCAN and scan) or never_ran:
            return _DUE
        return _REPLAY

    def _run(self, c: Collector, out: Sample, fast: bool = False) -> int:
        """Run one collector into ``out`` (through its fast path when ``fast``: the CORE collectors, whose
        Python parse runs when their file's structure changed): 1, or 0 when it failed (nothing of it kept)."""
        series, fixed, fixed_at = out.series, out.fixed, out.fixed_at
        start, start_fixed = len(series), len(fixed)
        try:
            if not (fast and c.fast(out)):
                c.collect(out)
            return 1
        except _COLLECT_ERRORS as exc:
            del series[start:]  # no half-read family
            del fixed[start_fixed:]
            del fixed_at[start_fixed:]
            if c.name not in self._failed:
                self._failed.add(c.name)
                log.warning("sampling %s failed: %s (further failures not logged)", c.name, exc)
            return 0

    def _run_or_replay(self, c: Collector, out: Sample, full: bool, scan: bool, now: float) -> tuple[int, float]:
        """A collector that does not run every sample: run it when due, else replay its last output."""
        cached = self._cached.get(c.name)
        if cached is None and c.tier == PROCESS_SCAN and not scan:
            return 1, 0.0  # not asked for yet: no tables to show
        ran = cached is None or self._due(c, cached[0], full, scan, now)
        if ran:
            own = Sample()
            t0 = time.perf_counter()
            ok = self._run(c, own)
            # A failure is tried again at the next chance, not only after refresh_seconds.
            cached = self._cached[c.name] = (now if ok else -math.inf, own, ok, time.perf_counter() - t0)
            self._versions[c.tier == PROCESS_SCAN] += 1  # the grid samples' plans change with it
        # The per-process tables are in a sample only when the scan ran for it: a reader seeing them knows
        # they are current (their families, like every on-demand family, carry full_sample_time).
        _merge(out, cached[1], arrays=ran or c.tier != PROCESS_SCAN)
        return cached[2], cached[3]

    @staticmethod
    def _due(c: Collector, last_run: float, full: bool, scan: bool, now: float) -> bool:
        if c.refresh_seconds and now - last_run < c.refresh_seconds:
            return False  # rarely changing: the last reading stands
        if c.tier == PROCESS_SCAN:
            return scan  # asked for by a top viewer: no family of a full sample needs it
        return full or c.tier != ON_DEMAND

    def grid_compilable(self, now: float) -> bool:
        """Whether a grid sample without the scan may skip this object (publisher/compiled.py): it would run
        the CORE collectors alone, no collector is due for a retry, none is due to run."""
        if self._retry_ready(now) or self._status is None or self._pending is not None:
            return False
        key = (len(self.collectors), len(self._cached))
        if self._none_due is None or self._none_due[0] != key:
            self._none_due = (key, all(self._grid_role(c, False) is not _DUE for c in self.collectors))
        return self._none_due[1]

    def compile(self, built: Builder) -> str | None:
        """The CORE collectors' grid sample described to ``built`` (publisher/compiled.py); None, or why
        it cannot be."""
        for c in self.collectors:
            if c.tier == CORE and not c.refresh_seconds:
                try:
                    if not c.compile(built):
                        return f"collector {c.name} has no compiled form in this configuration"
                except (OSError, ValueError, LookupError) as exc:  # its file changed shape meanwhile
                    return f"collector {c.name}: {exc}"
        return None

    def family_capacities(self, sample: Sample | None = None) -> dict[str, int]:
        """Capacities of the four family sections for this host: the catalog exactly, and room for
        twice the series (and label bytes) of one sample (interfaces, disks and mounts come and go).

        Without ``sample`` it takes one, and the next ``sample()`` returns that one: the rates and CPU
        shares of the first published sample then still span the time since boot, as before.
        """
        if sample is None:
            sample = self._pending = self.sample(scan=False)  # no viewer has asked for the scan yet
        _, strings = F.encode_catalog(self.catalog)
        index = {fam: i for i, fam in enumerate(self.catalog)}
        _, labels, rows, _ = F.SeriesEncoder(index).encode(sample.all_series())
        cap = 65536
        return {"metrics": len(self.catalog), "strings": F.chunks(len(strings)),
                "series": min(cap, 2 * rows + 256), "labels": min(cap, 2 * F.chunks(len(labels)) + 256)}

    def close(self) -> None:
        for c in self.collectors:
            c.close()


def _filler(c: Collector) -> Callable[[Sample], object]:
    """What a sample runs of ``c``: a CORE collector's fast path, its Python parse when that declines."""
    return (lambda out: c.fast(out) or c.collect(out)) if c.tier == CORE else c.collect


def _close_partial(collector: Collector) -> None:
    """Close what a collector whose constructor failed had opened (its own close() may need attributes
    the constructor never set: the base class's closes the files it opened through ``open``)."""
    try:
        collector.close()
    except (AttributeError, OSError):
        pass
    if hasattr(collector, "_kept_open"):
        Collector.close(collector)


def time_families(sampler: Sampler, rounds: int) -> dict[str, float]:
    """Median seconds per call of each family over ``rounds`` calls (for the benchmark)."""
    result = {}
    for name, fill in sampler.families.items():
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fill(Sample())
            times.append(time.perf_counter() - t0)
        times.sort()
        result[name] = times[len(times) // 2]
    return result


def _with_series(parts: list[Sample]) -> list[Sample]:
    return [part for part in parts if part.series or part.fixed]


def _merge(out: Sample, part: Sample, arrays: bool = True, series: bool = True) -> None:
    """Add one collector's output to a sample (each scalar and array has one collector: no conflicts)."""
    if part.scalars:
        out.scalars.update(part.scalars)
    if arrays:
        for name in ARRAYS:
            rows = getattr(part, name)
            if rows:
                setattr(out, name, rows)
    if series:
        if part.fixed:  # its blocks where they stood among its rows
            base = len(out.series)
            out.fixed += part.fixed
            out.fixed_at += [base + at for at in part.fixed_at]
        out.series += part.series


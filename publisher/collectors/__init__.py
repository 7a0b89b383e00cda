"""node_exporter's collectors, one per file, behind a small registry.

Each module declares the families it exposes (node_exporter 1.5.0's exact
name, type, HELP text and label names, see ``gauge``/``counter``/``untyped``)
and parses its files, kept open and re-read with ``pread`` (``ProcFile``).  A
collector fills a ``Sample``: the typed scalars and arrays the layout's own
sections hold (for shm-read, the history ring, --top) and, through
``Sample.add``, one series per node_exporter value.  The declarations become
the segment's family catalog, so the exporter renders every family from the
segment without knowing it: adding a metric is one declaration and one line of
parsing in one file.

``REGISTRY`` lists the collector classes in sampling order.  A collector whose
files do not exist on this host (no /proc/pressure, no conntrack module) is
left out at start, and ``node_scrape_collector_success`` says 0 for it, as
node_exporter does; the sampler tries it again every ``retry_seconds`` (a
module loaded later) once the path it lacked exists (``Missing``).  Devices come and go while the publisher runs: a
collector that lists a directory of devices (hwmon chips, thermal zones,
nvme controllers...) keeps them in ``Devices``, which lists it again every
``Context.rescan_seconds`` (not every sample: the listing costs more than
the reads) and at once after a device's files failed to read.  A collector
whose families depend on what it finds reassigns ``families`` to a new tuple
when they grow; the sampler notices (by identity) and grows its catalog.

``refresh_seconds`` > 0 marks what changes rarely (uname, os-release, disk
and interface properties): the sampler re-runs such a collector only that
often and re-publishes its last series in between.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from shm_metrics import shm_layout as L
from shm_metrics.families import COUNTER, GAUGE, UNTYPED, FamilyInfo, interleave
from shm_metrics.publisher.collectors.numbers import Block
from shm_metrics.publisher.filters import Filters

if TYPE_CHECKING:
    from shm_metrics.publisher.collectors.learned import LearnedPaths
    from shm_metrics.publisher.collectors.numbers import FixedSeries
    from shm_metrics.publisher.compiled import Builder

_READ_SIZE = 1 << 16
# How often a collector lists its devices' directory again (Context.rescan_seconds): a device that
# appears is published within this much time; one that goes away at once when its files fail to read,
# else within this much time too.
RESCAN_SECONDS = 10.0


def gauge(name: str, help_: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, GAUGE, help_, labels)


def counter(name: str, help_: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, COUNTER, help_, labels)


def untyped(name: str, help_: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, UNTYPED, help_, labels)


class ProcFile:
    """A /proc or /sys file kept open and re-read from offset 0 on every sample.

    ``whole``: the kernel writes the file whole in one read, so a read shorter than asked is its end and no
    read more is needed to find it.  True of a /proc file made by single_open (stat, meminfo, loadavg,
    uptime, pressure/*, net/snmp, net/netstat, net/snmp6, net/sockstat), of a sysctl (/proc/sys) and of a
    sysfs attribute (at most a page, from one call of its show()), and of a regular file (a fixture tree);
    not of a table made a record at a time (net/dev, diskstats, vmstat, net/udp...), which comes about a
    page per read.  That read more costs ~2-3 us of CPU each at 1 Hz (ad hoc: 23 files read 0.5 s apart,
    with and without it); under strace, a full sample of this host's default collectors made 34 such reads
    before, 8 now, a grid sample 6 before, 2 now.
    """

    def __init__(self, path: str, whole: bool = False):
        self.path = path
        self.whole = whole
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> str:
        return self.read_bytes().decode("utf-8", "replace")

    def read_bytes(self) -> bytes:
        """The whole file.  Reads until a read returns nothing: /proc tables generated a page at a time
        (seq_file: /proc/net/dev, /proc/diskstats, mountinfo, /proc/net/tcp, /proc/slabinfo...) return
        about 4 KiB per read however much is asked, so a short read is not the end (on a host with
        many interfaces, disks or mounts, stopping there would silently drop rows): one read more than
        the data needs, except for a file that comes ``whole``."""
        chunk = os.pread(self.fd, _READ_SIZE, 0)
        if not chunk or self.whole and len(chunk) < _READ_SIZE:
            return chunk
        chunks = [chunk]
        offset = len(chunk)
        while chunk := os.pread(self.fd, _READ_SIZE, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def read_to_end(self) -> str:
        """``read()``: kept for the collectors written when ``read`` stopped at the first short read."""
        return self.read()

    def close(self) -> None:
        # Idempotent: closing twice would close whatever file reused the descriptor (a collector
        # whose constructor failed is closed by the sampler and by itself).
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def read_file(path: str) -> bytes:
    """A whole file by its path, to the end; OSError as ``open`` raises it.  Through os calls, no file object:
    about half the cost of ``open().read()`` for the small sysfs files a full sample reads by the dozen
    (btrfs, bcache, zfs pools...)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_once(path: str) -> str | None:
    """A whole small file (sysfs attributes read rarely), or None when it cannot be read."""
    try:
        return read_file(path).decode("utf-8", "replace")
    except OSError:
        return None


class Context:
    """What a collector may need to open its files."""

    def __init__(self, procfs: str = "/proc", sysfs: str = "/sys", filters: Filters | None = None,
                 top_n: int = 0, rootfs: str = "/", udev_data: str = "/run/udev/data",
                 options: dict[str, object] | None = None, rescan_seconds: float = RESCAN_SECONDS):
        self.procfs, self.sysfs, self.rootfs, self.udev_data = procfs, sysfs, rootfs, udev_data
        self.rescan_seconds = rescan_seconds
        self.filters = filters or Filters()
        self.top_n = top_n
        # Per-collector options by node_exporter's flag name without "--collector.", e.g.
        # options["sysctl.include"] = ["kernel.threads-max"], options["bcache.priorityStats"] = True.
        # A collector reads its own with a default: option("bcache.priorityStats", False).
        self.options: dict[str, object] = dict(options or {})
        # node_exporter's collectors this sampler runs (the Sampler sets it): a collector whose families
        # another one owns when that one runs (loadavg's node_processes_threads, processes) leaves them out.
        self.enabled: frozenset[str] = frozenset()
        # Whether the sample being taken runs every collector (the Sampler sets it before each one): a CORE
        # collector reads the files of its families sampled on demand (``Collector.on_demand``) only then.
        self.full = True

    def option(self, name: str, default: object = None) -> object:
        return self.options.get(name, default)

    def text_option(self, name: str, default: str = "") -> str:
        """A string option (a regular expression, a path); of a repeated flag, the last one, as kingpin keeps."""
        value = self.options.get(name, default)
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else default
        return "" if value is None else str(value)

    def device_filter(self, collector: str) -> DeviceFilter:
        """node_exporter's ``--collector.<collector>.device-include`` / ``device-exclude`` pair, for the
        collectors the publisher's ``Filters`` do not cover (netdev and diskstats use those).

        node_exporter refuses both at once (the command line does too); an include alone means only
        the devices it finds.
        """
        include = self.text_option(f"{collector}.device-include")
        exclude = self.text_option(f"{collector}.device-exclude")
        return DeviceFilter(exclude, include)


class DeviceFilter:
    """Which devices a collector skips: the ones the exclude pattern finds, and those the include
    pattern does not (both searched anywhere in the name, as Go's MatchString does)."""

    def __init__(self, exclude: str = "", include: str = ""):
        # re.error propagates: a bad pattern is a usage error, as in node_exporter (MustCompile).
        self._exclude = re.compile(exclude) if exclude else None
        self._include = re.compile(include) if include else None

    def ignored(self, name: str) -> bool:
        return bool((self._exclude is not None and self._exclude.search(name))
                    or (self._include is not None and not self._include.search(name)))


# When a collector runs (Sampler.sample): every interval (what local readers are promised: the layout's
# scalars and arrays, the live view), on demand (a scrape, a reader asking for every family: at most once
# per interval), or for the per-process scan: on demand and while a top viewer asks for its tables.
CORE, ON_DEMAND, PROCESS_SCAN = "core", "on_demand", "process_scan"


class Missing(LookupError):
    """A collector's files are not on this host (yet).  ``path`` is the file or directory whose appearance may
    change that: the sampler retries the collector when it exists (publisher/sampler.py), as it does for a
    constructor's FileNotFoundError, whose ``filename`` says the same."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def missing_path(error: BaseException) -> str | None:
    """The path whose absence ``error`` (or the error it was raised ``from``) reports, or None."""
    for exc in (error, error.__cause__):
        if isinstance(exc, Missing):
            return exc.path
        if isinstance(exc, FileNotFoundError) and exc.filename:
            return os.fsdecode(exc.filename)
    return None


class Collector:
    """One collector: its family declarations and the parsing that fills a Sample.

    ``name`` names it in logs and in the benchmark; ``reports`` are the
    node_exporter collectors it stands for (the ``collector`` label of
    ``node_scrape_collector_*``; empty for the layout-only ones).  ``families``
    may be set per instance when the host decides them (meminfo's fields).
    """

    name: str = ""
    reports: tuple[str, ...] = ()
    # Switched on without --collector.<name>: node_exporter 1.5.0's default for the collector it reports.
    default_enabled: bool = True
    families: tuple[FamilyInfo, ...] = ()
    # Families decided by the host when the collector starts: (name pattern, type, labels, meaning) for the docs.
    described: tuple[tuple[str, str, str, str], ...] = ()
    refresh_seconds: float = 0.0
    tier: str = ON_DEMAND  # CORE, ON_DEMAND or PROCESS_SCAN (above)
    # Of a CORE collector, the families it reads only in full samples (``ctx.full``) and repeats in the others:
    # those no local reader is promised every interval, from files read one per device (sysfs).
    on_demand: tuple[FamilyInfo, ...] = ()

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._kept_open: list[ProcFile] = []
        self._device_sets: list[Devices | LearnedPaths] = []  # closed with the collector

    def declare(self, family: FamilyInfo) -> FamilyInfo:
        """The family this collector declared under ``family``'s name, or ``family``, declared now: a
        collector that finds a sensor type, a zone or a counter after start grows ``families`` (a new,
        longer tuple, which the sampler adds to the catalog at that sample)."""
        by_name = self.__dict__.setdefault("_declared", {f.name: f for f in self.families})
        known = by_name.get(family.name)
        if known is None:
            known = by_name[family.name] = family
            self.families = (*self.families, family)
        return known

    def open(self, path: str, whole: bool = False) -> ProcFile:
        """Open a kept-open file (``whole``: see ``ProcFile``); OSError here means the collector is unavailable
        on this host."""
        pf = ProcFile(path, whole)
        self._kept_open.append(pf)
        return pf

    def devices(self, root: str, build: Callable[[str, str, Opener], object | None], pattern: str = "",
                missing_ok: bool = False) -> Devices:
        """The devices under ``root`` (see ``Devices``), closed with the collector."""
        found = Devices(self.ctx, root, build, pattern, missing_ok)
        self._device_sets.append(found)
        return found

    def learned_paths(self) -> LearnedPaths:
        """Files and groups read by path, learned (see ``LearnedPaths``), closed with the collector."""
        from shm_metrics.publisher.collectors.learned import LearnedPaths  # (it imports this module)

        found = LearnedPaths()
        self._device_sets.append(found)
        return found

    def collect(self, out: Sample) -> None:
        raise NotImplementedError

    def fast(self, out: Sample) -> bool:
        """The fast path of a CORE collector (collectors/numbers.py): fill ``out`` as ``collect`` would and
        return True, or return False having added nothing (then ``collect`` runs)."""
        return False

    def compile(self, built: Builder) -> bool:
        """A CORE collector's grid sample as sources, registers and places (publisher/compiled.py), as its
        latest sample read it; False when it has none (the grid sample then stays in Python)."""
        return False

    def release(self) -> None:
        """Of a PROCESS_SCAN collector: nobody asks for its tables any more; let go of what it keeps between
        runs (the next run starts afresh)."""

    def close(self) -> None:
        for pf in self._kept_open:
            pf.close()
        self._kept_open.clear()
        for found in self._device_sets:
            found.close()


Opener = Callable[[str], ProcFile]


def same_file(pf: ProcFile) -> bool:
    """Whether ``pf``'s path still names the file it has open (sysfs gives a new node a new inode)."""
    try:
        held, now = os.fstat(pf.fd), os.stat(pf.path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


class Devices:
    """The devices of one directory (``root``'s entries matching ``pattern``), each opened once by
    ``build(name, path, open)`` and its files (opened through ``open``) kept until it goes away.

    The directory is listed again every ``ctx.rescan_seconds``: new entries are built, vanished ones
    closed and dropped.  At start an error propagates (the collector is unavailable, as in
    node_exporter); later a device whose directory vanished while it was being built is skipped,
    any other error propagates from ``current()`` (the sample fails, as node_exporter's scrape
    does) and the next sample lists again.  ``build`` returns None for an entry that is no device
    (no ``type`` file...).  ``missing_ok``: a missing ``root`` means no devices, not an error.
    """

    def __init__(self, ctx: Context, root: str, build: Callable[[str, str, Opener], object | None],
                 pattern: str = "", missing_ok: bool = False):
        self.root = root
        self._build = build
        self._pattern = re.compile(pattern) if pattern else None
        self._missing_ok = missing_ok
        self._every = ctx.rescan_seconds
        self._open: dict[str, tuple[object, list[ProcFile]]] = {}
        self._rows: list[tuple[str, object]] = []
        try:
            self._scan(strict=True)
        except BaseException:
            self.close()
            raise
        self._listed = time.monotonic()

    def current(self) -> list[tuple[str, object]]:
        """(name, device) in name order, listed again when due."""
        now = time.monotonic()
        if now - self._listed >= self._every:
            self._listed = now
            try:
                self._scan(strict=False)
            except BaseException:
                self._listed = -math.inf  # list again at the next sample
                raise
        return self._rows

    def each(self, read: Callable[[object], object]) -> Iterator[tuple[str, object]]:
        """(name, read(device)) for every current device; a device whose read fails because it went away
        (``gone``) is skipped, any other read error propagates (the collector fails, as node_exporter's)."""
        for name, device in self.current():
            try:
                result = read(device)
            except OSError:
                if self.gone(name):
                    continue
                raise
            yield name, result

    def gone(self, name: str) -> bool:
        """After a read error: whether the device went away or was replaced (its directory gone, or a
        new device under its name: a driver reloaded, a chip plugged back as the same hwmonN, told by
        the inode of its first kept file).  Then it is dropped, and the directory listed again (the
        device built anew if it is there) at the next sample."""
        held = self._open.get(name)
        if held is None:
            return True  # dropped already in this sample
        files = held[1]
        if same_file(files[0]) if files else os.path.lexists(os.path.join(self.root, name)):
            return False
        self._drop(name)
        self._listed = -math.inf
        return True

    def _names(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            if not self._missing_ok:
                raise
            names = []
        if self._pattern is not None:
            names = [n for n in names if self._pattern.fullmatch(n)]
        return sorted(names)

    def _scan(self, strict: bool) -> None:
        try:
            names = self._names()
        except OSError:
            self.close()  # the class directory went away (module unloaded): no stale devices
            raise
        for gone in self._open.keys() - set(names):
            self._drop(gone)
        for name in names:
            if name not in self._open:
                self._add(name, strict)
        rows = [(name, self._open[name][0]) for name in names if name in self._open]
        if rows != self._rows:  # a new list only on change: a collector may cache what it derives from it
            self._rows = rows

    def _add(self, name: str, strict: bool) -> None:
        path = os.path.join(self.root, name)
        files: list[ProcFile] = []

        def opener(file: str) -> ProcFile:
            pf = ProcFile(file)
            files.append(pf)
            return pf

        try:
            device = self._build(name, path, opener)
        except (OSError, ValueError, LookupError):
            for pf in files:
                pf.close()
            if strict or os.path.lexists(path):
                raise
            return  # removed while it was being read: as if listed a moment later
        if device is None:
            for pf in files:
                pf.close()
            return
        self._open[name] = (device, files)

    def _drop(self, name: str) -> None:
        _, files = self._open.pop(name)
        for pf in files:
            pf.close()
        self._rows = [row for row in self._rows if row[0] != name]

    def close(self) -> None:
        for name in list(self._open):
            self._drop(name)
        self._rows = []


ARRAYS = tuple(rec.name for rec in L.SAMPLE_ARRAYS)  # a Sample's arrays, the layout's names


class Sample:
    """One sample: scalars by layout name, arrays as lists of dicts, and the family series.

    ``series`` holds ``(FamilyInfo, label values, value)``; the publisher maps
    each FamilyInfo to its index in the segment's catalog when it packs them.
    """

    __slots__ = ("scalars", *ARRAYS, "series", "fixed", "fixed_at", "replayed", "full_time")

    def __init__(self, scalars: dict | None = None, series: list | None = None, **arrays: list[dict]):
        self.scalars: dict[str, float | int] = {} if scalars is None else scalars
        self.series: list[tuple[FamilyInfo, tuple[str, ...], float]] = [] if series is None else series
        # Series sampled now as blocks of values (collectors/numbers.py and learned.py: a file's numbers read
        # in C): each a FixedSeries (families and labels) and the values, doubles in its order; ``fixed_at``
        # says where each block stands among ``series`` (before the row of that index): a family's series keep
        # the order they were added in, blocks or not.
        self.fixed: list[tuple[FixedSeries, bytes]] = []
        self.fixed_at: list[int] = []
        # Series this sample repeats from the latest full one (the tiers of Sampler.sample): one tuple,
        # the same object from sample to sample while it holds the same series, so that the publisher
        # encodes it once.  ``series`` holds what was sampled now.
        self.replayed: tuple[tuple[FamilyInfo, tuple[str, ...], float], ...] = ()
        # Unix time of the latest sample that ran every collector, when this one replays some; None: this
        # sample ran them all.
        self.full_time: float | None = None
        # Spelled out, not a loop over ARRAYS: a grid sample at 1 Hz makes one Sample with cold caches, where
        # every bytecode costs (the module checks below that these are the layout's arrays).
        self.cpus, self.net, self.disks, self.filesystems, self.top_cpu, self.top_rss, self.process_states = (
            [], [], [], [], [], [], [])
        if arrays:
            unknown = set(arrays) - set(ARRAYS)
            if unknown:
                raise TypeError(f"unknown arrays {sorted(unknown)}")
            for name, rows in arrays.items():
                setattr(self, name, rows)

    def add(self, family: FamilyInfo, labels: tuple[str, ...], value: float) -> None:
        self.series.append((family, labels, value))

    def add_block(self, fixed: FixedSeries, values: bytes) -> None:
        """Series as one block: ``fixed``'s families and labels, ``values`` the doubles in their order."""
        self.fixed.append((fixed, values))
        self.fixed_at.append(len(self.series))

    def extend(self, rows: list[tuple[FamilyInfo, tuple[str, ...], float]] | Block) -> None:
        """Add series: a list of rows, or a Block."""
        if type(rows) is Block:
            self.add_block(rows.fixed, rows.values)
        else:
            self.series += rows

    def sampled_series(self) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        """The series sampled now, blocks as rows, in the order they were added."""
        return interleave(self.series, self.fixed, self.fixed_at)[0] if self.fixed else self.series

    def all_series(self) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        """Every series of the sample: those replayed and those sampled now."""
        sampled = self.sampled_series()
        return [*self.replayed, *sampled] if self.replayed else sampled

    def values(self, family: FamilyInfo) -> dict[tuple[str, ...], float]:
        """The series of one family (tests, debugging)."""
        return {labels: value for fam, labels, value in self.all_series() if fam is family or fam == family}


if ARRAYS != ("cpus", "net", "disks", "filesystems", "top_cpu", "top_rss", "process_states"):
    raise ImportError(f"Sample.__init__ does not set the layout's arrays {ARRAYS}")  # a new array: add it there


_REGISTERED: list[type[Collector]] = []


def register(cls: type[Collector]) -> type[Collector]:
    """Class decorator: add a collector to the registry (its module only has to live in this package)."""
    _REGISTERED.append(cls)
    return cls


def registry() -> list[type[Collector]]:
    """Every collector class (``@register``ed in a module of this package), by name.  The package's
    modules are imported (discovered) on first use: adding a collector is one file here.  No collector
    reads another's output, so the order only decides the catalog's (and the docs') order."""
    import importlib

    # The package's files, listed: pkgutil.iter_modules would import inspect (and ast, dis, tokenize), ~1 MiB
    # of the publisher's resident memory for a one-time listing.  __main__ is the docs printer: importing it
    # would print (or rewrite docs).
    for name in sorted(os.listdir(os.path.dirname(__file__))):
        if name.endswith(".py") and name not in ("__init__.py", "__main__.py"):
            importlib.import_module(f"{__name__}.{name[:-3]}")
    return sorted(_REGISTERED, key=lambda c: c.name)


def collector_names() -> dict[str, bool]:
    """node_exporter's collector names this publisher has, each with whether it is on by default."""
    out: dict[str, bool] = {}
    for cls in registry():
        for name in cls.reports:
            out[name] = out.get(name, False) or cls.default_enabled
    return out


def selected(enabled: set[str] | None = None) -> list[type[Collector]]:
    """The collector classes to run: the layout-only ones always, and those reporting a collector in
    ``enabled`` (default: the ones on by default)."""
    if enabled is None:
        enabled = {name for name, on in collector_names().items() if on}
    return [cls for cls in registry() if not cls.reports or any(name in enabled for name in cls.reports)]


SCRAPE_SUCCESS = gauge("node_scrape_collector_success", "node_exporter: Whether a collector succeeded.", "collector")
SCRAPE_DURATION = gauge("node_scrape_collector_duration_seconds", "node_exporter: Duration of a collector scrape.",
                        "collector")


def check_unique(families: Iterable[FamilyInfo]) -> None:
    seen: set[str] = set()
    for fam in families:
        if fam.name in seen:
            raise ValueError(f"family {fam.name} declared twice")
        seen.add(fam.name)


def declared_families(top_n: int = 10) -> tuple[FamilyInfo, ...]:
    """Every family a publisher with ``--top top_n`` declares on this host (its segment's catalog)."""
    from shm_metrics.publisher.sampler import Sampler

    sampler = Sampler(top_n=top_n)
    try:
        return sampler.catalog
    finally:
        sampler.close()


def markdown() -> str:
    """docs/LAYOUT.md's list of the families each collector declares (the catalog of a segment is this
    host's instance of it)."""
    out = ["| collector | family | type | labels | HELP, or where the values come from |", "|---|---|---|---|---|"]

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    for cls in registry():
        who = ", ".join(cls.reports) or f"({cls.name}: layout only)"
        note = f" (re-read every {cls.refresh_seconds:g} s)" if cls.refresh_seconds else ""
        for fam in cls.families:
            out.append(f"| {who} | `{fam.name}` | {fam.type} | {', '.join(fam.labels)} | {cell(fam.help)}{note} |")
        for pattern, kind, labels, meaning in cls.described:
            out.append(f"| {who} | `{pattern}` | {kind} | {labels} | {cell(meaning)}{note} |")
    for fam in (SCRAPE_SUCCESS, SCRAPE_DURATION):
        out.append(f"| every collector | `{fam.name}` | {fam.type} | {', '.join(fam.labels)} | {cell(fam.help)} |")
    return "\n".join(out) + "\n"


_BEGIN, _END = "<!-- BEGIN GENERATED FAMILIES -->", "<!-- END GENERATED FAMILIES -->"


def render_doc(text: str) -> str:
    """``text`` (docs/LAYOUT.md) with its generated list of families replaced by markdown()."""
    head, _, rest = text.partition(_BEGIN)
    _, _, tail = rest.partition(_END)
    return f"{head}{_BEGIN}\n{markdown()}{_END}{tail}"


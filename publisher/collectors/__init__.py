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
node_exporter does.  ``refresh_seconds`` > 0 marks what changes rarely
(uname, os-release, disk and interface properties): the sampler re-runs such
a collector only that often and re-publishes its last series in between.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from shm_metrics.families import COUNTER, GAUGE, UNTYPED, FamilyInfo
from shm_metrics.publisher.filters import Filters

_READ_SIZE = 1 << 16


def gauge(name: str, help_: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, GAUGE, help_, labels)


def counter(name: str, help_: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, COUNTER, help_, labels)


def untyped(name: str, help_: str, *labels: str) -> FamilyInfo:
    return FamilyInfo(name, UNTYPED, help_, labels)


class ProcFile:
    """A /proc or /sys file kept open and re-read from offset 0 on every sample."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> str:
        return self.read_bytes().decode("utf-8", "replace")

    def read_bytes(self) -> bytes:
        """The whole file.  Reads until a read returns nothing: /proc tables generated a page at a time
        (seq_file: /proc/net/dev, /proc/diskstats, mountinfo, /proc/net/tcp, /proc/slabinfo...) return
        about 4 KiB per read however much is asked, so a short read is not the end (on a host with
        many interfaces, disks or mounts, stopping there would silently drop rows).  One read more
        than the data needs, ~1 us."""
        chunk = os.pread(self.fd, _READ_SIZE, 0)
        if not chunk:
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
        os.close(self.fd)


def read_once(path: str) -> str | None:
    """A whole small file (sysfs attributes read rarely), or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


class Context:
    """What a collector may need to open its files."""

    def __init__(self, procfs: str = "/proc", sysfs: str = "/sys", filters: Filters | None = None,
                 top_n: int = 0, rootfs: str = "/", udev_data: str = "/run/udev/data",
                 options: dict[str, object] | None = None):
        self.procfs, self.sysfs, self.rootfs, self.udev_data = procfs, sysfs, rootfs, udev_data
        self.filters = filters or Filters()
        self.top_n = top_n
        # Per-collector options by node_exporter's flag name without "--collector.", e.g.
        # options["sysctl.include"] = ["kernel.threads-max"], options["bcache.priorityStats"] = True.
        # A collector reads its own with a default: option("bcache.priorityStats", False).
        self.options: dict[str, object] = dict(options or {})
        # node_exporter's collectors this sampler runs (the Sampler sets it): a collector whose families
        # another one owns when that one runs (loadavg's node_processes_threads, processes) leaves them out.
        self.enabled: frozenset[str] = frozenset()

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

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._kept_open: list[ProcFile] = []

    def open(self, path: str) -> ProcFile:
        """Open a kept-open file; OSError here means the collector is unavailable on this host."""
        pf = ProcFile(path)
        self._kept_open.append(pf)
        return pf

    def collect(self, out: Sample) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for pf in self._kept_open:
            pf.close()
        self._kept_open.clear()


class Sample:
    """One sample: scalars by layout name, arrays as lists of dicts, and the family series.

    ``series`` holds ``(FamilyInfo, label values, value)``; the publisher maps
    each FamilyInfo to its index in the segment's catalog when it packs them.
    """

    __slots__ = ("scalars", "cpus", "net", "disks", "filesystems", "top_cpu", "top_rss", "process_states",
                 "series", "full_time")

    def __init__(self, scalars: dict | None = None, series: list | None = None, **arrays: list[dict]):
        self.scalars: dict[str, float | int] = {} if scalars is None else scalars
        self.series: list[tuple[FamilyInfo, tuple[str, ...], float]] = [] if series is None else series
        # Unix time of the latest sample that ran every collector, when this one replays some (the tiers
        # of Sampler.sample); None: this sample ran them all.
        self.full_time: float | None = None
        for name in ("cpus", "net", "disks", "filesystems", "top_cpu", "top_rss", "process_states"):
            setattr(self, name, arrays.pop(name, []))
        if arrays:
            raise TypeError(f"unknown arrays {sorted(arrays)}")

    def add(self, family: FamilyInfo, labels: tuple[str, ...], value: float) -> None:
        self.series.append((family, labels, value))

    def values(self, family: FamilyInfo) -> dict[tuple[str, ...], float]:
        """The series of one family (tests, debugging)."""
        return {labels: value for fam, labels, value in self.series if fam is family or fam == family}


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
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name == "__main__":  # the docs printer: importing it would print (or rewrite docs)
            continue
        importlib.import_module(f"{__name__}.{module.name}")
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


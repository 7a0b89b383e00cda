"""/proc/spl/kstat/zfs: node_exporter's ``zfs`` collector.

The ZFS module publishes its statistics as kstat files: a header line, a
``name type data`` line, then one line per statistic.  Every unsigned 64-bit
statistic (kstat type 4) of the subsystems node_exporter knows becomes
``node_zfs_<subsystem>_<name>`` (``-`` made ``_``), untyped, its HELP the
kstat path ``kstat.zfs.misc.<file>.<name>``.  Per pool: the ``io`` file's
columns (``node_zfs_zpool_<column>``), each ``objset-*`` dataset's statistics
(``node_zfs_zpool_dataset_<name>``) and the pool's state.  Which statistics
exist depends on the ZFS version, so the families are declared from the files
when the collector starts.
"""

from __future__ import annotations

import fnmatch
import os
from functools import partial

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import (
    Collector,
    Context,
    Missing,
    Sample,
    gauge,
    read_once,
    register,
    untyped,
)
from shm_metrics.publisher.collectors._go_order import add_parts_in_go_order
from shm_metrics.publisher.collectors.learned import LearnedGroup

# node_exporter's subsystem name -> the kstat file it reads.
SUBSYSTEM_FILES = {
    "zfs_abd": "abdstats", "zfs_arc": "arcstats", "zfs_dbuf": "dbuf_stats", "zfs_dmu_tx": "dmu_tx",
    "zfs_dnode": "dnodestats", "zfs_fm": "fm", "zfs_vdev_cache": "vdev_cache_stats",
    "zfs_vdev_mirror": "vdev_mirror_stats", "zfs_xuio": "xuio_stats", "zfs_zfetch": "zfetchstats",
    "zfs_zil": "zil",
}
POOL_STATES = ("online", "degraded", "faulted", "offline", "removed", "unavail")
POOL_STATE = gauge("node_zfs_zpool_state", "kstat.zfs.misc.state", "zpool", "state")
KSTAT_UINT64 = "4"


def _metric_name(stat: str) -> str:
    return stat.replace("-", "_")


def kstat_values(text: str) -> list[list[str]]:
    """[name, type, data] of every statistic of a named kstat file (the lines after ``name type data``)."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.split() == ["name", "type", "data"]:
            # One comprehension over map(): arcstats alone has ~100 statistics, read at every full sample.
            return [parts[:3] for parts in map(str.split, lines[start + 1:]) if len(parts) >= 3]
    return []


def io_values(text: str) -> list[tuple[str, int]]:
    """(column, value) of a pool's ``io`` file: a header line of names starting with nread, then the values."""
    header: list[str] | None = None
    out = []
    for line in text.splitlines():
        parts = line.split()
        if header is None:
            if len(parts) >= 12 and parts[0] == "nread":
                header = parts
            continue
        out.extend((column, int(value)) for column, value in zip(header, parts))
    return out


def _files(pools: list[tuple[str, list[str]]], pattern: str) -> list[str]:
    """What ``glob(f"{base}/*/{pattern}")`` finds, in its order, from the pools' listings."""
    return [f"{path}/{name}" for path, names in pools for name in fnmatch.filter(names, pattern)]


def _pool_of(path: str) -> str:
    return os.path.basename(os.path.dirname(path))


def _state_rows(pool: str, text: str) -> list[tuple[FamilyInfo, tuple, float]]:
    lines = text.splitlines()
    state = lines[0].lower() if lines else ""
    return [(POOL_STATE, (pool, name), 1 if name == state else 0) for name in POOL_STATES]


@register
class Zfs(Collector):
    name = "zfs"
    reports = ("zfs",)
    described = (
        ("node_zfs_<subsystem>_<stat>", "untyped", "", "every uint64 statistic of /proc/spl/kstat/zfs/{arcstats, "
         "abdstats, dbuf_stats, dmu_tx, dnodestats, fm, vdev_cache_stats, vdev_mirror_stats, xuio_stats, "
         "zfetchstats, zil}; HELP kstat.zfs.misc.<file>.<stat>"),
        ("node_zfs_zpool_<column>", "untyped", "zpool", "columns of /proc/spl/kstat/zfs/<pool>/io"),
        ("node_zfs_zpool_dataset_<stat>", "untyped", "zpool, dataset",
         "uint64 statistics of /proc/spl/kstat/zfs/<pool>/objset-*"),
        ("node_zfs_zpool_state", "gauge", "zpool, state", "1 for the pool's state in /proc/spl/kstat/zfs/<pool>/state"),
    )

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._base = f"{ctx.procfs}/spl/kstat/zfs"
        if not os.path.isdir(self._base):
            raise Missing(f"{self._base}: no ZFS module", self._base)
        self._subsystems = []  # (subsystem, file name, kept-open file)
        for subsystem, filename in SUBSYSTEM_FILES.items():
            try:
                self._subsystems.append((subsystem, filename, self.open(f"{self._base}/{filename}")))
            except OSError:
                continue  # statistics of a ZFS version that has this feature
        self._families: dict[str, FamilyInfo] = {}
        self._by_stat: dict[str, dict[str, FamilyInfo | None]] = {}
        for subsystem, filename, pf in self._subsystems:
            for stat, kind, _ in kstat_values(pf.read()):
                if kind == KSTAT_UINT64:
                    self._family(f"node_{subsystem}_{_metric_name(stat)}", f"kstat.zfs.misc.{filename}.{stat}")
        # Pools come and go with imports: their directories are listed every sample, the families declared from
        # the pools present now, and from a pool imported later when it has columns no pool had.
        pools = self._pools()
        for path in _files(pools, "io"):
            for column, _ in io_values(read_once(path) or ""):
                self._family(f"node_zfs_zpool_{_metric_name(column)}", f"kstat.zfs.misc.io.{column}", "zpool")
        for path in _files(pools, "objset-*"):
            for stat, kind, _ in kstat_values(read_once(path) or ""):
                if kind == KSTAT_UINT64:
                    self._family(f"node_zfs_zpool_dataset_{_metric_name(stat)}", f"kstat.zfs.misc.objset.{stat}",
                                 "zpool", "dataset")
        self.declare(POOL_STATE)
        self._pool_files = self.learned_paths()  # each pool's io, objset-* and state, kept open while the pool is there
        # Every subsystem's kstat file in one C call, learned as one program (collectors/learned.py).
        self._subsystem_group = (LearnedGroup([pf for _, _, pf in self._subsystems], self._subsystems_rows)
                                 if self._subsystems else None)

    def _pools(self) -> list[tuple[str, list[str]]]:
        """(pool directory, its entries) for each pool now: one listing each, where three globs over the
        kstat directory took one listing each and a lookup per entry and pattern, in Python."""
        with os.scandir(self._base) as entries:  # the kernel's entry types: no lookup per statistics file
            paths = [e.path for e in entries if not e.name.startswith(".") and e.is_dir()]
        pools = []
        for path in paths:
            try:
                pools.append((path, os.listdir(path)))
            except (NotADirectoryError, FileNotFoundError):  # a pool exported since the listing
                continue
        return pools

    def _family(self, name: str, help_: str, *labels: str) -> FamilyInfo:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = self.declare(untyped(name, help_, *labels))
        return family

    def _pool_rows(self, path: str, parse) -> list[tuple[FamilyInfo, tuple, float]]:
        """A pool file's rows, kept open and learned (collectors/learned.py); one that cannot be read, as empty."""
        try:
            return self._pool_files.rows(path, parse)
        except OSError:
            return parse("")

    def _io_rows(self, pool: str, text: str) -> list[tuple[FamilyInfo, tuple, float]]:
        families = self._families
        rows = []
        for column, value in io_values(text):
            name = f"node_zfs_zpool_{_metric_name(column)}"
            family = families.get(name) or self._family(name, f"kstat.zfs.misc.io.{column}", "zpool")
            rows.append((family, (pool,), value))
        return rows

    def _objset_rows(self, pool: str, text: str) -> list[tuple[FamilyInfo, tuple, float]]:
        families = self._families
        rows = []
        dataset = ""
        for stat, kind, data in kstat_values(text):
            if stat == "dataset_name":
                dataset = data
                continue
            if kind != KSTAT_UINT64:
                continue
            name = f"node_zfs_zpool_dataset_{_metric_name(stat)}"
            family = families.get(name) or self._family(name, f"kstat.zfs.misc.objset.{stat}", "zpool", "dataset")
            rows.append((family, (pool, dataset), int(data)))
        return rows


    def _subsystems_rows(self, texts: list[str | None]) -> list[tuple[FamilyInfo, tuple, float]]:
        rows = []
        for (subsystem, filename, _), text in zip(self._subsystems, texts):
            if text is None:
                raise OSError(f"cannot read {self._base}/{filename}")
            rows += self._subsystem_rows(subsystem, text)
        return rows

    def _subsystem_rows(self, subsystem: str, text: str) -> list[tuple[FamilyInfo, tuple, float]]:
        families = self._families
        by_stat = self._by_stat.setdefault(subsystem, {})  # stat -> its family (None: not one of ours)
        rows = []
        for stat, kind, data in kstat_values(text):
            if kind != KSTAT_UINT64:
                continue
            family = by_stat.get(stat, False)
            if family is False:  # a statistic not seen yet: its name made once, not at every sample
                family = by_stat[stat] = families.get(f"node_{subsystem}_{_metric_name(stat)}")
            if family is not None:
                rows.append((family, (), int(data)))
        return rows

    def collect(self, out: Sample) -> None:
        if self._subsystem_group is not None:
            out.extend(self._subsystem_group.rows())
        pool_parts = []
        try:
            pools = self._pools()
            for pattern, rows_of in (("io", self._io_rows), ("objset-*", self._objset_rows), ("state", _state_rows)):
                for path in _files(pools, pattern):
                    pool_parts.append(self._pool_rows(path, partial(rows_of, _pool_of(path))))
        finally:
            self._pool_files.sweep()
        add_parts_in_go_order(out, pool_parts)

"""Series in the order node_exporter prints them.

The Go client sorts the series of a family by their label values, taken in
the order of the label names sorted (the order the exposition prints them).
The exporter renders series in the order a collector adds them, so the
collectors whose series come from directory listings or unordered files sort
them here first.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Sample

_FAMILY, _VALUES = itemgetter(0), itemgetter(1)
_NAMES_SORTED: dict[tuple[str, ...], bool] = {}  # label names -> declared in sorted order (a few dozen sets)


def _names_sorted(labels: tuple[str, ...]) -> bool:
    known = _NAMES_SORTED.get(labels)
    if known is None:
        known = _NAMES_SORTED[labels] = list(labels) == sorted(labels)
    return known


def add_in_go_order(out: Sample, series: Iterable[tuple[FamilyInfo, tuple[str, ...], float]]) -> None:
    """Add ``series`` to ``out``, each family's series sorted by label values as the Go client does.

    The families come out grouped, in name order: where they go among a sample's rows is the segment's
    business (its rows are sorted by family); only the order within each family is the exposition's."""
    rows = list(series)
    if all(map(_names_sorted, {family.labels for family in set(map(_FAMILY, rows))})):
        # Label names declared sorted (all but a few families): the values' tuple is the key.  Two stable sorts
        # in C, by values then by family, where the fixture tree's zfs, btrfs and bcache had a Python key
        # and a dict append for each of their hundreds of series.
        rows.sort(key=_VALUES)
        rows.sort(key=_FAMILY)
        out.series.extend(rows)
        return
    by_family: dict[str, list[tuple[FamilyInfo, tuple[str, ...], float]]] = {}
    for row in rows:
        by_family.setdefault(row[0].name, []).append(row)
    for family_rows in by_family.values():
        labels = family_rows[0][0].labels
        pick = itemgetter(*sorted(range(len(labels)), key=labels.__getitem__))
        family_rows.sort(key=lambda row: pick(row[1]))
        out.series.extend(family_rows)

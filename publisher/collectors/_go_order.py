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


def add_in_go_order(out: Sample, series: Iterable[tuple[FamilyInfo, tuple[str, ...], float]]) -> None:
    """Add ``series`` to ``out``, each family's series sorted by label values as the Go client does."""
    by_family: dict[str, list[tuple[FamilyInfo, tuple[str, ...], float]]] = {}
    for row in series:
        by_family.setdefault(row[0].name, []).append(row)
    append = out.series.extend
    for rows in by_family.values():
        labels = rows[0][0].labels
        order = sorted(range(len(labels)), key=labels.__getitem__)
        if order == list(range(len(labels))):
            # Label names declared in sorted order (most families): the values' tuple is the key, compared
            # in C (the fixture tree's zfs, btrfs and bcache sort hundreds of series per sample).
            rows.sort(key=itemgetter(1))
        else:
            values_of, pick = itemgetter(1), itemgetter(*order)
            rows.sort(key=lambda row: pick(values_of(row)))
        append(rows)

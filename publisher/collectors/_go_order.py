"""Series in the order node_exporter prints them.

The Go client sorts the series of a family by their label values, taken in
the order of the label names sorted (the order the exposition prints them).
The exporter renders series in the order a collector adds them, so the
collectors whose series come from directory listings or unordered files sort
them here first.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from operator import itemgetter

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Sample, numbers
from shm_metrics.publisher.collectors.numbers import Block, FixedSeries

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
    out.series += _sorted(list(series))


def add_parts_in_go_order(out: Sample, parts: Iterable[list[tuple[FamilyInfo, tuple[str, ...], float]] | Block],
                          ) -> None:
    """``add_in_go_order`` for parts that are lists of rows or Blocks (``LearnedFile.rows``).  Blocks alone
    (the usual sample: every file served by its program) come out as one block, in an order found once for
    their families and labels: no tuple per series."""
    parts = [part for part in parts if part]
    if not (parts and numbers.take is not None and all(type(part) is Block for part in parts)):
        add_in_go_order(out, [row for part in parts for row in (part.rows() if type(part) is Block else part)])
        return
    key = tuple(part.fixed for part in parts)
    found = _BLOCK_ORDERS.get(key)
    if found is None:
        if len(_BLOCK_ORDERS) >= 32:  # programs learned anew make new keys: the old ones go (a few live ones)
            _BLOCK_ORDERS.clear()
        # The sort of the rows, with each row's place among the blocks' values in place of its value.
        places = _sorted([row for fixed, at in zip(key, _starts(key))
                          for row in zip(fixed.families, fixed.labels, range(at, at + len(fixed)))])
        found = _BLOCK_ORDERS[key] = (FixedSeries(list(map(_FAMILY, places)), list(map(_VALUES, places))),
                                      array("I", map(_PLACE, places)))
    fixed, order = found
    values = bytearray(8 * len(order))
    numbers.take(b"".join([part.values for part in parts]), order, None, values, 8, 0)
    out.add_block(fixed, bytes(values))


_PLACE = itemgetter(2)
# (each block's FixedSeries, in order) -> (their series sorted, each one's place among the blocks' values)
_BLOCK_ORDERS: dict[tuple[FixedSeries, ...], tuple[FixedSeries, array]] = {}


def _starts(blocks: tuple[FixedSeries, ...]) -> list[int]:
    out, at = [], 0
    for fixed in blocks:
        out.append(at)
        at += len(fixed)
    return out


def _sorted(rows: list[tuple]) -> list[tuple]:
    """``rows`` with each family's sorted by label values (its label names' order), families by name."""
    if all(map(_names_sorted, {family.labels for family in set(map(_FAMILY, rows))})):
        # Label names declared sorted (all but a few families): the values' tuple is the key.  Two stable sorts
        # in C, by values then by family, where the fixture tree's zfs, btrfs and bcache had a Python key
        # and a dict append for each of their hundreds of series.
        rows.sort(key=_VALUES)
        rows.sort(key=_FAMILY)
        return rows
    by_family: dict[str, list[tuple]] = {}
    for row in rows:
        by_family.setdefault(row[0].name, []).append(row)
    out = []
    for family_rows in by_family.values():
        labels = family_rows[0][0].labels
        pick = itemgetter(*sorted(range(len(labels)), key=labels.__getitem__))
        family_rows.sort(key=lambda row: pick(row[1]))
        out += family_rows
    return out

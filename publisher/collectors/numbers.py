"""The fast path of the CORE collectors: a file's numbers re-read in place (issue 16).

At 1 Hz the publisher runs with cold caches, and there every Python object made per value (a token, an int,
a tuple per series) costs more than the kernel's work for the file: /proc/meminfo costs ~130 us of CPU
through the Python parser and ~22 us through ``publisher/_scan.c``, ~17 us of which the kernel spends.

So a CORE collector parses its file in Python (the meaning stays there, in one place) and, from that very
read, makes a ``Program``: which of the file's numbers each of its values is.  Its samples (grid and full
alike) then re-read only the numbers (``Program.values``), check that the file kept the structure the program
was made for (the signature: its words and how many numbers stand where), and give the encoder one block of
values for a ``FixedSeries`` instead of a tuple per series.  When the structure moves (a disk, an interface,
a CPU came or went), the sample takes the Python path, which makes a new program.  A program is kept only when,
applied to the numbers of the read it was made from, it gives exactly the values the Python parse gave.

Without the extension (not compiled on this host), or with ``SHM_METRICS_NO_FAST_PATH=1`` in the
environment (to compare, or to rule the fast path out), ``AVAILABLE`` is False and collectors always take
their Python path.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from shm_metrics.families import FamilyInfo

_NO_LIMIT = float("inf")  # values(): no number is too large for a Program (it takes doubles as they are)

if TYPE_CHECKING:
    from shm_metrics.publisher.collectors import ProcFile


_scan = None
if not os.environ.get("SHM_METRICS_NO_FAST_PATH"):
    try:
        from shm_metrics.publisher import _scan
    except ImportError:  # built without a C compiler: the Python parsers alone
        pass

AVAILABLE = _scan is not None
# take(src, index, factors, dst, stride, offset): dst's double at offset + r * stride = src[index[r]] (times
# factors[r]), in C: the series encoder drops a sample's values into its rows with it.  None without the extension.
take = None if _scan is None else _scan.take
# stat_states(fds, states, threads): the state letters (and num_threads) of kept stat files, in C
# (publisher/processes.py's ProcessCounter).  None without the extension.
stat_states = None if _scan is None else _scan.stat_states

_SEPARATORS = re.compile(rb"[ \t\r:/]+")
_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?")
_LONGEST_NUMBER = 64  # a longer token is a word for _scan.c too


def is_decimal(token: bytes) -> bool:
    """Whether _scan.c reads ``token`` (between its separators) as a number: [-]digits[.digits], shorter than 64."""
    return len(token) < _LONGEST_NUMBER and _NUMBER.fullmatch(token) is not None


class Shape(NamedTuple):
    """What one read of a file says of its structure (``_scan.numbers``): a program is made for one shape."""

    signature: int  # of its words and of how many numbers stand where
    count: int  # how many numbers it has


class FixedSeries:
    """The series a collector's fast path gives values for: families and label values in the order of the
    values.  The same object while the file keeps its structure (the encoder compares it by identity)."""

    __slots__ = ("families", "labels")

    def __init__(self, families: Sequence[FamilyInfo], labels: Sequence[tuple[str, ...]]):
        self.families = tuple(families)
        self.labels = tuple(labels)

    def __len__(self) -> int:
        return len(self.families)

    def rows(self, values: bytes) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        """The series as tuples (``Sample.all_series``, tests)."""
        return list(zip(self.families, self.labels, memoryview(values).cast("d").tolist()))


class Block(NamedTuple):
    """Series as one block of values (``Sample.extend``): no tuple per series."""

    fixed: FixedSeries
    values: bytes  # doubles, in fixed's order

    def rows(self) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        return self.fixed.rows(self.values)


class Program:
    """Where a collector's values are among its file's numbers, for one structure of the file."""

    __slots__ = ("shape", "positions", "factors", "fixed")

    def __init__(self, shape: Shape, positions: Sequence[int], factors: Sequence[float],
                 fixed: FixedSeries | None = None):
        self.shape = shape
        self.positions = array("I", positions)
        self.factors = array("d", factors)
        self.fixed = fixed

    def values(self, numbers: Numbers) -> bytes | None:
        """Read the file again: the values (doubles, scaled) at the positions, or None when the file has
        another structure now (then the collector's Python parse runs and makes a new program)."""
        return _scan.values(numbers.fd, numbers.values, *self.shape, self.positions, self.factors, _NO_LIMIT, b"", b"",
                            numbers.hex, numbers.whole)

    def take(self, numbers: array) -> bytes:
        """The values (doubles, scaled) at the positions of numbers already read."""
        out = bytearray(8 * len(self.positions))
        _scan.take(numbers, self.positions, self.factors, out, 8, 0)
        return bytes(out)

    def gives(self, numbers: array, values: Sequence[float]) -> bool:
        """Whether the program reproduces ``values`` from ``numbers`` (the same read): else it is not kept."""
        if len(values) != len(self.positions) or self.shape.count > len(numbers):
            return False  # (the file grew between two reads: numbers holds only its beginning)
        return memoryview(self.take(numbers)).cast("d").tolist() == [float(v) for v in values]


class Numbers:
    """The numbers of a kept-open file (``ProcFile``), re-read in place: ``values`` holds them after ``read``."""

    def __init__(self, fd: int, capacity: int = 128, hex: bool = False, whole: bool = False):
        self.fd = fd
        self.values = array("d", bytes(8 * capacity))
        self.hex = hex  # its numbers are hexadecimal digits (_scan.c's hex)
        self.whole = whole  # the kernel writes the file whole in one read (ProcFile.whole, _scan.c's whole)

    @classmethod
    def of(cls, file: ProcFile, hex: bool = False) -> Numbers:
        """The numbers of ``file``, read as it comes (``ProcFile.whole``)."""
        return cls(file.fd, hex=hex, whole=file.whole)

    def read(self, text: bool = False) -> tuple[int, int, bytes | None]:
        """(how many numbers, the structure's signature, the file's bytes when ``text``)."""
        count, signature, raw = _scan.numbers(self.fd, self.values, text, self.hex, self.whole)
        if count > len(self.values):  # a larger file than last time: room for it and read again
            self.values = array("d", bytes(8 * 2 * count))
            count, signature, raw = _scan.numbers(self.fd, self.values, text, self.hex, self.whole)
        return count, signature, raw


def read_text(file: ProcFile, numbers: Numbers | None) -> tuple[str, bytes | None, Shape | None]:
    """The file's text for a collector's Python parse, and, with the fast path on, the bytes and shape of
    that very read (for its program: ``numbers.values`` then holds its numbers)."""
    if numbers is None:
        return file.read(), None, None
    count, signature, raw = numbers.read(text=True)
    return raw.decode("utf-8", "replace"), raw, Shape(signature, count)


def tokens(raw: bytes) -> list[list[tuple[bytes, int | None]]]:
    """The file as ``numbers`` splits it: per line, its tokens with their index among the file's numbers
    (None for a word).  For making programs: a collector finds its values' places here."""
    lines, index = [], 0
    for line in raw.split(b"\n"):
        row = []
        for token in _SEPARATORS.split(line):
            if not token:
                continue
            if is_decimal(token):
                row.append((token, index))
                index += 1
            else:
                row.append((token, None))
        lines.append(row)
    return lines

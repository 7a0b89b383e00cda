"""/proc/meminfo: node_exporter's ``meminfo`` collector, every field this kernel has.

node_memory_<Key>[_bytes]: ``Active(anon)`` becomes ``Active_anon``; a value
with a unit (kB) is multiplied by 1024 and its name gets ``_bytes``.  The
fields are the kernel's, so the families are declared from the file itself
when the collector starts (a field the kernel lacks is never exported).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from itertools import compress, repeat
from operator import itemgetter, mul
from typing import TYPE_CHECKING

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, counter, gauge, numbers, register

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

_PARENS = re.compile(r"\((.*)\)")
_LINE = re.compile(r"^([^:\n]+):[ \t]*(\d+)( kB)?", re.M)  # key, value, unit
_KEY, _NUMBER = itemgetter(0), itemgetter(1)
# The layout's scalars and the meminfo keys they come from.
_SCALARS = {"MemTotal": "mem_total_bytes", "MemFree": "mem_free_bytes", "MemAvailable": "mem_available_bytes",
            "Buffers": "mem_buffers_bytes", "Cached": "mem_cached_bytes", "SwapTotal": "swap_total_bytes",
            "SwapFree": "swap_free_bytes"}


def _family(raw_key: str, has_unit: bool) -> FamilyInfo:
    key = _PARENS.sub(r"_\1", raw_key) + ("_bytes" if has_unit else "")
    kind = counter if key.endswith("_total") else gauge
    return kind(f"node_memory_{key}", f"Memory information field {key}.")


@register
class Meminfo(Collector):
    name = "memory"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("meminfo",)
    described = (("node_memory_<Field>_bytes", "gauge", "", "every /proc/meminfo line with a unit (kB x 1024); "
                  "Active(anon) becomes Active_anon; HELP \"Memory information field <Field>_bytes.\""),
                 ("node_memory_<Field>", "gauge", "", "every /proc/meminfo line without a unit (HugePages_*)"))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/meminfo", whole=True)
        self._by_key: dict[str, FamilyInfo] = {}
        for line in self._file.read().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                self._by_key[key] = _family(key, len(parts) > 1)
        self.families = tuple(self._by_key.values())
        self._keys: tuple[str, ...] = ()
        self._factors: list[int] = []
        self._families: list[FamilyInfo | None] = []
        self._numbers = numbers.Numbers.of(self._file) if numbers.AVAILABLE else None
        self._program: numbers.Program | None = None  # the series' values, then the scalars' (_SCALARS)

    def collect(self, out: Sample) -> None:
        # One regular expression over the file and map/zip to the series, all in C: this runs every interval
        # with cold caches, where each bytecode per line costs (issue 16).
        text, raw, shape = numbers.read_text(self._file, self._numbers)
        rows = _LINE.findall(text)
        keys = tuple(map(_KEY, rows))
        if keys != self._keys:
            self._plan(keys, rows)
        values = list(map(mul, map(int, map(_NUMBER, rows)), self._factors))
        series = list(compress(zip(self._families, repeat(()), values), self._families))
        out.series += series
        mem = dict(zip(keys, values))
        _put_scalars(out, [mem.get(key, 0) for key in _scalar_keys(mem)])
        if shape is not None and (self._program is None or self._program.shape != shape):
            self._program = self._make_program(raw, shape, series, mem)

    def fast(self, out: Sample) -> bool:
        """The same values from the numbers alone, while /proc/meminfo keeps its lines (collectors/numbers.py)."""
        program = self._program
        if program is None:
            return False
        values = program.values(self._numbers)
        if values is None:
            return False
        split = 8 * len(program.fixed)
        out.add_block(program.fixed, values[:split])
        _put_scalars(out, list(map(int, memoryview(values)[split:].cast("d").tolist())))
        return True

    def compile(self, built: Builder) -> bool:
        """The fast path's values, and used memory and swap (publisher/compiled.py)."""
        program = self._program
        if program is None:
            return False
        regs = built.program(built.file(self._numbers, program.shape), program)
        n = len(program.fixed)
        built.series(program.fixed.families, program.fixed.labels, regs[:n])
        scalars = dict(zip(_SCALARS.values(), regs[n:]))
        for name, reg in scalars.items():
            built.scalar(name, reg)
        built.scalar("mem_used_bytes", built.subtract(scalars["mem_total_bytes"], scalars["mem_available_bytes"]))
        built.scalar("swap_used_bytes", built.subtract(scalars["swap_total_bytes"], scalars["swap_free_bytes"]))
        return True

    def _make_program(self, raw: bytes, shape: numbers.Shape, series: list, mem: dict[str, int],
                      ) -> numbers.Program | None:
        """Where each series' value and each scalar's are among the file's numbers (None: a scalar's key is
        missing, or the program would not give the Python parse's values; the Python path then runs every
        sample)."""
        where: dict[str, tuple[int, int]] = {}  # key -> (number index, factor)
        lines = numbers.tokens(raw)
        for line in lines:
            if len(line) >= 2 and line[0][1] is None and line[1][1] is not None:
                unit = len(line) > 2 and line[2][0] == b"kB"
                where.setdefault(line[0][0].decode("utf-8", "replace"), (line[1][1], 1024 if unit else 1))
        scalar_keys = _scalar_keys(where)
        if not all(key in where for key in scalar_keys):
            return None
        keys = [key for key, family in zip(self._keys, self._families) if family is not None]
        fixed = numbers.FixedSeries([family for family in self._families if family is not None], [()] * len(keys))
        program = numbers.Program(shape, [where[k][0] for k in (*keys, *scalar_keys)],
                                  [where[k][1] for k in (*keys, *scalar_keys)], fixed)
        if program.gives(self._numbers.values, [*(value for _, _, value in series), *(mem[k] for k in scalar_keys)]):
            return program
        return None

    def _plan(self, keys: tuple[str, ...], rows: list[tuple[str, str, str]]) -> None:
        """Each line's unit factor and family (None for a field the catalog lacks), for these lines."""
        self._keys = keys
        self._factors = [1024 if unit else 1 for _, _, unit in rows]
        self._families = [self._by_key.get(key) for key in keys]


def _scalar_keys(present: Collection[str]) -> list[str]:
    """The meminfo keys of the layout's scalars, in _SCALARS' order: MemAvailable falls back to MemFree
    (kernels before 3.14)."""
    return [key if key in present or key != "MemAvailable" else "MemFree" for key in _SCALARS]


def _put_scalars(out: Sample, by_key: list[int]) -> None:
    """The layout's memory scalars from the values of ``_scalar_keys``."""
    scalars = dict(zip(_SCALARS.values(), by_key))
    scalars.update(mem_used_bytes=max(0, scalars["mem_total_bytes"] - scalars["mem_available_bytes"]),
                   swap_used_bytes=max(0, scalars["swap_total_bytes"] - scalars["swap_free_bytes"]))
    out.scalars.update(scalars)

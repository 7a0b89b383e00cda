"""The grid sample compiled: the CORE collectors' reads, their arithmetic and the segment's stores as two C
calls (issue 16).

At 1 Hz the publisher runs with cold caches, where every Python bytecode of a grid sample costs several
times its hot price: ~750 us of CPU for values whose reading costs the kernel ~150 us.  Most of that
sample repeats itself: the same files, the same numbers at the same places, the same arithmetic, the same
bytes of the segment.  So after a grid sample of the Python path, each CORE collector describes its values
to a ``Builder`` (``Collector.compile``): which number of which file each one is, the arithmetic of the
derived ones (a CPU's busy share, used memory, the totals over the arrays), and where each one goes (a
scalar, a field of an array row, a family series).  The segment turns those places into byte offsets
(``OwnedSegment.locate``).  The next grid samples then run ``_scan.run`` (read every source, check that
the host kept its structure, compute the registers) and ``_scan.store`` (the registers into the segment,
inside the seqlock's write window); the bytes of everything else (labels, the families replayed from the
last full sample) are already there.

A program is trusted only once it reproduced the Python path: compiled after one Python grid sample, it
runs over the very numbers the next Python grid sample read, and its bytes must equal that sample's bytes
everywhere but the header and the history ring (so a value that changed and that no place covers fails the
check too).  It is dropped, and the Python path samples, whenever the host's structure changes (a file's
layout, a mount, a failed statvfs), the segment's series move (a full sample brought other series, a new
generation), a collector's own deadline passes and what it reads again then changed (diskstats' udev data),
a collector unavailable at start is retried (the path it lacked appeared), or the sample is full or runs the
per-process scan.  Collectors whose state carries from
one sample to the next (the CPU ticks of the busy share, the process count's marks) hand it over both ways.
"""

from __future__ import annotations

import logging
import math
import os
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import numbers

if TYPE_CHECKING:
    from shm_metrics.publisher.sampler import Sampler
    from shm_metrics.publisher.segment import OwnedSegment

log = logging.getLogger(__name__)

_scan = numbers._scan
# SHM_METRICS_NO_COMPILED=1: grid samples in Python only (to compare, or to rule this module out).
AVAILABLE = numbers.AVAILABLE and not os.environ.get("SHM_METRICS_NO_COMPILED")

# _scan.c's source kinds and ops
FILE, STATVFS, POLL, DIRECTORY, BOOTTIME = range(5)
TAKE, SUBPOS, SUM, BUSY, PIDS, MUL, SAME = range(1, 8)
# How long compiling is not tried again after programs that failed their check in a row.
FAILURES_BEFORE_BACKOFF = 3
BACKOFF_SECONDS = 60.0


class Builder:
    """What the CORE collectors' ``compile`` methods describe: sources, registers and ops, and places.

    A place is ``("scalar", field)``, ``("row", array, index, field)`` or ``("series", family, labels)``;
    the segment finds its bytes."""

    def __init__(self) -> None:
        self.sources: list[tuple] = []
        self.ops = array("q")
        self.registers = array("d")
        self.places: list[tuple[int, tuple]] = []
        self.deadlines: list[tuple[float, Callable[[float], float | None] | None]] = []
        self.states: list[tuple[int, int, Callable[[], Sequence[float] | None], Callable[[list[float]], None]]] = []
        self.on_change: list[Callable[[], None]] = []
        self._constants: dict[float, int] = {}
        self._files: dict[tuple, int] = {}

    # --- sources
    def file(self, numbers_: numbers.Numbers, shape: numbers.Shape) -> int:
        """A kept-open file read by ``Numbers``, expected to keep ``shape``; read once when two collectors
        read the same file (loadavg and the process count: /proc/loadavg)."""
        st = os.fstat(numbers_.fd)
        key = (st.st_dev, st.st_ino, shape)
        if key not in self._files:
            self.sources.append((FILE, numbers_.fd, numbers_.values, shape.signature, shape.count, numbers_.whole))
            self._files[key] = len(self.sources) - 1
        return self._files[key]

    def statvfs(self, path: str, work: array) -> int:
        """statvfs(path) into work[0..5]: f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree."""
        self.sources.append((STATVFS, path.encode("utf-8", "surrogateescape"), work))
        return len(self.sources) - 1

    def poll(self, fd: int, on_change: Callable[[], None]) -> None:
        """A descriptor whose POLLPRI/POLLERR means the structure changed (mountinfo: a mount came or went).

        Polling mountinfo consumes its event, so the collector that also polls it would never see a change
        the program saw first: ``on_change`` is called whenever a run finds the host changed (this
        descriptor's event or another source's), and must make the collector look again."""
        self.sources.append((POLL, fd))
        self.on_change.append(on_change)

    def boottime(self, work: array) -> int:
        """CLOCK_BOOTTIME into work[0], as /proc/uptime prints it (what its first number is, without a read)."""
        self.sources.append((BOOTTIME, work))
        return len(self.sources) - 1

    def directory(self, path: str, work: array) -> int:
        """A directory whose all-digit names a ``pids`` op counts into work[0]."""
        self.sources.append((DIRECTORY, path.encode("utf-8", "surrogateescape"), work))
        return len(self.sources) - 1

    # --- registers and ops
    def allocate(self, count: int = 1, values: Sequence[float] = ()) -> int:
        base = len(self.registers)
        self.registers.extend([*values, *([0.0] * (count - len(values)))])
        return base

    def constant(self, value: float) -> int:
        reg = self._constants.get(value)
        if reg is None:
            reg = self._constants[value] = self.allocate(1, (value,))
        return reg

    def _op(self, op: int, a: int = 0, b: int = 0, c: int = 0) -> int:
        dst = self.allocate()
        self.ops.extend((op, dst, a, b, c))
        return dst

    def take(self, source: int, positions: Sequence[int], factors: Sequence[float]) -> list[int]:
        """The registers of the numbers at ``positions`` of a source, each scaled by its factor (negative:
        divided by its opposite, as ``Program`` does)."""
        scales = [self.constant(factor) for factor in factors]  # first: the values' registers are consecutive
        return [self._op(TAKE, source, position, scale) for position, scale in zip(positions, scales, strict=True)]

    def program(self, source: int, program: numbers.Program) -> list[int]:
        """The registers of a collector's ``Program``'s values, in its order."""
        return self.take(source, program.positions, program.factors)

    def subtract(self, a: int, b: int) -> int:
        """max(0, a - b)"""
        return self._op(SUBPOS, a, b)

    def total(self, registers: Sequence[int]) -> int:
        """The sum of registers equally spaced (a column of an array), in their order."""
        if len(registers) < 2:
            return self._op(SUM, registers[0] if registers else 0, len(registers), 0)
        stride = registers[1] - registers[0]
        if any(b - a != stride for a, b in zip(registers, registers[1:])):
            raise ValueError("a total of registers that are not equally spaced")
        return self._op(SUM, registers[0], len(registers), stride)

    def busy(self, ticks: Sequence[int], get: Callable[[], Sequence[float] | None],
             put: Callable[[list[float]], None]) -> int:
        """The busy share of 8 consecutive tick registers against the previous sample's (a state)."""
        if list(ticks) != list(range(ticks[0], ticks[0] + 8)):
            raise ValueError("busy() takes 8 consecutive registers")
        previous = self.state(8, get, put)
        return self._op(BUSY, ticks[0], previous)

    def pids(self, marks: Sequence[int] | None, directory: int, get: Callable[[], Sequence[float] | None] = list,
             put: Callable[[list[float]], None] = list) -> int:
        """work[0] of the directory source, counted again when the two marks moved (a state), or every
        sample without marks."""
        if marks is None:
            return self._op(PIDS, -1, -1, directory)
        if list(marks) != [marks[0], marks[0] + 1]:
            raise ValueError("pids() takes 2 consecutive mark registers")
        return self._op(PIDS, marks[0], self.state(2, get, put), directory)

    def multiply(self, a: int, b: int) -> int:
        return self._op(MUL, a, b)

    def unchanged(self, register: int, value: float) -> None:
        """The sample stops being compiled when the register is no longer ``value``: for a value left as the
        Python path wrote it (an integer beyond a double's 2**53, as file-max often is)."""
        self._op(SAME, register, self.constant(float(value)))

    def state(self, width: int, get: Callable[[], Sequence[float] | None],
              put: Callable[[list[float]], None]) -> int:
        """Registers that carry a collector's state from sample to sample: ``get`` gives it after a Python
        sample (None: zeros), ``put`` hands the registers back before one."""
        base = self.allocate(width)
        self.states.append((base, width, get, put))
        return base

    # --- places
    def scalar(self, name: str, register: int) -> None:
        self.places.append((register, ("scalar", name)))

    def row(self, section: str, index: int, field: str, register: int) -> None:
        self.places.append((register, ("row", section, index, field)))

    def series(self, families: Sequence[FamilyInfo], labels: Sequence[tuple[str, ...]],
               registers: Sequence[int]) -> None:
        for family, label_values, register in zip(families, labels, registers, strict=True):
            self.places.append((register, ("series", family, label_values)))

    def until(self, deadline: float, renew: Callable[[float], float | None] | None = None) -> None:
        """The program is dropped at this monotonic time (a collector re-reads something then), unless ``renew``,
        called then with the time, finds that what the program repeats did not change and gives the next
        deadline (diskstats' udev data read again: a few small files, not a Python sample and a new program)."""
        self.deadlines.append((deadline, renew))


class Program:
    """A Builder's result, placed in one segment's bytes."""

    def __init__(self, built: Builder, segment: OwnedSegment, sinks: array):
        self.sources = tuple(built.sources)
        self.ops = built.ops
        self.constants = array("d", built.registers)  # before any state is loaded: part of what it computes
        self.registers = built.registers
        self.states = built.states
        self.deadlines = tuple(built.deadlines)
        self.valid_until = min((deadline for deadline, _ in self.deadlines), default=math.inf)
        self.on_change = tuple(built.on_change)
        self.sinks = sinks
        self.segment = segment
        self.shape = segment.shape()
        self.image = segment.sample_image()  # the bytes it was compiled against, for its check
        self.checked = False
        self.ran = False  # since the last Python sample: its states are the current ones

    def same_as(self, other: Program) -> bool:
        """Whether two programs read, compute and write alike (the same sources, ops, constants and sinks)."""
        return (self.sources == other.sources and self.ops == other.ops and self.constants == other.constants
                and self.sinks == other.sinks)

    def run(self, publish: bool) -> bool:
        """Read every source and compute; False when the host changed shape (the owners of polled
        descriptors are told, since the run may have consumed the event they wait for)."""
        if _scan.run(self.sources, self.ops, self.registers, publish):
            return True
        for changed in self.on_change:
            changed()
        return False

    def renew(self, now: float) -> bool:
        """Past ``valid_until``: every deadline due renewed by its collector (the program holds, until the
        earliest next one), or False (it is to be dropped)."""
        deadlines = []
        for deadline, renew in self.deadlines:
            if deadline <= now:
                deadline = renew(now) if renew is not None else None
                if deadline is None:
                    return False
            deadlines.append((deadline, renew))
        self.deadlines = tuple(deadlines)
        self.valid_until = min(deadline for deadline, _ in deadlines)
        return True

    def load_states(self) -> None:
        regs = self.registers
        for base, width, get, _ in self.states:
            values = get()
            regs[base:base + width] = array("d", values if values is not None else [0.0] * width)

    def hand_back(self) -> None:
        if self.ran:
            regs = self.registers
            for base, width, _, put in self.states:
                put(regs[base:base + width].tolist())
            self.ran = False

    def reproduces(self, segment: OwnedSegment) -> bool:
        """Run over the numbers the Python path just read: are its bytes that sample's?"""
        image, self.image = self.image, None  # a copy of the segment: not kept for the program's life
        if image is None or not self.run(False):
            return False
        _scan.store(self.registers, segment.image_sinks(self.sinks), image)
        return image == segment.sample_image()


class CompiledGrid:
    """Runs grid samples through a compiled program while it holds, and compiles one when it does not."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.program: Program | None = None
        self.compiled_samples = 0  # grid samples published through a program (tests, logs)
        self._failures = 0
        self._backoff_until = -math.inf
        self._refused: str | None = None  # why the collectors cannot compile (logged once per reason)

    def sample(self, segment: OwnedSegment, wall_time: float, monotonic: float, overruns: int) -> bool:
        """One grid sample through the program, published; False (nothing done) when there is none that
        holds: the caller takes the Python path."""
        p = self.program
        # (The segment's shape is checked after each Python sample, the only kind that may change it.)
        if (p is None or not p.checked or p.segment is not segment
                or monotonic >= p.valid_until and not p.renew(monotonic)
                or not self.sampler.grid_compilable(monotonic)):
            return False
        if not p.run(True):
            self.program = None  # the host changed shape: the Python path, and a new program from it
            p.hand_back()  # what the program carried since the last Python sample, if it ran since
            return False
        p.ran = True
        segment.publish_registers(p.registers, p.sinks, wall_time, monotonic, time.monotonic() - monotonic,
                                  overruns, self.sampler.last_full_time)
        self.compiled_samples += 1
        return True

    def before_python(self) -> None:
        """Before a Python sample: the collectors get back the state the program carried."""
        if self.program is not None:
            self.program.hand_back()

    def after_python(self, segment: OwnedSegment, grid: bool) -> None:
        """After a Python sample (``grid``: a grid sample without the scan): keep, check or make a program."""
        if not AVAILABLE:
            return
        p = self.program
        now = time.monotonic()
        if p is None and not grid:
            return  # nothing to keep, and programs are made from grid samples (an --always-full publisher)
        shape = segment.shape()
        if p is not None and p.segment is segment and p.shape == shape and now < p.valid_until:
            if p.checked or not grid:
                if not p.checked:  # a full sample before the check: the check starts from its bytes
                    p.image = segment.sample_image()
                p.load_states()
                return
            if p.reproduces(segment):
                p.checked, self._failures = True, 0
                p.load_states()
                log.debug("grid samples compiled: %d sources, %d ops, %d places",
                          len(p.sources), len(p.ops) // 5, len(p.sinks) // 3)
                return
            self._failures += 1
            if self._failures >= FAILURES_BEFORE_BACKOFF:
                self._failures = 0
                self._backoff_until = time.monotonic() + BACKOFF_SECONDS
                log.info("the compiled grid sample did not reproduce the Python path %d times in a row: "
                         "not tried for %g s", FAILURES_BEFORE_BACKOFF, BACKOFF_SECONDS)
        self.program = None
        if grid and now >= self._backoff_until and self.sampler.grid_compilable(now):
            self.program = self._compile(segment)
            if (self.program is not None and p is not None and p.checked and p.segment is segment
                    and p.shape == shape and self.program.same_as(p)):
                # Past a deadline (diskstats' udev data read again) with nothing changed: checked already.
                self.program.checked, self.program.image = True, None

    def _compile(self, segment: OwnedSegment) -> Program | None:
        built = Builder()
        refused = self.sampler.compile(built)
        sinks = None if refused is not None else segment.locate(built.places)
        if sinks is None:
            refused = refused or "a value's place is not in the segment (rows beyond a section's capacity?)"
            if refused != self._refused:  # once per reason
                self._refused = refused
                log.info("grid samples run in Python: %s", refused)
            return None
        program = Program(built, segment, sinks)
        program.load_states()
        return program

"""A collector's parse of a file, learned as a program of its numbers (issue 16: full samples cost less).

A scrape's full sample runs dozens of parsers over text whose structure is the same every time: /proc/zoneinfo,
a NUMA node's meminfo, /proc/self/mountstats, /proc/net/rpc/nfs...  Only their numbers move.  The CORE
collectors say by hand where each of their values is among their file's numbers (``numbers.Program``); a
collector with one parser per file gets the same from ``LearnedFile``, without writing a second parser:

* the collector's parse runs on the file as read, and again on copies of it whose numbers were replaced by
  markers (every number a distinct large value, then each marker + 1, then every number 0, then every number
  ``TELLING``, which tells x * 0.001 from x / 1000, then distinct values near 2**52);
* a row whose value is a number of the file times a factor (one of ``FACTORS``: kB, sectors, pages, ms, ns...)
  shows which number and which factor in the markers' values; a row whose value no marker moved comes from the
  file's words (which the file's shape covers) and is a constant;
* a number whose marker changed the rows themselves (their families or labels: a NUMA node's number, a mount
  point's digits; or whether the parse accepts the file: a state id must be below 2**32) is structural: it
  is left as it is in the copies, and every later read checks it kept its value;
* so is a number some row's value depends on otherwise than as number x factor (a link rate parsed as a
  float32, a sum): that row is a constant while the number keeps its value;
* and a number beyond 2**53, where a double's integers end (a parse may wrap it, as mountstats' times): it is
  checked byte for byte.  A number that grows beyond 2**53 later makes the program stand aside for that read
  (the parse runs).

The program is kept only when all of that holds for every row, and it reproduces the real read's values.  From
then on a sample re-reads only the numbers (``_scan.values``, which checks the file kept its shape) and hands
them on as one ``Block`` of doubles for the program's ``FixedSeries`` (its families and labels, the same object
while the program stands): no Python per line, no tuple per series, down to the segment's rows (the series
encoder drops the values into place in C; ``_go_order.add_parts_in_go_order`` sorts blocks by a permutation
found once).  When the shape moves, or a structural number,
the parse runs again and a program is learned from that read.  A file that keeps moving is learned less and
less often (``_wait``).

``LearnedGroup`` does the same for several files read as one text by one C call (an interface's attributes,
a chip's readings, a btrfs filesystem's files), and ``LearnedPaths`` keeps files and groups by path for the
collectors that find them by listing a directory every sample (a listing decides which files; the files stay
open while samples read them).

What the parse may not do: decide whether a row exists from a value in a way that neither 0 nor a marker
shows, or declare a family from a number's value (keep family names to the file's words).  A parse that
changes its rows under every copy gets no program: it runs every sample.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Callable, Sequence

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import ProcFile, Sample, numbers, same_file

Row = tuple[FamilyInfo, tuple[str, ...], float]
ASIDE = object()  # a read the program does not serve, though the file kept its shape
Parse = Callable[[str], list[Row]]

# What a row's value may be of its number: a factor, or (negative) a divisor, as _scan.c scales.
FACTORS = (1.0, 1024.0, 512.0, 4096.0, 16384.0, 65536.0, 8.0, 1000.0, 1e6, 1e9, 1e-3, 1e-6, 1e-9,
           -10.0, -100.0, -1000.0, -1e6, -1e9, -1024.0, -8.0)
# A number with which x * 1e-3 and x / 1000 differ (likewise 1e-6, 1e-9): a copy with every number at it tells
# which of the two a parse computes (the markers may not).
TELLING = next(n for n in range(1, 1 << 20) if all(n * (1 / d) != n / d for d in (1e3, 1e6, 1e9)))
EXACT = float(1 << 53)  # a number from here on: the program stands aside (a parse may wrap it; int() keeps it exact)
MARK = 1 << 30  # number k becomes MARK + 2k, then MARK + 2k + 1: exact in a double, and no number of its own
# Then HUGE + 2k: a parse that refuses large values (a state id below 2**32) keeps those numbers (structural).
HUGE = 1 << 52
MAX_TRIALS = 64  # parses spent finding the structural numbers before giving up on a file
_TOKEN = re.compile(rb"[^ \t\n:\r/]+")  # _scan.c's tokens: its separators are these six bytes
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")


def _is_hex(token: bytes) -> bool:
    return _HEX.fullmatch(token) is not None


def _scaled(value: float, factor: float) -> float:
    return value / -factor if factor < 0 else value * factor


class _Program:
    """Rows from the numbers of one shape of the file."""

    __slots__ = ("shape", "context", "positions", "factors", "fixed", "mapped", "structural", "constants",
                 "order", "uses", "exact", "exact_text")

    def __init__(self, shape: numbers.Shape, context: object, rows: Sequence[Row], sources: list,
                 structural: dict[int, float], exact: dict[int, bytes]):
        """``sources[i]``: (position, factor) of row i's number, or None for a constant; ``structural``: the
        numbers checked by value, ``exact``: by their bytes (beyond a double's integers)."""
        self.shape = shape
        self.context = context
        self.exact = array("I", sorted(exact))
        self.exact_text = b"".join(exact[k] + b"\0" for k in sorted(exact))
        mapped = [(i, src) for i, src in enumerate(sources) if src is not None]
        constant = [i for i, src in enumerate(sources) if src is None]
        # Read: the rows' numbers, then the structural ones (checked, as the bytes of their doubles).
        self.positions = array("I", [pos for _, (pos, _) in mapped] + list(structural))
        self.factors = array("d", [factor for _, (_, factor) in mapped] + [1.0] * len(structural))
        self.mapped = 8 * len(mapped)
        self.structural = array("d", structural.values()).tobytes()
        self.fixed = numbers.FixedSeries([row[0] for row in rows], [row[1] for row in rows])
        self.constants = array("d", [rows[i][2] for i in constant]).tobytes()
        # Row i's value in (the mapped values, the constants): None for the identity (no constants).
        where = {i: n for n, (i, _) in enumerate(mapped)}
        where.update((i, len(mapped) + n) for n, i in enumerate(constant))
        self.order = array("I", [where[i] for i in range(len(rows))]) if constant else None
        self.uses = 0

    def rows(self, source: numbers.Numbers) -> numbers.Block | object | None:
        """The rows of a new read, as one block of values; None when the file moved (its shape, or a
        structural number), ASIDE when only this read is beyond the program (a number too large to be exact
        in a double)."""
        raw = numbers._scan.values(source.fd, source.values, *self.shape, self.positions, self.factors, EXACT,
                                   self.exact, self.exact_text, source.hex, source.whole)
        if raw is None or raw is False:
            return None if raw is None else ASIDE
        split = self.mapped
        if self.structural and raw[split:] != self.structural:
            return None
        if self.order is None:
            values = raw[:split] if self.structural else raw
        else:  # the constants in their rows' places, in C
            out = bytearray(8 * len(self.order))
            numbers.take(raw[:split] + self.constants, self.order, None, out, 8, 0)
            values = bytes(out)
        self.uses += 1
        return numbers.Block(self.fixed, values)


class LearnedFile:
    """A kept-open file and the parse that makes its rows, learned as a program (see the module).

    A read error propagates (the collector fails, as with its own reads)."""

    def __init__(self, file: ProcFile, parse: Parse, hex: bool = False):
        """``hex``: the file's numbers are hexadecimal digits, without a prefix (/proc/net/stat/*)."""
        self.file = file
        self.parse = parse
        self.numbers = numbers.Numbers.of(file, hex=hex) if numbers.AVAILABLE else None
        self.program: _Program | None = None
        self.learned = 0  # programs made (tests)
        self._wait = 0  # Python samples before the next try at learning
        self._backoff = 0

    def rows(self, context: object = None) -> list[Row] | numbers.Block:
        """The file's rows now: through the program while it holds (one Block of values), else the parse's
        (and a program from it).  ``Sample.extend`` takes either; ``rows_of`` makes rows of either.

        ``context``: what else the parse depends on (mountstats: the mounts' addresses, from another file);
        a program serves only the context it was learned in."""
        program = self.program
        if program is not None:
            rows = self._served(program, context)
            if rows is not None:
                return rows
        if self.numbers is None:
            return self._parse_now()
        count, signature, raw = self.numbers.read(text=True)
        rows = self.parse_raw(raw)
        if self._may_learn(raw):
            self._learn(raw, numbers.Shape(signature, count), rows, context)
        return rows

    def _learn(self, raw: bytes, shape: numbers.Shape, rows: list[Row], context: object) -> None:
        """A program from this read, unless it is not yet time to try again (a file that keeps moving)."""
        if self._wait:
            self._wait -= 1
            return
        self.program = learn(raw, shape, self.numbers.values, rows, self.parse_raw, context, self.numbers.hex)
        if self.program is None:
            self._backoff = min(2 * self._backoff + 1, 255)
            self._wait = self._backoff
        else:
            self.learned += 1

    def _served(self, program: _Program, context: object) -> list[Row] | numbers.Block | None:
        """The program's rows, the parse's when the program stands aside for this read, or None when the
        program no longer holds (dropped)."""
        try:
            rows = program.rows(self.numbers) if program.context == context else None
        except OSError:
            rows = None  # (the parse reads again, and says what failed)
        if rows is ASIDE:
            return self._parse_now()
        if rows is not None:
            return rows
        self.program = None
        # A program that served a while: try again at once; one that died young: wait longer each time.
        self._backoff = 0 if program.uses >= 8 else min(2 * self._backoff + 1, 255)
        self._wait = self._backoff
        return None

    def _may_learn(self, raw: bytes) -> bool:
        """Whether a program may be learned from this read (a group's: not while a file fails, if so asked)."""
        return True

    def close(self) -> None:
        self.file.close()

    def parse_raw(self, raw: bytes) -> list[Row]:
        """The rows of the bytes a read of the file gave (what ``learn`` parses)."""
        return self.parse(raw.decode("utf-8", "replace"))

    def _parse_now(self) -> list[Row]:
        """A read and the parse, without a program (none made from it)."""
        return self.parse(self.file.read())


GROUP_SEPARATOR = b"\n\x1f\n"  # _scan.c's, between the files of a group
GROUP_UNREADABLE = b"\x1e"  # _scan.c's, for a file of a group that cannot be read now


def rows_of(rows: list[Row] | numbers.Block) -> list[Row]:
    """What ``LearnedFile.rows`` gave, as rows (a collector that looks at them)."""
    return rows.rows() if type(rows) is numbers.Block else rows


class LearnedGroup(LearnedFile):
    """Several kept-open files (an interface's attributes, a chip's sensors) whose one parse makes their rows,
    learned as one program over their numbers: one C call reads them all.

    ``parse`` gets each file's text, None for a file that cannot be read now (the attribute a driver does not
    report: EINVAL).  Such a file is a word of the group's text: a program learned while it fails serves
    while it fails, and stands down when it has a value again (another shape)."""

    def __init__(self, files: Sequence[ProcFile], parse: Callable[[list[str | None]], list[Row]],
                 learn_unreadable: bool = True, decode: Callable[[bytes], str] | None = None):
        """``learn_unreadable=False``: no program while a file cannot be read, so that the parse sees every
        such read (hwmon asks then whether its chip went away).  ``decode``: each file's bytes to text (UTF-8,
        an invalid byte replaced, by default)."""
        super().__init__(files[0], parse)  # type: ignore[arg-type]
        self.files = tuple(files)
        self.learn_unreadable = learn_unreadable
        self.decode = decode or _decode
        self.failed: list[int] = []  # the files the last read through the parse could not read
        if self.numbers is not None:
            self.numbers.fd = tuple(f.fd for f in files)

    def rows(self, context: object = None) -> list[Row] | numbers.Block:
        try:
            return super().rows(context)
        except (OSError, _Unsplittable):  # one of them could not be read, or holds the separator: each on its own
            return self._parse_now()

    def _may_learn(self, raw: bytes) -> bool:
        return self.learn_unreadable or GROUP_UNREADABLE not in raw.split(GROUP_SEPARATOR)

    def close(self) -> None:
        for pf in self.files:
            pf.close()

    def parse_raw(self, raw: bytes) -> list[Row]:
        parts = raw.split(GROUP_SEPARATOR)
        if len(parts) != len(self.files):  # a file holds the separator itself (a device's model name could)
            raise _Unsplittable("a group's files do not split as they were read")
        decode = self.decode
        texts = [None if part == GROUP_UNREADABLE else decode(part) for part in parts]
        self.failed = [i for i, text in enumerate(texts) if text is None]
        return self.parse(texts)

    def _parse_now(self) -> list[Row]:
        texts: list[str | None] = []
        for file in self.files:
            try:
                texts.append(self.decode(file.read_bytes()))
            except OSError:
                texts.append(None)
        self.failed = [i for i, text in enumerate(texts) if text is None]
        return self.parse(texts)


class _Unsplittable(ValueError):
    """A group's text that does not split into its files: it is read file by file, and learns no program."""


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class LearnedPaths:
    """Files read by path (one per device a listing found: an XFS filesystem's stats), each a LearnedFile kept
    open while samples read it, and groups of them (``group_rows``); ``sweep`` closes those the last sample
    did not read."""

    def __init__(self) -> None:
        self._files: dict[str, LearnedFile] = {}
        self._used: set[str] = set()
        self._groups: dict[tuple[str, ...], LearnedGroup] = {}
        self._used_groups: set[tuple[str, ...]] = set()

    def rows(self, path: str, parse: Parse) -> list[Row] | numbers.Block:
        """The rows of the file at ``path``, as ``LearnedFile.rows`` (``parse``: the one given the first time);
        OSError as opening or reading it raises (the file is opened again at the next sample).  A kept file that
        fails because its path names another one now (a pool imported again) is opened again at once."""
        self._used.add(path)
        for _ in range(2):
            learned = self._files.get(path)
            if learned is None:
                learned = self._files[path] = LearnedFile(ProcFile(path), parse)
            try:
                return learned.rows()
            except OSError:
                self._files.pop(path).close()
                if same_file(learned.file) or not os.path.lexists(path):
                    raise
        raise OSError(f"{path}: cannot be read")

    def group_rows(self, paths: tuple[str, ...], parse: Callable[[list[str | None]], list[Row]],
                   absent: type[OSError] | tuple[type[OSError], ...] = FileNotFoundError,
                   decode: Callable[[bytes], str] | None = None) -> list[Row] | numbers.Block:
        """The rows (as ``LearnedFile.rows``) of the files at ``paths`` read as one LearnedGroup (kept while
        samples read them: the paths are what a listing found, a filesystem's devices and profiles); ``parse``
        gets None for a file that cannot be read now, or that could not be opened with an ``absent`` error (any
        other propagates).
        ``decode`` as LearnedGroup's.  No program is learned while a file fails: each failure asks whether
        the path names another file now (a filesystem mounted again, a battery plugged back), and then the
        group is opened again and read at once."""
        self._used_groups.add(paths)
        group = self._groups.get(paths)
        if group is None:
            group = self._groups[paths] = _open_group(paths, parse, absent, decode)
        rows = group.rows()
        if group.failed and not all(same_file(group.files[i]) for i in group.failed):
            self._groups.pop(paths).close()
            group = self._groups[paths] = _open_group(paths, parse, absent, decode)
            rows = group.rows()
        return rows

    def sweep(self) -> None:
        """Close the files and groups the sample did not read (their device went)."""
        for path in [p for p in self._files if p not in self._used]:
            self._files.pop(path).close()
        self._used.clear()
        for paths in [p for p in self._groups if p not in self._used_groups]:
            self._groups.pop(paths).close()
        self._used_groups.clear()

    def close(self) -> None:
        self._used.clear()
        self._used_groups.clear()
        self.sweep()


def _open_group(paths: tuple[str, ...], parse: Callable[[list[str | None]], list[Row]],
                absent: type[OSError] | tuple[type[OSError], ...], decode: Callable[[bytes], str] | None,
                ) -> LearnedGroup:
    """A group of the files at ``paths``; one that cannot be opened with an ``absent`` error is /dev/null in
    it, None to the parse (any other error opening one propagates)."""
    files, missing = [], set()
    try:
        for i, path in enumerate(paths):
            try:
                files.append(ProcFile(path))
            except absent:
                files.append(ProcFile(os.devnull))
                missing.add(i)
    except BaseException:
        for pf in files:
            pf.close()
        raise
    if missing:
        whole = parse
        parse = lambda texts: whole([None if i in missing else t for i, t in enumerate(texts)])  # noqa: E731
    return LearnedGroup(files, parse, learn_unreadable=False, decode=decode)


def learn(raw: bytes, shape: numbers.Shape, values: array, rows: list[Row], parse: Callable[[bytes], list[Row]],
          context: object = None, hex: bool = False) -> _Program | None:
    """A program giving ``rows`` (what ``parse`` made of the bytes ``raw``, whose numbers ``values`` holds)
    from the numbers of any read of the same shape; None when the parse does not allow one (see the module)."""
    spans, columns = [], []  # each number's bytes, and its token's place in its line
    line_start, column = 0, 0
    is_number = _is_hex if hex else numbers.is_decimal
    for m in _TOKEN.finditer(raw):
        newline = raw.rfind(b"\n", line_start, m.start())
        if newline >= 0:
            line_start, column = newline + 1, 0
        if is_number(m[0]):
            spans.append(m.span())
            columns.append(column)
        column += 1
    if len(spans) != shape.count or shape.count > len(values):
        return None  # (not _scan.c's view of the file: no program rather than a wrong one)
    keys = [(row[0], row[1]) for row in rows]

    def copy(text_of: Callable[[int], bytes], kept: set[int]) -> list[Row] | None:
        """The parse of raw with number k (not in kept) written as text_of(k); None when it fails."""
        parts, last = [], 0
        for k, (start, end) in enumerate(spans):
            if k not in kept:
                parts += (raw[last:start], text_of(k))
                last = end
        parts.append(raw[last:])
        try:
            return parse(b"".join(parts))
        except Exception:  # noqa: BLE001 - any failure of the parse on a copy only means: no program
            return None

    def same_keys(got: list[Row] | None) -> bool:
        return got is not None and len(got) == len(keys) and all(
            (row[0], row[1]) == key for row, key in zip(got, keys))

    form = b"%x" if hex else b"%d"  # a number as the file writes them
    marker_a = lambda k: form % (MARK + 2 * k)  # noqa: E731
    marker_b = lambda k: form % (MARK + 2 * k + 1)  # noqa: E731
    zero = lambda k: b"0"  # noqa: E731
    telling = lambda k: form % TELLING  # noqa: E731
    huge = lambda k: form % (HUGE + 2 * k)  # noqa: E731
    kept = _structural(raw, spans, columns,
                       lambda keep: all(same_keys(copy(marker, keep)) for marker in (marker_a, zero, huge)))
    # Numbers beyond a double's integers are kept as they are, checked byte for byte (a parse may wrap them:
    # mountstats' times); the rows of such a number are constants while it does not move.
    beyond = {k: raw[start:end] for k, (start, end) in enumerate(spans) if abs(values[k]) >= EXACT}
    kept |= beyond.keys()
    for _ in range(2):  # the second time with the numbers the first time's odd rows depend on kept
        copies = [copy(marker, kept) for marker in (marker_a, marker_b, zero, telling, huge)]
        if not all(map(same_keys, copies)):
            return None  # a value decides which rows exist
        sources, odd = [], []
        for i, (row, *copied) in enumerate(zip(rows, *copies)):
            real = float(row[2])
            got = tuple(float(c[2]) for c in copied)
            if all(v == real for v in got):
                sources.append(None)  # of the words (or kept numbers): constant while the program holds
                continue
            found = _source(got, real, values, kept)
            if found is None:
                odd.append(i)
            sources.append(found)
        if not odd:
            return _Program(shape, context, rows, sources, {k: values[k] for k in sorted(kept) if k not in beyond},
                            beyond)
        # Rows that are not a number x a factor (a rate read as a float32, a sum): the numbers they depend
        # on are kept too, and the rows are constants while those numbers do not move.
        every = set(range(len(spans)))
        depends = _dependencies(sorted(every - kept), [rows[i] for i in odd],
                                lambda group, every=every: copy(marker_a, every - group))
        if depends is None:
            return None
        kept |= depends
    return None


def _dependencies(free: list[int], odd: list[Row], parse_with: Callable[[set[int]], list[Row] | None],
                  ) -> set[int] | None:
    """The numbers (of ``free``) whose markers change an ``odd`` row's value, found by halving: ``parse_with(g)``
    parses a copy where only the numbers in g are markers.  None past ``MAX_TRIALS`` parses or when a copy
    changes the rows themselves."""
    keys = [(row[0], row[1]) for row in odd]
    found: set[int] = set()
    trials = 0

    def changed(group: list[int], which: list[int]) -> list[int] | None:
        """Of the odd rows ``which``, those whose value differs in the copy with ``group`` as markers."""
        nonlocal trials
        trials += 1
        got = parse_with(set(group))
        if got is None or trials > MAX_TRIALS:
            return None
        by_key = {(row[0], row[1]): row[2] for row in got}
        if any(keys[i] not in by_key for i in which):
            return None
        return [i for i in which if by_key[keys[i]] != odd[i][2]]

    def search(group: list[int], which: list[int]) -> bool:
        moved = changed(group, which)
        if moved is None:
            return False
        if not moved:
            return True
        if len(group) == 1:
            found.add(group[0])
            return True
        half = len(group) // 2
        return search(group[:half], moved) and search(group[half:], moved)

    return found if search(free, list(range(len(odd)))) else None


def _source(copies: tuple[float, ...], real: float, values: array, kept: set[int]) -> tuple[int, float] | None:
    """(number, factor) such that the copies (markers a, markers b, zeros, TELLING, huge markers) and the real
    read give these values, or None."""
    va = copies[0]
    for factor in FACTORS:
        n = va * -factor if factor < 0 else va / factor
        if n != n or abs(n) > 2 * MARK + (1 << 26):
            continue
        k = (round(n) - MARK) // 2
        if k < 0 or k >= len(values) or k in kept:
            continue
        expected = (_scaled(MARK + 2 * k, factor), _scaled(MARK + 2 * k + 1, factor), _scaled(0.0, factor),
                    _scaled(TELLING, factor), _scaled(HUGE + 2 * k, factor))
        # (A number beyond 2**53 is not checked against its row: the program stands aside for such reads.)
        if expected == copies and (abs(values[k]) >= EXACT or _scaled(values[k], factor) == real):
            return k, factor
    return None


def _structural(raw: bytes, spans: list[tuple[int, int]], columns: list[int], ok: Callable[[set[int]], bool],
                ) -> set[int]:
    """The numbers the rows' families or labels depend on (kept as they are in the copies).

    Found by freeing groups of numbers while the copies keep the rows (group testing), a column at a time
    (the token's place in its line): every column whole first; then a column that could not be freed is kept
    whole when its first, middle and last numbers are each structural (the node number of every line of a
    NUMA node's meminfo, the type of every zfs kstat), or else halved down to its structural numbers (the
    procedure counts heading NFS lines).  Past ``MAX_TRIALS`` parses what is left is kept: a number kept that
    is a value only makes the program stand down when it changes."""
    if ok(set()):
        return set()
    by_column: dict[int, list[int]] = {}
    for k, column in enumerate(columns):
        by_column.setdefault(column, []).append(k)
    kept = set(range(len(spans)))
    trials = 0

    def frees(group: list[int]) -> bool:
        nonlocal trials
        trials += 1
        if ok(kept - set(group)):
            kept.difference_update(group)
            return True
        return False

    def settle(group: list[int]) -> None:
        if trials < MAX_TRIALS and not frees(group) and len(group) > 1:
            half = len(group) // 2
            settle(group[:half])
            settle(group[half:])

    # First every column whole (the values' columns go at once), then what is left of the others.
    left = [group for group in by_column.values() if trials < MAX_TRIALS and not frees(group) and len(group) > 1]
    for group in left:
        if len(group) > 4:
            spread = [group[0], group[len(group) // 2], group[-1]]
            if not any(trials < MAX_TRIALS and frees([k]) for k in spread):
                continue  # a structural column (or no trials left)
        settle([k for k in group if k in kept])
    return kept


def filled(fill: Callable[[str, Sample], object]) -> Parse:
    """A parse from a collector's ``fill(text, out)``, which adds the rows of ``text`` to a Sample."""
    def parse(text: str) -> list[Row]:
        out = Sample()
        fill(text, out)
        return out.sampled_series()
    return parse

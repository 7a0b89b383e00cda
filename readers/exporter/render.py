"""The text exposition of node_exporter's families: the one renderer of ``node_*`` text.

shm-exporter serves it (``exposition``), and ``shm-read`` prints it (``--format prometheus``, and the
``name{labels} value`` lines of a selector), so both write the same bytes for the same sample.  Only
the standard library: ``shm-read`` imports this without prometheus_client.
"""

from __future__ import annotations

from shm_metrics.families import ABSENT_LABEL
from shm_metrics.families import ROW_SIZE as _ROW_SIZE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from shm_metrics.families import Family, FamilyView
    from shm_metrics.readers.reader import Snapshot

_INF = float("inf")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def go_float(value: float) -> str:
    """``value`` as node_exporter writes it (Go's expfmt: ``strconv.FormatFloat(v, 'g', -1, 64)``).

    prometheus_client writes 3 as ``3.0`` and 1234567 as ``1234567.0``; Go writes ``3`` and
    ``1.234567e+06``: the shortest digits that round-trip (Python's repr finds the same ones), in
    exponent form when the decimal exponent is below -4 or at least 6 (Go's rule for the shortest form).
    No cache keyed by value: counters take a new value every sample, and such a cache grows for as long
    as the exporter runs (issue 15); ``FamilyRenderer`` keeps each series' last line instead.
    """
    text = repr(float(value))
    magnitude = abs(value)
    # Two short ways for most values (a scrape formats every value that changed, with cold caches): repr's
    # digits are Go's (both the shortest that round-trip), and so is its form where both write no exponent;
    # a whole number below 1e16 comes as "digits.0" from repr, which Go writes d.ddde+XX from 1e6 on.
    if 1e-4 <= magnitude < 1e6:
        return text[:-2] if text[-2:] == ".0" else text
    if 1e6 <= magnitude < 1e16 and text[-2:] == ".0":
        sign = "-" if value < 0 else ""
        whole = text[len(sign):-2]
        digits = whole.rstrip("0")
        return f"{sign}{digits[0]}{'.' if len(digits) > 1 else ''}{digits[1:]}e+{len(whole) - 1:02d}"
    return _go_float_any(value, text)


def _go_float_any(value: float, text: str) -> str:
    """``go_float`` of any value, from its repr ``text``."""
    if value != value:
        return "NaN"
    if value in (_INF, -_INF):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"  # expfmt writes 0 for -0 too
    sign = "-" if text[0] == "-" else ""
    mantissa, _, exponent = text.lstrip("-").partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # Where the decimal point sits relative to the first significant digit.
    point = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:
        rest = "." + digits[1:] if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{rest}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


class FamilyRenderer:
    """Renders families as node_exporter writes them, keeping what repeats from sample to sample.

    A family's HELP/TYPE lines and each series' whole line are kept, the line with the value it was
    written for: a new sample costs a lookup per series and formatting only the values that changed.
    What is kept is bounded by the series rendered, never by the values seen (issue 15: a cache keyed
    by value grew for as long as the exporter ran).  One renderer per stream of like renders (the bound
    follows the size of the last render).
    """

    SLACK = 1024  # series that may go away before the kept lines are dropped and rebuilt

    def __init__(self) -> None:
        self._heads: dict[tuple, tuple[str, list[tuple[str, int]]]] = {}
        self._lines: dict[tuple[str, tuple[str, ...]], tuple[str, float, str]] = {}  # key -> (prefix, value, line)
        # render_view's last view: (catalog, labels blob, row layout, rows, texts, names, where each family is,
        # each family's _Lines)
        self._last_view: tuple | None = None

    def kept(self) -> int:
        """Series lines kept (for tests: bounded by the series of the last render)."""
        return len(self._lines)

    def render(self, families: Iterable[Family]) -> bytes:
        """The text exposition of ``families``: families sorted by name, series sorted by their label values
        (in label-name order, as the Go client's registry sorts them), labels sorted by name, Go's float
        format (``go_float``); without building a Metric per family.

        ``generate_latest`` over ``collector.node_families`` gives the same lines but for prometheus_client's
        float format (``3.0`` where node_exporter writes ``3``).
        """
        out: list[str] = []
        series = 0
        for fam in sorted(families, key=_by_name):
            series += self._family_lines(fam, out, True)
        self._forget_gone(series)
        return "".join(out).encode()

    def render_view(self, view: FamilyView, keep: Callable[[str], bool]) -> tuple[list[tuple[str, str]], set[str]]:
        """The text of each family of ``view`` whose name ``keep`` accepts, as (name, text) sorted by name,
        and the names of every family with series in it.  ``keep`` must answer alike for the renderer's
        whole life (the exporter keeps one renderer per ``collect[]`` filter).

        Between two full samples most of a host's families do not change, and those that do keep their series
        and labels: only values move.  When the view has the last view's catalog, labels blob and rows but for
        their values, the changed values are found by comparing the two value columns in C, and only their
        lines are written again, each in its place among its family's lines (no decoding, no sorting).
        """
        last = self._last_view
        rows_raw = view.rows_raw
        layout = _row_layout(rows_raw)
        if last is not None and last[0] is view.catalog and last[2] == layout and last[1] == view.labels_raw:
            return self._render_changed(view, last, rows_raw)
        texts, names, spans, kept = [], set(), {}, {}
        infos = view.catalog.infos
        for index, start, rows in view.raw_families():
            name = infos[index].name
            names.add(name)
            if keep(name):
                lines = kept[index] = self._view_lines(view, index, rows)
                texts.append((name, lines.text()))
                spans[index] = (start, start + len(rows))
        self._forget_gone(sum(end - start for start, end in spans.values()) // _ROW_SIZE)
        texts.sort()
        where = {index: (position, *spans[index]) for position, index in
                 enumerate(sorted(spans, key=lambda i: infos[i].name))}
        self._last_view = (view.catalog, view.labels_raw, layout, rows_raw, texts, names, where, kept)
        return texts, names

    def _render_changed(self, view: FamilyView, last: tuple, rows_raw: bytes) -> tuple[list[tuple[str, str]], set[str]]:
        """render_view when only values may have changed: the lines of the changed values, again."""
        from itertools import compress, count
        from operator import ne

        catalog, labels, layout, old_raw, texts, names, where, kept = last
        values = _values(rows_raw)
        changed = list(compress(count(), map(ne, values, _values(old_raw))))  # NaN: always
        if changed:
            texts = list(texts)
            metric = memoryview(rows_raw).cast("I")[0::_ROW_SIZE // 4]
            touched, decoded = set(), set()
            for row in changed:
                index = metric[row]
                spot = where.get(index)
                if spot is None or index in decoded:  # a family ``keep`` leaves out, or one decoded again now
                    continue
                _, start, end = spot
                if not start <= row * _ROW_SIZE < end or not kept[index].put(row - start // _ROW_SIZE, values[row]):
                    # (a row outside the family's one run of rows: a corrupt segment) the family decoded again
                    kept[index] = self._view_lines(view, index, rows_raw[start:end])
                    decoded.add(index)
                touched.add(index)
            for index in touched:
                position = where[index][0]
                texts[position] = (texts[position][0], kept[index].text())
        self._last_view = (catalog, labels, layout, rows_raw, texts, names, where, kept)
        return texts, names

    def _view_lines(self, view: FamilyView, index: int, rows: bytes) -> _Lines:
        positions: list[int] = []
        fam = view.decode(index, rows, positions)
        head, _ = self._head(fam)
        order, prefixes, lines = self._series_lines(fam)
        slot_of_row = [-1] * (len(rows) // _ROW_SIZE)
        for slot, k in enumerate(order):
            slot_of_row[positions[k]] = slot
        return _Lines(head, slot_of_row, prefixes, lines)

    def _forget_gone(self, series: int) -> None:
        """Drop the kept lines when they are far more than the ``series`` just rendered (devices and
        mounts came and went): rebuilt from the next render on."""
        if len(self._lines) > 2 * (series + self.SLACK):
            self._lines.clear()
            self._heads.clear()

    def _family_lines(self, fam: Family, out: list[str], head_lines: bool) -> int:
        if head_lines:
            out.append(self._head(fam)[0])
        lines = self._series_lines(fam)[2]
        out += lines
        return len(lines)

    def _series_lines(self, fam: Family) -> tuple[list[int], list[str], list[str]]:
        """(the series in Go's order, as indices into ``fam.series``; each one's ``name{labels} ``; its line),
        a line kept from the last render when its value is the same."""
        kept_lines = self._lines
        name = fam.name
        labels = self._head(fam)[1]
        series = fam.series
        order = series_order(fam)
        prefixes, lines = [], []
        for k in order:
            values, value = series[k]
            key = (name, values)
            kept = kept_lines.get(key)
            if kept is not None and kept[1] == value:
                prefixes.append(kept[0])
                lines.append(kept[2])
                continue
            prefix = kept[0] if kept is not None else _prefix(name, labels, values)
            line = f"{prefix}{go_float(value)}\n"
            kept_lines[key] = (prefix, value, line)
            prefixes.append(prefix)
            lines.append(line)
        return order, prefixes, lines

    def _head(self, fam: Family) -> tuple[str, list[tuple[str, int]]]:
        """The HELP and TYPE lines, and the label names in output order with their positions."""
        head = self._heads.get(fam[:4])
        if head is None:
            help_ = fam.help.replace("\\", r"\\").replace("\n", r"\n")
            order = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
            head = self._heads[fam[:4]] = (f"# HELP {fam.name} {help_}\n# TYPE {fam.name} {fam.type}\n",
                                           [(fam.labels[i], i) for i in order])
        return head


def _row_layout(rows_raw: bytes) -> tuple[bytes, bytes, bytes]:
    """Everything of the series rows but the values: each row's family, labels offset and length."""
    words = memoryview(rows_raw).cast("I")
    step = _ROW_SIZE // 4
    return words[0::step].tobytes(), words[1::step].tobytes(), words[2::step].tobytes()


def _values(rows_raw: bytes) -> memoryview:
    """The value column of the series rows, in place."""
    return memoryview(rows_raw).cast("d")[2::_ROW_SIZE // 8]


def _prefix(name: str, labels: list[tuple[str, int]], values: tuple[str, ...]) -> str:
    """``name{labels} ``: labels in ``labels``' order (by name), absent ones left out."""
    if not labels:
        return f"{name} "
    pairs = ",".join(f'{n}="{_escape(values[i])}"' for n, i in labels if values[i] != ABSENT_LABEL)
    return f"{name}{{{pairs}}} "


def render_families(families: Iterable[Family]) -> bytes:
    """``FamilyRenderer().render(families)``, without keeping anything for the next sample."""
    return FamilyRenderer().render(families)


def render_series(fam: Family) -> str:
    """The series lines of one family (``name{labels} value``, no HELP or TYPE), exactly as
    ``render_families`` writes them, in the same order."""
    out: list[str] = []
    FamilyRenderer()._family_lines(fam, out, False)
    return "".join(out)


def _by_name(fam: Family) -> str:
    return fam.name


def series_order(fam: Family) -> list[int]:
    """A family's series in the Go client's order, as indices into ``fam.series``: by label values, compared in
    label-name order."""
    series = fam.series
    if len(series) < 2 or not fam.labels:
        return list(range(len(series)))
    names = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
    return sorted(range(len(series)), key=lambda k: [series[k][0][i] for i in names])


def sorted_series(fam: Family) -> list[tuple[tuple[str, ...], float]]:
    """A family's series in the Go client's order: by label values, compared in label-name order."""
    series = fam.series
    if len(series) < 2 or not fam.labels:
        return series
    return [series[k] for k in series_order(fam)]


class _Lines:
    """A rendered family of a view: its HELP and TYPE, and its series' lines in order, each row's line found by
    its row (``slot_of_row``: the line of each of the family's rows, -1 for a corrupt row left out), so that a
    changed value is written again in its place."""

    __slots__ = ("head", "slot_of_row", "prefixes", "lines")

    def __init__(self, head: str, slot_of_row: list[int], prefixes: list[str], lines: list[str]):
        self.head, self.slot_of_row, self.prefixes, self.lines = head, slot_of_row, prefixes, lines

    def put(self, row: int, value: float) -> bool:
        """The line of the family's ``row`` with ``value``; False for a row it does not know."""
        if not 0 <= row < len(self.slot_of_row) or (slot := self.slot_of_row[row]) < 0:
            return False
        self.lines[slot] = f"{self.prefixes[slot]}{go_float(value)}\n"
        return True

    def text(self) -> str:
        return self.head + "".join(self.lines)


def render_node_text(snap: Snapshot) -> bytes:
    """The node_* block of one snapshot: what shm-exporter serves for it (when it is fresh)."""
    return render_families(snap.families)

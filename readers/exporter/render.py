"""The text exposition of node_exporter's families: the one renderer of ``node_*`` text.

shm-exporter serves it (``exposition``), and ``shm-read`` prints it (``--format prometheus``, and the
``name{labels} value`` lines of a selector), so both write the same bytes for the same sample.  Only
the standard library: ``shm-read`` imports this without prometheus_client.
"""

from __future__ import annotations

from shm_metrics.families import ABSENT_LABEL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from shm_metrics.families import Family
    from shm_metrics.readers.reader import Snapshot

_INF = float("inf")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def go_float(value: float) -> str:
    """``value`` as node_exporter writes it (Go's expfmt: ``strconv.FormatFloat(v, 'g', -1, 64)``).

    prometheus_client writes 3 as ``3.0`` and 1234567 as ``1234567.0``; Go writes ``3`` and
    ``1.234567e+06``: the shortest digits that round-trip (Python's repr finds the same ones), in
    exponent form when the decimal exponent is below -4 or at least 6 (Go's rule for the shortest form).
    """
    if value != value:
        return "NaN"
    if value in (_INF, -_INF):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"  # expfmt writes 0 for -0 too
    cached = _GO_FLOATS.get(value)
    if cached is not None:
        return cached
    text = repr(float(value))
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
        out = f"{sign}{digits[0]}{rest}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    elif point <= 0:
        out = f"{sign}0.{'0' * -point}{digits}"
    elif point >= len(digits):
        out = f"{sign}{digits}{'0' * (point - len(digits))}"
    else:
        out = f"{sign}{digits[:point]}.{digits[point:]}"
    if len(_GO_FLOATS) > 100_000:  # counters move: do not grow without bound
        _GO_FLOATS.clear()
    _GO_FLOATS[value] = out
    return out


_GO_FLOATS: dict[float, str] = {}


def render_families(families: Iterable[Family]) -> bytes:
    """The text exposition of ``families`` as node_exporter writes it: families sorted by name, series
    sorted by their label values (in label-name order, as the Go client's registry sorts them), labels
    sorted by name, Go's float format (``go_float``); without building a Metric per family.

    ``generate_latest`` over ``collector.node_families`` gives the same lines but for prometheus_client's
    float format (``3.0`` where node_exporter writes ``3``).

    A family's HELP/TYPE lines and each series' ``name{labels} `` prefix are the same from sample to
    sample: they are kept (``_PREFIXES``), so a new sample costs little more than formatting its values.
    """
    out: list[str] = []
    for fam in sorted(families, key=_by_name):
        _family_lines(fam, out, True)
    return "".join(out).encode()


def render_series(fam: Family) -> str:
    """The series lines of one family (``name{labels} value``, no HELP or TYPE), exactly as
    ``render_families`` writes them, in the same order."""
    out: list[str] = []
    _family_lines(fam, out, False)
    return "".join(out)


def _family_lines(fam: Family, out: list[str], head_lines: bool) -> None:
    append = out.append
    heads, prefixes = _HEADS, _PREFIXES
    if len(prefixes) > 50_000:  # devices and mounts come and go: do not grow without bound
        prefixes.clear()
        heads.clear()
    name = fam.name
    head = heads.get(fam[:4])
    if head is None:
        help_ = fam.help.replace("\\", r"\\").replace("\n", r"\n")
        order = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
        head = heads[fam[:4]] = (f"# HELP {name} {help_}\n# TYPE {name} {fam.type}\n",
                                 [(fam.labels[i], i) for i in order])
    if head_lines:
        append(head[0])
    labels = head[1]
    for values, value in sorted_series(fam):
        key = (name, values)
        prefix = prefixes.get(key)
        if prefix is None:
            if labels:
                pairs = ",".join(f'{n}="{_escape(values[i])}"' for n, i in labels if values[i] != ABSENT_LABEL)
                prefix = prefixes[key] = f"{name}{{{pairs}}} "
            else:
                prefix = prefixes[key] = f"{name} "
        append(prefix)
        append(go_float(value))
        append("\n")


def _by_name(fam: Family) -> str:
    return fam.name


def sorted_series(fam: Family) -> list[tuple[tuple[str, ...], float]]:
    """A family's series in the Go client's order: by label values, compared in label-name order."""
    series = fam.series
    if len(series) < 2 or not fam.labels:
        return series
    order = sorted(range(len(fam.labels)), key=fam.labels.__getitem__)
    return sorted(series, key=lambda row: [row[0][i] for i in order])


_HEADS: dict[tuple, tuple[str, list[tuple[str, int]]]] = {}
_PREFIXES: dict[tuple[str, tuple[str, ...]], str] = {}


def render_node_text(snap: Snapshot) -> bytes:
    """The node_* block of one snapshot: what shm-exporter serves for it (when it is fresh)."""
    return render_families(snap.families)

"""Presentation helpers shared by the CLI's text output and the live view."""

from __future__ import annotations

import math
import time

from shm_metrics import shm_layout as L
from shm_metrics.readers.reader import STATE_DEAD

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from shm_metrics.readers.reader import Snapshot

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


# Values come from a segment another process wrote: every helper here renders any number, NaN, inf
# and 1e300 included, as text (never an exception), so a lying value shows as itself.
_MAX_TIME = 1e11  # seconds since 1970: beyond the year 5000, not a time any clock gives


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def human_bytes(value: float) -> str:
    value = float(value)
    if not _finite(value) or abs(value) >= 1024 ** len(_UNITS):
        return f"{value:g} B"
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def df_use_percent(size: float, free: float, avail: float) -> int:
    """A filesystem's use as ``df`` prints it: used / (used + avail), rounded up, where used = size - free.

    ``avail`` leaves out the blocks reserved for root, so a disk whose users can
    write nothing more reads 100 %, as in df (size - free over size would say ~95 %).
    """
    used = max(size - free, 0)
    total = used + max(avail, 0)
    if not (total > 0 and _finite(total)):
        return 0
    return min(int(math.ceil(100 * used / total)), 100)


def seconds(value: float) -> str:
    if not _finite(value) or abs(value) >= _MAX_TIME:
        return f"{value:g} s"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m {secs}s"


def bare(value: Any) -> str:
    """A value as a script wants it: numbers plain, floats without noise."""
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, (list, dict)):
        import json  # only arrays need it; the one-shot path for scalars stays lean

        return json.dumps(json_safe(value))
    return str(value)


# The process tables' columns, in the order every view shows them (shm-read top, its live view, --once).
PROCESS_COLUMNS = ("pid", "user", "state", "cpu_percent", "rss_bytes", "threads", "name")
CPU_PERCENT_MEANING = "busy over the last interval, all CPUs, 0-100"


def _explain(name: str, value: Any) -> str:
    if name.endswith("_bytes"):
        return human_bytes(value)
    if name in ("boot_time", "sample_time"):
        return local_time(value, "%Y-%m-%d %H:%M:%S")
    if name == "uptime_seconds":
        return seconds(value)
    if name == "cpu_percent":
        return CPU_PERCENT_MEANING
    return ""


def cell(value: Any) -> str:
    """A number as the readable tables show it: integers whole, every float with two decimals."""
    if isinstance(value, float):
        return f"{value:.2f}" if _finite(value) else f"{value:g}"
    return str(value)


def _columns(name: str, rows: list[dict], columns: list[str]) -> tuple[list[str], list[dict]]:
    """The columns of an array as the tables show it: process tables in PROCESS_COLUMNS order, and
    filesystems with df's used and use% beside statfs's figures."""
    if name in ("top_cpu", "top_rss"):
        return list(PROCESS_COLUMNS), rows
    if name == "filesystems":
        rows = [dict(r, used_bytes=max(r["size_bytes"] - r["free_bytes"], 0),
                     use_percent=df_use_percent(r["size_bytes"], r["free_bytes"], r["avail_bytes"])) for r in rows]
        return columns[:4] + ["used_bytes", "avail_bytes", "free_bytes", "use_percent"], rows
    return columns, rows


def _rows_table(title: str, rows: list[dict], columns: list[str]) -> list[str]:
    if not rows:
        return [f"{title}: none"]
    columns, rows = _columns(title, rows, columns)
    cells = [[cell(r[c]) if not c.endswith("_bytes") else human_bytes(r[c]) for c in columns] for r in rows]
    # Text left-aligned, numbers right-aligned, each heading aligned as its column.
    numeric = [all(isinstance(r[c], (int, float)) for r in rows) for c in columns]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  " + "  ".join(v.rjust(w) if num else v.ljust(w)
                                for v, w, num in zip(values, widths, numeric)).rstrip()

    lines = [f"{title}:", line(columns)]
    lines += [line(row) for row in cells]
    if title == "filesystems":
        lines.append("  (use_percent = used / (used + avail), rounded up, as df computes it)")
    return lines


def local_time(unix: float, pattern: str) -> str:
    """``time.strftime(pattern)`` of a Unix time; "invalid time (<value>)" for what no clock gives."""
    if not _finite(unix) or not 0 <= unix < _MAX_TIME:
        return f"invalid time ({unix!r})"
    return time.strftime(pattern, time.localtime(unix))


def iso_time(unix: float) -> str:
    """Local time with milliseconds, e.g. 2026-11-21T16:23:01.250."""
    text = local_time(unix, "%Y-%m-%dT%H:%M:%S")
    return text if text.startswith("invalid") else text + f".{int(unix % 1 * 1000):03d}"


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if _finite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def rate(name: str, value: float) -> str:
    if not _finite(value):
        return f"{value:g}"
    if "_bytes_" in name:
        return f"{human_bytes(value)}/s"
    if name == "cpu_percent":
        return f"{value:.1f} %"
    if name == "over_seconds":
        return seconds(value)
    return f"{value:,.1f}/s"


def chart(points: list[tuple[float, float]], field: str, hostname: str) -> str:
    """A terminal line chart of (time, value) points, drawn by plotext, with a summary line."""
    import plotext as plt  # only --history on a terminal pays for it

    newest = points[-1][0]
    values = [v for _, v in points]
    plt.clear_figure()
    plt.plot([t - newest for t, _ in points], values, marker="braille")
    width, height = plt.terminal_size()
    plt.plotsize(min(width or 100, 120), min(max((height or 24) - 4, 10), 25))
    plt.title(f"{field} on {hostname}")
    plt.xlabel(f"seconds before {iso_time(newest)}")
    plt.theme("clear")
    summary = (f"{len(points)} samples over {seconds(newest - points[0][0])}: min {bare(min(values))}, "
               f"mean {bare(sum(values) / len(values))}, max {bare(max(values))}, last {bare(values[-1])}")
    return plt.build() + "\n" + summary


def table(snap, rates: dict | None = None) -> str:
    """The readable --once output: header line, scalars, rates, then each array; one column of names and
    one of values (two decimals for every float) for scalars and rates alike."""
    lines = [f"{snap.hostname}: seq {snap.seq}, sampled {seconds(snap.age)} ago, every {seconds(snap.interval)}, "
             f"publisher pid {snap.publisher_pid} ({snap.state}), layout {snap.layout_version}"]
    scalars = snap.scalars()
    shown_rates = {k: v for k, v in (rates or {}).items() if k != "over_seconds"}
    width = max(map(len, [*scalars, *shown_rates]))
    values = [cell(v) for v in [*scalars.values(), *shown_rates.values()]]
    value_width = max(map(len, values))
    for name, value in scalars.items():
        extra = _explain(name, value)
        lines.append(f"{name:<{width}}  {cell(value):>{value_width}}" + (f"  ({extra})" if extra else ""))
    if rates:
        lines.append("")
        lines.append(f"rates over the last {seconds(rates['over_seconds'])} (from the history ring):")
        for name, value in shown_rates.items():
            extra = (f"busy over these {seconds(rates['over_seconds'])}, all CPUs, 0-100" if name == "cpu_percent"
                     else rate(name, value))
            lines.append(f"{name:<{width}}  {cell(value):>{value_width}}  ({extra})")
    for rec in L.SAMPLE_ARRAYS:
        try:
            rows = snap.array(rec.name)
        except KeyError:
            continue
        lines.append("")
        lines += _rows_table(rec.name, rows, list(rec.names))
    overflow = {k: v for k, v in snap.overflow().items() if v}
    if overflow:
        lines.append("")
        lines.append("left out (over capacity): " + ", ".join(f"{k} {v}" for k, v in overflow.items()))
    return "\n".join(lines)


def describe_not_fresh(snap: Snapshot, max_age: float | None = None) -> str:
    """Why a snapshot is not fresh, in one phrase (the same words in every reader)."""
    pid = snap.publisher_pid
    if snap.state == STATE_DEAD:
        return f"publisher not running: pid {pid} died without stopping (no process holds the segment's lock)"
    if snap.seq == 0:
        return f"publisher pid {pid} has not written a sample yet ({snap.state})"
    if snap.state != "running":
        return f"publisher pid {pid} is {snap.state}: values are from {seconds(snap.age)} ago"
    if snap.from_future():
        return (f"the sample is stamped {seconds(snap.sample_time - time.time())} in the future: "
                f"not trusted as fresh (publisher pid {pid})")
    limit = snap.max_age() if max_age is None else max_age
    return (f"stale: last sample {seconds(snap.age)} ago (limit {seconds(limit)}); "
            f"publisher pid {pid} may be stopped or hung")

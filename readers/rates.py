"""Rates and series from the history ring: what a reader started just now can show at once.

A history entry is a dict with ``seq``, ``sample_time`` and every scalar (see
``Reader.history``).  Counters (``*_total``) become per-second rates between
two entries; ``cpu_percent`` is recomputed from the CPU-seconds counters over
the same span, so every rate covers exactly the same time.
"""

from __future__ import annotations

from shm_metrics import shm_layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shm_metrics.readers.reader import Reader, Snapshot

# rate name -> the counter it is the derivative of
RATE_SOURCES = {
    "forks_per_second": "forks_total",
    "ctx_switches_per_second": "ctx_switches_total",
    "interrupts_per_second": "interrupts_total",
    "net_rx_bytes_per_second": "net_rx_bytes_total",
    "net_tx_bytes_per_second": "net_tx_bytes_total",
    "disk_read_bytes_per_second": "disk_read_bytes_total",
    "disk_written_bytes_per_second": "disk_written_bytes_total",
}
RATE_KEYS = tuple(RATE_SOURCES)
SERIES_FIELDS = L.SCALARS.names + tuple(RATE_SOURCES)
_CPU_MODES = tuple(f"cpu_seconds_{m}" for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq",
                                                 "steal"))


def busy_percent(older: dict, newer: dict) -> float:
    """CPU busy share between two entries, 0-100: all modes but idle and iowait."""
    deltas = {m: max(0.0, newer[m] - older[m]) for m in _CPU_MODES}
    total = sum(deltas.values())
    if total <= 0:
        return 0.0
    idle = deltas["cpu_seconds_idle"] + deltas["cpu_seconds_iowait"]
    return min(100.0, 100.0 * (total - idle) / total)


def rates(older: dict, newer: dict) -> dict[str, float]:
    """Every rate between two history entries, plus ``over_seconds`` (the span) and
    ``cpu_percent`` (the CPU busy share over that same span)."""
    span = newer["sample_time"] - older["sample_time"]
    out: dict[str, float] = {"over_seconds": span, "cpu_percent": busy_percent(older, newer)}
    for rate, counter in RATE_SOURCES.items():
        # A counter going backwards (a reboot between entries cannot happen, a
        # wrapped or reset device counter can) gives 0, not a negative rate.
        out[rate] = max(0, newer[counter] - older[counter]) / span if span > 0 else 0.0
    return out


def latest_span(entries: list[dict], min_seconds: float = 1.0) -> tuple[dict, dict] | None:
    """(older, newest): the newest entry and the newest one at least ``min_seconds``
    before it, or the oldest there is; None with fewer than two entries."""
    if len(entries) < 2:
        return None
    newest = entries[-1]
    for entry in reversed(entries[:-1]):
        if newest["sample_time"] - entry["sample_time"] >= min_seconds:
            return entry, newest
    return entries[0], newest


def series(entries: list[dict], field: str) -> list[tuple[float, float]]:
    """(sample_time, value) oldest first: a scalar as stored, or a rate between neighbours."""
    counter = RATE_SOURCES.get(field)
    if counter is None:
        return [(e["sample_time"], e[field]) for e in entries]
    out = []
    for a, b in zip(entries, entries[1:]):
        span = b["sample_time"] - a["sample_time"]
        if span > 0:
            out.append((b["sample_time"], max(0, b[counter] - a[counter]) / span))
    return out


def recent_rates(reader: Reader, snap: Snapshot) -> dict[str, float] | None:
    """Rates over the newest second (or interval, if longer) of ``reader``'s ring, ending at ``snap``.

    None while the ring holds fewer than two samples.  The ring is read after
    ``snap`` and cut at it, so that both describe the same sample.
    """
    wanted = max(1.0, reader.interval)  # a rate over less than a second is mostly noise
    entries = [e for e in reader.history(since=2 * wanted + reader.interval) if e["seq"] <= snap.seq]
    span = latest_span(entries, wanted)
    return rates(*span) if span else None

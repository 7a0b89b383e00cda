"""Q5. Readers don't slow the publisher: write latency at 1 kHz with 0, 4, 16 and 64 readers.

The writer is ``bench/writer.py``: this host's real samples through the
real write path (``OwnedSegment.publish``) every millisecond, timing each
publish.  Readers are forked processes, each with its own ``Reader``, calling
``read()`` (scalars and arrays) in a tight loop for the window; each reports
its reads and its seqlock retries (``Reader.retries``).  The reader counts
alternate (0, 4, 16, 64 / 4, 16, 64, 0 / ...), and every window's publishes
are cut out of the writer's log by their start time (CLOCK_MONOTONIC is shared
by all processes).  Latencies of a reader count are pooled over its windows.

On 2 cores, 4 or more busy readers mean the CPUs are oversubscribed: the
writer then also waits for a CPU.  Its timing covers only the publish call
itself, which is what a reader could slow down (cache lines bouncing between
the writer's stores and the readers' loads); waiting to be scheduled shows up
as fewer writes in the window (the writes column), not as latency.
"""

from __future__ import annotations

import sys
import time
from array import array

from bench.common import Config, Shared, Table, Workers, median, percentile, us, wait_running, x
from shm_metrics.readers import Reader

COUNTS = (0, 4, 16, 64)
P99_LIMIT, RETRY_LIMIT = 2.0, 1.0


def read_loop(duration: float, reader: Reader) -> dict:
    read, clock = reader.read, time.monotonic
    start = time.monotonic_ns()
    deadline = clock() + duration
    n = 0
    while clock() < deadline:
        for _ in range(50):
            read()
        n += 50
    return {"start": start, "end": time.monotonic_ns(), "reads": n, "retries": reader.retries}


def run(cfg: Config, shared: Shared) -> Table:
    lab = shared.lab
    name = lab.segment_name("q5")
    log = lab.tmp / "writer.bin"
    writer = lab.start([sys.executable, "-m", "bench.writer", name, "0.001", str(log)], "writer-1kHz")
    duration, warm_ns, rounds = cfg.pick(5.0, 0.5), int(cfg.pick(0.3, 0.1) * 1e9), cfg.pick(3, 1)
    windows: dict[int, list[tuple[int, int]]] = {n: [] for n in COUNTS}
    totals = {n: {"reads": 0, "retries": 0, "seconds": 0.0} for n in COUNTS}
    try:
        wait_running(name, writer)
        time.sleep(cfg.pick(1.0, 0.2))
        for r in range(rounds):
            for n in COUNTS[r % 4:] + COUNTS[:r % 4]:
                if n == 0:
                    start = time.monotonic_ns()
                    time.sleep(duration)
                    windows[n].append((start + warm_ns, time.monotonic_ns()))
                    continue
                workers = Workers(lab, n, setup=lambda i: Reader(name),
                                  work=lambda reader: read_loop(duration, reader))
                try:
                    workers.ready()
                    workers.go()
                    results = workers.results()
                finally:
                    workers.release()
                windows[n].append((max(res["start"] for res in results) + warm_ns,
                                   min(res["end"] for res in results)))
                for res in results:
                    totals[n]["reads"] += res["reads"]
                    totals[n]["retries"] += res["retries"]
                    totals[n]["seconds"] += (res["end"] - res["start"]) / 1e9
    finally:
        lab.stop(writer)
    data = array("q")
    with open(log, "rb") as f:
        data.frombytes(f.read())
    half = len(data) // 2
    starts, durations = data[:half], data[half:]

    lat: dict[int, list[float]] = {}
    expected: dict[int, float] = {}
    for n in COUNTS:
        wins = windows[n]
        lat[n] = [d / 1e9 for s, d in zip(starts, durations) if any(a <= s < b for a, b in wins)]
        expected[n] = sum(b - a for a, b in wins) / 1e6  # 1 kHz: one write per millisecond
    def p99(n: int) -> float:  # no write at all in a window would be a starved writer: infinitely late
        return percentile(lat[n], 99) if lat[n] else float("inf")

    p99_0 = p99(0)
    table = Table(5, "Readers don't slow the publisher: write latency at 1 kHz, readers reading flat out",
                  ["readers", "writes (of slots)", "write µs median", "write µs p99", "p99 x no readers",
                   "write µs max", "reads/s per reader", "retries per read"])
    for n in COUNTS:
        t = totals[n]
        some = bool(lat[n])
        table.add(n, f"{len(lat[n])} ({100 * len(lat[n]) / expected[n]:.1f} %)",
                  us(median(lat[n])) if some else "n/a", us(p99(n)) if some else "n/a",
                  "1 (peer)" if n == 0 else x(p99(n) / p99_0) if some else "n/a",
                  us(max(lat[n])) if some else "n/a",
                  f"{t['reads'] / t['seconds']:,.0f}".replace(",", " ") if n else "",
                  f"{t['retries'] / max(t['reads'], 1):.4f}" if n else "")
    table.notes.append(f"{rounds} rounds x {duration:g} s per reader count, counts in rotating order; latencies "
                       f"pooled per count (the first {warm_ns / 1e9:g} s of each window left out). A write is one "
                       f"`OwnedSegment.publish` of a real sample of this host; readers call `Reader.read()`. "
                       f"Writes below 100 % of slots: the writer waited for a CPU (2 cores, n busy readers).")
    p99_16 = p99(16)
    table.target(f"p99 with 16 readers {x(p99_16 / p99_0)} p99 with none (<= {P99_LIMIT:g}x)",
                 p99_16 / p99_0 <= P99_LIMIT)
    worst = max((n for n in COUNTS if n), key=lambda n: totals[n]["retries"] / max(totals[n]["reads"], 1))
    rate = totals[worst]["retries"] / max(totals[worst]["reads"], 1)
    table.target(f"retries per read {rate:.4f} at worst ({worst} readers) (< {RETRY_LIMIT:g})", rate < RETRY_LIMIT)
    return table

"""Q7. Wake-up latency: from publish to a waiting reader having the sample, with 1 and 64 readers.

The writer is a forked process that owns a fresh segment per batch and
publishes this host's real samples (taken once, with the default ``--top
10`` tables) through ``OwnedSegment.publish`` at 20 Hz on a fixed grid,
passing as ``monotonic`` the ``time.monotonic()`` taken immediately before
``publish()``; it times every publish (which includes the FUTEX_WAKE).
Readers are forked processes (``Workers``, stopped by PID); each waits for
every new sample, reads it (``Reader.read(arrays=False)``) and records
``time.monotonic() - snap.sample_monotonic`` (CLOCK_MONOTONIC is one clock for
every process): the latency includes the publish itself.

Three ways to wait, same writer pace, same reader counts, same rounds:

* futex: ``Reader.follow(arrays=False)``, which sleeps in ``wait_for_sample``
  on the futex the publisher wakes after each sample (the shipped path);
* pipe: one pipe per reader; the writer, right after ``publish()``, writes a
  byte to each; readers block in ``os.read`` on theirs, then read the
  segment.  The classic notification; it costs the writer one write per reader;
* poll: the same ``Reader.follow`` with the futex disabled
  (``reader._wake = (0, ...)``, what ``SHM_METRICS_WAKE=poll`` does), sleeping
  the fallback poll period (interval / 20 = 2.5 ms at 20 Hz) between checks.

Batches (variant x reader count, and the writer alone) run in rotating order
each round.  Latencies are pooled per row over every (reader, sample) pair;
"last reader" is, per sample that every reader received, the latency of the
slowest; ratios are medians of per-round ratios.  Readers' CPU is read from
/proc/PID/task/*/schedstat between "go" and their last sample, divided by the
samples they received.
"""

from __future__ import annotations

import json
import os
import signal
import time

from bench.common import (
    Config,
    Lab,
    Shared,
    Table,
    Workers,
    alternate,
    cpu_seconds,
    median,
    paired_ratio,
    percentile,
    us,
    x,
)
from shm_metrics import shm_layout as L
from shm_metrics.publisher.cli import possible_cpus
from shm_metrics.publisher.sampler import Sampler
from shm_metrics.publisher.segment import OwnedSegment
from shm_metrics.readers import Reader

RATE = 20.0  # samples per second
_FAMILIES: list = []  # [catalog, family capacities] of the samples, set by run() before the writers fork
COUNTS = (1, 64)
VARIANTS = ("futex", "pipe", "poll")
LATENCY_LIMIT, CPU_LIMIT = 1.5, 0.2
LABELS = {"futex": "futex: `Reader.follow`", "pipe": "pipe per reader: `os.read`, then `read()`",
          "poll": "poll: `Reader.follow`, futex off"}


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class Writer:
    """A forked writer: creates ``name``, publishes one sample, then ``count`` more at RATE when told to go.

    After each publish it writes one byte to each of ``notify`` (the pipe peer).  Reports the duration of each
    publish and of each round of notifications, then waits to be released before removing its segment.
    """

    def __init__(self, lab: Lab, name: str, samples: list, count: int, notify: list[int], others: list[int]):
        self.lab = lab
        ready_r, ready_w = os.pipe()
        go_r, self._go_w = os.pipe()
        self._result_r, result_w = os.pipe()
        release_r, self._release_w = os.pipe()

        def child() -> None:
            for fd in (ready_r, self._go_w, self._result_r, self._release_w, *others):
                os.close(fd)
            signal.alarm(60)  # a watchdog: a stuck batch ends, and the parent says so
            catalog, capacities = _FAMILIES
            layout = L.Layout.for_capacities(possible_cpus(), 64, 64, 64, **capacities)
            segment = OwnedSegment(name, layout, 0o644, 1 / RATE, catalog)
            try:
                segment.publish(samples[0], time.time(), time.monotonic(), 0.0, 0)
                segment.set_state(L.STATE_RUNNING)
                os.write(ready_w, b"R")
                os.read(go_r, 1)  # EOF: go
                publish, notify_took, publish_cpu, notify_cpu = [], [], [], []
                thread_time = time.thread_time
                period = 1 / RATE
                grid = time.monotonic() + period / 2
                slot = 0
                for k in range(count):
                    delay = grid + slot * period - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    wall = time.time()
                    c0 = thread_time()
                    t0 = time.monotonic()
                    segment.publish(samples[(k + 1) % len(samples)], wall, t0, 0.0, 0)
                    t1 = time.monotonic()
                    c1 = thread_time()
                    for fd in notify:
                        os.write(fd, b"s")
                    t2 = time.monotonic()
                    c2 = thread_time()
                    publish.append(t1 - t0)
                    publish_cpu.append(c1 - c0)
                    notify_took.append(t2 - t1)
                    notify_cpu.append(c2 - c1)
                    # a missed slot is skipped, never bunched (as shm-publisher does)
                    slot = max(slot + 1, int((t2 - grid) / period) + 1)
                for fd in notify:
                    os.close(fd)
                os.write(result_w, json.dumps({"publish": publish, "notify": notify_took, "publish_cpu": publish_cpu,
                                                  "notify_cpu": notify_cpu}).encode())
                os.close(result_w)
                os.read(release_r, 1)  # EOF: released
            finally:
                segment.close(unlink=True)

        self.pid = lab.fork(child)
        for fd in (ready_w, go_r, result_w, release_r):
            os.close(fd)
        try:
            if os.read(ready_r, 1) != b"R":
                raise RuntimeError(f"Q7 writer {self.pid} failed to start (its traceback is above)")
        finally:
            os.close(ready_r)

    def forget(self) -> None:
        """In a process forked after the writer (a reader): drop the copies of the writer's control pipes,
        whose EOF the writer waits for."""
        for fd in (self._go_w, self._release_w, self._result_r):
            if fd >= 0:
                os.close(fd)

    def go(self) -> None:
        os.close(self._go_w)
        self._go_w = -1

    def results(self) -> dict:
        data = _read_all(self._result_r)
        if not data:
            raise RuntimeError(f"Q7 writer {self.pid} failed (its traceback is above)")
        return json.loads(data)

    def release(self) -> None:
        for fd in (self._go_w, self._release_w, self._result_r):
            if fd >= 0:
                os.close(fd)
        self._go_w = self._release_w = self._result_r = -1
        self.lab.reap(self.pid)


def follow_loop(state: tuple) -> dict:
    """Every new sample through ``Reader.follow`` (futex, or polling if the futex was turned off)."""
    reader, _, seq0, final, how = state
    got = []
    clock = time.monotonic
    for snap in reader.follow(arrays=False):
        now = clock()
        seq = snap.seq
        if seq > seq0:
            got.append((seq, now - snap.sample_monotonic))
        if seq >= final:
            break
    return {"how": how, "got": got}


def pipe_loop(state: tuple) -> dict:
    """Block in ``os.read`` on this reader's pipe; a byte means a new sample: read it."""
    reader, fd, seq0, final, how = state
    got = []
    clock, read, last = time.monotonic, reader.read, seq0
    while last < final:
        if not os.read(fd, 4096):
            break  # the writer closed its end: it has published everything
        snap = read(arrays=False)
        now = clock()
        seq = snap.seq
        if seq > last:  # a late reader may find a sample whose byte it has not read yet
            got.append((seq, now - snap.sample_monotonic))
            last = seq
    return {"how": how, "got": got}


def batch(lab: Lab, variant: str, n: int, samples: list, count: int) -> dict:
    name = lab.segment_name(f"q7-{variant}-{n}")
    pipes = [os.pipe() for _ in range(n)] if variant == "pipe" else []
    all_fds = [fd for pair in pipes for fd in pair]
    writer = Writer(lab, name, samples, count, [w for _, w in pipes], [r for r, _ in pipes])
    workers = None
    try:
        if n:
            def setup(i: int) -> tuple:
                writer.forget()
                for j, (r, w) in enumerate(pipes):
                    os.close(w)
                    if j != i:
                        os.close(r)
                signal.alarm(60)
                reader = Reader(name)
                if variant == "poll":
                    reader._wake = (0, "forced: the poll peer")  # what SHM_METRICS_WAKE=poll does at import
                how = "pipe" if variant == "pipe" else reader.wake  # futex, or poll (why) where unavailable
                if variant == "poll" and how == "futex":
                    raise RuntimeError("Q7 poll reader waits by futex")
                seq0 = reader.seq
                return reader, pipes[i][0] if pipes else None, seq0, seq0 + 2 * count, how

            workers = Workers(lab, n, setup, pipe_loop if variant == "pipe" else follow_loop)
        for fd in all_fds:  # the writer and the readers have theirs
            os.close(fd)
        all_fds = []
        if workers:
            workers.ready()
            cpu0 = {pid: cpu_seconds(pid) for pid, _ in workers.kids}
            workers.go()
            time.sleep(0.05)  # the readers are asleep in their wait before the first sample
        writer.go()
        if workers:
            results = workers.results()
            got = [res["got"] for res in results]
            hows = sorted({res["how"] for res in results})
            cpu = sum(cpu_seconds(pid) - cpu0[pid] for pid, _ in workers.kids)
        else:
            got, cpu, hows = [], 0.0, []
        timing = writer.results()
    finally:
        for fd in all_fds:
            os.close(fd)
        if workers:
            workers.release()
        writer.release()
    latencies = [lat for per_reader in got for _, lat in per_reader]
    by_seq: dict[int, list[float]] = {}
    for per_reader in got:
        for seq, lat in per_reader:
            by_seq.setdefault(seq, []).append(lat)
    last = [max(v) for v in by_seq.values() if len(v) == n]
    return {"how": hows, "lat": latencies, "last": last, "received": len(latencies), "sent": count * n, "cpu": cpu,
            **timing}


def run(cfg: Config, shared: Shared) -> Table:
    lab = shared.lab
    count, rounds = cfg.pick(30, 4), cfg.pick(5, 1)
    sampler = Sampler(top_n=10)  # the default publisher's sample: scalars, arrays and the --top tables
    try:
        samples = []
        for _ in range(4):
            samples.append(sampler.sample())
            time.sleep(0.02)
        _FAMILIES[:] = [sampler.catalog, sampler.family_capacities(samples[0])]  # the writer's segment carries them
    finally:
        sampler.close()
    keys = [(v, n) for n in COUNTS for v in VARIANTS] + [("alone", 0)]
    per_round = alternate({key: (lambda key=key: batch(lab, key[0], key[1], samples, count)) for key in keys},
                          rounds)

    def pooled(key: tuple, what: str) -> list[float]:
        return [v for r in per_round[key] for v in r[what]]

    def round_medians(key: tuple, what: str) -> list[float]:
        return [median(r[what]) if r[what] else float("nan") for r in per_round[key]]

    def cpu_per_sample(key: tuple) -> list[float]:
        return [r["cpu"] / r["received"] if r["received"] else float("nan") for r in per_round[key]]

    table = Table(7, "Wake-up latency: publish to a waiting reader having the sample, 1 and 64 readers",
                  ["readers", "wait by", "samples had (of sent)", "µs median", "µs p99", "µs max",
                   "last reader µs median", "x pipe median", "reader CPU µs per sample", "x poll CPU",
                   "writer µs per publish (CPU)"])
    hows = sorted({h for n in COUNTS for r in per_round[("futex", n)] for h in r["how"]})
    futex_ok = hows == ["futex"]  # else the kernel (or a seccomp filter) refused the futex: they polled
    lat_ratio: dict[int, float] = {}
    cpu_ratio: dict[int, float] = {}
    publish_med: dict[tuple, float] = {}
    for n in COUNTS:
        for v in VARIANTS:
            key = (v, n)
            lat, last = pooled(key, "lat"), pooled(key, "last")
            received = sum(r["received"] for r in per_round[key])
            sent = sum(r["sent"] for r in per_round[key])
            publish_med[key] = median(pooled(key, "publish"))
            writer = f"{us(publish_med[key])} ({us(median(pooled(key, 'publish_cpu')))})"
            if v == "pipe":
                writer += (f" + {us(median(pooled(key, 'notify')))} ({us(median(pooled(key, 'notify_cpu')))}) "
                           f"for {n} pipe write{'s' * (n > 1)}")
            vs_pipe = paired_ratio(round_medians(key, "lat"), round_medians(("pipe", n), "lat"))
            vs_poll = paired_ratio(cpu_per_sample(key), cpu_per_sample(("poll", n)))
            if v == "futex":
                lat_ratio[n], cpu_ratio[n] = vs_pipe, vs_poll
            label = LABELS[v] if v != "futex" or futex_ok else f"futex refused, waited by {', '.join(hows)}"
            table.add(n, label, f"{received} ({100 * received / max(sent, 1):.1f} %)",
                      us(median(lat)) if lat else "n/a", us(percentile(lat, 99)) if lat else "n/a",
                      us(max(lat)) if lat else "n/a", us(median(last)) if last else "n/a",
                      "1 (peer)" if v == "pipe" else x(vs_pipe), us(median(cpu_per_sample(key))),
                      "1 (peer)" if v == "poll" else x(vs_poll), writer)
    alone = pooled(("alone", 0), "publish")
    publish_med[("alone", 0)] = median(alone)
    table.add(0, "(the writer alone: nobody waits)", f"{len(alone)} published", "", "", "", "", "", "", "",
              f"{us(median(alone))} ({us(median(pooled(('alone', 0), 'publish_cpu')))})")
    wake64 = paired_ratio(round_medians(("futex", 64), "publish"), round_medians(("alone", 0), "publish"))
    wake64_cpu = paired_ratio(round_medians(("futex", 64), "publish_cpu"),
                              round_medians(("alone", 0), "publish_cpu"))
    table.notes.append(
        f"{rounds} rounds x {count} samples at {RATE:g} Hz per batch; 7 batches per round (3 ways x 1 and 64 "
        f"readers, and the writer alone), rotating order; each batch a fresh segment and writer, forked readers "
        f"waiting before the first sample. Latency = reader's `time.monotonic()` after its read - the writer's "
        f"`time.monotonic()` just before `publish()` (the publish, ~{us(publish_med[('alone', 0)])} µs, is "
        f"included); pooled over every (reader, sample) pair; \"last reader\": per sample that every reader "
        f"had, the slowest one's latency. x pipe / x poll: median of per-round ratios. Poll period "
        f"{1000 / RATE / 20:g} ms (interval / 20). Reader CPU: /proc/PID/task/*/schedstat from go to the last "
        f"sample / samples had. Writer: median wall time of `publish()` (FUTEX_WAKE included) and, in "
        f"brackets, its CPU time (`time.thread_time`); with 64 futex waiters {x(wake64)} the writer alone in wall "
        f"time, {x(wake64_cpu)} in CPU time (medians of per-round ratios): the wall time includes waiting for a "
        f"CPU while woken readers run. 2 CPUs: 64 readers woken at once queue "
        f"for them, whatever wakes them.")
    if not futex_ok:
        table.target(f"futex against pipe and poll: the readers could not use the futex here ({', '.join(hows)})",
                     None)
        return table
    for n in COUNTS:
        table.target(f"futex median latency {x(lat_ratio[n])} the pipe peer's with {n} reader{'s' * (n > 1)} "
                     f"(<= {LATENCY_LIMIT}x)", lat_ratio[n] <= LATENCY_LIMIT)
    for n in COUNTS:
        table.target(f"waiting readers' CPU per sample with futex {x(cpu_ratio[n])} the polling readers' with {n} "
                     f"reader{'s' * (n > 1)} (<= {CPU_LIMIT}x)", cpu_ratio[n] <= CPU_LIMIT)
    return table

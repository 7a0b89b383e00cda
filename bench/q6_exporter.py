"""Q6. shm-exporter against node_exporter (equivalent collectors): scrape latency and CPU per scrape.

The client is the same for both: ``http.client`` over one keep-alive
connection per client, GET /metrics, body read, no gzip.  Batches alternate
between the targets (rotating order every round); latency is per scrape,
pooled over the rounds; a server's CPU per scrape is its CPU delta over a batch
(``common.cpu_seconds``, read while the batch's connections are still open)
divided by the batch's scrapes.

shm-exporter renders the node_* block once per published sample and reuses
it until the next one.  Scraping back to back against a 1 s publisher, most
scrapes reuse it; Prometheus scraping every 15 s against a 1 s publisher
renders on every scrape.  So shm-exporter is measured twice: on the shared
1 s publisher (row "cached"), and on a second exporter whose 100 Hz publisher
has a new sample before every scrape (the benchmark waits for a new seq
before each one; row "renders every scrape").  Each scrape's
``shm_metrics_seq`` says whether it rendered; the renders column counts them.

Then 10 clients scrape at once (forked processes, one connection each):
latency and CPU per scrape under concurrency, and the throughput.
"""

from __future__ import annotations

import time

from bench.common import (
    Config,
    Shared,
    Table,
    Workers,
    connect,
    cpu_seconds,
    get,
    median,
    ms,
    paired_ratio,
    percentile,
    stat_cpu_seconds,
    x,
)
from shm_metrics.readers import Reader

LIMIT, STRETCH = 0.5, 0.2
CLIENTS = 10


def seq_of(body: bytes) -> float | None:
    at = body.find(b"\nshm_metrics_seq ")
    if at < 0:
        return None
    return float(body[at + 17:body.index(b"\n", at + 1)])


def new_sample(reader: Reader, timeout: float = 5.0) -> None:
    """Until the 100 Hz publisher has published a sample after this call (and is not mid-write)."""
    deadline = time.monotonic() + timeout
    seen = reader.seq
    while reader.seq == seen or reader.seq & 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the 100 Hz publisher stopped publishing")
        time.sleep(0.0005)


def run(cfg: Config, shared: Shared) -> Table:
    lab = shared.lab
    node = shared.node
    ours = shared.exporter
    fast_pub = lab.publisher(0.01, "q6-100hz")
    fast = lab.shm_exporter(fast_pub.name)
    targets = {"node": node} if node else {}
    targets.update(cached=ours, renders=fast)
    rounds, per_batch = cfg.pick(8, 1), cfg.pick(40, 5)
    lat = {k: [] for k in targets}
    cpu = {k: [] for k in targets}
    renders = dict.fromkeys(targets, 0)
    conns = {k: connect(t.port) for k, t in targets.items()}
    seq_reader = Reader(fast_pub.name)
    totals0 = {k: (cpu_seconds(t.pid), stat_cpu_seconds(t.pid)) for k, t in targets.items()}
    try:
        last_seq = {k: seq_of(get(c)) for k, c in conns.items()}  # warm-up
        for r in range(rounds):
            keys = list(targets)
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                conn, pid = conns[key], targets[key].pid
                c0 = cpu_seconds(pid)
                for _ in range(per_batch):
                    if key == "renders":  # a new sample before every scrape (not timed; the server is idle)
                        new_sample(seq_reader)
                    t0 = time.perf_counter()
                    body = get(conn)
                    lat[key].append(time.perf_counter() - t0)
                    seq = seq_of(body)
                    renders[key] += seq != last_seq[key]
                    last_seq[key] = seq
                cpu[key].append((cpu_seconds(pid) - c0) / per_batch)
        totals1 = {k: (cpu_seconds(t.pid), stat_cpu_seconds(t.pid)) for k, t in targets.items()}
    finally:
        seq_reader.close()
        for conn in conns.values():
            conn.close()

    # 10 clients at once: each forked client scrapes per_client times; CPU read before the connections close.
    conc = {k: targets[k] for k in ("node", "cached") if k in targets}
    c_lat = {k: [] for k in conc}
    c_cpu = {k: [] for k in conc}
    c_rate = {k: [] for k in conc}
    per_client = cfg.pick(20, 2)

    def scrape_n(conn) -> dict:
        out = []
        t_start = time.perf_counter()
        for _ in range(per_client):
            t0 = time.perf_counter()
            get(conn)
            out.append(time.perf_counter() - t0)
        return {"lat": out, "wall": time.perf_counter() - t_start}

    for r in range(cfg.pick(4, 1)):
        keys = list(conc)
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            port, pid = conc[key].port, conc[key].pid

            def setup(i: int, port=port):
                conn = connect(port)
                get(conn)
                return conn

            workers = Workers(lab, CLIENTS, setup=setup, work=scrape_n)
            try:
                workers.ready()
                c0, t0 = cpu_seconds(pid), time.perf_counter()
                workers.go()
                results = workers.results()
                wall, c1 = time.perf_counter() - t0, cpu_seconds(pid)
            finally:
                workers.release()
            c_cpu[key].append((c1 - c0) / (CLIENTS * per_client))
            c_rate[key].append(CLIENTS * per_client / wall)
            for res in results:
                c_lat[key] += res["lat"]
    lab.stop(fast)
    lab.stop(fast_pub)

    table = Table(6, "Exporter: shm-exporter against node_exporter (equivalent collectors), same client, same run",
                  ["target", "clients", "scrapes", "renders", "ms median", "ms p99", "x node median", "x node p99",
                   "server CPU ms per scrape", "x node CPU", "scrapes/s"])
    labels = {"node": "node_exporter", "cached": "shm-exporter, 1 s publisher (node_* block cached per sample)",
              "renders": "shm-exporter, a new sample before every scrape (renders every time)"}
    ratios: dict[str, tuple[float, float, float]] = {}
    for key in targets:
        med, p99 = median(lat[key]), percentile(lat[key], 99)
        if node and key != "node":
            ratios[key] = (med / median(lat["node"]), p99 / percentile(lat["node"], 99),
                           paired_ratio(cpu[key], cpu["node"]))
        rel = ratios.get(key)
        table.add(labels[key], 1, len(lat[key]), "" if key == "node" else renders[key], ms(med), ms(p99),
                  x(rel[0]) if rel else "1 (peer)" if key == "node" else "n/a",
                  x(rel[1]) if rel else "1 (peer)" if key == "node" else "n/a", ms(median(cpu[key])),
                  x(rel[2]) if rel else "1 (peer)" if key == "node" else "n/a", "")
    for key in conc:
        med, p99 = median(c_lat[key]), percentile(c_lat[key], 99)
        if node and key != "node":
            ratios[f"{key}-10"] = (med / median(c_lat["node"]), p99 / percentile(c_lat["node"], 99),
                                   paired_ratio(c_cpu[key], c_cpu["node"]))
        rel = ratios.get(f"{key}-10")
        peer = "1 (peer)" if key == "node" else "n/a"
        table.add(labels[key].split(" (")[0], CLIENTS, len(c_lat[key]), "", ms(med), ms(p99),
                  x(rel[0]) if rel else peer, x(rel[1]) if rel else peer, ms(median(c_cpu[key])),
                  x(rel[2]) if rel else peer, f"{median(c_rate[key]):.0f}")
    agree = ", ".join(f"{labels[k].split(',')[0].split(' (')[0]}{' (renders)' if k == 'renders' else ''} "
                      f"{totals1[k][0] - totals0[k][0]:.2f} s vs {totals1[k][1] - totals0[k][1]:.2f} s"
                      for k in targets)
    table.notes.append(f"Single client: {rounds} rounds x {per_batch} scrapes per target, rotating order; 10 clients: "
                       f"{CLIENTS} forked clients x {per_client} scrapes per batch. Latency: median and p99 of all "
                       f"scrapes; CPU ratio: median of per-batch ratios. Server CPU over the single-client part, "
                       f"schedstat vs /proc/PID/stat ticks: {agree}. Both exporters serve their own process "
                       f"metrics (defaults); node_exporter also its go_* and promhttp_* ones.")
    if not node:
        table.target("<= 0.5x node_exporter: prometheus-node-exporter not installed", None)
        return table
    for key, what in (("cached", "cached"), ("renders", "rendering every scrape"), ("cached-10", "10 clients")):
        med_r, p99_r, cpu_r = ratios[key]
        worst = max(ratios[key])
        table.target(f"{what}: median {x(med_r)}, p99 {x(p99_r)}, CPU {x(cpu_r)} of node_exporter "
                     f"(<= {LIMIT}x)", worst <= LIMIT)
        table.target(f"stretch, {what}: worst of the three {x(worst)} (<= {STRETCH}x)", worst <= STRETCH)
    return table

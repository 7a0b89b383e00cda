"""Q2. The same snapshot delivered by other means, against the shm read.

The snapshot is what ``Reader.read()`` takes: the span (header seqlock
part, directory, scalars) and each array's and family section's used records
(kept as bytes, decoded on demand), ~15 KiB on a small host.  For the round
trips a server process holds exactly those bytes, pre-packed, and answers a
one-byte request with them; the client treats them as the reader does.  The server does no work at all (it does not
sample, read or pack), so these rows are a lower bound for any real
"ask a daemon" design: the comparison is as favourable to them as it can be.

Round trips are measured twice: server pinned to the client's CPU (a direct
wakeup on the same core, the fastest case) and to the other CPU.  The target
takes the fastest of all of them.

psutil sampling is the same families in the reader's own process (pids,
loadavg, cpu_times total and per CPU, cpu_stats, virtual_memory,
swap_memory, boot_time, net_io_counters per NIC, disk_io_counters per disk,
disk_partitions + disk_usage).  psutil has nothing cheap for the thread
count, procs_running/blocked or file handles, so those are left out: the
psutil row is an underestimate.

The HTTP rows GET /metrics over one keep-alive connection and read the body;
they do not parse it (parsing the text would add milliseconds): again an
underestimate of what a client pays to get the numbers.
"""

from __future__ import annotations

import os
import socket
from functools import partial

import shm_metrics.readers.reader as R
from bench.common import (
    Config,
    Shared,
    Table,
    alternate,
    calibrate,
    connect,
    get,
    median,
    paired_ratio,
    per_call,
    us,
    x,
)
from bench.q1_read import bare_full_decoder, consistent_copy
from shm_metrics import shm_layout as L
from shm_metrics.readers import Reader

IPC_FACTOR, PSUTIL_FACTOR, HTTP_FACTOR = 2, 100, 300


def pack(data: bytes, layout: L.Layout) -> tuple[bytes, list[tuple]]:
    """The snapshot as the bytes a server would send: the span, then each array's used records."""
    off = L.HEADER_SEQ_OFFSET
    values = R._SPAN.unpack_from(data, off)
    parts = [data[off:off + R._SPAN.size]]
    plan = []
    pos = R._SPAN.size
    for rec in (*L.SAMPLE_ARRAYS, *L.FAMILY_SECTIONS):  # what Reader.read() copies: all but the history ring
        i = L.SECTION_INDEX[rec.name]
        count = values[R._DIR_START + i * R._DIR_WIDTH + R._COUNT_POS]
        parts.append(data[layout.offsets[i]:layout.offsets[i] + count * rec.size])
        plan.append((rec.name, pos, count * rec.size))
        pos += count * rec.size
    return b"".join(parts), plan


def decoder(plan: list[tuple]):
    """The client's decode of a received snapshot: what the reader does (the span unpacked, each
    section's records kept as bytes for decoding on demand), no checks."""
    unpack = R._SPAN.unpack_from

    def decode(buf) -> tuple:
        mv = memoryview(buf)
        return unpack(buf, 0), {name: mv[pos:pos + size].tobytes() for name, pos, size in plan}

    return decode


def psutil_snapshot():
    import psutil

    return (len(psutil.pids()), psutil.getloadavg(), psutil.cpu_times(), psutil.cpu_times(percpu=True),
            psutil.cpu_stats(), psutil.virtual_memory(), psutil.swap_memory(), psutil.boot_time(),
            psutil.net_io_counters(pernic=True), psutil.disk_io_counters(perdisk=True),
            [psutil.disk_usage(p.mountpoint) for p in psutil.disk_partitions()])


# ---------------------------------------------------------------- servers (forked, pinned)
class PipeServer:
    label = "pipe round trip"

    def __init__(self, lab, payload: bytes, cpu: int):
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()

        def serve() -> None:
            os.close(self.req_w)
            os.close(self.resp_r)
            while os.read(req_r, 1):
                view = memoryview(payload)
                while view:
                    view = view[os.write(resp_w, view):]

        self.pid = lab.fork(serve, cpu)
        os.close(req_r)
        os.close(resp_w)
        self.buf = bytearray(len(payload))

    def fetch(self):
        os.write(self.req_w, b"x")
        buf, got, size = self.buf, 0, len(self.buf)
        while got < size:
            chunk = os.read(self.resp_r, size - got)
            buf[got:got + len(chunk)] = chunk
            got += len(chunk)
        return buf

    def close(self, lab) -> None:
        os.close(self.req_w)  # EOF: the server returns
        lab.reap(self.pid)
        os.close(self.resp_r)


class SocketServer:
    label = "Unix stream socket round trip"

    def __init__(self, lab, payload: bytes, cpu: int):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def serve() -> None:
            self.sock.close()
            while theirs.recv(1):
                theirs.sendall(payload)

        self.pid = lab.fork(serve, cpu)
        theirs.close()
        self.buf = bytearray(len(payload))
        self.view = memoryview(self.buf)

    def fetch(self):
        self.sock.sendall(b"x")
        got, size, view, recv_into = 0, len(self.buf), self.view, self.sock.recv_into
        while got < size:
            got += recv_into(view[got:], size - got)
        return self.buf

    def close(self, lab) -> None:
        self.sock.close()
        lab.reap(self.pid)


class QueueServer:
    """Two POSIX message queues (requests, answers); a snapshot larger than msgsize_max goes in pieces."""

    label = "POSIX message queue round trip"

    def __init__(self, lab, payload: bytes, cpu: int):
        import posix_ipc

        try:
            with open("/proc/sys/fs/mqueue/msgsize_max") as f:
                limit = int(f.read())
        except OSError:
            limit = 8192
        self.piece = min(len(payload), limit)
        pieces = [payload[i:i + self.piece] for i in range(0, len(payload), self.piece)]
        self.names = (lab.queue_name("mq-req"), lab.queue_name("mq-resp"))
        self.req = posix_ipc.MessageQueue(self.names[0], posix_ipc.O_CREX, max_messages=4, max_message_size=16)
        self.resp = posix_ipc.MessageQueue(self.names[1], posix_ipc.O_CREX, max_messages=min(10, len(pieces) + 1),
                                           max_message_size=self.piece)

        def serve() -> None:
            while self.req.receive()[0] == b"x":
                for piece in pieces:
                    self.resp.send(piece)

        self.pid = lab.fork(serve, cpu)
        self.n = len(pieces)

    def fetch(self):
        self.req.send(b"x")
        if self.n == 1:
            return self.resp.receive()[0]
        return b"".join(self.resp.receive()[0] for _ in range(self.n))

    def close(self, lab) -> None:
        import posix_ipc

        self.req.send(b"q")
        lab.reap(self.pid)
        for q, name in zip((self.req, self.resp), self.names):
            q.close()
            posix_ipc.unlink_message_queue(name)


# ---------------------------------------------------------------- the question
def run(cfg: Config, shared: Shared) -> Table:
    lab = shared.lab
    reader = Reader(shared.publisher.name)
    cpus = sorted(os.sched_getaffinity(0))
    here = cpus[0]
    placements = [("same core", here)] + ([("other core", cpus[1])] if len(cpus) > 1 else [])
    saved_affinity = set(cpus)
    servers = []
    conns = {}
    try:
        os.sched_setaffinity(0, {here})  # the client (this process) stays on one CPU for the whole question
        data = consistent_copy(reader)
        payload, plan = pack(data, reader.layout)
        decode = decoder(plan)
        assert decode(payload) == bare_full_decoder(data, reader.layout)(), "the packed snapshot must decode alike"

        variants = {"shm": reader.read}
        labels = {"shm": "shm read: `Reader.read()` (scalars, arrays and node_exporter families)"}
        for cls in (SocketServer, PipeServer, QueueServer):
            for where, cpu in placements:
                server = cls(lab, payload, cpu)
                servers.append(server)
                key = f"{cls.__name__}-{where}"
                variants[key] = lambda s=server: decode(s.fetch())
                labels[key] = f"{cls.label}, server on the {where}, decode included"
        variants["psutil"] = psutil_snapshot
        labels["psutil"] = "psutil sampling in the reader's process (same families, fewer values)"
        http = {"shm-exporter": shared.exporter, "node_exporter": shared.node}
        for key, daemon in http.items():
            if daemon is not None:
                conns[key] = connect(daemon.port)
                variants[key] = partial(get, conns[key])
                labels[key] = f"HTTP GET /metrics to {key}, keep-alive, body read (not parsed)"

        for fn in variants.values():  # warm-up, and every way really answers
            fn()
        batch_seconds = cfg.pick(0.05, 0.004)
        sizes = {k: calibrate(fn, batch_seconds) for k, fn in variants.items()}
        batches = {k: partial(per_call, fn, sizes[k]) for k, fn in variants.items()}
        t = alternate(batches, cfg.pick(15, 2))
    finally:
        # Last started first: a later child inherited the earlier servers' pipe and socket ends, and
        # an earlier server sees EOF only once every copy of its request end is closed.
        for server in reversed(servers):
            server.close(lab)
        for conn in conns.values():
            conn.close()
        reader.close()
        os.sched_setaffinity(0, saved_affinity)

    med = {k: median(v) for k, v in t.items()}
    ratio = {k: paired_ratio(v, t["shm"]) for k, v in t.items()}
    table = Table(2, "Against other ways to get the numbers: the same snapshot, per delivery",
                  ["way", "µs median", "x the shm read"])
    for key in variants:
        table.add(labels[key], us(med[key]), "1 (peer)" if key == "shm" else x(ratio[key]))
    sizes = {rec.name: rec.size for rec in (*L.SAMPLE_ARRAYS, *L.FAMILY_SECTIONS)}
    counts = ", ".join(f"{len(v) // sizes[k]} {k}" for k, v in decode(payload)[1].items())
    table.notes.append(f"Snapshot: {len(payload)} bytes ({counts}). Client pinned to CPU {here}; "
                       f"{len(t['shm'])} alternating rounds of ~{batch_seconds * 1000:.0f} ms batches; "
                       f"ratio = median of per-round ratios. Round-trip "
                       f"servers answer with pre-packed bytes; psutil lacks threads, procs_running/blocked and "
                       f"file handles; HTTP bodies are not parsed: every peer here is an underestimate.")
    ipc = [k for k in ratio if k.endswith("core")]
    fastest = min(ipc, key=lambda k: ratio[k])
    table.target(f"shm read {x(ratio[fastest])} faster than the fastest round trip ({labels[fastest].split(',')[0]}, "
                 f"{fastest.split('-', 1)[1]}) (>= {IPC_FACTOR}x)", ratio[fastest] >= IPC_FACTOR)
    table.target(f"{x(ratio['psutil'])} faster than psutil sampling (>= {PSUTIL_FACTOR}x)",
                 ratio["psutil"] >= PSUTIL_FACTOR)
    for key in http:
        if key in ratio:
            table.target(f"{x(ratio[key])} faster than HTTP to {key} (>= {HTTP_FACTOR}x)", ratio[key] >= HTTP_FACTOR)
        else:
            table.target(f"faster than HTTP to {key} (>= {HTTP_FACTOR}x): prometheus-node-exporter not installed",
                         None)
    return table

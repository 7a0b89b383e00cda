"""/proc/net/rpc/nfsd: node_exporter's ``nfsd`` collector (the kernel NFS server's statistics).

Lines: ``rc`` reply cache, ``fh`` file handles, ``io`` bytes, ``th`` threads
(the count, then a histogram node_exporter ignores), ``ra`` read-ahead cache,
``net``, ``rpc`` and ``procN``/``proc4ops`` (a count, then one counter per
procedure or NFSv4 operation, in the kernel's order).
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register
from shm_metrics.publisher.collectors._go_order import add_in_go_order
from shm_metrics.publisher.collectors.learned import LearnedFile, filled
from shm_metrics.publisher.collectors.nfs import V2_PROCEDURES, V3_PROCEDURES, procedure_counts

REPLY_CACHE_HITS = counter("node_nfsd_reply_cache_hits_total",
                           "Total number of NFSd Reply Cache hits (client lost server response).")
REPLY_CACHE_MISSES = counter("node_nfsd_reply_cache_misses_total",
                             "Total number of NFSd Reply Cache an operation that requires caching (idempotent).")
REPLY_CACHE_NOCACHE = counter("node_nfsd_reply_cache_nocache_total",
                              "Total number of NFSd Reply Cache non-idempotent operations (rename/delete/…).")
STALE_HANDLES = counter("node_nfsd_file_handles_stale_total", "Total number of NFSd stale file handles")
BYTES_READ = counter("node_nfsd_disk_bytes_read_total", "Total NFSd bytes read.")
BYTES_WRITTEN = counter("node_nfsd_disk_bytes_written_total", "Total NFSd bytes written.")
THREADS = gauge("node_nfsd_server_threads", "Total number of NFSd kernel threads that are running.")
READ_AHEAD_SIZE = gauge("node_nfsd_read_ahead_cache_size_blocks", "How large the read ahead cache is in blocks.")
READ_AHEAD_NOT_FOUND = counter("node_nfsd_read_ahead_cache_not_found_total",
                               "Total number of NFSd read ahead cache not found.")
PACKETS = counter("node_nfsd_packets_total", "Total NFSd network packets (sent+received) by protocol type.", "proto")
CONNECTIONS = counter("node_nfsd_connections_total", "Total number of NFSd TCP connections.")
RPC_ERRORS = counter("node_nfsd_rpc_errors_total", "Total number of NFSd RPC errors by error type.", "error")
RPCS = counter("node_nfsd_server_rpcs_total", "Total number of NFSd RPCs.")
REQUESTS = counter("node_nfsd_requests_total", "Total number NFSd Requests by method and protocol.",
                   "proto", "method")

# NFSv4 operations in the kernel's order; None for the ones node_exporter does not export.
V4_OPERATIONS = (
    None, None, None, "Access", "Close", "Commit", "Create", "DelegPurge", "DelegReturn", "GetAttr", "GetFH", "Link",
    "Lock", "Lockt", "Locku", "Lookup", "LookupRoot", "Nverify", "Open", "OpenAttr", "OpenConfirm", "OpenDgrd",
    "PutFH", None, None, "Read", "ReadDir", "ReadLink", "Remove", "Rename", "Renew", "RestoreFH", "SaveFH",
    "SecInfo", "SetAttr", "Verify", "Write", "RelLockOwner")
# node_exporter exports these of NFSv2 and v3 (not Null).
_V2_EXPORTED = V2_PROCEDURES[1:]
_V3_EXPORTED = V3_PROCEDURES[1:]
# Expected number of values after the key, per line (None: a procedure line, checked by its own count).
_LENGTHS = {"rc": 3, "fh": 5, "io": 2, "th": 2, "ra": 12, "net": 4, "rpc": 5}


@register
class Nfsd(Collector):
    name = "nfsd"
    reports = ("nfsd",)
    families = (REPLY_CACHE_HITS, REPLY_CACHE_MISSES, REPLY_CACHE_NOCACHE, STALE_HANDLES, BYTES_READ, BYTES_WRITTEN,
                THREADS, READ_AHEAD_SIZE, READ_AHEAD_NOT_FOUND, PACKETS, CONNECTIONS, RPC_ERRORS, RPCS, REQUESTS)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        try:
            self._file = self.open(f"{ctx.procfs}/net/rpc/nfsd")
        except FileNotFoundError as error:
            raise LookupError("no NFS server statistics (nfsd module not loaded)") from error
        self._learned = LearnedFile(self._file, filled(self._fill))

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        lines = {key: [0] * length for key, length in _LENGTHS.items()}
        v2, v3 = [0] * len(V2_PROCEDURES), [0] * len(V3_PROCEDURES)
        v4 = [0] * len(V4_OPERATIONS)
        for line in text.splitlines():
            key, *fields = line.split()
            if not fields:
                raise ValueError(f"invalid NFSd metric line {line!r}")
            if key == "th":
                fields = fields[:2]  # the rest is a histogram of floats, unused
            values = [int(v) for v in fields]
            if key in _LENGTHS:
                if len(values) != _LENGTHS[key]:
                    raise ValueError(f"invalid NFSd {key} line {line!r}")
                lines[key] = values
            elif key == "proc2":
                v2 = procedure_counts(values, V2_PROCEDURES, 18)
            elif key == "proc3":
                v3 = procedure_counts(values, V3_PROCEDURES, 22)
            elif key == "proc4ops":
                v4 = procedure_counts(values, V4_OPERATIONS, len(V4_OPERATIONS) + 1)
            elif key != "proc4" and key != "wdeleg_getattr":
                raise ValueError(f"unknown NFSd metric line {key!r}")
        add = out.add
        hits, misses, nocache = lines["rc"]
        add(REPLY_CACHE_HITS, (), hits)
        add(REPLY_CACHE_MISSES, (), misses)
        add(REPLY_CACHE_NOCACHE, (), nocache)
        add(STALE_HANDLES, (), lines["fh"][0])
        add(BYTES_READ, (), lines["io"][0])
        add(BYTES_WRITTEN, (), lines["io"][1])
        add(THREADS, (), lines["th"][0])
        add(READ_AHEAD_SIZE, (), lines["ra"][0])
        add(READ_AHEAD_NOT_FOUND, (), lines["ra"][11])
        _, udp, tcp, tcp_connections = lines["net"]
        rpcs, _, bad_format, bad_auth, bad_client = lines["rpc"]
        add(CONNECTIONS, (), tcp_connections)
        add(RPCS, (), rpcs)
        requests = [(REQUESTS, ("2", name), value) for name, value in zip(V2_PROCEDURES, v2) if name in _V2_EXPORTED]
        requests += [(REQUESTS, ("3", name), value) for name, value in zip(V3_PROCEDURES, v3) if name in _V3_EXPORTED]
        requests += [(REQUESTS, ("4", name), value) for name, value in zip(V4_OPERATIONS, v4) if name]
        add_in_go_order(out, [(PACKETS, ("udp",), udp), (PACKETS, ("tcp",), tcp),
                              (RPC_ERRORS, ("fmt",), bad_format), (RPC_ERRORS, ("auth",), bad_auth),
                              (RPC_ERRORS, ("cInt",), bad_client), *requests])

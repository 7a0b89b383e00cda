"""/proc/self/mountstats: node_exporter's ``mountstats`` collector (NFS client mounts; off by default).

For every NFS mount the kernel writes a block after its ``device ... with
fstype nfs[4] statvers=1.x`` line: ``age``, ``bytes`` (8 counters), ``events``
(27 counters), ``xprt`` (the RPC transport: tcp or udp, whose counters differ)
and the per-operation statistics up to the next empty line.  The mount
address comes from the ``addr=`` super option of the mount with the same
index in /proc/self/mountinfo.  A mount seen again with the same export,
protocol and address is counted once, as in node_exporter.  Durations the
kernel counts in milliseconds are exported in seconds, taken modulo 2**53 as
node_exporter does so they stay exact in a float.
"""

from __future__ import annotations

from collections.abc import Iterator

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register
from shm_metrics.publisher.collectors._go_order import add_in_go_order
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

FLOAT64_MANTISSA = 1 << 53
LABELS = ("export", "protocol", "mountaddr")
OP_LABELS = (*LABELS, "operation")


def _nfs(kind, name: str, help_: str, *labels: str):
    return kind(f"node_mountstats_nfs_{name}", help_, *(labels or LABELS))


AGE = _nfs(counter, "age_seconds_total", "The age of the NFS mount in seconds.")
# bytes: line, in the kernel's order
BYTES = (
    _nfs(counter, "read_bytes_total", "Number of bytes read using the read() syscall."),
    _nfs(counter, "write_bytes_total", "Number of bytes written using the write() syscall."),
    _nfs(counter, "direct_read_bytes_total", "Number of bytes read using the read() syscall in O_DIRECT mode."),
    _nfs(counter, "direct_write_bytes_total", "Number of bytes written using the write() syscall in O_DIRECT mode."),
    _nfs(counter, "total_read_bytes_total", "Number of bytes read from the NFS server, in total."),
    _nfs(counter, "total_write_bytes_total", "Number of bytes written to the NFS server, in total."),
    _nfs(counter, "read_pages_total", "Number of pages read directly via mmap()'d files."),
    _nfs(counter, "write_pages_total", "Number of pages written directly via mmap()'d files."),
)
# xprt: (family, index among the transport counters as for tcp), the ones node_exporter exports
TRANSPORT = (
    (_nfs(counter, "transport_bind_total",
          "Number of times the client has had to establish a connection from scratch to the NFS server."), 1),
    (_nfs(counter, "transport_connect_total",
          "Number of times the client has made a TCP connection to the NFS server."), 2),
    (_nfs(gauge, "transport_idle_time_seconds", "Duration since the NFS mount last saw any RPC traffic, in seconds."),
     4),
    (_nfs(counter, "transport_sends_total", "Number of RPC requests for this mount sent to the NFS server."), 5),
    (_nfs(counter, "transport_receives_total", "Number of RPC responses for this mount received from the NFS server."),
     6),
    (_nfs(counter, "transport_bad_transaction_ids_total",
          "Number of times the NFS server sent a response with a transaction ID unknown to this client."), 7),
    (_nfs(counter, "transport_backlog_queue_total", "Total number of items added to the RPC backlog queue."), 9),
    (_nfs(gauge, "transport_maximum_rpc_slots", "Maximum number of simultaneously active RPC requests ever used."),
     10),
    (_nfs(counter, "transport_sending_queue_total",
          "Total number of items added to the RPC transmission sending queue."), 11),
    (_nfs(counter, "transport_pending_queue_total",
          "Total number of items added to the RPC transmission pending queue."), 12),
)
_IDLE_TIME_INDEX = 4
# per-op: (family, column, is milliseconds)
OPERATIONS = (
    (_nfs(counter, "operations_requests_total", "Number of requests performed for a given operation.", *OP_LABELS),
     0, False),
    (_nfs(counter, "operations_transmissions_total",
          "Number of times an actual RPC request has been transmitted for a given operation.", *OP_LABELS), 1, False),
    (_nfs(counter, "operations_major_timeouts_total",
          "Number of times a request has had a major timeout for a given operation.", *OP_LABELS), 2, False),
    (_nfs(counter, "operations_sent_bytes_total",
          "Number of bytes sent for a given operation, including RPC headers and payload.", *OP_LABELS), 3, False),
    (_nfs(counter, "operations_received_bytes_total",
          "Number of bytes received for a given operation, including RPC headers and payload.", *OP_LABELS), 4,
     False),
    (_nfs(counter, "operations_queue_time_seconds_total", "Duration all requests spent queued for transmission for "
          "a given operation before they were sent, in seconds.", *OP_LABELS), 5, True),
    (_nfs(counter, "operations_response_time_seconds_total", "Duration all requests took to get a reply back after "
          "a request for a given operation was transmitted, in seconds.", *OP_LABELS), 6, True),
    (_nfs(counter, "operations_request_time_seconds_total", "Duration all requests took from when a request was "
          "enqueued to when it was completely handled for a given operation, in seconds.", *OP_LABELS), 7, True),
)
# events: (family, index in the kernel's 27 counters); 18 (congestion waits) is not exported
EVENTS = (
    (_nfs(counter, "event_inode_revalidate_total",
          "Number of times cached inode attributes are re-validated from the server."), 0),
    (_nfs(counter, "event_dnode_revalidate_total",
          "Number of times cached dentry nodes are re-validated from the server."), 1),
    (_nfs(counter, "event_data_invalidate_total", "Number of times an inode cache is cleared."), 2),
    (_nfs(counter, "event_attribute_invalidate_total", "Number of times cached inode attributes are invalidated."), 3),
    # node_exporter's HELP texts, repeated where its own are (vfs_open, vfs_setattr).
    (_nfs(counter, "event_vfs_open_total", "Number of times cached inode attributes are invalidated."), 4),
    (_nfs(counter, "event_vfs_lookup_total", "Number of times a directory lookup has occurred."), 5),
    (_nfs(counter, "event_vfs_access_total", "Number of times permissions have been checked."), 6),
    (_nfs(counter, "event_vfs_update_page_total", "Number of updates (and potential writes) to pages."), 7),
    (_nfs(counter, "event_vfs_read_page_total", "Number of pages read directly via mmap()'d files."), 8),
    (_nfs(counter, "event_vfs_read_pages_total", "Number of times a group of pages have been read."), 9),
    (_nfs(counter, "event_vfs_write_page_total", "Number of pages written directly via mmap()'d files."), 10),
    (_nfs(counter, "event_vfs_write_pages_total", "Number of times a group of pages have been written."), 11),
    (_nfs(counter, "event_vfs_getdents_total", "Number of times directory entries have been read with getdents()."),
     12),
    (_nfs(counter, "event_vfs_setattr_total", "Number of times directory entries have been read with getdents()."),
     13),
    (_nfs(counter, "event_vfs_flush_total", "Number of pending writes that have been forcefully flushed to the "
          "server."), 14),
    (_nfs(counter, "event_vfs_fsync_total", "Number of times fsync() has been called on directories and files."), 15),
    (_nfs(counter, "event_vfs_lock_total", "Number of times locking has been attempted on a file."), 16),
    (_nfs(counter, "event_vfs_file_release_total", "Number of times files have been closed and released."), 17),
    (_nfs(counter, "event_truncation_total", "Number of times files have been truncated."), 19),
    (_nfs(counter, "event_write_extension_total",
          "Number of times a file has been grown due to writes beyond its existing end."), 20),
    (_nfs(counter, "event_silly_rename_total",
          "Number of times a file was removed while still open by another process."), 21),
    (_nfs(counter, "event_short_read_total",
          "Number of times the NFS server gave less data than expected while reading."), 22),
    (_nfs(counter, "event_short_write_total",
          "Number of times the NFS server wrote less data than expected while writing."), 23),
    (_nfs(counter, "event_jukebox_delay_total",
          "Number of times the NFS server indicated EJUKEBOX; retrieving data from offline storage."), 24),
    (_nfs(counter, "event_pnfs_read_total", "Number of NFS v4.1+ pNFS reads."), 25),
    (_nfs(counter, "event_pnfs_write_total", "Number of NFS v4.1+ pNFS writes."), 26),
)
# Transport counters after the protocol, per stats version and protocol.
_TRANSPORT_LENGTHS = {("1.0", "tcp"): 10, ("1.0", "udp"): 7, ("1.1", "tcp"): 13, ("1.1", "udp"): 10}


class NfsMount:
    """The statistics of one NFS mount in mountstats."""

    def __init__(self, device: str):
        self.device = device
        self.age_seconds = 0.0
        self.bytes = [0] * 8
        self.events = [0] * 27
        self.protocol = ""
        self.transport = [0] * 13
        self.operations: list[tuple[str, list[int]]] = []


def _counters(fields: list[str], length: int, what: str) -> list[int]:
    if len(fields) != length:
        raise ValueError(f"invalid NFS {what} stats: {fields}")
    return [int(f) for f in fields]


def _transport(fields: list[str], version: str) -> tuple[str, list[int]]:
    protocol, rest = fields[0], fields[1:]
    length = _TRANSPORT_LENGTHS.get((version, protocol))
    if length is None or len(rest) != length:
        raise ValueError(f"invalid NFS transport stats {version} statement: {fields}")
    values = [int(f) for f in rest] + [0] * (13 - len(rest))
    if protocol == "udp":  # udp has no connect, connect idle time and idle time: zeros in their place
        values = values[:2] + [0, 0, 0] + values[2:10]
    return protocol, values


def _nfs_block(lines: Iterator[str], mount: NfsMount, version: str) -> None:
    for line in lines:
        fields = line.split()
        if not fields:
            break
        key = fields[0]
        if key == "age:" and len(fields) >= 2:
            mount.age_seconds = float(fields[1])
        elif key == "bytes:" and len(fields) >= 2:
            mount.bytes = _counters(fields[1:], 8, "bytes")
        elif key == "events:" and len(fields) >= 2:
            mount.events = _counters(fields[1:], 27, "events")
        elif key == "xprt:":
            if len(fields) < 3:
                raise ValueError(f"not enough information for NFS transport stats: {fields}")
            mount.protocol, mount.transport = _transport(fields[1:], version)
        elif key in ("opts:", "age:", "bytes:", "events:") and len(fields) < 2:
            raise ValueError(f"not enough information for NFS stats: {fields}")
        if key == "per-op":
            break
    for line in lines:
        fields = line.split()
        if not fields:
            break
        if len(fields) < 9:
            raise ValueError(f"invalid NFS per-operations stats: {fields}")
        mount.operations.append((fields[0].removesuffix(":"), [int(f) for f in fields[1:9]]))


def parse_mountstats(text: str) -> list[NfsMount | None]:
    """Every mount of a mountstats text, in order: an NfsMount for NFS mounts with statistics, else None."""
    mounts: list[NfsMount | None] = []
    lines = iter(text.splitlines())
    for line in lines:
        fields = line.split()
        if not fields or fields[0] != "device":
            continue
        if len(fields) < 8 or [fields[i] for i in (2, 3, 5, 6)] != ["mounted", "on", "with", "fstype"]:
            raise ValueError(f"invalid device entry: {fields}")
        if len(fields) == 8:
            mounts.append(None)
            continue
        if fields[7] not in ("nfs", "nfs4"):
            raise ValueError(f"cannot parse MountStats for fstype {fields[7]!r}")
        mount = NfsMount(fields[1])
        _nfs_block(lines, mount, fields[8].removeprefix("statvers="))
        mounts.append(mount)
    return mounts


def mount_addresses(text: str) -> list[str]:
    """The ``addr=`` super option of every mountinfo line, in order ("" where there is none)."""
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or fields[-4] != "-":
            raise ValueError(f"unexpected mountinfo line: {line}")
        address = ""
        for option in fields[-1].split(","):
            key, _, value = option.partition("=")
            if key == "addr":
                address = value.split("=")[0]
        out.append(address)
    return out


@register
class Mountstats(Collector):
    name = "mountstats"
    reports = ("mountstats",)
    default_enabled = False
    families = (AGE, *BYTES, *(f for f, _ in TRANSPORT), *(f for f, _, _ in OPERATIONS), *(f for f, _ in EVENTS))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        # /proc/self is this process (node_exporter reads its own too): its mount namespace's NFS mounts.
        self._mountstats = self.open(f"{ctx.procfs}/self/mountstats")
        self._mountinfo = self.open(f"{ctx.procfs}/self/mountinfo")
        self._addresses: tuple[str, ...] = ()
        self._learned = LearnedFile(self._mountstats, filled(self._fill))

    def collect(self, out: Sample) -> None:
        # The rows' labels take each mount's address from mountinfo: a learned program serves those addresses.
        self._addresses = addresses = tuple(mount_addresses(self._mountinfo.read()))
        out.extend(self._learned.rows(addresses))

    def _fill(self, text: str, out: Sample) -> None:
        mounts = parse_mountstats(text)
        addresses = self._addresses
        seen = set()
        series = []
        for index, mount in enumerate(mounts):
            if mount is None:
                continue
            labels = (mount.device, mount.protocol, addresses[index] if index < len(addresses) else "")
            if labels in seen:
                continue  # the same export mounted again
            seen.add(labels)
            series.append((AGE, labels, mount.age_seconds))
            series.extend((family, labels, value) for family, value in zip(BYTES, mount.bytes))
            for family, column in TRANSPORT:
                value = mount.transport[column]
                series.append((family, labels, value % FLOAT64_MANTISSA if column == _IDLE_TIME_INDEX else value))
            for operation, values in mount.operations:
                op_labels = (*labels, operation)
                for family, column, milliseconds in OPERATIONS:
                    value = values[column]
                    series.append((family, op_labels, (value % FLOAT64_MANTISSA) / 1000.0 if milliseconds else value))
            series.extend((family, labels, mount.events[column]) for family, column in EVENTS)
        add_in_go_order(out, series)

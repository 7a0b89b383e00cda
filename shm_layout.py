"""The binary layout of a shm-metrics segment: the single source of truth.

Every byte of the segment is described by the declarative tables below
(``HEADER``, ``SECTION``, ``SCALARS``, ``CPU``, ``NET``, ``DISK``,
``FILESYSTEM``).  Offsets, sizes, the ``struct`` formats used by the
publisher and the readers, the field-table hash and ``docs/LAYOUT.md`` are all
derived from them; nothing is written twice.

The segment is::

    header | section directory | scalars | cpus[] | net[] | disks[] | filesystems[]
           | history[] | top_cpu[] | top_rss[] | process_states[]

``history`` is a ring of the last N samples' scalars; ``top_cpu``/``top_rss``
are the publisher's ``--top`` tables and ``process_states`` its counts of
processes and threads by state.

All integers are little-endian and every field is naturally aligned; sections
start on a 64-byte boundary and the file is a whole number of 4 KiB pages.
Strings are fixed-size, NUL-padded UTF-8.  The module also knows how a segment
name maps to a file and how to open one safely, because a reader must check
what it is looking at before it trusts a single byte.

Run ``python -m shm_metrics.shm_layout`` to print the Markdown reference (docs/LAYOUT.md).
"""

from __future__ import annotations

import os
import stat
import struct
from collections import namedtuple
from collections.abc import Iterable

__version__ = "0.1.0"

MAGIC = b"SHMMETR\x00"
LAYOUT_VERSION = 4
SHM_DIR = "/dev/shm"
DEFAULT_NAME = "/sysmetrics"
NAME_ENV = "SHM_METRICS_NAME"

SECTION_ALIGN = 64
PAGE_SIZE = 4096
MAX_CAPACITY = 65536  # per array; a header claiming more is corrupt
MIN_INTERVAL, MAX_INTERVAL = 0.01, 3600.0  # seconds: the publisher's range, and what a reader accepts
DEFAULT_HISTORY = 600  # ring entries: 10 minutes at the default 1 s interval
DEFAULT_TOP = 10
STATE_SLOTS = 16  # process_states rows: Linux has ~10 state letters

# Values of the header's ``state`` field.
STATE_INIT = 0  # file exists but the header is not written yet
STATE_STARTING = 1  # header written, first sample not yet published
STATE_RUNNING = 2
STATE_STOPPED = 3
STATE_REPLACED = 4  # a newer generation of the segment is under the name: readers re-open it
STATE_NAMES = {STATE_INIT: "init", STATE_STARTING: "starting",
               STATE_RUNNING: "running", STATE_STOPPED: "stopped", STATE_REPLACED: "replaced"}

# C type -> (struct code, size).  Strings are "char[N]".
_NUMERIC = {"u32": ("I", 4), "u64": ("Q", 8), "i64": ("q", 8), "f64": ("d", 8)}


class LayoutError(Exception):
    """The bytes under a name are not a segment this code can trust."""


class NotInitialised(LayoutError):
    """Empty, or header without its magic yet: a publisher is creating it (or died doing so)."""


# namedtuple, not dataclass: dataclasses (and inspect) would add ~6 ms to the
# one-shot CLI's start, which imports this module.
class Field(namedtuple("Field", "name ctype unit meaning source", defaults=("",))):
    """One field: ``ctype`` is u32, u64, i64, f64 or char[N]."""

    __slots__ = ()

    @property
    def size(self) -> int:
        if self.ctype.startswith("char["):
            return int(self.ctype[5:-1])
        return _NUMERIC[self.ctype][1]

    @property
    def align(self) -> int:
        return 1 if self.is_string else self.size

    @property
    def code(self) -> str:
        return f"{self.size}s" if self.is_string else _NUMERIC[self.ctype][0]

    @property
    def is_string(self) -> bool:
        return self.ctype.startswith("char[")

    @property
    def is_integer(self) -> bool:
        return self.ctype in ("u32", "u64", "i64")


class Record:
    """A C struct: fields at naturally aligned offsets, size padded to 8."""

    def __init__(self, name: str, fields: Iterable[Field]):
        self.name = name
        self.fields: tuple[Field, ...] = tuple(fields)
        self.offsets: dict[str, int] = {}
        fmt = ["<"]
        pos = 0
        for f in self.fields:
            pad = -pos % f.align
            if pad:
                fmt.append(f"{pad}x")
            pos += pad
            self.offsets[f.name] = pos
            fmt.append(f.code)
            pos += f.size
        tail = -pos % 8
        if tail:
            fmt.append(f"{tail}x")
        self.size = pos + tail
        self.struct = struct.Struct("".join(fmt))
        assert self.struct.size == self.size
        self.names: tuple[str, ...] = tuple(f.name for f in self.fields)
        self.by_name: dict[str, Field] = {f.name: f for f in self.fields}


def _f(name: str, ctype: str, unit: str, meaning: str, source: str = "") -> Field:
    return Field(name, ctype, unit, meaning, source)


# ---------------------------------------------------------------- header
# Fields marked "seqlock" change with every sample and are only meaningful in a
# snapshot whose ``seq`` was even and unchanged before and after the read.
HEADER = Record("header", [
    _f("magic", "char[8]", "", 'b"SHMMETR\\0"; written last when the segment is created'),
    _f("layout_version", "u32", "", f"layout version, {LAYOUT_VERSION} for this document"),
    _f("header_size", "u32", "bytes", "size of this header"),
    _f("total_size", "u64", "bytes", "size of the whole segment; equals the file size"),
    _f("table_hash", "u64", "", "first 8 bytes (little-endian) of SHA-256 of the field table text"),
    _f("instance_id", "u64", "", "random, new each time a publisher starts; the same in every generation"),
    _f("publisher_pid", "u32", "", "pid of the publisher that created the segment"),
    _f("state", "u32", "", "0 init, 1 starting, 2 running, 3 stopped, 4 replaced by a newer generation"),
    _f("publisher_start_time", "f64", "seconds", "Unix time the publisher created the segment"),
    _f("interval_seconds", "f64", "seconds", "sampling interval"),
    _f("section_count", "u32", "", "number of entries in the section directory"),
    _f("section_size", "u32", "bytes", "size of one section directory entry"),
    _f("sections_offset", "u64", "bytes", "offset of the section directory"),
    _f("hostname", "char[128]", "", "host name of the publisher (uname nodename)"),
    _f("generation", "u64", "", "0 for the publisher's first segment, +1 for each larger one that replaced it"),
    _f("seq", "u64", "", "seqlock: odd while a sample is written, even when done; "
       "also counts samples (seq/2)"),
    _f("sample_time", "f64", "seconds", "seqlock. Unix time the sample was taken"),
    _f("sample_monotonic", "f64", "seconds", "seqlock. CLOCK_MONOTONIC when the sample was taken"),
    _f("sample_duration_seconds", "f64", "seconds", "seqlock. time spent sampling"),
    _f("overruns_total", "u64", "", "seqlock. samples that missed their deadline by a whole interval"),
    _f("full_sample_time", "f64", "seconds", "seqlock. Unix time of the latest sample that ran every collector: "
       "the series of families flagged on demand in `metrics` come from it (0: none yet)"),
])

SECTION = Record("section", [
    _f("offset", "u64", "bytes", "offset of the first record from the start of the segment"),
    _f("record_size", "u32", "bytes", "size of one record"),
    _f("capacity", "u32", "", "number of record slots, fixed when the segment is created"),
    _f("count", "u32", "", "seqlock. records valid in the current sample (<= capacity)"),
    _f("overflow", "u32", "", "seqlock. entries found beyond capacity and left out"),
])

# ---------------------------------------------------------------- scalars
_STAT = "/proc/stat"
SCALARS = Record("scalars", [
    _f("procs_total", "u64", "processes", "number of processes", "count of numeric entries in /proc"),
    _f("threads_total", "u64", "threads", "kernel scheduling entities", "/proc/loadavg, after the slash"),
    _f("procs_running", "u64", "tasks", "tasks runnable", f"{_STAT} procs_running"),
    _f("procs_blocked", "u64", "tasks", "tasks blocked on I/O", f"{_STAT} procs_blocked"),
    _f("forks_total", "u64", "forks", "processes and threads created since boot", f"{_STAT} processes"),
    _f("load1", "f64", "", "1-minute load average", "/proc/loadavg"),
    _f("load5", "f64", "", "5-minute load average", "/proc/loadavg"),
    _f("load15", "f64", "", "15-minute load average", "/proc/loadavg"),
    _f("cpu_count", "u64", "CPUs", "online CPUs", f"cpuN lines of {_STAT}"),
    _f("cpu_percent", "f64", "percent", "CPU busy over the last interval, 0-100 "
       "(all but idle and iowait)", f"{_STAT} cpu line, delta"),
    *[_f(f"cpu_seconds_{m}", "f64", "seconds", f"CPU time in {m} mode, all CPUs",
         f"{_STAT} cpu line / USER_HZ")
      for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")],
    _f("ctx_switches_total", "u64", "switches", "context switches since boot", f"{_STAT} ctxt"),
    _f("interrupts_total", "u64", "interrupts", "interrupts since boot", f"{_STAT} intr (first field)"),
    _f("mem_total_bytes", "u64", "bytes", "usable RAM", "/proc/meminfo MemTotal"),
    _f("mem_available_bytes", "u64", "bytes", "estimate of memory available without swapping",
       "/proc/meminfo MemAvailable"),
    _f("mem_used_bytes", "u64", "bytes", "MemTotal - MemAvailable (procps-ng 4 free)", "/proc/meminfo"),
    _f("mem_free_bytes", "u64", "bytes", "unused RAM", "/proc/meminfo MemFree"),
    _f("mem_buffers_bytes", "u64", "bytes", "block device buffers", "/proc/meminfo Buffers"),
    _f("mem_cached_bytes", "u64", "bytes", "page cache (meminfo Cached only)", "/proc/meminfo Cached"),
    _f("swap_total_bytes", "u64", "bytes", "swap space", "/proc/meminfo SwapTotal"),
    _f("swap_used_bytes", "u64", "bytes", "SwapTotal - SwapFree", "/proc/meminfo"),
    _f("swap_free_bytes", "u64", "bytes", "unused swap", "/proc/meminfo SwapFree"),
    _f("boot_time", "f64", "seconds", "Unix time of boot", f"{_STAT} btime"),
    _f("uptime_seconds", "f64", "seconds", "time since boot", "/proc/uptime"),
    _f("filefd_allocated", "u64", "file handles", "allocated file handles", "/proc/sys/fs/file-nr field 1"),
    _f("filefd_maximum", "u64", "file handles", "maximum file handles", "/proc/sys/fs/file-nr field 3"),
    # Totals over the arrays, so that the history ring can give host-wide rates.
    _f("net_rx_bytes_total", "u64", "bytes", "bytes received, sum over the net array", "net"),
    _f("net_tx_bytes_total", "u64", "bytes", "bytes transmitted, sum over the net array", "net"),
    _f("disk_read_bytes_total", "u64", "bytes", "bytes read, sum over the disks array (stacked devices "
       "such as dm-N count again)", "disks"),
    _f("disk_written_bytes_total", "u64", "bytes", "bytes written, sum over the disks array", "disks"),
])

# ---------------------------------------------------------------- arrays
CPU = Record("cpus", [
    _f("cpu", "u64", "", "CPU number (N of cpuN)", _STAT),
    _f("percent", "f64", "percent", "busy over the last interval, 0-100", f"{_STAT} cpuN, delta"),
    *[_f(m, "f64", "seconds", f"CPU time in {m} mode", f"{_STAT} cpuN / USER_HZ")
      for m in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")],
])

_NETDEV = "/proc/net/dev"
NET = Record("net", [
    _f("device", "char[32]", "", "interface name", _NETDEV),
    *[_f(f"{d}_{kind}", "u64", unit, f"{what} {'received' if d == 'rx' else 'transmitted'}", _NETDEV)
      for kind, unit, what in (("bytes", "bytes", "bytes"), ("packets", "packets", "packets"),
                               ("errors", "errors", "errors"), ("dropped", "packets", "packets dropped"))
      for d in ("rx", "tx")],
])

_DISKSTATS = "/proc/diskstats"
DISK = Record("disks", [
    _f("device", "char[32]", "", "block device name", _DISKSTATS),
    _f("reads", "u64", "reads", "reads completed", f"{_DISKSTATS} field 4"),
    _f("writes", "u64", "writes", "writes completed", f"{_DISKSTATS} field 8"),
    _f("read_bytes", "u64", "bytes", "bytes read (sectors x 512)", f"{_DISKSTATS} field 6"),
    _f("written_bytes", "u64", "bytes", "bytes written (sectors x 512)", f"{_DISKSTATS} field 10"),
    _f("io_time_seconds", "f64", "seconds", "time spent doing I/O", f"{_DISKSTATS} field 13 / 1000"),
])

FILESYSTEM = Record("filesystems", [
    _f("mountpoint", "char[256]", "", "mount point", "/proc/1/mountinfo"),
    _f("device", "char[128]", "", "mounted device", "/proc/1/mountinfo"),
    _f("fstype", "char[32]", "", "filesystem type", "/proc/1/mountinfo"),
    _f("size_bytes", "u64", "bytes", "f_blocks x f_bsize", "statfs"),
    _f("free_bytes", "u64", "bytes", "f_bfree x f_bsize", "statfs"),
    _f("avail_bytes", "u64", "bytes", "f_bavail x f_bsize (free to unprivileged users)", "statfs"),
])

# ---------------------------------------------------------------- history ring
# Slot of the sample whose header seq (after its write) is s: (s / 2 - 1) % capacity.
# The slot's own seq says which sample it holds, so a reader never needs a head
# index and can tell a slot not yet written (seq 0) from a valid one.
HISTORY = Record("history", [
    _f("seq", "u64", "", "header seq of the sample in this slot (0: never written)"),
    _f("sample_time", "f64", "seconds", "Unix time the sample was taken"),
    *SCALARS.fields,
])
HISTORY_SCALARS_OFFSET = HISTORY.offsets[SCALARS.fields[0].name]

# ---------------------------------------------------------------- processes
_PID_STAT = "/proc/PID/stat"
_PROCESS_FIELDS = [
    _f("pid", "u32", "", "process id", _PID_STAT),
    _f("threads", "u32", "threads", "threads of the process", f"{_PID_STAT} field 20"),
    _f("cpu_percent", "f64", "percent", "CPU over the last interval; 100 = one whole CPU (so up to "
       "100 x CPUs); a process first seen: its average since it started",
       f"{_PID_STAT} utime+stime, delta"),
    _f("rss_bytes", "u64", "bytes", "resident memory (what ps and top show)", "/proc/PID/status VmRSS"),
    _f("state", "char[8]", "", "state letter (R, S, D, Z, T, t, I, ...)", f"{_PID_STAT} field 3"),
    _f("name", "char[16]", "", "command name (comm)", f"{_PID_STAT} field 2"),
    _f("user", "char[32]", "", "user name of the effective uid", "/proc/PID/status Uid"),
]
TOP_CPU = Record("top_cpu", _PROCESS_FIELDS)
TOP_RSS = Record("top_rss", _PROCESS_FIELDS)
PROCESS_STATES = Record("process_states", [
    _f("state", "char[8]", "", "state letter, as in /proc/PID/stat field 3", _PID_STAT),
    _f("processes", "u64", "processes", "processes in this state (node_processes_state)", _PID_STAT),
    _f("threads", "u64", "threads", "threads in this state (node_processes_threads_state)",
       "/proc/PID/task/TID/stat"),
])

# ---------------------------------------------------------------- metric families (self-describing)
# node_exporter's families, described by the segment itself (as PCP's MMV files
# do): a catalog written once when the segment is created (`metrics` rows whose
# names, HELP texts and label names are in the `strings` blob) and, per sample,
# one `series` row per value, its label values in the `labels` blob.  Readers
# render any family from these four tables without knowing it in advance; the
# declarations live in the publisher's collectors (publisher/collectors/).
METRIC_TYPES = ("gauge", "counter", "untyped")
METRICS = Record("metrics", [
    _f("name_offset", "u32", "bytes", "metric name: offset in the strings blob"),
    _f("name_length", "u32", "bytes", "metric name: length (UTF-8, no NUL)"),
    _f("help_offset", "u32", "bytes", "HELP text: offset in the strings blob"),
    _f("help_length", "u32", "bytes", "HELP text: length"),
    _f("labels_offset", "u32", "bytes", "label names, joined by NUL: offset in the strings blob"),
    _f("labels_length", "u32", "bytes", "label names: length (0: no labels)"),
    _f("type", "u32", "", "0 gauge, 1 counter, 2 untyped"),
    _f("label_count", "u32", "", "number of label names"),
    _f("flags", "u32", "", "bit 0: sampled on demand (its series are from the sample at `full_sample_time`, "
       "not `sample_time`); other bits 0"),
    _f("reserved", "u32", "", "0"),
])
METRIC_ON_DEMAND = 1  # metrics.flags bit
STRINGS = Record("strings", [_f("bytes", "char[8]", "", "8 bytes of the catalog's string blob (static)")])
SERIES = Record("series", [
    _f("metric", "u32", "", "seqlock. index of the family in `metrics`; rows are sorted by it"),
    _f("labels_offset", "u32", "bytes", "seqlock. label values, joined by NUL: offset in the labels blob"),
    _f("labels_length", "u32", "bytes", "seqlock. label values: length"),
    _f("value", "f64", "", "seqlock. the value, in node_exporter's unit"),
])
LABELS = Record("labels", [_f("bytes", "char[8]", "", "seqlock. 8 bytes of this sample's label-value blob")])

# Directory order: the index of a section in the directory is fixed.
SECTIONS: tuple[Record, ...] = (SCALARS, CPU, NET, DISK, FILESYSTEM, HISTORY, TOP_CPU, TOP_RSS, PROCESS_STATES,
                                METRICS, STRINGS, SERIES, LABELS)
# The catalog: written before the magic, never changed afterwards.
STATIC_SECTIONS: tuple[Record, ...] = (METRICS, STRINGS)
# The per-sample family data, copied raw inside a read and decoded on demand.
FAMILY_SECTIONS: tuple[Record, ...] = (SERIES, LABELS)
# What a snapshot holds as typed arrays: every array but the history ring (read
# on request) and the family sections.
SAMPLE_ARRAYS: tuple[Record, ...] = (CPU, NET, DISK, FILESYSTEM, TOP_CPU, TOP_RSS, PROCESS_STATES)
SECTION_INDEX = {r.name: i for i, r in enumerate(SECTIONS)}
# Smallest capacity per section: the --top tables and the state counts may be
# switched off (capacity 0); a ring needs two samples to give a rate; a
# segment may carry no families.
MIN_CAPACITY = {r.name: 1 for r in SECTIONS} | {"history": 2, "top_cpu": 0, "top_rss": 0, "process_states": 0,
                                                "metrics": 0, "strings": 0, "series": 0, "labels": 0}


def table_text() -> str:
    """The canonical text of every table; its SHA-256 is ``table_hash``."""
    lines = [f"shm-metrics layout {LAYOUT_VERSION}"]
    for rec in (HEADER, SECTION, *SECTIONS):
        lines.append(f"{rec.name} {rec.size}")
        lines += [f"  {f.name} {f.ctype} {rec.offsets[f.name]}" for f in rec.fields]
    return "\n".join(lines) + "\n"


def _sha256(data: bytes) -> bytes:
    # The builtin module, not hashlib: hashlib loads OpenSSL, ~3 ms of every
    # one-shot shm-read's start for one 3 KiB hash.
    try:
        from _sha256 import sha256  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython >= 3.12
        except ImportError:
            from hashlib import sha256
    return sha256(data).digest()


TABLE_HASH = int.from_bytes(_sha256(table_text().encode())[:8], "little")


def _round_up(n: int, to: int) -> int:
    return n + (-n % to)


class Layout(namedtuple("Layout", "capacities offsets sections_offset header_size total_size")):
    """Where everything is, for one set of array capacities.

    ``capacities`` and ``offsets`` have one entry per SECTIONS record (the
    scalars' capacity is always 1).
    """

    __slots__ = ()

    @classmethod
    def for_capacities(cls, cpus: int, net: int, disks: int, filesystems: int, history: int = DEFAULT_HISTORY,
                       top: int = DEFAULT_TOP, states: int | None = None, metrics: int = 0, strings: int = 0,
                       series: int = 0, labels: int = 0) -> Layout:
        """``top`` is the length of each --top table; ``states`` defaults to
        STATE_SLOTS, or 0 when ``top`` is 0 (no process scan, nothing to count).
        ``metrics`` rows and ``strings`` 8-byte chunks hold the family catalog,
        ``series`` rows and ``labels`` chunks a sample's family values."""
        if states is None:
            states = STATE_SLOTS if top else 0
        caps = (1, cpus, net, disks, filesystems, history, top, top, states, metrics, strings, series, labels)
        for rec, cap in zip(SECTIONS, caps):
            low = MIN_CAPACITY[rec.name]
            if not low <= cap <= MAX_CAPACITY:
                raise ValueError(f"capacity of {rec.name} must be {low}..{MAX_CAPACITY}, not {cap}")
        sections_offset = _round_up(HEADER.size, 8)
        pos = _round_up(sections_offset + SECTION.size * len(SECTIONS), SECTION_ALIGN)
        header_size = pos
        offsets = []
        for rec, cap in zip(SECTIONS, caps):
            offsets.append(pos)
            pos = _round_up(pos + rec.size * cap, SECTION_ALIGN)
        return cls(caps, tuple(offsets), sections_offset, header_size, _round_up(pos, PAGE_SIZE))

    def section_entry_offset(self, index: int) -> int:
        return self.sections_offset + index * SECTION.size

    def offset_of(self, section: str, field: str, index: int = 0) -> int:
        i = SECTION_INDEX[section]
        rec = SECTIONS[i]
        return self.offsets[i] + index * rec.size + rec.offsets[field]


HEADER_SEQ_OFFSET = HEADER.offsets["seq"]
# Readers that want the next sample FUTEX_WAIT on this 32-bit word (the low
# half of seq, little-endian); the publisher FUTEX_WAKEs it after every sample.
FUTEX_WORD_OFFSET = HEADER_SEQ_OFFSET
HEADER_STATE_OFFSET = HEADER.offsets["state"]
MIN_HEADER_BYTES = HEADER.size


def parse_header(data: bytes | memoryview, file_size: int) -> tuple[dict, Layout]:
    """Check a header (and its section directory) against this layout.

    ``data`` must hold at least the header and the directory.  Returns the
    header as a dict and the Layout it describes, or raises LayoutError with a
    one-line reason.  Nothing here trusts a count or offset it has not checked.
    """
    if file_size == 0:
        raise NotInitialised("segment is empty (publisher starting or died while creating it)")
    if file_size < MIN_HEADER_BYTES or len(data) < MIN_HEADER_BYTES:
        raise LayoutError(f"segment too small ({file_size} bytes) to hold a header")
    hdr = dict(zip(HEADER.names, HEADER.struct.unpack_from(data, 0)))
    if hdr["magic"] != MAGIC:
        if hdr["magic"] == bytes(8):
            raise NotInitialised("segment is not initialised (publisher starting or died while creating it)")
        raise LayoutError(f"bad magic {hdr['magic']!r}: not a shm-metrics segment")
    if hdr["layout_version"] != LAYOUT_VERSION:
        raise LayoutError(f"layout version {hdr['layout_version']}, this reader understands {LAYOUT_VERSION}")
    if hdr["table_hash"] != TABLE_HASH:
        raise LayoutError("field table hash differs: segment written by an incompatible build")
    if hdr["total_size"] != file_size:
        raise LayoutError(f"header says {hdr['total_size']} bytes but the file has {file_size}")
    if hdr["section_count"] != len(SECTIONS) or hdr["section_size"] != SECTION.size:
        raise LayoutError("section directory shape differs from this layout")
    end = hdr["sections_offset"] + SECTION.size * len(SECTIONS)
    if hdr["sections_offset"] != _round_up(HEADER.size, 8) or end > len(data):
        raise LayoutError("section directory out of place")
    caps = []
    for i, rec in enumerate(SECTIONS):
        entry = dict(zip(SECTION.names, SECTION.struct.unpack_from(data, hdr["sections_offset"] + i * SECTION.size)))
        if entry["record_size"] != rec.size:
            raise LayoutError(f"section {rec.name}: record size {entry['record_size']}, expected {rec.size}")
        caps.append(entry["capacity"])
    try:
        layout = Layout.for_capacities(*caps[1:7], states=caps[8], metrics=caps[9], strings=caps[10],
                                       series=caps[11], labels=caps[12])
    except ValueError as exc:
        raise LayoutError(str(exc)) from None
    if caps[0] != 1 or caps[6] != caps[7] or layout.total_size != file_size or layout.header_size != hdr["header_size"]:
        raise LayoutError("capacities in the header do not add up to the segment size")
    for i, rec in enumerate(SECTIONS):
        entry_off = hdr["sections_offset"] + i * SECTION.size
        if struct.unpack_from("<Q", data, entry_off)[0] != layout.offsets[i]:
            raise LayoutError(f"section {rec.name} is not where its capacities put it")
    if hdr["state"] not in STATE_NAMES:
        raise LayoutError(f"unknown state {hdr['state']}")
    # Values, not only structure: a reader divides by the interval and prints the times.
    if not MIN_INTERVAL <= hdr["interval_seconds"] <= MAX_INTERVAL:  # NaN fails this too
        raise LayoutError(f"interval_seconds {hdr['interval_seconds']!r} is outside "
                          f"{MIN_INTERVAL}..{MAX_INTERVAL:g}")
    if not 0.0 <= hdr["publisher_start_time"] < 1e11:  # 1970 .. year 5138; NaN and inf fail too
        raise LayoutError(f"publisher_start_time {hdr['publisher_start_time']!r} is not a time")
    hdr["hostname"] = decode_string(hdr["hostname"])
    return hdr, layout


def decode_string(raw: bytes) -> str:
    """Fixed-size NUL-padded UTF-8 -> str; hostile bytes never raise."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def encode_string(text: str, size: int) -> bytes:
    """str -> NUL-padded UTF-8 of ``size`` bytes, cut on a character boundary."""
    raw = text.encode("utf-8", "replace")[: size - 1]
    return raw.decode("utf-8", "ignore").encode("utf-8").ljust(size, b"\0")


# ---------------------------------------------------------------- memory ordering
# The seqlock needs: writer stores seq(odd) -> data -> seq(even) seen in that
# order; reader loads seq -> data -> seq in that order.  x86-64 (TSO) never
# reorders stores with stores or loads with loads, and every Python-level
# access is an opaque C call (a compiler barrier), so no fence is needed there.
# Weakly ordered CPUs (ARM64, POWER) need one: a lock acquire/release pair is a
# full barrier in glibc's implementation (vLLM's memory_fence does the same).
STRONGLY_ORDERED = os.uname().machine in ("x86_64", "AMD64", "i386", "i686")

if STRONGLY_ORDERED:
    def memory_fence() -> None:
        """No-op on x86: TSO already orders the seqlock's accesses."""
else:  # pragma: no cover - exercised on ARM64 only
    import threading

    _fence_lock = threading.Lock()

    def memory_fence() -> None:
        """Full barrier by implementation argument (lock acquire + release)."""
        _fence_lock.acquire()
        _fence_lock.release()


# ---------------------------------------------------------------- names and files
# A set, not a regular expression: `re` is not on the one-shot CLI's import path.
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def validate_name(name: str) -> str:
    """Return the canonical '/name' form, or raise ValueError."""
    base = name[1:] if isinstance(name, str) and name.startswith("/") else name
    if (not isinstance(base, str) or not 1 <= len(base) <= 200 or not _NAME_CHARS.issuperset(base)
            or base in (".", "..")):
        raise ValueError(f"invalid segment name {name!r}: expected an optional leading '/' then "
                         "1-200 characters of [A-Za-z0-9._-]")
    return "/" + name.lstrip("/")


def env_segment_name() -> str:
    """The segment name from SHM_METRICS_NAME (or the default); ValueError naming the variable if invalid."""
    value = os.environ.get(NAME_ENV)
    if not value:
        return DEFAULT_NAME
    try:
        return validate_name(value)
    except ValueError as exc:
        raise ValueError(f"{NAME_ENV}: {exc}") from None


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, validate_name(name)[1:])


def semaphore_name(name: str) -> str:
    """The POSIX semaphore guarding writes to segment ``name``."""
    return validate_name(name) + ".lock"


def semaphore_path(name: str) -> str:
    """Where glibc keeps the semaphore: /dev/shm/sem.<name>.lock."""
    return os.path.join(SHM_DIR, "sem." + semaphore_name(name)[1:])


def demand_path(name: str) -> str:
    """The publisher's demand socket (a Unix datagram socket): /dev/shm/<name>.want.  Readers send one
    byte there to ask for a sample (docs/LAYOUT.md, "Demand")."""
    return segment_path(name) + ".want"


DEMAND_FULL = b"f"  # every collector, now (at most one such sample per interval)
DEMAND_SCAN = b"t"  # the per-process scan, in the samples of the next few intervals (a top viewer)


def open_checked(path: str, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """Open a file in /dev/shm without following links or blocking on a FIFO.

    Returns (fd, fstat) only for a regular file with one link; raises
    FileNotFoundError when nothing is there and LayoutError for anything else.
    """
    fd = None
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        raise LayoutError(f"{path}: {exc.strerror} (a symlink or something else that is not a segment)") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LayoutError(f"{path} is not a regular file")
    if st.st_nlink != 1:
        os.close(fd)
        raise LayoutError(f"{path} has {st.st_nlink} links (possible hard-link attack)")
    return fd, st


# ---------------------------------------------------------------- liveness
# The publisher holds an open-file-description write lock (F_OFD_SETLK, whole
# file) on the segment for its whole life, beside the flock that keeps other
# publishers out.  The kernel drops both when the process dies, however it
# dies (SIGKILL included), so the lock, not the header's state, says whether a
# publisher is alive.  Readers *test* it with F_OFD_GETLK, which never takes it:
# a reader holding it even briefly would make a starting publisher think the
# name is in use.  (flock cannot be tested without taking it; OFD locks can.)
_FLOCK = struct.Struct("@hhqqi4x")  # struct flock on 64-bit Linux: l_type l_whence l_start l_len l_pid
_F_OFD_GETLK, _F_OFD_SETLK = 36, 37  # <fcntl.h>; Python's fcntl module has them only from 3.12 on some builds
_F_RDLCK, _F_WRLCK, _F_UNLCK = 0, 1, 2
# The liveness lock, taken by the publisher; the question a reader asks with F_OFD_GETLK (at every follower's sample).
_WHOLE_FILE_WRITE_LOCK = _FLOCK.pack(_F_WRLCK, os.SEEK_SET, 0, 0, 0)


def hold_liveness_lock(fd: int) -> None:
    """Take the publisher's liveness lock on ``fd`` (open read-write); BlockingIOError if another holds it."""
    import fcntl

    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _WHOLE_FILE_WRITE_LOCK)
    except OSError as exc:
        if exc.errno in (11, 13):  # EAGAIN, EACCES: held by another open file description
            raise BlockingIOError(exc.errno, "liveness lock held by another publisher") from None
        raise


def publisher_alive(fd: int) -> bool:
    """True when some process holds the liveness lock of the segment open on ``fd``: its publisher lives.

    Tests without taking (F_OFD_GETLK); works on a read-only descriptor.
    """
    import fcntl

    result = fcntl.fcntl(fd, _F_OFD_GETLK, _WHOLE_FILE_WRITE_LOCK)
    return _FLOCK.unpack(result)[0] != _F_UNLCK


def markdown() -> str:
    """docs/LAYOUT.md's tables, rendered from the field tables."""
    out = []
    example = Layout.for_capacities(cpus=2, net=64, disks=64, filesystems=64)
    for rec in (HEADER, SECTION, *SECTIONS):
        out.append(f"### `{rec.name}` ({rec.size} bytes per record)\n")
        if rec is TOP_RSS:
            out.append("The same record as `top_cpu`, ordered by `rss_bytes` instead.\n")
            continue
        out.append("| offset | field | C type | unit | meaning | source |")
        out.append("|---:|---|---|---|---|---|")
        for f in rec.fields:
            if rec is HISTORY and f.name in SCALARS.by_name:
                out.append(f"| {HISTORY_SCALARS_OFFSET} | (every field) | `struct scalars` | | the scalars of "
                           f"this sample, laid out exactly as the `scalars` record ({SCALARS.size} bytes) | |")
                break
            out.append(f"| {rec.offsets[f.name]} | `{f.name}` | `{f.ctype}` | {f.unit} | {f.meaning} | {f.source} |")
        out.append("")
    out.append("### Example: offsets for capacities cpus=2, net=64, disks=64, filesystems=64 "
               f"and the defaults history={DEFAULT_HISTORY}, top={DEFAULT_TOP}, states={STATE_SLOTS}\n")
    out.append("| section | directory index | offset | record size | capacity |")
    out.append("|---|---:|---:|---:|---:|")
    for i, rec in enumerate(SECTIONS):
        out.append(f"| `{rec.name}` | {i} | {example.offsets[i]} | {rec.size} | {example.capacities[i]} |")
    out.append(f"\nheader_size = {example.header_size}, total_size = {example.total_size}, "
               f"table_hash = 0x{TABLE_HASH:016x}\n")
    return "\n".join(out)


_BEGIN, _END = "<!-- BEGIN GENERATED TABLES -->", "<!-- END GENERATED TABLES -->"


def render_doc(text: str) -> str:
    """``text`` (docs/LAYOUT.md) with its generated section replaced by markdown()."""
    head, _, rest = text.partition(_BEGIN)
    _, _, tail = rest.partition(_END)
    return f"{head}{_BEGIN}\n## Field tables\n\n{markdown()}{_END}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update-docs"]:
        with open(sys.argv[2]) as f:
            updated = render_doc(f.read())
        with open(sys.argv[2], "w") as f:
            f.write(updated)
    else:
        print(markdown())

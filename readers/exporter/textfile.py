"""node_exporter's textfile collector, in the exporter: ``*.prom`` files read at scrape time.

node_exporter reads the directory given by ``--collector.textfile.directory``
on every scrape (a glob of directories works too), parses each ``*.prom`` file
with the Prometheus text parser, and serves the families among its own, so
this runs in shm-exporter rather than in the publisher: a file written by a
cron job shows up on the next scrape, not the next sample.  Parsing is
prometheus_client's; what node_exporter 1.5.0 adds is reproduced from its
meaning:

- a family without HELP gets "Metric read from <file>[, <file>...]" (every file it appears in);
- within one file's family, a label missing on some series is added with an empty value;
- the same family in several files is merged; a file whose copy disagrees on HELP or type loses that
  family (node_exporter's registry rejects those series), as does a series already seen;
- a file that does not parse, or has client-side timestamps, is left out whole and sets
  ``node_textfile_scrape_error`` to 1; the other files are still served;
- ``node_textfile_mtime_seconds{file}``: the whole seconds of each file read.

Series are ordered as the Go client orders them (by label values), labels by
name with ``quantile``/``le`` last, and floats are formatted as Go does.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import time
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from shm_metrics.readers.exporter.render import go_float  # node_exporter's number format, one copy

log = logging.getLogger("shm-exporter")

MTIME_HELP = "Unixtime mtime of textfiles successfully read."
ERROR_HELP = "1 if there was an error opening or reading a file, 0 otherwise"
_TYPES = {"unknown": "untyped", "untyped": "untyped", "gauge": "gauge", "counter": "counter",
          "summary": "summary", "histogram": "histogram"}


@dataclass
class _Family:
    name: str
    type: str  # node_exporter's word: untyped, gauge, counter, summary, histogram
    help: str | None  # None: the file gave none (or an empty one)
    # One entry per series: (label name -> value, payload).  The payload is the value for untyped, gauge and
    # counter; (quantiles or buckets as {bound: value}, sum, count) for summary and histogram.
    series: list[tuple[dict[str, str], object]] = field(default_factory=list)


class TextfileError(Exception):
    pass


def _declared_counters(text: str) -> set[str]:
    """Names given on ``# TYPE <name> counter`` lines: prometheus_client renames a counter ``x`` to
    ``x_total``, node_exporter keeps the name as written."""
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"] and parts[3] == "counter":
            out.add(parts[2])
    return out


def parse(text: str) -> list[_Family]:
    """The families of one file, as node_exporter sees them; TextfileError when it does not parse or has
    client-side timestamps."""
    try:
        parsed = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises ValueError, and others on odd input (IndexError, ...)
        raise TextfileError(f"failed to parse textfile data: {exc}") from None
    counters = _declared_counters(text)
    out: list[_Family] = []
    for fam in parsed:
        kind = _TYPES.get(fam.type)
        if kind is None:
            raise TextfileError(f"unsupported metric type {fam.type} of {fam.name}")
        if any(s.timestamp is not None for s in fam.samples):
            raise TextfileError("contains unsupported client-side timestamps, skipping entire file")
        help_ = fam.documentation or None
        if kind in ("untyped", "gauge"):
            by_name: dict[str, _Family] = {}  # without a TYPE line, x_sum is its own family, as in Go's parser
            for s in fam.samples:
                by_name.setdefault(s.name, _Family(s.name, kind, help_ if s.name == fam.name else None)) \
                    .series.append((dict(s.labels), s.value))
            out.extend(by_name.values())
        elif kind == "counter":
            name = fam.name if fam.name in counters else f"{fam.name}_total"
            out.append(_Family(name, kind, help_, [(dict(s.labels), s.value) for s in fam.samples]))
        else:
            out.append(_grouped(fam, kind, help_))
    for fam in out:  # node_exporter: a label some series of the family lack is added, empty, to them
        names = {n for labels, _ in fam.series for n in labels}
        for labels, _ in fam.series:
            for n in names - labels.keys():
                labels[n] = ""
    return out


def _grouped(fam, kind: str, help_: str | None) -> _Family:
    """A summary's or histogram's samples grouped into series: (labels, ({bound: value}, sum, count))."""
    bound_label = "quantile" if kind == "summary" else "le"
    groups: dict[tuple, list] = {}
    for s in fam.samples:
        labels = {k: v for k, v in s.labels.items() if k != bound_label}
        entry = groups.setdefault(tuple(sorted(labels.items())), [labels, {}, 0.0, 0.0])
        if s.name == fam.name + "_sum":
            entry[2] = s.value
        elif s.name == fam.name + "_count":
            entry[3] = s.value
        elif bound_label in s.labels:
            entry[1][float(s.labels[bound_label])] = s.value
    return _Family(fam.name, kind, help_, [(labels, (bounds, total, count))
                                           for labels, bounds, total, count in groups.values()])


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _labels_text(labels: dict[str, str], extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{n}="{_escape_label(labels[n])}"' for n in sorted(labels)]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _go_order(series: tuple[dict[str, str], object]) -> tuple:
    labels = series[0]
    return len(labels), tuple(labels[n] for n in sorted(labels))


def render(families: list[_Family]) -> str:
    """The text exposition of ``families`` (sorted by name), as node_exporter writes it."""
    out = []
    for fam in sorted(families, key=lambda f: f.name):
        help_ = (fam.help or "").replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {fam.name} {help_}\n# TYPE {fam.name} {fam.type}\n")
        for labels, payload in sorted(fam.series, key=_go_order):
            if fam.type in ("summary", "histogram"):
                bounds, total, count = payload
                if fam.type == "summary":
                    for q in sorted(bounds):
                        out.append(f"{fam.name}{_labels_text(labels, ('quantile', go_float(q)))} "
                                   f"{go_float(bounds[q])}\n")
                else:  # the +Inf bucket is the count, as the Go client writes it
                    for le in sorted(b for b in bounds if b != float("inf")):
                        out.append(f"{fam.name}_bucket{_labels_text(labels, ('le', go_float(le)))} "
                                   f"{go_float(bounds[le])}\n")
                    out.append(f"{fam.name}_bucket{_labels_text(labels, ('le', '+Inf'))} {go_float(count)}\n")
                out.append(f"{fam.name}_sum{_labels_text(labels)} {go_float(total)}\n")
                out.append(f"{fam.name}_count{_labels_text(labels)} {go_float(count)}\n")
            else:
                out.append(f"{fam.name}{_labels_text(labels)} {go_float(payload)}\n")
    return "".join(out)


@dataclass
class TextfileReading:
    text: bytes  # the families of the files, node_textfile_mtime_seconds and node_textfile_scrape_error
    duration: float  # seconds the reading took (node_scrape_collector_duration_seconds{collector="textfile"})
    error: bool


def _read_file(path: str) -> tuple[list[_Family], int]:
    """A ``*.prom`` file's families and its mtime in whole seconds.  Only a regular file is read: a FIFO
    would block the scrape's worker for good, a device (a link to /dev/zero) would never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path}: not a regular file")
        return parse(f.read().decode("utf-8")), st.st_mtime_ns // 1_000_000_000


class Textfile:
    """The ``*.prom`` files under ``directory`` (a directory, or a glob of directories), read per scrape."""

    def __init__(self, directory: str):
        self.directory = directory
        # Problems of the last scrape and of this one: a problem is logged when it appears, not at every
        # scrape, and problems that went away are forgotten (file names rotate: a set of every message
        # ever seen would grow for as long as the exporter runs).
        self._logged: set[str] = set()
        self._seen: set[str] = set()

    def _warn(self, message: str) -> None:
        self._seen.add(message)
        if message not in self._logged:
            log.warning("textfile: %s", message)

    def read(self, taken: frozenset[str] | set[str] = frozenset()) -> TextfileReading:
        """One scrape's reading; families named in ``taken`` (the segment's) are left out, as node_exporter's
        registry refuses a second collector's family of the same name."""
        start = time.perf_counter()
        self._seen = set()
        errored = False
        per_file: list[tuple[str, list[_Family]]] = []
        mtimes: dict[str, float] = {}
        directories = sorted(glob.glob(self.directory)) if self.directory else []
        if not directories:
            directories = [self.directory]  # not a glob, or nothing matched: read it as a directory
        for directory in directories:
            if not directory:
                continue
            try:
                names = sorted(entry.name for entry in os.scandir(directory))
            except OSError as exc:
                errored = True
                self._warn(f"failed to read textfile collector directory {directory}: {exc}")
                continue
            for name in names:
                if not name.endswith(".prom"):
                    continue
                path = os.path.normpath(os.path.join(directory, name))  # as Go's filepath.Join cleans it
                try:
                    families, mtime = _read_file(path)
                except (OSError, UnicodeDecodeError, TextfileError) as exc:
                    errored = True
                    self._warn(f"failed to collect textfile data from {path}: {exc}")
                    continue
                per_file.append((path, families))
                mtimes[path] = float(mtime)
        merged = self._merge(per_file, taken)
        self._logged = self._seen  # (scrapes at once share these sets: at worst a line logged twice)
        out = [render(list(merged.values()))]
        if mtimes:
            out.append(f"# HELP node_textfile_mtime_seconds {MTIME_HELP}\n# TYPE node_textfile_mtime_seconds gauge\n")
            for path in sorted(mtimes):
                out.append(f'node_textfile_mtime_seconds{{file="{_escape_label(path)}"}} '
                           f"{go_float(mtimes[path])}\n")
        out.append(f"# HELP node_textfile_scrape_error {ERROR_HELP}\n# TYPE node_textfile_scrape_error gauge\n"
                   f"node_textfile_scrape_error {1 if errored else 0}\n")
        return TextfileReading("".join(out).encode(), time.perf_counter() - start, errored)

    def _merge(self, per_file: list[tuple[str, list[_Family]]], taken) -> dict[str, _Family]:
        files_of: dict[str, list[str]] = {}
        for path, families in per_file:
            for fam in families:
                files_of.setdefault(fam.name, []).append(path)
        merged: dict[str, _Family] = {}
        seen: dict[str, set] = {}
        for path, families in per_file:
            for fam in families:
                if fam.name in taken or fam.name in ("node_textfile_mtime_seconds", "node_textfile_scrape_error"):
                    self._warn(f"{path}: family {fam.name} is already exported by another collector")
                    continue
                help_ = fam.help if fam.help is not None else f"Metric read from {', '.join(files_of[fam.name])}"
                have = merged.get(fam.name)
                if have is None:
                    have = merged[fam.name] = _Family(fam.name, fam.type, help_)
                    seen[fam.name] = set()
                elif (have.help, have.type) != (help_, fam.type):
                    self._warn(f"{path}: family {fam.name} has another HELP or type than in an earlier file")
                    continue
                for labels, payload in fam.series:
                    key = frozenset(labels.items())
                    if key in seen[fam.name]:
                        self._warn(f"{path}: a series of {fam.name} was collected before with the same labels")
                        continue
                    seen[fam.name].add(key)
                    have.series.append((labels, payload))
        return merged

"""``shm-read top``: the publisher's process tables, live or once.

The publisher (``--top N``) scans /proc once per sample; this view only reads
the segment, so any number of people can watch it without a single extra
/proc scan.  It wakes on each new sample (futex) and redraws then.
"""

from __future__ import annotations

import argparse
import sys
import time

from shm_metrics import shm_layout as L
from shm_metrics.readers import format as fmt
from shm_metrics.readers.cliargs import resolve_reader_options
from shm_metrics.readers.reader import DEMAND_TIMEOUT_SECONDS, IncompatibleSegment, Reader, Snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rich.text import Text  # rich is imported only by the live view

STATE_NAMES = {"R": "running", "S": "sleeping", "D": "disk_sleep", "Z": "zombie", "T": "stopped",
               "t": "tracing_stop", "X": "dead", "x": "dead", "I": "idle", "P": "parked", "W": "waking",
               "K": "wakekill"}
COLUMNS = fmt.PROCESS_COLUMNS
EXIT_HELP = """\
exit codes:
  0    ok
  2    usage error
  3    no segment: shm-publisher is not running under that name
  4    incompatible or corrupt segment, or a publisher started with --top 0 (no process tables)
  5    stale or stopped publisher (data still printed, warning on stderr)
  130  interrupted (Ctrl-C)
"""


def build_parser() -> argparse.ArgumentParser:
    from shm_metrics.readers.cli import add_common_options
    from shm_metrics.readers.cliargs import ENVIRONMENT_HELP, OneLineParser, paragraph

    p = OneLineParser(prog="shm-read top", formatter_class=argparse.RawDescriptionHelpFormatter,
                      description=paragraph(
                          "The top processes by CPU and by memory, and process counts by state, as the publisher "
                          "(--top N) sampled them. Live on a terminal (P sorts by CPU, M by memory, q quits); once "
                          "otherwise. Options may also come before 'top'."),
                      epilog=EXIT_HELP + ENVIRONMENT_HELP)
    add_common_options(p)
    p.add_argument("--once", action="store_true", help="print the tables once and exit")
    p.add_argument("--json", action="store_true",
                   help='with --once: {"by_cpu": [...], "by_rss": [...], "states": {...}}')
    return p


def state_counts(snap: Snapshot) -> dict[str, dict]:
    """{"sleeping": {"state": "S", "processes": n, "threads": m}, ...}: node_exporter's counts, named."""
    out: dict[str, dict] = {}
    for row in snap.process_states:
        name = STATE_NAMES.get(row["state"], row["state"])
        entry = out.setdefault(name, {"state": row["state"], "processes": 0, "threads": 0})
        entry["processes"] += row["processes"]
        entry["threads"] += row["threads"]
    return out


def to_json(snap: Snapshot) -> dict:
    def ordered(rows: list[dict]) -> list[dict]:
        return [{c: row[c] for c in COLUMNS} for row in rows]  # the columns in the order every view shows

    return {"by_cpu": ordered(snap.top_cpu), "by_rss": ordered(snap.top_rss), "states": state_counts(snap),
            "seq": snap.seq, "sample_time": snap.sample_time, "hostname": snap.hostname,
            "procs_total": snap.procs_total, "threads_total": snap.threads_total}


def _cells(row: dict) -> list[str]:
    return [str(row["pid"]), row["user"], row["state"], fmt.cell(row["cpu_percent"]),
            fmt.human_bytes(row["rss_bytes"]), str(row["threads"]), row["name"]]


def summary(snap: Snapshot) -> str:
    states = ", ".join(f"{v['processes']} {k}" for k, v in sorted(state_counts(snap).items(),
                                                                  key=lambda kv: -kv[1]["processes"]))
    return (f"{snap.hostname}: {snap.procs_total} processes ({states}), {snap.threads_total} threads; "
            f"load {snap.load1:.2f} {snap.load5:.2f} {snap.load15:.2f}; cpu {snap.cpu_percent:.1f} %; "
            f"mem used {fmt.human_bytes(snap.mem_used_bytes)} of {fmt.human_bytes(snap.mem_total_bytes)}")


def text(snap: Snapshot) -> str:
    lines = [summary(snap)]
    for title, rows in (("by CPU", snap.top_cpu), ("by resident memory", snap.top_rss)):
        cells = [list(COLUMNS)] + [_cells(r) for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
        lines += ["", f"top {len(rows)} {title}:"]
        for c in cells:
            lines.append("  " + "  ".join(v.ljust(w) if i in (1, 2, 6) else v.rjust(w)
                                          for i, (v, w) in enumerate(zip(c, widths))).rstrip())
    return "\n".join(lines)


def _check_tables(reader: Reader) -> None:
    if not reader.capacities.get("top_cpu"):
        raise IncompatibleSegment(f"{reader.name}: the publisher runs with --top 0, so there are no process tables")


def with_process_tables(reader: Reader, snap: Snapshot) -> Snapshot:
    """A snapshot with the process tables: the publisher scans processes only when asked (docs/LAYOUT.md,
    "Demand"), so ask and wait for the next samples, bounded; the tables are in a sample only when the
    scan ran for it."""
    if snap.process_states or not snap.is_fresh() or not reader.ask(L.DEMAND_SCAN):
        return snap
    deadline = time.monotonic() + 2 * reader.interval + DEMAND_TIMEOUT_SECONDS
    while not snap.process_states and time.monotonic() < deadline:
        reader.wait_for_sample(snap.seq, deadline - time.monotonic())
        snap = reader.read(check_alive=True)
    return snap


def cmd_once(args: argparse.Namespace) -> int:
    from shm_metrics.readers.cli import _attach, _first_sample, _freshness

    with _attach(args.name, args.publisher_user) as reader:
        _check_tables(reader)
        snap = with_process_tables(reader, _first_sample(reader, arrays=True))
        if args.json:
            import json

            print(json.dumps(fmt.json_safe(to_json(snap)), indent=2 if sys.stdout.isatty() else None))
        else:
            print(text(snap))
        return _freshness(snap, args.max_age)


SORTS = {"P": ("top_cpu", "CPU%"), "M": ("top_rss", "RSS")}  # top's keys: P by CPU, M by memory
HEADINGS = ("PID", "USER", "S", "CPU%", "RSS", "THR", "COMMAND")  # COLUMNS, as top names them
_WIDTHS = (7, 8, 1, 6, 9, 4)  # COMMAND takes the rest; USER grows on a wide terminal


def render(snap: Snapshot, sort: str = "P", width: int = 80, height: int = 24,
           status: str | None = None) -> list[Text]:
    """The screen: a summary, then the table ``sort`` picks (P: by CPU, M: by resident memory) in full,
    then the other table in the rows left.  At most ``height`` lines of ``width`` cells."""
    from rich.text import Text

    from shm_metrics.readers.live import HEADING, chunk, flow

    head = Text(f"shm-read: {status}" if status else f"{snap.hostname}  top processes, sampled by the publisher",
                style="bold yellow" if status else "bold")
    keys = "  P cpu  M mem  q quit"
    head.truncate(max(width - len(keys), 1))
    head.append(keys.rjust(width - head.cell_len), style="dim")
    states = ", ".join(f"{v['processes']} {k}" for k, v in sorted(state_counts(snap).items(),
                                                                  key=lambda kv: -kv[1]["processes"]))
    chunks = [chunk("load", f"{snap.load1:.2f} {snap.load5:.2f} {snap.load15:.2f}"),
              chunk("cpu", f"{snap.cpu_percent:.1f}%"),
              chunk("mem", f"{fmt.human_bytes(snap.mem_used_bytes)}/{fmt.human_bytes(snap.mem_total_bytes)}"),
              chunk("procs", f"{snap.procs_total}" + (f" ({states})" if states else "")),
              chunk("threads", str(snap.threads_total))]
    lines = [head] + flow(chunks, width, 2 if height >= 12 else 1)

    widths = list(_WIDTHS)
    widths[1] = min(8 + max(width - 80, 0) // 4, 32)  # USER: room for long names on a wide terminal
    command = max(width - sum(w + 1 for w in widths), 7)
    first, second = (SORTS[sort][0], SORTS["M" if sort == "P" else "P"][0])
    room = height - len(lines)
    for table in (first, second):
        rows = snap[table]
        if room < 1:
            break
        share = min(len(rows) + 1, room) if table == first else room
        title = dict((v[0], v[1]) for v in SORTS.values())[table]
        cells = [h.rjust(w) if i not in (1, 2) else h.ljust(w)
                 for i, (h, w) in enumerate(zip(HEADINGS, widths))]
        cells[HEADINGS.index(title)] = ("▼" + title).rjust(widths[HEADINGS.index(title)])  # the sort column
        heading = " ".join(cells) + " " + "COMMAND"
        lines.append(Text(heading.ljust(width)[:width], style=HEADING))
        for row in rows[:share - 1]:
            values = _cells(row)
            out = " ".join(v.rjust(w) if i not in (1, 2) else (v if len(v) <= w else v[:w - 1] + "+").ljust(w)
                           for i, (v, w) in enumerate(zip(values[:-1], widths)))
            line = Text(out + " ")
            line.append(values[-1][:command], style="bold" if row["state"] == "R" else "")
            lines.append(line)
        room = height - len(lines)
    for line in lines:
        line.truncate(width)
    return lines[:height]


def cmd_live(args: argparse.Namespace) -> int:
    from shm_metrics.readers.live import waiting_screen
    from shm_metrics.readers.screen import run_view

    sort = ["P"]

    def follow(on_status):
        # The reader lives in the follower's thread: only that thread ever touches its mapping.
        reader = Reader(args.name, attach=False, publisher_user=args.publisher_user)
        try:
            for snap in reader.follow(on_status=on_status, max_age=args.max_age):
                _check_tables(reader)
                reader.ask(L.DEMAND_SCAN)  # the scan runs while a viewer asks, once per sample
                yield snap
        finally:
            reader.close()

    def draw(snap: Snapshot | None, status: str | None, width: int, height: int):
        return waiting_screen(status, width) if snap is None else render(snap, sort[0], width, height, status)

    def on_key(key: str) -> None:
        if key.upper() in SORTS:
            sort[0] = key.upper()

    return run_view(follow, draw, on_key)


def main(argv: list[str]) -> int:
    from shm_metrics.readers.cli import run_guarded

    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_reader_options(parser, args)
    live = sys.stdout.isatty() and not (args.once or args.json)  # JSON is a one-shot format here
    command = cmd_live if live else cmd_once
    return run_guarded(command, args)

"""The live view of ``shm-read`` on a terminal.

One screen, laid out for the terminal's size at every frame: a header, system
meters and counters, the CPUs, then network, disks and filesystems.  It fits
80x24 with every panel present (a panel with more rows than its share of the
screen shows its busiest rows and a summary line of the rest) and uses a
bigger terminal for more rows, wider meters and the network and disk tables
side by side.  CPUs are meters several to a row, as htop and btop draw them;
when even the narrowest meters would not fit their share of rows (a 128-CPU
host on 80x24) each CPU becomes one cell whose height shows how busy it is,
followed by the busiest CPUs by number.

Redrawn once per new sample (the view sleeps until the publisher wakes it),
on a key and on a resize; ``q`` quits.  Rates are computed between
consecutive samples (the first frame takes the host-wide ones from the history
ring).

The CPU figures: ``cpu`` (the host) and each CPU's meter are the share of time
busy over the publisher's last interval, 0-100 %, counting every mode but idle
and iowait; top's ``CPU%`` is per process, 100 = one whole CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from rich.text import Text

from shm_metrics.readers import format as fmt
from shm_metrics.readers.rates import recent_rates
from shm_metrics.readers.reader import Reader, Snapshot
from shm_metrics.readers.screen import fit

HEADING = "reverse bold"
# htop's meter: "12[|||||     37.5%]"; at least this many bar cells, else the CPUs turn into level cells.
MIN_BAR = 4
LEVELS = "▁▂▃▄▅▆▇█"  # eighths of 100 %: an idle CPU still shows as a cell
NET_COLUMNS = (("RX/s", 11), ("TX/s", 11), ("RX ERR", 7), ("TX ERR", 7))
DISK_COLUMNS = (("READ/s", 11), ("WRITE/s", 11), ("BUSY", 5))
FS_COLUMNS = (("TYPE", 8), ("SIZE", 9), ("USED", 9), ("AVAIL", 9), ("USE%", 4))
FS_NOTES = ("USE% = used/(used+avail), as df computes it", "USE% as df: used/(used+avail)", "use%=used/(used+avail)")
SIDE_BY_SIDE_WIDTH = 120  # from here network and disks share their rows


def level_style(percent: float) -> str:
    return "green" if percent < 60 else "yellow" if percent < 85 else "red"


def meter(label: str, percent: float, width: int, right: str | None = None) -> Text:
    """``label[|||||      right]`` in ``width`` cells; ``right`` defaults to the percentage."""
    right = f"{percent:.1f}%" if right is None else right
    inner = max(width - len(label) - 2, 0)
    percent = min(max(percent if percent == percent else 0.0, 0.0), 100.0)  # NaN and lies drawn as 0..100
    filled = min(int(round(percent / 100 * inner)), inner)
    text = Text(label, style="bold cyan")
    text.append("[")
    bar = ("|" * filled).ljust(inner)
    bar = bar[:inner - len(right)] + right if inner >= len(right) else bar
    text.append(bar[:filled], style=level_style(percent))
    text.append(bar[filled:])
    text.append("]")
    return text


def cpu_meters(cpus: list[dict], width: int, max_rows: int) -> list[Text] | None:
    """The CPUs as meters, column-major, in at most ``max_rows`` rows; None if they cannot fit."""
    n = len(cpus)
    if n == 0 or max_rows < 1:
        return None
    label_width = len(str(max(c["cpu"] for c in cpus)))
    min_meter = label_width + 2 + MIN_BAR + len("100.0%")
    columns = max(math.ceil(n / max_rows), min(n, max(width // 40, 1)))  # wide meters when there is room
    meter_width = (width - columns + 1) // columns
    spare = width - columns + 1 - meter_width * columns  # the last column takes the remainder
    if meter_width < min_meter:
        return None
    rows = math.ceil(n / columns)
    lines = []
    for r in range(rows):
        line = Text()
        for c in range(columns):
            i = c * rows + r
            if i >= n:
                break
            if c:
                line.append(" ")
            line.append_text(meter(str(cpus[i]["cpu"]).rjust(label_width), cpus[i]["percent"],
                                   meter_width + (spare if c == columns - 1 else 0)))
        lines.append(line)
    return lines


def cpu_cells(cpus: list[dict], width: int, max_rows: int) -> list[Text]:
    """The CPUs as one level cell each (several per cell when even that would not fit), the busiest named."""
    n = len(cpus)
    label_width = len(str(n))
    per_row = max(width - label_width - 1, 1)
    group = max(1, math.ceil(n / (per_row * max(max_rows - 1, 1))))  # CPUs per cell
    cells = [max(c["percent"] for c in cpus[i:i + group]) for i in range(0, n, group)]
    lines = []
    for start in range(0, len(cells), per_row):
        line = Text(str(cpus[start * group]["cpu"]).rjust(label_width) + " ", style="bold cyan")
        for percent in cells[start:start + per_row]:
            level = min(max(percent if percent == percent else 0.0, 0.0), 100.0)
            line.append(LEVELS[min(int(level / 100 * len(LEVELS)), len(LEVELS) - 1)], style=level_style(level))
        lines.append(line)
    busiest = sorted(cpus, key=lambda c: -c["percent"])
    what = "one cell per CPU" if group == 1 else f"one cell per {group} CPUs (the busiest)"
    legend = Text(f"{what}, ▁ idle to █ busy; busiest:", style="dim")
    for cpu in busiest[:max(1, (width - len(legend)) // 12)]:
        legend.append(f" cpu{cpu['cpu']} ", style="bold cyan")
        legend.append(f"{cpu['percent']:.0f}%", style=level_style(cpu["percent"]))
    return (lines + [legend])[:max_rows] if max_rows > len(lines) else lines[:max_rows]


def cpu_block(cpus: list[dict], width: int, max_rows: int) -> list[Text]:
    return cpu_meters(cpus, width, max_rows) or cpu_cells(cpus, width, max_rows)


def _rate(now: dict, before: dict | None, key: str, dt: float) -> float | None:
    if before is None or dt <= 0 or key not in before:
        return None
    return max(0.0, (now[key] - before[key]) / dt)


def _per_second(value: float | None, unit: str = "") -> str:
    if value is None:
        return "…"
    return f"{fmt.human_bytes(value)}/s" if unit == "bytes" else f"{value:,.0f}/s"


class Panel:
    """A table with a heading row: as many rows as it is given lines, a summary of those it cannot show."""

    def __init__(self, title: str, columns: tuple[tuple[str, int], ...], rows: list[tuple[str, ...]],
                 activity: list[float], summary: Callable[[list[int]], str], notes: tuple[str, ...] = ()):
        self.title, self.columns, self.rows, self.activity = title, columns, rows, activity
        self.summary, self.notes = summary, notes  # notes: what the heading says, longest first

    @property
    def wanted(self) -> int:
        return 1 + max(len(self.rows), 1)

    def lines(self, width: int, count: int) -> list[Text]:
        columns_width = sum(w + 1 for _, w in self.columns)
        notes = [f"{self.title} ({note})" for note in self.notes] + [self.title]
        longest = max([len(r[0]) for r in self.rows] + [len(notes[-1])])
        # The name column takes what the numbers leave, up to what its names and notes need.
        name_width = max(min(width - columns_width, max(longest, *(len(n) for n in notes[:1]))), 8)
        title = next((n for n in notes if len(n) <= name_width), self.title)
        head = title.ljust(name_width)[:name_width] + "".join(" " + t.rjust(w) for t, w in self.columns)
        out = [Text(head.ljust(width), style=HEADING)]
        if count <= 1:
            return out[:count]
        if not self.rows:
            return out + [Text("none", style="dim")]
        shown = list(range(len(self.rows)))
        if len(self.rows) > count - 1:  # the busiest first; the rest in one line
            keep = sorted(shown, key=lambda i: -self.activity[i])[:count - 2]
            shown = sorted(keep)
        for i in shown:
            row = self.rows[i]
            name = row[0] if len(row[0]) <= name_width else row[0][:name_width - 1] + "…"
            out.append(Text(name.ljust(name_width) + "".join(" " + v.rjust(w)[-w:] if len(v) <= w else " " + v
                                                             for v, (_, w) in zip(row[1:], self.columns))))
        hidden = [i for i in range(len(self.rows)) if i not in shown]
        if hidden:
            out.append(Text(self.summary(hidden), style="dim"))
        return out


def _net_panel(snap: Snapshot, prev: Snapshot | None, dt: float) -> Panel:
    before = {n["device"]: n for n in prev.net} if prev else {}
    rows, activity, rx, tx = [], [], [], []
    for nic in snap.net:
        old = before.get(nic["device"])
        rx.append(_rate(nic, old, "rx_bytes", dt))
        tx.append(_rate(nic, old, "tx_bytes", dt))
        rows.append((nic["device"], _per_second(rx[-1], "bytes"), _per_second(tx[-1], "bytes"),
                     str(nic["rx_errors"]), str(nic["tx_errors"])))
        activity.append((rx[-1] or 0) + (tx[-1] or 0))

    return Panel("NETWORK", NET_COLUMNS, rows, activity, _hidden_summary("interfaces", ("rx", rx), ("tx", tx)))


def _disk_panel(snap: Snapshot, prev: Snapshot | None, dt: float) -> Panel:
    before = {d["device"]: d for d in prev.disks} if prev else {}
    rows, activity, read, written = [], [], [], []
    for disk in snap.disks:
        old = before.get(disk["device"])
        busy = _rate(disk, old, "io_time_seconds", dt)
        read.append(_rate(disk, old, "read_bytes", dt))
        written.append(_rate(disk, old, "written_bytes", dt))
        rows.append((disk["device"], _per_second(read[-1], "bytes"), _per_second(written[-1], "bytes"),
                     "…" if busy is None else f"{min(busy, 1.0) * 100:.0f}%"))
        activity.append(busy or 0)

    return Panel("DISK", DISK_COLUMNS, rows, activity,
                 _hidden_summary("disks", ("read", read), ("write", written)))


def _hidden_summary(noun: str, *rates: tuple[str, list[float | None]]):
    """The summary line of the rows a panel has no room for: how many, and their byte rates summed
    (once every hidden row has a rate)."""
    def summary(hidden: list[int]) -> str:
        text = f"+{len(hidden)} more {noun}"
        if all(values[i] is not None for _, values in rates for i in hidden):
            text += ": " + ", ".join(f"{label} {_per_second(sum(values[i] for i in hidden), 'bytes')}"
                                     for label, values in rates)
        return text

    return summary


def _fs_panel(snap: Snapshot) -> Panel:
    rows, use = [], []
    for f in snap.filesystems:
        used = max(f["size_bytes"] - f["free_bytes"], 0)
        use.append(fmt.df_use_percent(f["size_bytes"], f["free_bytes"], f["avail_bytes"]))
        rows.append((f["mountpoint"], f["fstype"], fmt.human_bytes(f["size_bytes"]), fmt.human_bytes(used),
                     fmt.human_bytes(f["avail_bytes"]), f"{use[-1]}%"))

    def summary(hidden: list[int]) -> str:
        fullest = max(hidden, key=lambda i: use[i])
        return f"+{len(hidden)} more filesystems, the fullest {rows[fullest][0]} at {use[fullest]}%"

    return Panel("FILESYSTEM", FS_COLUMNS, rows, [float(u) for u in use], summary, FS_NOTES)


def flow(chunks: list[Text], width: int, max_lines: int) -> list[Text]:
    """Chunks two spaces apart, wrapped between chunks into at most ``max_lines`` lines; the rest left out."""
    lines: list[Text] = []
    line = Text()
    for chunk in chunks:
        if line.cell_len and line.cell_len + 2 + chunk.cell_len > width:
            lines.append(line)
            line = Text()
        if line.cell_len:
            line.append("  ")
        line.append_text(chunk)
    lines.append(line)
    return lines[:max_lines]


def chunk(label: str, value: str) -> Text:
    text = Text(label + " ", style="bold cyan")
    text.append(value)
    return text


def _share(parts: list[int], wanted: list[int], lines: int) -> list[int]:
    """Hand out ``lines`` one at a time, round robin, to the parts that want more."""
    while lines > 0 and any(p < w for p, w in zip(parts, wanted)):
        for i, (p, w) in enumerate(zip(parts, wanted)):
            if lines > 0 and p < w:
                parts[i] += 1
                lines -= 1
    return parts


def render(snap: Snapshot, prev: Snapshot | None, ring: dict | None = None, width: int = 80,
           height: int = 24, status: str | None = None) -> list[Text]:
    """The screen for ``snap``: at most ``height`` lines of at most ``width`` cells.

    ``prev``: the previous sample (for per-device rates); ``ring``: rates from
    the history ring, for the first frame; ``status``: a message for the first
    line (the publisher stopped, ...).
    """
    dt = snap.sample_monotonic - prev.sample_monotonic if prev else 0.0
    s, p = snap.scalars(), prev.scalars() if prev else None

    def host_rate(counter: str, rate: str) -> float | None:
        value = _rate(s, p, counter, dt)
        return ring.get(rate) if value is None and ring else value

    head = Text(f"{snap.hostname}  up {fmt.seconds(s['uptime_seconds'])}  every {fmt.seconds(snap.interval)}  "
                f"seq {snap.seq}  pid {snap.publisher_pid} {snap.state}", style="bold")
    if status:
        head = Text(f"shm-read: {status}", style="bold yellow")
    keys = "  q quit"
    head.truncate(max(width - len(keys), 1))
    head.append(keys.rjust(width - head.cell_len), style="dim")

    third = (width - 4) // 3
    meters = Text()
    meters.append_text(meter("cpu", s["cpu_percent"], third))
    meters.append("  ")
    mem_pct = 100 * s["mem_used_bytes"] / s["mem_total_bytes"] if s["mem_total_bytes"] else 0.0
    meters.append_text(meter("mem", mem_pct, third, f"{fmt.human_bytes(s['mem_used_bytes'])}/"
                                                    f"{fmt.human_bytes(s['mem_total_bytes'])}"))
    meters.append("  ")
    swap_pct = 100 * s["swap_used_bytes"] / s["swap_total_bytes"] if s["swap_total_bytes"] else 0.0
    meters.append_text(meter("swp", swap_pct, width - 4 - 2 * third, f"{fmt.human_bytes(s['swap_used_bytes'])}/"
                                                                   f"{fmt.human_bytes(s['swap_total_bytes'])}"))
    counters = [
        chunk("load", f"{s['load1']:.2f} {s['load5']:.2f} {s['load15']:.2f}"),
        chunk("procs", f"{s['procs_total']} ({s['procs_running']} running, {s['procs_blocked']} blocked)"),
        chunk("threads", str(s["threads_total"])),
        chunk("forks", _per_second(host_rate("forks_total", "forks_per_second"))),
        chunk("ctx", _per_second(host_rate("ctx_switches_total", "ctx_switches_per_second"))),
        chunk("intr", _per_second(host_rate("interrupts_total", "interrupts_per_second"))),
        chunk("files", f"{s['filefd_allocated']}/{s['filefd_maximum']}"),
    ]
    top = [head, meters] + flow(counters, width, 2 if height >= 20 else 1)

    net, disks, fs = _net_panel(snap, prev, dt), _disk_panel(snap, prev, dt), _fs_panel(snap)
    side_by_side = width >= SIDE_BY_SIDE_WIDTH
    panels = [[net, disks], [fs]] if side_by_side else [[net], [disks], [fs]]
    wanted = [max(pan.wanted for pan in group) for group in panels]
    minimum = [min(2, w) for w in wanted]
    room = height - len(top)
    # The CPUs get what the panels need beyond their two lines, but never less than half the room.
    cpu_room = max(min(room - sum(minimum), max(room // 2, room - sum(wanted))), 1)
    cpus = cpu_block(snap.cpus, width, cpu_room)
    given = _share(list(minimum), wanted, room - len(cpus) - sum(minimum))

    lines = top + cpus
    half = (width - 1) // 2
    for group, count in zip(panels, given):
        if len(group) == 1:
            lines += group[0].lines(width, count)
        else:
            left, right = group[0].lines(half, count), group[1].lines(width - half - 1, count)
            for i in range(max(len(left), len(right))):
                row = fit(left[i], half) if i < len(left) else Text(" " * half)
                row.append(" ")
                row.append_text(right[i] if i < len(right) else Text(""))
                lines.append(row)
    for line in lines:
        line.truncate(width)
    return lines[:height]


def waiting_screen(status: str | None, width: int) -> list[Text]:
    line = Text(f"shm-read: {status or 'waiting'}", style="bold yellow")
    line.truncate(width)
    return [line, Text("q quits", style="dim")]


def run_live(name: str | None, max_age: float | None, publisher_user: str | None = None) -> int:
    from shm_metrics.readers.screen import run_view

    def follow(on_status: Callable[[str], None]) -> Iterator[tuple[Snapshot, Snapshot | None, dict | None]]:
        # The reader lives in the follower's thread: only that thread ever touches its mapping.
        reader = Reader(name, attach=False, publisher_user=publisher_user)
        prev = None
        try:
            for snap in reader.follow(on_status=on_status, max_age=max_age):
                if prev is not None and prev.instance_id != snap.instance_id:
                    prev = None  # a new publisher: rates restart
                ring = recent_rates(reader, snap) if prev is None else None  # rates from the first frame on
                yield snap, prev, ring
                prev = snap
        finally:
            reader.close()

    def draw(item: tuple | None, status: str | None, width: int, height: int) -> list[Text]:
        if item is None:
            return waiting_screen(status, width)
        snap, prev, ring = item
        return render(snap, prev, ring, width, height, status)

    return run_view(follow, draw)

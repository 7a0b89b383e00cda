"""The live view of ``shm-read`` on a terminal, drawn with rich.

Refreshes once per new sample (it sleeps until the publisher wakes it, and
never redraws an unchanged one) and shows rates computed between consecutive
samples: network and disk bytes per second, fork and context-switch rates (the
first frame takes the host-wide ones from the history ring).  CPU percentages
come straight from the segment.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shm_metrics.readers import format as fmt
from shm_metrics.readers.rates import recent_rates
from shm_metrics.readers.reader import Reader, Snapshot


def _rate(now: dict, before: dict | None, key: str, dt: float) -> float | None:
    if before is None or dt <= 0 or key not in before:
        return None
    return max(0.0, (now[key] - before[key]) / dt)


def _per_second(value: float | None, unit: str = "") -> str:
    if value is None:
        return "…"
    return f"{fmt.human_bytes(value)}/s" if unit == "bytes" else f"{value:,.0f}/s"


def _bar(percent: float, width: int = 20) -> Text:
    filled = int(round(percent / 100 * width))
    style = "green" if percent < 60 else "yellow" if percent < 85 else "red"
    return Text("█" * filled + "·" * (width - filled), style=style)


def render(snap: Snapshot, prev: Snapshot | None, ring: dict | None = None) -> Group:
    """``ring``: rates from the history ring, for the first frame (no ``prev`` yet)."""
    dt = snap.sample_monotonic - prev.sample_monotonic if prev else 0.0
    s, p = snap.scalars(), prev.scalars() if prev else None

    def host_rate(counter: str, rate: str) -> float | None:
        value = _rate(s, p, counter, dt)
        return ring.get(rate) if value is None and ring else value

    head = Text(f"{snap.hostname}  seq {snap.seq}  every {fmt.seconds(snap.interval)}  "
                f"publisher pid {snap.publisher_pid} ({snap.state})  up {fmt.seconds(s['uptime_seconds'])}",
                style="bold")

    system = Table.grid(padding=(0, 2))
    for _ in range(4):
        system.add_column()
    system.add_row("procs", f"{s['procs_total']}", "threads", f"{s['threads_total']}")
    system.add_row("running", f"{s['procs_running']}", "blocked", f"{s['procs_blocked']}")
    system.add_row("load", f"{s['load1']:.2f} {s['load5']:.2f} {s['load15']:.2f}",
                   "forks", _per_second(host_rate("forks_total", "forks_per_second")))
    system.add_row("cpu", f"{s['cpu_percent']:5.1f} %",
                   "ctx switches", _per_second(host_rate("ctx_switches_total", "ctx_switches_per_second")))
    system.add_row("mem used", f"{fmt.human_bytes(s['mem_used_bytes'])} of {fmt.human_bytes(s['mem_total_bytes'])}",
                   "available", fmt.human_bytes(s["mem_available_bytes"]))
    system.add_row("swap used", f"{fmt.human_bytes(s['swap_used_bytes'])} of {fmt.human_bytes(s['swap_total_bytes'])}",
                   "open files", f"{s['filefd_allocated']} / {s['filefd_maximum']}")

    cpus = Table("cpu", "busy", "", box=None, padding=(0, 1))
    for cpu in snap.cpus:
        cpus.add_row(str(cpu["cpu"]), f"{cpu['percent']:5.1f} %", _bar(cpu["percent"]))

    net = Table("interface", "rx", "tx", "rx errors", "tx errors", box=None, padding=(0, 1))
    before = {n["device"]: n for n in prev.net} if prev else {}
    for nic in snap.net:
        old = before.get(nic["device"])
        net.add_row(nic["device"], _per_second(_rate(nic, old, "rx_bytes", dt), "bytes"),
                    _per_second(_rate(nic, old, "tx_bytes", dt), "bytes"), str(nic["rx_errors"]), str(nic["tx_errors"]))

    disks = Table("disk", "read", "write", "busy", box=None, padding=(0, 1))
    before = {d["device"]: d for d in prev.disks} if prev else {}
    for disk in snap.disks:
        old = before.get(disk["device"])
        busy = _rate(disk, old, "io_time_seconds", dt)
        disks.add_row(disk["device"], _per_second(_rate(disk, old, "read_bytes", dt), "bytes"),
                      _per_second(_rate(disk, old, "written_bytes", dt), "bytes"),
                      "…" if busy is None else f"{min(busy, 1.0) * 100:.0f} %")

    fs = Table("mount point", "type", "size", "used", "avail", box=None, padding=(0, 1))
    for f in snap.filesystems:
        used = f["size_bytes"] - f["free_bytes"]
        pct = 100 * used / f["size_bytes"] if f["size_bytes"] else 0
        fs.add_row(f["mountpoint"], f["fstype"], fmt.human_bytes(f["size_bytes"]),
                   f"{fmt.human_bytes(used)} ({pct:.0f} %)", fmt.human_bytes(f["avail_bytes"]))

    return Group(head, Panel(system, title="system"), Panel(cpus, title="cpus"),
                 Panel(net, title="network"), Panel(disks, title="disks"), Panel(fs, title="filesystems"))


def run_live(name: str | None, max_age: float | None, publisher_user: str | None = None) -> int:
    console = Console()
    reader = Reader(name, attach=False, publisher_user=publisher_user)
    status = Text("")
    prev = None
    try:
        with Live(status, console=console, auto_refresh=False, screen=False) as live:
            def on_status(text: str) -> None:
                live.update(Group(Text(f"shm-read: {text}", style="yellow"),
                                  render(prev, None) if prev else Text("")), refresh=True)

            for snap in reader.follow(on_status=on_status, max_age=max_age):
                if prev is not None and prev.instance_id != snap.instance_id:
                    prev = None  # a new publisher: rates restart
                ring = recent_rates(reader, snap) if prev is None else None  # rates from the first frame on
                live.update(render(snap, prev, ring), refresh=True)
                prev = snap
    finally:
        reader.close()
    return 0

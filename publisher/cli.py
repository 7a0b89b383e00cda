"""``shm-publisher``: sample the host into a shared-memory segment, forever.

Exit codes: 0 stopped by SIGTERM, SIGINT, SIGHUP or SIGQUIT (state
"stopped", files removed unless --keep-on-exit); 1 the name is taken (a live
publisher, or something foreign that is left untouched) or the segment could
not be created; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import select
import signal
import sys
import time

import posix_ipc

from shm_metrics import shm_layout as L
from shm_metrics.publisher import switches
from shm_metrics.publisher.collectors import RESCAN_SECONDS, collector_names, numbers, selected
from shm_metrics.publisher.compiled import CompiledGrid
from shm_metrics.publisher.demand import DemandChannel, open_channel
from shm_metrics.publisher.filters import DISK_EXCLUDE, FS_TYPE_EXCLUDE, MOUNT_POINT_EXCLUDE, NET_EXCLUDE, Filters
from shm_metrics.publisher.sampler import RETRY_SECONDS, Sampler
from shm_metrics.publisher.segment import NameInUse, OwnedSegment
from shm_metrics.readers.cliargs import (
    OneLineParser,
    add_log_arguments,
    description_from,
    paragraph,
    resolve_segment_name,
    segment_name,
    setup_logging,
)
from shm_metrics.service import tune_gc

log = logging.getLogger("shm-publisher")

EXIT_OK, EXIT_NAME_IN_USE, EXIT_USAGE = 0, 1, 2  # 1 also: the segment could not be created
# Each stops the publisher cleanly (state "stopped", files removed, exit 0).  By default SIGHUP (a closed
# terminal, a dropped SSH session) and SIGQUIT (Ctrl-\) would kill it on the spot, leaving a segment that
# says "running" and files in /dev/shm.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class StopSignals:
    """The stop signals only set a flag, and wake the loop's wait through a pipe.

    The handler never interrupts a write (it runs between bytecodes and only
    records the signal), and the wait is a select() on the wakeup pipe, so
    shutdown always takes the same path.  (sigtimedwait was tried first: after
    SIGSTOP/SIGCONT, CPython 3.11 can return an uninitialised siginfo from it.)
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.also_ready = False  # the last wait() ended with ``also`` readable
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # poll, not select: the collectors keep a descriptor per device open, and on a big host the demand
        # channel's number can pass select's limit of 1024.  One poller without the channel and one with it,
        # made once: the loop waits every interval.
        self._poller = select.poll()
        self._poller.register(self._read_fd, select.POLLIN)
        self._with: tuple[DemandChannel, select.poll] | None = None  # the channel, and the poller with it
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in _STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: the caller asked it to outlive its terminal
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.received = signum

    def wait(self, timeout: float, also: DemandChannel | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, or until ``also`` is readable (then ``also_ready`` is True);
        True once a stop signal has arrived."""
        self.also_ready = False
        if self.received is None and timeout > 0:
            poller = self._poller if also is None else self._poller_with(also)
            for fd, _ in poller.poll(math.ceil(timeout * 1000)):
                if fd == self._read_fd:
                    self._drain()
                else:
                    self.also_ready = True
        return self.received is not None

    def _poller_with(self, also: DemandChannel) -> select.poll:
        if self._with is None or self._with[0] is not also:
            poller = select.poll()
            poller.register(self._read_fd, select.POLLIN)
            poller.register(also.fileno(), select.POLLIN)
            self._with = (also, poller)
        return self._with[1]

    def _drain(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass


def _within(convert: type, low: float, high: float, unit: str = ""):
    """An argparse type: ``convert(text)`` (int or float) within low..high (NaN refused)."""
    kind = "an integer" if convert is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        if not (low <= value <= high) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"{text} is outside {low}..{high}{unit}")
        return value

    return parse


def _seconds(low: float, high: float):
    return _within(float, low, high, " seconds")


def _bounded(low: int, high: int):
    return _within(int, low, high)


_interval = _seconds(0.01, 3600)
_period = _seconds(0, 86400)  # a cadence (0: every sample)


def _mode(text: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0644")
    mode = int(text, 8)
    if mode & 0o022:
        raise argparse.ArgumentTypeError(
            f"{text}: group/other write would let others corrupt or shrink the segment under every reader")
    if mode & 0o111:
        raise argparse.ArgumentTypeError(f"{text}: execute bits make no sense on a segment")
    if not mode & 0o600 == 0o600:
        raise argparse.ArgumentTypeError(f"{text}: the owner needs read and write")
    return mode


_capacity = _bounded(1, L.MAX_CAPACITY)

# The history ring holds a span of time, not a number of samples: ten minutes at any interval, up to a
# cap that keeps the segment small (each entry is one sample's scalars, L.HISTORY.size bytes) and the
# ring quick to scan for readers; below 0.1 s intervals the cap is what limits it (60 s at 0.01 s).
HISTORY_SECONDS = 600
# Growth stops here: far above any real host (a segment is well under 2 MiB on a typical one, ~5 MiB with
# thousands of mounts), low enough that a runaway collector cannot fill /dev/shm (half of RAM by default).
DEFAULT_MAX_SEGMENT_MIB = 256
HISTORY_CAP = 6000


def default_history(interval: float) -> int:
    """Entries for HISTORY_SECONDS of samples at ``interval``, 2..HISTORY_CAP (a rate needs two)."""
    return min(max(math.ceil(HISTORY_SECONDS / interval - 1e-9), 2), HISTORY_CAP)


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {exc}") from None
    return text


def possible_cpus(sysfs: str = "/sys") -> int:
    """CPUs that may ever come online (so hotplug never overflows the array)."""
    try:
        with open(os.path.join(sysfs, "devices/system/cpu/possible")) as f:
            text = f.read().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def build_parser(names: dict[str, bool] | None = None) -> argparse.ArgumentParser:
    """The command line; ``names``: the collectors to offer switches for (default: collector_names())."""
    p = OneLineParser(prog="shm-publisher", description=description_from(__doc__), allow_abbrev=False,
                epilog="exit codes: 0 stopped by SIGTERM, SIGINT, SIGHUP or SIGQUIT (state stopped, files removed\n"
                       "unless --keep-on-exit; a SIGHUP ignored on start, as under nohup, stays ignored);\n"
                       "1 name in use or segment not created; 2 bad arguments",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", type=segment_name, default=None,
                   help=f"segment name (default {L.DEFAULT_NAME}, env {L.NAME_ENV}); "
                        "the semaphore is <name>.lock")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="sampling interval, 0.01..3600 (default 1.0)")
    p.add_argument("--mode", type=_mode, default=0o644, metavar="OCTAL",
                   help="permissions of segment and semaphore, applied exactly (default 0644)")
    p.add_argument("--keep-on-exit", action="store_true",
                   help="leave the (stopped) segment and semaphore in place on exit")
    add_log_arguments(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {L.__version__} (layout {L.LAYOUT_VERSION})")
    cap = p.add_argument_group("capacities", paragraph(
        "initial sizes: when a sample needs more (interfaces, disks and mounts appear, a collector's "
        "files appear), the publisher moves to a larger segment under the same name, and readers follow "
        "(docs/LAYOUT.md, Generations)"))
    cap.add_argument("--max-cpus", type=_capacity, default=None, metavar="N",
                     help=f"default: possible CPUs ({possible_cpus()} here)")
    cap.add_argument("--max-interfaces", type=_capacity, default=64, metavar="N", help="default: %(default)s")
    cap.add_argument("--max-disks", type=_capacity, default=64, metavar="N", help="default: %(default)s")
    cap.add_argument("--max-filesystems", type=_capacity, default=64, metavar="N", help="default: %(default)s")
    cap.add_argument("--max-segment-mib", type=_bounded(1, 4096), default=DEFAULT_MAX_SEGMENT_MIB, metavar="MIB",
                     help="the segment never grows beyond this; what a sample has beyond it is left out and "
                          "counted (shm-read --info: overflow) (default: %(default)s)")
    cap.add_argument("--history", type=_bounded(2, L.MAX_CAPACITY), default=None, metavar="SAMPLES",
                     help=f"samples kept in the segment's history ring (default: {HISTORY_SECONDS // 60} minutes "
                          f"at --interval, {default_history(1.0)} at 1 s, {default_history(0.5)} at 0.5 s, at "
                          f"most {HISTORY_CAP} = {HISTORY_CAP * L.HISTORY.size / 2**20:.1f} MiB, i.e. "
                          f"{HISTORY_CAP * 0.01:.0f} s at 0.01 s)")
    p.add_argument("--always-full", action="store_true",
                   help="run every collector every interval, with no demand channel; by default only what "
                        "local readers show every interval (CPU, load, memory, network, disks, filesystems, "
                        "file handles) runs every interval, and everything else when a scrape or a reader "
                        "asks, at most once per interval (docs/LAYOUT.md, Demand)")
    p.add_argument("--top", type=_bounded(0, 1000), default=L.DEFAULT_TOP, metavar="N",
                   help=f"publish the top N processes by CPU and by memory, and process/thread counts by "
                        f"state (default {L.DEFAULT_TOP}; 0 turns the per-process scan off)")
    late = p.add_argument_group("late collectors and devices", paragraph(
        "what appears after start (a module loaded, a chip or disk plugged in) is published without a restart"))
    late.add_argument("--collector.retry-interval", dest="retry_interval", type=_period, default=RETRY_SECONDS,
                      metavar="SECONDS", help="how often a collector unavailable at start (its files missing) is "
                                              "tried again once what it lacked exists, and every tenth time "
                                              "anyway (default: %(default)g)")
    late.add_argument("--collector.rescan-interval", dest="rescan_interval", type=_period, default=RESCAN_SECONDS,
                      metavar="SECONDS", help="how often collectors list their devices again: hwmon chips, "
                                              "thermal zones, nvme... (default: %(default)g; interfaces, disks and "
                                              "mounts are seen at once)")
    paths = p.add_argument_group("paths", paragraph(
        "node_exporter's; in a container, point them at the host's /proc, /sys and / mounted elsewhere"))
    paths.add_argument("--path.procfs", dest="procfs", default="/proc", metavar="PATH",
                       help="procfs mountpoint (default: %(default)s)")
    paths.add_argument("--path.sysfs", dest="sysfs", default="/sys", metavar="PATH",
                       help="sysfs mountpoint (default: %(default)s)")
    paths.add_argument("--path.rootfs", dest="rootfs", default="/", metavar="PATH",
                       help="rootfs mountpoint: the host's / (filesystems, os-release) (default: %(default)s)")
    paths.add_argument("--path.udev.data", dest="udev_data", default="/run/udev/data", metavar="PATH",
                       help="udev data path (default: %(default)s)")
    flt = p.add_argument_group("filters", paragraph(
        "regular expressions; defaults are node_exporter's as Debian ships it; node_exporter's flag names work too"))
    # Default None: an include given alone then replaces the default exclude (node_exporter has them mutually
    # exclusive, and Debian's default net exclude would otherwise make --collector.netdev.device-include fail).
    for options, dest, default, what in (
            (("--disk-exclude", "--collector.diskstats.device-exclude"), "disk_exclude", DISK_EXCLUDE,
             "block devices left out"),
            (("--collector.diskstats.device-include",), "disk_include", "", "only these block devices"),
            (("--mount-points-exclude", "--collector.filesystem.mount-points-exclude"), "mount_points_exclude",
             MOUNT_POINT_EXCLUDE, "mount points left out"),
            (("--fs-types-exclude", "--collector.filesystem.fs-types-exclude"), "fs_types_exclude",
             FS_TYPE_EXCLUDE, "filesystem types left out"),
            (("--net-exclude", "--collector.netdev.device-exclude"), "net_exclude", NET_EXCLUDE,
             "network interfaces left out"),
            (("--collector.netdev.device-include",), "net_include", "", "only these network interfaces")):
        flt.add_argument(*options, dest=dest, type=_regex, default=None, metavar="REGEX",
                         help=f"{what} (default: {default or 'none'})")
    switches.add_arguments(p, collector_names() if names is None else names)
    return p


def filters_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Filters:
    """The device and filesystem filters: node_exporter's rule that include and exclude are mutually
    exclusive, with an include given alone replacing the default exclude."""
    values = {}
    for kind, exclude_dest, default, exclude_flag in (
            ("disk", "disk_exclude", DISK_EXCLUDE, "--collector.diskstats.device-exclude"),
            ("net", "net_exclude", NET_EXCLUDE, "--collector.netdev.device-exclude")):
        include, exclude = getattr(args, f"{kind}_include"), getattr(args, exclude_dest)
        if include and exclude:
            parser.error(f"{exclude_flag} and {exclude_flag.replace('exclude', 'include')} are mutually exclusive")
        values[exclude_dest] = ("" if include else default) if exclude is None else exclude
        values[f"{kind}_include"] = include or ""
    mounts = MOUNT_POINT_EXCLUDE if args.mount_points_exclude is None else args.mount_points_exclude
    fstypes = FS_TYPE_EXCLUDE if args.fs_types_exclude is None else args.fs_types_exclude
    return Filters(values["disk_exclude"], mounts, fstypes, values["net_exclude"],
                   disk_include=values["disk_include"], net_include=values["net_include"])


def run(args: argparse.Namespace) -> int:
    stop = StopSignals()  # from here on the stop signals are a flag the loop checks
    tune_gc()
    sampler = Sampler(procfs=args.procfs, sysfs=args.sysfs, rootfs=args.rootfs, udev_data=args.udev_data,
                      filters=args.filters, top_n=args.top, collectors=selected(args.enabled),
                      options=args.collector_options, retry_seconds=args.retry_interval,
                      rescan_seconds=args.rescan_interval, grid_samples=not args.always_full)
    log.info("collectors: %s", ", ".join(sorted(args.enabled)))
    # The family sections are sized from this host's catalog and one trial sample.
    layout = L.Layout.for_capacities(args.max_cpus or possible_cpus(args.sysfs), args.max_interfaces,
                                     args.max_disks, args.max_filesystems, history=args.history, top=args.top,
                                     **sampler.family_capacities())
    try:
        segment = OwnedSegment(args.name, layout, args.mode, args.interval, sampler.catalog,
                               max_bytes=args.max_segment_mib << 20,
                               on_demand=() if args.always_full else sampler.on_demand)
    except NameInUse as exc:
        log.error("%s", exc)
        sampler.close()
        return EXIT_NAME_IN_USE
    except (OSError, posix_ipc.Error) as exc:  # e.g. /dev/shm not writable for this user
        log.error("cannot create segment %s: %s", args.name, exc)
        sampler.close()
        return EXIT_NAME_IN_USE
    log.info("publishing %s every %gs (%d bytes, pid %d; numbers read %s)", args.name, args.interval,
             layout.total_size, os.getpid(), "in C" if numbers.AVAILABLE else "by the Python parsers alone")
    demand = None if args.always_full else open_channel(args.name, args.mode)
    current = [segment]  # the generation under the name: publish() may move to a larger one
    try:
        _loop(current, sampler, args.interval, stop, demand)
    finally:
        if demand is not None:
            demand.close()
        current[0].close(unlink=not args.keep_on_exit)
        sampler.close()
    log.info("stopped%s", " (segment kept)" if args.keep_on_exit else "")
    return EXIT_OK


def _loop(current: list[OwnedSegment], sampler: Sampler, interval: float, stop: StopSignals,
          demand: DemandChannel | None = None) -> None:
    """Sample on a drift-free grid start + k*interval until a stop signal; ``current[0]`` is the
    segment's generation under the name (replaced in place when a sample makes it grow).

    Grid samples run compiled (publisher/compiled.py) while a program holds, else in Python.
    With a demand channel, grid samples run the CORE collectors (and the per-process scan while a top
    viewer asks); a full sample runs when a reader asks, at once if the last full one is an interval
    old, and the grid then restarts from it: whatever readers send, at most one sample per interval is
    full.  Without one, every sample is full.
    """
    plan = _Plan(interval, always_full=demand is None)
    segment = current[0]
    compiled = CompiledGrid(sampler)
    while True:
        full, scan = plan.next_sample(time.monotonic())
        wall, t0 = time.time(), time.monotonic()
        grid = not full and not scan
        if not (grid and compiled.sample(segment, wall, t0, plan.overruns)):
            compiled.before_python()
            sample = sampler.sample(full=full, scan=scan, wall_time=wall)
            t1 = time.monotonic()
            segment = current[0] = segment.publish(sample, wall, t0, t1 - t0, plan.overruns)
            compiled.after_python(segment, grid)
        if plan.samples == 0:
            segment.set_state(L.STATE_RUNNING)  # only after the first sample is in
        plan.done(t0, full, time.monotonic())
        listened = False
        while True:
            due = plan.due()
            watch = demand if demand is not None and not listened and not plan.full_pending else None
            if stop.wait(due - time.monotonic(), watch):
                return
            if watch is not None and not listened and stop.also_ready:
                plan.asked(demand.drain(), time.monotonic())
                listened = True  # once between two samples: a flood cannot keep the publisher awake
            if time.monotonic() >= plan.due():
                break


class _Plan:
    """When the next sample is, and what it runs (the publisher loop's arithmetic, kept apart from I/O)."""

    def __init__(self, interval: float, always_full: bool):
        self.interval = interval
        self.always_full = always_full
        self.start = time.monotonic()
        self.k = 0  # grid slots used since start
        self.samples = 0
        self.overruns = 0
        self.full_pending = True  # the first sample runs every collector
        self.last_full = -math.inf
        self.scan_until = -math.inf

    def next_sample(self, now: float) -> tuple[bool, bool]:
        """(full, scan) for a sample taken now."""
        full = self.always_full or (self.full_pending and now >= self.last_full + self.interval)
        return full, self.always_full or now < self.scan_until

    def done(self, taken: float, full: bool, now: float) -> None:
        self.samples += 1
        if full:
            self.last_full, self.full_pending = taken, False
        # A full sample on demand restarts the grid from itself, early or late, so that the next full one
        # (a interval later) and the grid's next slot coincide: never a core sample just before it.
        if full and not self.always_full or taken < self.start + self.k * self.interval:
            self.start, self.k = taken, 0
        self.k += 1
        behind = int((now - self.start) / self.interval) - self.k
        if behind > 0:  # a whole slot missed: skip it instead of bunching samples
            self.overruns += behind
            self.k += behind

    def due(self) -> float:
        """Monotonic time of the next sample: the grid's next slot, or earlier for a demanded full sample."""
        slot = self.start + self.k * self.interval
        if self.full_pending:
            return min(slot, self.last_full + self.interval)
        return slot

    def asked(self, kinds: set[bytes], now: float) -> None:
        if L.DEMAND_FULL in kinds:
            self.full_pending = True
        if L.DEMAND_SCAN in kinds:
            self.scan_until = now + 2 * self.interval + 1.0  # a viewer asks every interval


def main(argv: list[str] | None = None) -> int:
    names = collector_names()
    parser = build_parser(names)
    args, leftover = parser.parse_known_args(argv)
    for argument in leftover:
        negated = re.fullmatch(r"--no-collector\.([A-Za-z0-9_]+)", argument)
        if negated and switches.accepts_negated(negated[1]):
            continue  # a node_exporter collector this publisher does not have is off: as asked
        parser.error(switches.refusal(argument, names) or f"unrecognized arguments: {' '.join(leftover)}")
    args.enabled = switches.enabled(args, names)
    args.collector_options = switches.options(args)
    args.filters = filters_of(parser, args)
    resolve_segment_name(parser, args)
    if args.history is None:
        args.history = default_history(args.interval)
    setup_logging(args)
    try:
        return run(args)
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

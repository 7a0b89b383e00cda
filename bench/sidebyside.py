"""``python -m bench.sidebyside CHECKOUT [CHECKOUT ...]``: deployments of several checkouts, side by side.

Each CHECKOUT is a directory with its own ``.venv`` (``.`` for this one; an earlier commit: ``git clone``,
``git checkout REV``, ``make test``'s venv), optionally followed by ``::ARGS`` for its publisher
(``.::--top 0``).  Each gets a publisher at 1 s and an shm-exporter, with their defaults; ``--node`` adds
Debian's node_exporter.  Every target is scraped alike, at Q10's phases (``--scrapers`` every ``--period``
seconds, keep-alive connections), and after ``--warmup`` the CPU of every process over ``--seconds`` is read
from the scheduler (``common.cpu_seconds``).  One table: ms of CPU per second of each process, and their sum.

It is the way to compare a change with the code before it: two runs of Q10 minutes apart differ by more
than most changes do, the same window does not.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Lab, cpu_seconds
from bench.q10_deployment import Scraper


def checkout_python(checkout: str) -> str:
    python = Path(checkout).resolve() / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{checkout}: no .venv/bin/python (make a venv there: make test)")
    return str(python)


def run(args: argparse.Namespace, lab: Lab) -> list[tuple[str, float, float]]:
    """(what, publisher ms/s, exporter ms/s) per checkout, then node_exporter's (exporter 0)."""
    targets = []  # (what, processes measured, port scraped)
    for spec in args.checkouts:
        checkout, _, extra = spec.partition("::")
        python = checkout_python(checkout)
        pub = lab.publisher(1.0, "side", *shlex.split(extra), python=python)
        exp = lab.shm_exporter(pub.name, python=python)
        targets.append((spec, (pub, exp), exp.port))
    if args.node:
        node = lab.node_exporter(("defaults",), "node_exporter-side")
        if node is None:
            raise SystemExit("node_exporter is not installed (Debian's prometheus-node-exporter)")
        targets.append(("node_exporter", (node,), node.port))
    start = time.monotonic()
    until = start + args.warmup + args.seconds
    threads = []
    for i in range(args.scrapers):
        first = start + (args.period * (0.13 + 0.61 * i)) % args.period  # Q10's phases
        threads += [Scraper(port, args.period, first, until, None) for _, _, port in targets]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    before = [[cpu_seconds(p.pid) for p in procs] for _, procs, _ in targets]
    began = time.monotonic()
    time.sleep(max(0.0, until - time.monotonic()))
    after = [[cpu_seconds(p.pid) for p in procs] for _, procs, _ in targets]
    window = time.monotonic() - began
    for t in threads:
        t.join(30)
    errors = [e for t in threads for e in t.errors]
    if errors:
        raise SystemExit(f"scrapes failed: {errors[:3]}")
    rows = []
    for (what, _, _), b, a in zip(targets, before, after):
        ms = [1000 * (y - x) / window for x, y in zip(b, a)]
        rows.append((what, ms[0], ms[1] if len(ms) > 1 else 0.0))
    return rows


def checkouts_parser(prog: str, doc: str, seconds: float, warmup: float) -> argparse.ArgumentParser:
    """The command line every side-by-side tool shares: the checkouts, the window and its warm-up."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", metavar="CHECKOUT[::ARGS]")
    parser.add_argument("--seconds", type=float, default=seconds, help=f"the window measured (default {seconds:g})")
    parser.add_argument("--warmup", type=float, default=warmup, help=f"before the window (default {warmup:g})")
    return parser


def in_lab(run: Callable[[argparse.Namespace, Lab], list], args: argparse.Namespace) -> list:
    """``run(args, lab)`` in a lab of its own, whose cleanup report goes to stderr whatever happens."""
    lab = Lab()
    try:
        return run(args, lab)
    finally:
        print(lab.close(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = checkouts_parser("python -m bench.sidebyside", __doc__, 180.0, 30.0)
    parser.add_argument("--scrapers", type=int, default=2, help="scrapers, each on every target (default 2)")
    parser.add_argument("--period", type=float, default=15.0, help="seconds between a scraper's scrapes")
    parser.add_argument("--node", action="store_true", help="node_exporter too, scraped alike")
    args = parser.parse_args(argv)
    rows = in_lab(run, args)
    print(f"{args.scrapers} scraper(s) every {args.period:g} s, {args.seconds:g} s after {args.warmup:g} s, "
          "ms of CPU per second (schedstat)")
    print("| checkout | publisher | exporter | total |\n|---|---:|---:|---:|")
    for what, publisher, exporter in rows:
        print(f"| {what} | {publisher:.3f} | {exporter:.3f} | {publisher + exporter:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

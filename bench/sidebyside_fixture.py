"""``python -m bench.sidebyside_fixture CHECKOUT [CHECKOUT ...]``: Q9's publisher of several checkouts, side by side.

Each CHECKOUT (a directory with its own ``.venv``, ``.`` for this one; ``::ARGS`` adds publisher options, as in
``bench.sidebyside``) gets an shm-publisher at 10 Hz with ``--always-full`` on node_exporter's fixture tree,
unpacked and flagged as Q9 does (the script's flags, as this checkout splits them).  They run at the same time;
after ``--warmup``, each one's CPU over ``--seconds`` (``common.cpu_seconds``: schedstat) is divided by the
samples it wrote (its ``seq``).  One table: µs of CPU per sample.

Q9's ratio moves with its peer's window (node_exporter's scrape of the tree took 17-24 ms in one afternoon);
two checkouts measured in one window share it.  Run it a few times, swapping the order: the same two
checkouts measured 15 to 29 % apart in four runs on the 2-core test machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from bench.common import Lab, cpu_seconds, wait_running
from bench.q9_fixture import RATE, fixture_harness, segment_seq
from bench.sidebyside import checkout_python, checkouts_parser, in_lab


def run(args: argparse.Namespace, lab: Lab) -> list[tuple[str, float, int]]:
    """(checkout, µs of CPU per sample, samples) for each checkout."""
    from shm_metrics.publisher.collectors import collector_names

    harness = fixture_harness()
    root = harness.unpack(lab.tmp / "node-e2e")
    flags, _, _ = harness.split_flags(collector_names())
    pubs = []
    for spec in args.checkouts:
        checkout, _, extra = spec.partition("::")
        name = lab.segment_name("sidefix")
        pub = lab.start([checkout_python(checkout), "-m", "shm_metrics.publisher", "--name", name, "--interval",
                         str(1 / RATE), "--always-full", *flags, *shlex.split(extra)], f"fixture-{spec}", cwd=root)
        pub.name = name
        wait_running(name, pub)
        pubs.append((spec, pub))
    time.sleep(args.warmup)
    before = [(cpu_seconds(p.pid), segment_seq(p.name)) for _, p in pubs]
    time.sleep(args.seconds)
    after = [(cpu_seconds(p.pid), segment_seq(p.name)) for _, p in pubs]
    rows = []
    for (spec, _), (c0, s0), (c1, s1) in zip(pubs, before, after):
        samples = (s1 - s0) // 2
        rows.append((spec, 1e6 * (c1 - c0) / samples if samples else float("nan"), samples))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = checkouts_parser("python -m bench.sidebyside_fixture", __doc__, 30.0, 3.0).parse_args(argv)
    rows = in_lab(run, args)
    print(f"shm-publisher at {RATE:g} Hz --always-full on node_exporter's fixture tree, {args.seconds:g} s after "
          f"{args.warmup:g} s: µs of CPU per sample (schedstat)")
    print("| checkout | µs per sample | samples |\n|---|---:|---:|")
    for what, per_sample, samples in rows:
        print(f"| {what} | {per_sample:.0f} | {samples} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

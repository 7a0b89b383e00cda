"""``python -m bench [--quick] [--only 1,2,...] [--out FILE]``: run the benchmark, print one table per question."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BIN, Config, Lab, Shared

QUESTIONS = {1: "q1_read", 2: "q2_delivery", 3: "q3_cli", 4: "q4_publisher", 5: "q5_contention", 6: "q6_exporter",
             7: "q7_wake", 8: "q8_top", 9: "q9_fixture", 10: "q10_deployment"}


def _questions(text: str) -> list[int]:
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected question numbers like 1,3,6") from None
    if not chosen or any(q not in QUESTIONS for q in chosen):
        raise argparse.ArgumentTypeError(f"{text!r}: questions are 1..{len(QUESTIONS)}")
    return chosen


def _host() -> str:
    try:
        node = subprocess.run(["prometheus-node-exporter", "--version"], capture_output=True, text=True,
                              timeout=10)
        node = (node.stdout + node.stderr).strip().split("\n", 1)[0] or "?"
    except (OSError, subprocess.SubprocessError):
        node = "not installed"
    procs = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
    from importlib.metadata import version

    import posix_ipc
    import psutil

    return (f"host: {os.cpu_count()} CPUs, Linux {platform.release()}, {procs} processes; "
            f"Python {platform.python_version()} ({BIN.parent}); psutil {psutil.__version__}, "
            f"posix_ipc {posix_ipc.VERSION}, prometheus_client {version('prometheus_client')}; {node}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("--quick", action="store_true", help="a few seconds in all: proves every table still comes out")
    ap.add_argument("--only", type=_questions, default=list(QUESTIONS), metavar="N,N",
                    help=f"run only these questions (1-{len(QUESTIONS)})")
    ap.add_argument("--out", type=Path, help="also write the tables to this file")
    args = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: everything is stopped

    signal.signal(signal.SIGTERM, on_term)
    cfg = Config(quick=args.quick)
    started = time.monotonic()
    lab = Lab()
    shared = Shared(lab)
    out: list[str] = [f"# shm-metrics benchmark ({'quick' if cfg.quick else 'full'} run, "
                      f"{time.strftime('%Y-%m-%d %H:%M')})\n", _host() + "\n"]
    print("\n".join(out), flush=True)
    failed = False
    try:
        for number in args.only:
            module = importlib.import_module(f"bench.{QUESTIONS[number]}")
            t0 = time.monotonic()
            table = module.run(cfg, shared)
            text = table.render()
            text += f"\n_Q{number} took {time.monotonic() - t0:.0f} s._\n"
            out.append(text)
            print(text, flush=True)
    except BaseException:
        failed = True
        raise
    finally:
        summary = lab.close()
        print(f"bench: PIDs started: {' '.join(map(str, lab.pids))}", file=sys.stderr, flush=True)
        tail = f"{summary}\ntotal {time.monotonic() - started:.0f} s"
        print(tail, flush=True)
        out.append(tail + "\n")
        if args.out and not failed:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("\n".join(out))
    return 0 if "cleanup: clean" in summary else 1


if __name__ == "__main__":
    sys.exit(main())

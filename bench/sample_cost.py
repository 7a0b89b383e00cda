"""Cost of one sample per metric family, and of one snapshot read.

    python bench/sample_cost.py [--rounds N]

Medians over N rounds, measured in this run; a full benchmark with peers is
`make bench`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shm_layout as L  # noqa: E402
from publisher.sampler import Sampler, time_families  # noqa: E402
from readers import Reader  # noqa: E402


def median_us(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()

    sampler = Sampler()
    print("| family | µs per call (median) |\n|---|---:|")
    costs = time_families(sampler, args.rounds)
    for family, seconds in costs.items():
        print(f"| {family} | {seconds * 1e6:.1f} |")
    print(f"| **whole sample** | {median_us(sampler.sample, args.rounds):.1f} |")
    sampler.close()

    name = f"/bench-cost-{uuid.uuid4().hex[:8]}"
    pub = subprocess.Popen([sys.executable, "-m", "publisher", "--name", name, "--interval", "0.5"])
    try:
        while True:
            try:
                reader = Reader(name)
                if reader.seq:
                    break
                reader.close()
            except Exception:
                pass
            time.sleep(0.05)
        copy = bytes(reader._mm)
        offset = reader.layout.offsets[0]
        bare = L.SCALARS.struct.unpack_from
        print("\n| read | µs (median) |\n|---|---:|")
        print(f"| bare struct.unpack_from of the scalars from a bytes copy | "
              f"{median_us(lambda: bare(copy, offset), args.rounds * 10):.2f} |")
        print(f"| Reader.read(arrays=False): validated, seqlock-consistent scalars | "
              f"{median_us(lambda: reader.read(arrays=False), args.rounds * 10):.2f} |")
        print(f"| Reader.read(): scalars and every array | "
              f"{median_us(reader.read, args.rounds * 10):.2f} |")
        print(f"| Reader.read_field('procs_total') | "
              f"{median_us(lambda: reader.read_field('procs_total'), args.rounds * 10):.2f} |")
        reader.close()
    finally:
        pub.terminate()
        pub.wait()


if __name__ == "__main__":
    main()

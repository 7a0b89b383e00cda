"""Q3. The one-shot CLI as a whole process, against a bare interpreter and the shell pipeline it replaces.

``shm-read --once procs_total`` is run the way users run it: the console
script of the venv ``make bench`` uses.  Its peer is ``python -c pass`` from
the same venv, so both start the same interpreter with the same ``site``.
That venv has the project installed editable: setuptools' editable finder
(an ``import`` line in a ``.pth`` file, which imports pathlib and
importlib.util) runs at every start of *every* Python of that venv, the bare
one included.  A regular (non-editable) install has no such line; the
``python -S`` row (no site at all) shows what site and that finder cost.

Bytecode: the benchmark runs these commands with bytecode caching on (as an
installed package has its .pyc files), whatever PYTHONDONTWRITEBYTECODE says
in the caller's environment; a warm-up run writes the caches.  Without them
every start would recompile the project's modules, which is not what users
get.

Each round runs every command once, in rotating order; the figure is the
wall time from spawn to exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.common import BIN, ROOT, Config, Shared, Table, alternate, median, ms, paired_ratio, x

LIMIT = 1.5


def _package_root() -> str:
    """A directory whose ``shm_metrics`` is the repository: the import package without any finder."""
    import atexit
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="shm-metrics-bench-")
    os.symlink(ROOT, os.path.join(top, "shm_metrics"))
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    return top


def run(cfg: Config, shared: Shared) -> Table:
    name = shared.publisher.name
    package_root = _package_root()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    shm_read = str(BIN / "shm-read") if (BIN / "shm-read").exists() else None
    commands = {
        "bare": ([sys.executable, "-c", "pass"], "`python -c pass` (same venv: site and the editable finder)"),
        "shm-read": ([shm_read, "--once", "--name", name, "procs_total"] if shm_read else
                     [sys.executable, "-m", "shm_metrics.readers", "--once", "--name", name, "procs_total"],
                     "`shm-read --once procs_total`" + ("" if shm_read else " (as python -m shm_metrics.readers)")),
        "ps": (["sh", "-c", "ps axh | wc -l"], "`ps axh | wc -l`"),
        "nosite": ([sys.executable, "-S", "-c", "pass"], "`python -S -c pass` (no site, no .pth files)"),
        # What the console script runs, without site: as if installed without the editable finder.
        "nosite-read": ([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {package_root!r}); "
                         "from shm_metrics.readers.cli import main; "
                         f"sys.exit(main(['--once', '--name', {name!r}, 'procs_total']))"],
                        "the same `shm_metrics.readers.cli.main` under `python -S` (no editable finder)"),
    }

    def once(argv: list[str]) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env)
        took = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        return took

    for argv, _ in commands.values():  # warm-up: page cache, and the bytecode caches get written
        once(argv)
        once(argv)
    answer = subprocess.run(commands["shm-read"][0], capture_output=True, text=True, env=env).stdout.strip()
    assert answer.isdigit(), f"shm-read printed {answer!r}"

    t = alternate({k: (lambda argv=argv: once(argv)) for k, (argv, _) in commands.items()}, cfg.pick(41, 3))
    med = {k: median(v) for k, v in t.items()}
    ratio = {k: paired_ratio(v, t["bare"]) for k, v in t.items()}
    table = Table(3, "One-shot CLI: a whole process, spawn to exit", ["command", "ms median", "x python -c pass"])
    for key, (_, label) in commands.items():
        table.add(label, ms(med[key]), "1 (peer)" if key == "bare" else x(ratio[key]))
    table.notes.append(f"{len(t['bare'])} alternating rounds; ratio = median of per-round ratios. Interpreter: "
                       f"{sys.executable}; `shm-read` printed {answer} (processes). The venv's editable install "
                       f"puts setuptools' finder on every start (both Python rows pay it); bytecode caching on. "
                       f"Without site (no finder, as close to a regular install as one venv gets), shm-read's "
                       f"code is {x(paired_ratio(t['nosite-read'], t['nosite']))} `python -S -c pass`.")
    table.target(f"shm-read {x(ratio['shm-read'])} the bare interpreter (<= {LIMIT}x)", ratio["shm-read"] <= LIMIT)
    return table

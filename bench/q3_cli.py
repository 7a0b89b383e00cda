"""Q3. The one-shot CLI as users install it, against a bare interpreter and the shell pipeline it replaces.

Users install a wheel, not an editable checkout.  So the benchmark builds the
wheel of this repository (``pip wheel``), makes a fresh venv (``python -m venv
--without-pip``) and installs the wheel into it with the benchmark venv's pip
(``pip --python NEWVENV install --no-deps --no-index``): the console scripts
are the ones that pip writes.  The project's dependencies are reachable
through a ``.pth`` line naming the benchmark venv's site-packages (a path
entry only: the ``.pth`` files there, the editable finder among them, are not
run); the one-shot path imports none of them.  The peer is ``python -c pass``
of that same venv: the same interpreter, the same ``site``.

The wrapper pip writes: since pypa/pip#13166 (2025) it no longer starts with
``import re``; older pips' wrapper does, and ``re`` (with enum, functools...)
is ~10 ms that ``shm-read --once`` never needs.  A packager cannot change the
wrapper the user's installer writes, so the row "older pip's wrapper" runs
that very template from the same venv to show what it costs.

For comparison, the editable ``.venv`` that ``make bench`` runs in: its ``.pth``
line imports setuptools' editable finder (pathlib, re, importlib.util) at every
start of every Python of that venv, ~15 ms, which is why Q3 no longer measures
there.

Bytecode: caching on (as an installed package has its .pyc files), whatever
PYTHONDONTWRITEBYTECODE says; a warm-up run writes the caches.  Each round runs
every command once, in rotating order; the figure is the wall time from spawn
to exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from bench.common import BIN, ROOT, Config, Shared, Table, alternate, median, ms, paired_ratio, x

LIMIT = 1.5
# distlib's console-script template as pip wrote it before pypa/pip#13166.
OLD_PIP_WRAPPER = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from shm_metrics.readers.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def _setuptools_recent_enough() -> bool:
    """pyproject asks for setuptools>=77; with it in this venv the wheel builds offline (no isolation)."""
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:  # not installed, or an odd version string
        return False


# What a build must not see: the checkout's own build products, caches and environments.
NOT_SOURCE = ("build", "dist", "*.egg-info", ".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
              "results")


def source_copy(target: Path) -> Path:
    """The repository's files, copied to ``target`` for building: pip builds in the source tree, and a
    build there would leave build/ behind in the checkout, whose stale files a later wheel could pick up."""
    import shutil

    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    return target


def installed_venv(directory: Path) -> Path:
    """A fresh venv in ``directory`` with the wheel of this repository installed as pip installs it."""
    wheels = directory / "wheel"
    source = source_copy(directory / "source")
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "--wheel-dir", str(wheels),
             *(["--no-build-isolation"] if _setuptools_recent_enough() else [])]  # else pip fetches setuptools
    subprocess.run(build, check=True, capture_output=True, cwd=directory)
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("shm_metrics-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies (psutil, rich, ...) from the benchmark's venv: a plain path entry, appended after
    # this venv's own site-packages, so its shm_metrics is the one imported.
    Path(site, "bench-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (venv / "bin" / "shm-read-old-pip").write_text(OLD_PIP_WRAPPER.format(python=python))
    (venv / "bin" / "shm-read-old-pip").chmod(0o755)
    return venv


def run(cfg: Config, shared: Shared) -> Table:
    import atexit
    import shutil
    import tempfile

    name = shared.publisher.name
    top = Path(tempfile.mkdtemp(prefix="shm-metrics-bench-q3-"))
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    venv = installed_venv(top)
    python, shm_read = str(venv / "bin" / "python"), str(venv / "bin" / "shm-read")
    wrapper = Path(shm_read).read_text()
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                                 text=True).stdout.split()[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    args = ["--once", "--name", name, "procs_total"]
    commands = {
        "bare": ([python, "-c", "pass"], "`python -c pass` (the wheel's venv)"),
        "shm-read": ([shm_read, *args], f"`shm-read --once procs_total` (installed from the wheel by pip "
                                        f"{pip_version})"),
        "family": ([shm_read, "--once", "--name", name, "node_load1"],
                   "`shm-read --once node_load1` (a node_exporter family: the catalog and one family decoded)"),
        "old-pip": ([str(venv / "bin" / "shm-read-old-pip"), *args],
                    "the same with older pips' wrapper (`import re` first)"),
        "ps": (["sh", "-c", "ps axh | wc -l"], "`ps axh | wc -l`"),
        "editable-bare": ([sys.executable, "-c", "pass"], "`python -c pass` of the editable `.venv` (its finder)"),
    }
    if (BIN / "shm-read").exists():
        commands["editable"] = ([str(BIN / "shm-read"), *args], "`shm-read --once procs_total` of the editable "
                                                                  "`.venv`")

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
    load = subprocess.run(commands["family"][0], capture_output=True, text=True, env=env).stdout.strip()
    assert float(load) >= 0, f"shm-read printed {load!r} for node_load1"
    where = subprocess.run([python, "-c", "import shm_metrics; print(shm_metrics.__file__)"], capture_output=True,
                           text=True, env=env).stdout.strip()
    assert where.startswith(str(venv)), f"the wheel's venv imports shm_metrics from {where}"

    t = alternate({k: (lambda argv=argv: once(argv)) for k, (argv, _) in commands.items()}, cfg.pick(41, 3))
    med = {k: median(v) for k, v in t.items()}
    ratio = {k: paired_ratio(v, t["bare"]) for k, v in t.items()}
    table = Table(3, "One-shot CLI: a whole process, spawn to exit", ["command", "ms median", "x python -c pass"])
    for key, (_, label) in commands.items():
        table.add(label, ms(med[key]), "1 (peer)" if key == "bare" else x(ratio[key]))
    imports_re = "import re" in wrapper
    table.notes.append(
        f"{len(t['bare'])} alternating rounds; ratio = median of per-round ratios against the wheel venv's "
        f"`python -c pass`. The wheel of this repository was built with pip wheel and installed into a fresh venv "
        f"({top}/venv, removed afterwards) with `pip install --no-deps --no-index`; shm_metrics imported from "
        f"there; `shm-read` printed {answer} (processes). Its wrapper, as pip {pip_version} wrote it, "
        f"{'imports' if imports_re else 'does not import'} re. Bytecode caching on. The editable `.venv`'s rows "
        f"pay setuptools' finder at start: its shm-read is "
        + (f"{x(paired_ratio(t['editable'], t['editable-bare']))} its own `python -c pass`." if "editable" in t
           else "not installed."))
    table.target(f"shm-read {x(ratio['shm-read'])} the bare interpreter of its venv (<= {LIMIT}x)",
                 ratio["shm-read"] <= LIMIT)
    table.target(f"shm-read --once node_load1 {x(ratio['family'])} the bare interpreter (<= {LIMIT}x)",
                 ratio["family"] <= LIMIT)
    return table

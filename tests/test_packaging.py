"""The wheel as users install it: built without warnings, one top-level name, the licence, three working commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
# Built from a copy (pip builds in the source tree: a build in the checkout would leave build/ in it).
NOT_SOURCE = ("build", "dist", "*.egg-info", ".venv", "venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache",
              "results", "*.so")


def test_the_wheel_builds_cleanly_installs_one_package_and_its_commands_work(tmp_path, name, start_publisher):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # else setuptools says so
    had_build_dir = (ROOT / "build").exists()
    source = shutil.copytree(ROOT, tmp_path / "source", ignore=shutil.ignore_patterns(*NOT_SOURCE))  # as bench
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-v", "--wheel-dir",
                            str(tmp_path / "wheel")], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr
    warnings = [line for line in (build.stdout + build.stderr).splitlines()
                if re.search(r"warning|deprecat", line, re.I) and "pip" not in line.lower()]
    assert not warnings, warnings
    (wheel,) = (tmp_path / "wheel").glob("shm_metrics-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {n.split("/")[0] for n in names} == {"shm_metrics", "-".join(wheel.name.split("-")[:2]) + ".dist-info"}
    # The grid samples' C reader of numbers (publisher/_scan.c) is compiled in: a platform wheel.
    assert any(n.startswith("shm_metrics/publisher/_scan.") and n.endswith(".so") for n in names), names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert (ROOT / "build").exists() == had_build_dir, "the build must not write into the checkout"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, timeout=300)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies from the test's own environment, as a plain path entry after the venv's own packages.
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    for command in ("shm-publisher", "shm-read", "shm-exporter"):
        out = subprocess.run([str(venv / "bin" / command), "--version"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith(command), (command, out.stdout, out.stderr)
    start_publisher(name, "--interval", "0.2")
    where = subprocess.run([str(python), "-c", "import shm_metrics; print(shm_metrics.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where
    fast = subprocess.run([str(python), "-c", "from shm_metrics.publisher.collectors import numbers as n; "
                           "print(n.AVAILABLE, n._scan.__file__)"], capture_output=True, text=True, check=True,
                          cwd=tmp_path).stdout
    assert fast.startswith(f"True {venv}"), fast
    out = wait_for(lambda: (r := subprocess.run([str(venv / "bin" / "shm-read"), "--name", name, "--once", "--json",
                                                 "procs_total", "rates"], capture_output=True, text=True,
                                                timeout=60)).returncode == 0 and json.loads(r.stdout)["rates"] and r,
                   what="shm-read from the wheel with rates")
    assert json.loads(out.stdout)["procs_total"] > 0

"""The C reader in examples/c, written from docs/LAYOUT.md alone, agrees with shm-read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_reader

SOURCE = Path(__file__).resolve().parent.parent / "examples" / "c" / "shm_read.c"


@pytest.fixture(scope="module")
def c_reader(tmp_path_factory) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (Debian package gcc)")
    binary = tmp_path_factory.mktemp("c") / "shm_read"
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE)], check=True)
    return str(binary)


def test_c_reader_prints_what_shm_read_prints(c_reader, name, start_publisher):
    # A slow publisher: both readers see the same sample (the count can change between samples).
    pub = start_publisher(name, "--interval", "5")
    ours = run_reader("--name", name, "--once", "procs_total")
    theirs = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout.strip() == ours.stdout.strip()
    assert pub.proc.poll() is None


def test_c_reader_exit_codes(c_reader, name):
    missing = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10)
    assert missing.returncode == 3 and "no segment" in missing.stderr
    bad = subprocess.run([c_reader, "bad/name"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2
    path = f"/dev/shm/{name[1:]}"
    with open(path, "wb") as f:
        f.write(os.urandom(8192))
    os.chmod(path, 0o644)
    try:
        corrupt = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10)
    finally:
        os.unlink(path)
    assert corrupt.returncode == 4 and "magic" in corrupt.stderr


def test_c_reader_finds_a_family_through_the_catalog(c_reader, name, start_publisher):
    # The C reader knows no family: it looks the name up in the segment's catalog, as docs/LAYOUT.md says.
    start_publisher(name, "--interval", "5")
    families = json.loads(run_reader("--name", name, "--once", "--json").stdout)["families"]
    for family in ("node_load1", "node_cpu_seconds_total", "node_uname_info", "node_filesystem_size_bytes"):
        out = subprocess.run([c_reader, name, family], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        fam = families[family]
        expected = {(family + ("{" + ",".join(f'{k}="{v}"' for k, v in s["labels"].items()) + "}"
                               if s["labels"] else ""), s["value"]) for s in fam["series"]}
        got = {(line.rpartition(" ")[0], float(line.rpartition(" ")[2])) for line in out.stdout.splitlines()}
        assert got == expected and got, family
    missing = subprocess.run([c_reader, name, "node_no_such_family"], capture_output=True, text=True, timeout=10)
    assert missing.returncode == 4 and "catalog" in missing.stderr

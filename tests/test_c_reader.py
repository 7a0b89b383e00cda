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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a file owned by another user")
def test_c_reader_trusts_only_root_itself_or_the_publisher_user(c_reader, name, make_segment_file,
                                                                 real_segment_bytes):
    from test_hardening import fresh

    path = make_segment_file(fresh(real_segment_bytes, procs_total=31337))
    os.chown(path, 65534, 65534)
    planted = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10)
    assert planted.returncode == 4 and "untrusted" in planted.stderr and not planted.stdout
    env = dict(os.environ, SHM_METRICS_PUBLISHER_USER="nobody")
    named = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10, env=env)
    assert (named.returncode, named.stdout) == (0, "31337\n"), named.stderr


def test_c_reader_sees_a_dead_publisher_and_lying_values(c_reader, name, make_segment_file, real_segment_bytes):
    from test_hardening import altered, capacity, fresh

    data = fresh(real_segment_bytes)
    make_segment_file(data, live=False)  # nobody holds the liveness lock: the publisher died
    dead = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10)
    assert dead.returncode == 5 and "not running" in dead.stderr
    dead_family = subprocess.run([c_reader, name, "node_load1"], capture_output=True, text=True, timeout=10)
    assert dead_family.returncode == 5 and "not running" in dead_family.stderr  # the same rule for families
    os.unlink(f"/dev/shm/{name[1:]}")
    for lie in ({"header": {"interval_seconds": 0.0}}, {"header": {"sample_time": float("nan")}},
                {"counts": {"net": capacity(data, "net") + 1}}):
        path = f"/dev/shm/{name[1:]}"
        with open(path, "wb") as f:
            f.write(altered(data, **lie))
        os.chmod(path, 0o644)
        try:
            lying = subprocess.run([c_reader, name], capture_output=True, text=True, timeout=10)
        finally:
            os.unlink(path)
        assert lying.returncode == 4, (lie, lying.stderr)


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

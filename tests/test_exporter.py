"""shm-exporter in process: the collector, the cached exposition, the registry, the command line."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess

import pytest
from conftest import wait_for
from exporter_util import EXPORTER, Exposition
from prometheus_client import generate_latest

from shm_metrics.readers.exporter.cli import listen_address
from shm_metrics.readers.exporter.exposition import build
from shm_metrics.readers.exporter.server import accepts_gzip
from shm_metrics.readers.exporter.source import SegmentSource

# Lines whose values move between two renders of the same sample.
_VOLATILE = ("shm_metrics_sample_age_seconds ", "process_")


def _stable(text: bytes) -> list[str]:
    """The lines that do not move, each sample's number read as a float: the node_* block writes numbers as
    Go does (1024), generate_latest as Python's repr (1024.0); the same value either way."""
    out = []
    for line in text.decode().splitlines():
        if line.startswith(_VOLATILE):
            continue
        if not line.startswith("#"):
            series, _, number = line.rpartition(" ")
            line = f"{series} {float(number)!r}"
        out.append(line)
    return out


def test_cached_exposition_equals_generate_latest_of_the_registry(name, start_publisher):
    start_publisher(name, "--interval", "5")
    source = SegmentSource(name)
    registry, exposition = build(source)
    try:
        for _ in range(5):
            seq = source.read().snapshot.seq
            first, second, reference = exposition.render(), exposition.render(), generate_latest(registry)
            if source.read().snapshot.seq == seq:
                break
        assert _stable(first) == _stable(second) == _stable(reference)
        assert exposition.renders == 1  # the node_* block was rendered once for this sample
        names = {f.name for f in source.read().snapshot.families}  # every family with series, rendered generically
        assert "node_uname_info" in names and "node_memory_MemTotal_bytes" in names
        assert Exposition(reference.decode()).names("node_") == names
        registered = {m.name for m in registry.collect()}
        assert {"shm_metrics_up", "process_cpu_seconds"} <= registered  # ours and the process collector only
        assert not [n for n in registered if n.startswith(("python_", "go_"))]
    finally:
        source.close()


def test_staleness_is_checked_on_every_scrape_despite_the_cache(name, start_publisher):
    pub = start_publisher(name, "--interval", "0.2")
    source = SegmentSource(name)
    _, exposition = build(source, process_metrics=False)
    try:
        wait_for(lambda: b"shm_metrics_up 1.0" in exposition.render(), what="up 1")
        os.kill(pub.pid, signal.SIGSTOP)
        try:
            text = wait_for(lambda: (t := exposition.render()) and b"shm_metrics_up 0.0" in t and t,
                            what="up 0 while SIGSTOPped")
            assert b"\nnode_" not in text and b"\nprocess_" not in text
        finally:
            os.kill(pub.pid, signal.SIGCONT)
        renders = exposition.renders
        wait_for(lambda: b"shm_metrics_up 1.0" in exposition.render(), what="up 1 after SIGCONT")
        assert exposition.renders > renders  # a new sample, a new block
    finally:
        source.close()


def test_listen_address_forms():
    assert listen_address("127.0.0.1:19100") == ("127.0.0.1", 19100)
    assert listen_address(":9100") == ("", 9100)
    assert listen_address("[::1]:0") == ("::1", 0)
    assert listen_address("localhost:80") == ("localhost", 80)
    for bad in ("19100", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", "::1:19100", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            listen_address(bad)


def test_accept_encoding():
    for yes in ("gzip", "gzip, deflate", "deflate, GZIP;q=0.5", "*", "identity, *;q=1"):
        assert accepts_gzip(yes), yes
    for no in ("", "identity", "deflate", "gzip;q=0", "gzip; q=0.0", "br"):
        assert not accepts_gzip(no), no


@pytest.mark.parametrize("args, env, message", [
    (["--listen", "nonsense"], {}, "HOST:PORT"),
    (["--web.listen-address", "127.0.0.1:99999"], {}, "HOST:PORT"),
    (["--name", "bad name!"], {}, "invalid segment name"),
    ([], {"SHM_METRICS_NAME": "../etc"}, "invalid segment name"),
    (["--web.telemetry-path", "metrics"], {}, "absolute path"),
    (["--web.telemetry-path", "/"], {}, "absolute path"),
    (["--web.config.file", "/nonexistent/web.yml"], {}, "No such file"),
    (["--bogus"], {}, "unrecognized arguments"),
])
def test_bad_arguments_exit_2_with_one_line(args, env, message):
    out = subprocess.run([*EXPORTER, *args], capture_output=True, text=True, timeout=20,
                         env={**os.environ, **env})
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_version_and_help():
    out = subprocess.run([*EXPORTER, "--version"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout.startswith("shm-exporter ")
    out = subprocess.run([*EXPORTER, "--help"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0
    for flag in ("--web.listen-address", "--listen", "--web.telemetry-path", "--web.config.file", "--name"):
        assert flag in out.stdout

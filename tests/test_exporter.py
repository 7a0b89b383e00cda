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
from shm_metrics.readers.exporter.render import go_float
from shm_metrics.readers.exporter.server import accepts_gzip
from shm_metrics.readers.exporter.source import SegmentSource

# Lines whose values move between two renders of the same sample.
_VOLATILE = ("shm_metrics_sample_age_seconds ", "process_",
             'node_scrape_collector_duration_seconds{collector="textfile"}')
# What the renderer adds to the registry's families: the textfile collector (read per scrape, on without a
# directory too) and promhttp's handler metrics.
_RENDERER_ONLY = ("promhttp_", "# HELP promhttp_", "# TYPE promhttp_", "node_textfile_", "# HELP node_textfile_",
                  "# TYPE node_textfile_", 'node_scrape_collector_success{collector="textfile"}')


def _stable(text: bytes) -> list[str]:
    """The lines that do not change between scrapes, values as Go prints them: the exporter prints node_*
    values as node_exporter does (62), generate_latest as prometheus_client does (62.0)."""
    out = []
    for line in text.decode().splitlines():
        if line.startswith(_VOLATILE):
            continue
        if not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            line = f"{series} {go_float(float(value))}"
        out.append(line)
    return out


def _values_as_floats(lines: list[str]) -> list[tuple[str, float] | str]:
    """Sample lines as (series, value): the exporter writes node_* values as node_exporter does (3),
    generate_latest as prometheus_client does (3.0)."""
    return [line if line.startswith("#") else (line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1]))
            for line in lines]


def test_cached_exposition_equals_generate_latest_of_the_registry_but_for_the_float_format(name, start_publisher):
    start_publisher(name, "--interval", "5")
    source = SegmentSource(name)
    registry, exposition = build(source)
    try:
        for _ in range(5):
            seq = source.read().snapshot.seq
            first, second, reference = exposition.render(), exposition.render(), generate_latest(registry)
            if source.read().snapshot.seq == seq:
                break
        assert _stable(first) == _stable(second)
        assert _values_as_floats([line for line in _stable(first) if not line.startswith(_RENDERER_ONLY)]) == \
            _values_as_floats(_stable(reference))
        assert b"\nnode_load1 " in first and b"\nnode_procs_running " in first
        assert all(not line.endswith(".0") for line in _stable(first) if line.startswith("node_procs_"))  # Go's 2
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
        wait_for(lambda: b"shm_metrics_up 1\n" in exposition.render(), what="up 1")
        os.kill(pub.pid, signal.SIGSTOP)
        try:
            text = wait_for(lambda: (t := exposition.render()) and b"shm_metrics_up 0\n" in t and t,
                            what="up 0 while SIGSTOPped")
            # No node_* series of the segment's; the textfile collector runs in the exporter, at scrape time.
            assert b"\nnode_" not in text.replace(b"\nnode_textfile_scrape_error 0\n", b"\n")
            assert b"\nprocess_" not in text
        finally:
            os.kill(pub.pid, signal.SIGCONT)
        renders = exposition.renders
        wait_for(lambda: b"shm_metrics_up 1\n" in exposition.render(), what="up 1 after SIGCONT")
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


@pytest.mark.parametrize("value, go", [
    (3.0, "3"), (0.0, "0"), (-0.0, "0"), (65536, "65536"), (999999, "999999"), (1e6, "1e+06"),
    (1234567, "1.234567e+06"), (1418183276, "1.418183276e+09"), (0.0001, "0.0001"), (1e-05, "1e-05"),
    (0.000123, "0.000123"), (1.5e-7, "1.5e-07"), (123.456, "123.456"), (-2.5, "-2.5"), (-125000, "-125000"),
    (14036781 / 1000.0 / 1000.0, "14.036781000000001"), (1e21, "1e+21"), (1.5e300, "1.5e+300"),
    (5e-324, "5e-324"), (2.0 ** 63, "9.223372036854776e+18"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"),
    (float("nan"), "NaN"),
])
def test_values_are_written_as_node_exporter_writes_them(value, go):
    # Go's strconv.FormatFloat(v, 'g', -1, 64), as expfmt writes sample values (the strings are Go's output).
    from shm_metrics.readers.exporter.render import go_float

    assert go_float(value) == go


def test_the_short_ways_of_writing_a_value_agree_with_the_long_one():
    """go_float's two short ways (plain decimals in [1e-4, 1e6), whole numbers in [1e6, 1e16)) write what its
    general way writes, over random doubles of every magnitude and the edges of both ranges."""
    import random
    import struct

    from shm_metrics.readers.exporter.render import _go_float_any, go_float

    rng = random.Random(16)
    values = [1e-4, 9.999999999999999e-05, 1e6, 999999.9999999999, 1e16, 9999999999999998.0, -1e6, 1e15 + 1,
              2.0 ** 53, 0.1, -0.0, 100000.0, -999999.0]
    for _ in range(20000):
        values += [float(rng.randint(-10 ** 17, 10 ** 17)) / 10 ** rng.randint(0, 8), float(rng.getrandbits(60)),
                   rng.uniform(-1e7, 1e7), struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]]
    assert [v for v in values if go_float(v) != _go_float_any(v, repr(v))] == []

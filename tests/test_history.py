"""The history ring: a reader started just now sees the last samples, rates and charts at once."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import READER, PtyProcess, run_reader, wait_for

from shm_metrics import shm_layout as L
from shm_metrics.publisher.cli import HISTORY_CAP
from shm_metrics.readers import Reader
from shm_metrics.readers.rates import RATE_KEYS


def samples_written(reader: Reader) -> int:
    return reader.seq // 2


def test_a_reader_started_after_n_samples_sees_their_history(name, start_publisher):
    start_publisher(name, "--interval", "0.05", "--top", "0")
    with Reader(name) as probe:
        wait_for(lambda: samples_written(probe) >= 30, what="30 samples")
    with Reader(name) as reader:  # a new reader: it was not there while they were written
        entries = reader.history()
        seq = reader.seq
    assert len(entries) >= 30
    assert [e["seq"] for e in entries] == list(range(entries[0]["seq"], entries[-1]["seq"] + 1, 2))
    assert entries[0]["seq"] == 2, "nothing lost: the ring is larger than the samples written"
    assert entries[-1]["seq"] <= seq
    times = [e["sample_time"] for e in entries]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(e["procs_total"] > 0 and e["mem_total_bytes"] > 0 for e in entries)
    assert entries[-1]["forks_total"] >= entries[0]["forks_total"]

    out = run_reader("--name", name, "--history", "procs_total", "--json")
    assert out.returncode == 0, out.stderr
    points = json.loads(out.stdout)
    assert isinstance(points, list) and len(points) >= len(entries)
    assert all(set(p) == {"sample_time", "value"} and isinstance(p["value"], int) for p in points)
    assert [p["sample_time"] for p in points] == sorted(p["sample_time"] for p in points)
    assert points[:len(entries)] == [{"sample_time": e["sample_time"], "value": e["procs_total"]} for e in entries]


def test_the_ring_keeps_only_the_newest_samples(name, start_publisher):
    start_publisher(name, "--interval", "0.02", "--history", "8", "--top", "0")
    with Reader(name) as reader:
        wait_for(lambda: samples_written(reader) > 20, what="the ring to wrap")
        entries = reader.history()
        assert reader.capacities["history"] == 8
    assert len(entries) == 8
    assert [e["seq"] for e in entries] == list(range(entries[0]["seq"], entries[0]["seq"] + 16, 2))
    assert entries[0]["seq"] > 2, "the oldest samples were overwritten"


def test_since_limits_the_span(name, start_publisher):
    start_publisher(name, "--interval", "0.05", "--top", "0")
    with Reader(name) as reader:
        wait_for(lambda: samples_written(reader) > 30, what="30 samples")
        recent = reader.history(since=0.5)
        everything = reader.history()
    assert 2 <= len(recent) < len(everything)
    assert recent[-1]["sample_time"] - recent[0]["sample_time"] <= 0.5
    out = run_reader("--name", name, "--history", "load1", "--since", "0.5", "--json")
    assert out.returncode == 0, out.stderr
    points = json.loads(out.stdout)
    assert 2 <= len(points) < len(everything)
    assert points[-1]["sample_time"] - points[0]["sample_time"] <= 0.5


def test_once_shows_rates_from_the_ring_at_once(name, start_publisher):
    start_publisher(name, "--interval", "0.1", "--top", "0")
    with Reader(name) as reader:
        start = samples_written(reader)
        forks = 20
        for _ in range(forks):  # known forks inside the window the rates cover
            subprocess.run(["true"], check=True)
        wait_for(lambda: samples_written(reader) >= start + 12, what="1.2 s of samples")
    out = run_reader("--name", name, "--once", "--json")  # a reader that just started
    assert out.returncode == 0, out.stderr
    rates = json.loads(out.stdout)["rates"]
    assert set(rates) == {"over_seconds", "cpu_percent", *RATE_KEYS}
    assert rates["over_seconds"] >= 1.0
    assert 0.0 <= rates["cpu_percent"] <= 100.0
    assert all(rates[k] >= 0 for k in RATE_KEYS)
    assert rates["ctx_switches_per_second"] > 0 and rates["interrupts_per_second"] > 0

    text = run_reader("--name", name, "--once").stdout
    assert "rates over the last" in text and "forks_per_second" in text

    bare = run_reader("--name", name, "--once", "ctx_switches_per_second")
    assert bare.returncode == 0, bare.stderr
    assert float(bare.stdout) > 0


def test_rates_count_known_forks(name, start_publisher):
    start_publisher(name, "--interval", "0.5", "--top", "0")
    with Reader(name) as reader:
        seq = reader.seq
        wait_for(lambda: reader.seq > seq, what="a fresh sample")  # the forks go after this sample
        seq = reader.seq
        for _ in range(30):
            subprocess.run(["true"], check=True)
        wait_for(lambda: reader.seq > seq, what="the next sample")
        newest = reader.history(limit=2)
    forks = newest[1]["forks_total"] - newest[0]["forks_total"]
    assert forks >= 30  # every `true` is a fork (others may fork too)
    out = run_reader("--name", name, "--history", "forks_per_second", "--json")
    points = json.loads(out.stdout)
    span = newest[1]["sample_time"] - newest[0]["sample_time"]
    match = [p for p in points if p["sample_time"] == newest[1]["sample_time"]]
    assert match and match[0]["value"] == pytest.approx(forks / span)


@pytest.mark.parametrize("args, message", [
    (["--history", "nonsense"], "unknown field"),
    (["--history", "procs_total", "--once"], "no other mode"),
    (["--since", "5"], "--since goes with --history"),
    (["--history", "procs_total", "--since", "-1"], "must be positive"),
])
def test_history_usage_errors_are_one_line(name, args, message):
    out = run_reader("--name", name, *args)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_history_prints_lines_when_piped_and_a_chart_on_a_terminal(name, start_publisher):
    start_publisher(name, "--interval", "0.05", "--top", "0")
    with Reader(name) as reader:
        wait_for(lambda: samples_written(reader) >= 10, what="10 samples")
    out = run_reader("--name", name, "--history", "mem_used_bytes")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) >= 10
    for line in lines:
        stamp, value = line.split()
        assert stamp[4] == "-" and "T" in stamp and int(value) > 0

    chart = PtyProcess([*READER, "--name", name, "--history", "mem_used_bytes"])
    code = chart.wait()
    text = chart.output
    assert code == 0, text[-2000:]
    assert b"samples over" in text
    assert "┌".encode() in text and b"mem_used_bytes on" in text and b"seconds before" in text


def test_a_ring_with_one_sample_holds_just_that_one(name, start_publisher):
    pub = start_publisher(name, "--interval", "3600", "--top", "0")
    with Reader(name) as reader:
        assert reader.publisher_pid == pub.pid
        assert [e["seq"] for e in reader.history()] == [2]  # the first sample only: no unwritten slot shows
        assert reader.history(limit=0) == []
    assert L.DEFAULT_HISTORY * L.HISTORY.size < 1 << 20, "the default ring stays small"


@pytest.mark.parametrize("interval, samples", [("1", 600), ("0.5", 1200), ("0.3", 2000), ("3600", 2),
                                               ("0.01", HISTORY_CAP)])
def test_the_default_ring_holds_ten_minutes_at_any_interval_up_to_its_cap(name, start_publisher, interval,
                                                                          samples):
    start_publisher(name, "--interval", interval, "--top", "0")
    info = json.loads(run_reader("--name", name, "--info", "--json").stdout)
    assert info["capacities"]["history"] == samples
    assert info["history"]["holds_seconds"] == pytest.approx(samples * float(interval))
    text = run_reader("--name", name, "--info").stdout
    assert re.search(rf"^history +{samples} samples, .* at this interval; now \d+ covering ", text, re.M), text
    assert HISTORY_CAP * L.HISTORY.size <= 2 << 20, "the biggest default ring stays small"

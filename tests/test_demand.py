"""Sampling on demand (issue 16): every interval what local readers show, everything else when asked.

Real publishers, a real exporter over HTTP, real sockets; the abuse test floods the demand channel as
another user (nobody), which needs root (skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time

import pytest
from conftest import run_reader, wait_for
from exporter_util import Exporter, scrape

from shm_metrics import shm_layout as L
from shm_metrics.readers.reader import Reader

NOBODY = 65534


def test_scrapes_see_values_sampled_at_most_an_interval_before_they_began(name, start_publisher):
    """node_time_seconds (a family sampled on demand) against each scrape's own start, at random moments."""
    start_publisher(name, "--interval", "1")
    exporter = Exporter(name)
    try:
        for _ in range(6):
            time.sleep(random.uniform(0.0, 2.5))
            began = time.time()
            expo = scrape(f"{exporter.url}/metrics")
            assert expo.value("shm_metrics_up") == 1.0
            sampled = expo.value("node_time_seconds")
            assert began - 1.0 <= sampled <= time.time(), (began, sampled)
    finally:
        exporter.stop()


def test_two_scrapers_close_together_share_one_sample(name, start_publisher):
    start_publisher(name, "--interval", "1")
    exporter = Exporter(name)
    try:
        time.sleep(1.5)  # the first full sample is old: the first scrape asks for one
        first = scrape(f"{exporter.url}/metrics").value("node_time_seconds")
        second = scrape(f"{exporter.url}/metrics").value("node_time_seconds")
        assert first == second
    finally:
        exporter.stop()


def test_local_readers_get_core_values_every_interval_and_the_age_of_the_others(name, start_publisher):
    start_publisher(name, "--interval", "0.2")
    with Reader(name) as reader:
        seen = []
        for snap in reader.follow():
            seen.append(snap)
            if len(seen) == 8:
                break
        times = [s.sample_time for s in seen]
        assert all(0.1 < b - a < 0.5 for a, b in zip(times, times[1:])), times
        last = seen[-1]
        # Core families date from each sample; the others from the last full sample, which nobody asked for.
        assert last.family_time("node_load1") == last.sample_time
        assert last.family_time("node_uname_info") == last.full_sample_time <= seen[0].sample_time
        assert not last.process_states  # the per-process scan runs only when something reads its tables
        fresh = reader.read_fresh(1.0)
        assert fresh.full_sample_time > last.sample_time and fresh.family_time("node_uname_info") > last.sample_time


def test_json_one_shots_ask_for_fresh_families(name, start_publisher):
    start_publisher(name, "--interval", "1")
    time.sleep(2.2)
    began = time.time()
    out = json.loads(run_reader("--name", name, "--once", "--json").stdout)
    assert out["full_sample_time"] >= began - 1.0 and "node_uname_info" in out["families"]
    # Each family says when it was sampled: the on-demand ones at the full sample, the others each interval.
    assert out["families"]["node_uname_info"]["sample_time"] == out["full_sample_time"]
    assert out["families"]["node_load1"]["sample_time"] == out["sample_time"]


def test_the_top_view_asks_for_the_process_scan(name, start_publisher):
    start_publisher(name, "--interval", "0.5")
    with Reader(name) as reader:
        wait_for(lambda: reader.read().seq >= 4, what="a few samples")
        assert not reader.read().top_cpu
    done = run_reader("--name", name, "top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    tables = json.loads(done.stdout)
    assert tables["by_cpu"] and tables["states"]


def test_always_full_samples_everything_every_interval(name, start_publisher):
    start_publisher(name, "--interval", "0.2", "--always-full")
    assert not os.path.exists(L.demand_path(name))
    with Reader(name) as reader:
        wait_for(lambda: reader.read().seq >= 6, what="a few samples")
        snap = reader.read()
        assert snap.full_sample_time == snap.sample_time and snap.process_states


def _flood(path: str, seconds: float) -> subprocess.Popen:
    """Another user sending full-sample demands as fast as it can."""
    code = (f"import os, socket, time\nos.setgid({NOBODY}); os.setuid({NOBODY})\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)\n"
            f"end = time.monotonic() + {seconds}\nn = 0\n"
            "while time.monotonic() < end:\n"
            "    n += 1\n"
            "    try:\n"
            f"        s.sendto(b'f', {path!r})\n"
            "    except OSError:\n"
            "        pass  # full: the publisher reads it at most once between two samples\n"
            "print(n)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the flood as another user (nobody)")
def test_another_user_flooding_the_channel_gets_at_most_one_full_sample_per_interval(name, start_publisher):
    interval = 0.2
    pub = start_publisher(name, "--interval", str(interval))
    flood = _flood(L.demand_path(name), 3.0)
    full_times, samples = set(), set()
    with Reader(name) as reader:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            snap = reader.read()
            full_times.add(snap.full_sample_time)
            samples.add(snap.seq)
            time.sleep(0.01)
    attempts = int(flood.communicate(timeout=30)[0])
    assert attempts > 1000, attempts  # the flood really flooded
    # 3 s at 0.2 s: at most 15 full samples (one per interval) and no extra samples beyond the grid's.
    assert len(full_times) <= 3.0 / interval + 2, len(full_times)
    assert len(samples) <= 3.0 / interval + 3, len(samples)
    assert pub.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a socket as another user (nobody)")
def test_a_socket_planted_by_another_user_is_neither_used_nor_trusted(name, start_publisher):
    path = L.demand_path(name)
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    planted.bind(path)
    os.chown(path, NOBODY, NOBODY)
    try:
        pub = start_publisher(name, "--interval", "0.2")
        with Reader(name) as reader:
            assert not reader.ask()  # not the publisher's: nothing is sent to it
            wait_for(lambda: reader.read().seq >= 4, what="a few samples")
            snap = reader.read()
            assert snap.full_sample_time == snap.sample_time  # no channel: every sample runs everything
        pub.proc.terminate()
        assert "no demand channel" in pub.proc.communicate(timeout=10)[1]
        assert os.stat(path).st_uid == NOBODY  # left untouched
    finally:
        planted.close()
        os.unlink(path)


def test_a_core_collectors_per_device_sysfs_family_is_read_in_full_samples_only(monkeypatch):
    """netdev's receive_nohandler is a sysfs file per interface: read in full samples, repeated in the
    others (and flagged on demand in the catalog, so readers date it from full_sample_time)."""
    from shm_metrics.publisher.collectors.netdev import NOHANDLER, Netdev
    from shm_metrics.publisher.sampler import Sampler

    sampler = Sampler(collectors=[Netdev])
    try:
        assert NOHANDLER.name in sampler.on_demand
        full = sampler.sample(full=True)
        read = full.values(NOHANDLER)
        if not read:
            pytest.skip("no interface with an rx_nohandler file here")
        (net,) = sampler.collectors

        def not_in_a_grid_sample(rows):
            raise AssertionError("a grid sample read the sysfs files")

        monkeypatch.setattr(net, "_read_nohandler", not_in_a_grid_sample)
        grid = sampler.sample(full=False)
        assert grid.values(NOHANDLER) == read and grid.net
    finally:
        sampler.close()


def test_one_shots_and_followers_that_show_the_process_tables_ask_for_the_scan(name, start_publisher):
    """Full samples no longer scan processes: a reader printing the --top tables asks for them (t), a
    one-shot waiting for them, a follower once a second, so its later samples carry them."""
    start_publisher(name, "--interval", "0.2")
    time.sleep(0.6)  # past the first samples: nobody has asked for the scan
    with Reader(name) as reader:
        assert not reader.read().process_states
    once = run_reader("--name", name, "--once", "--json", "process_states", "top_cpu")
    assert once.returncode == 0, once.stderr
    out = json.loads(once.stdout)
    assert out["process_states"] and out["top_cpu"]
    time.sleep(2 * 0.2 + 1.5)  # the one-shot's ask has run out
    follow = run_reader("--name", name, "-f", "--count", "8", "--json", "process_states")
    assert follow.returncode == 0, follow.stderr
    rows = [json.loads(line)["process_states"] for line in follow.stdout.splitlines()]
    assert len(rows) == 8 and rows[-1], rows


def test_a_readers_kept_demand_socket_follows_a_restart_and_never_a_planted_socket(name, start_publisher):
    """A reader connects to the publisher's demand socket once and keeps it; when that publisher stops, its next
    ask looks at the path again: a socket planted there by another user (as root: nobody's) is refused, the
    next publisher's is used, and close() lets the socket go."""
    first = start_publisher(name, "--interval", "0.2")
    fds_before = len(os.listdir("/proc/self/fd"))  # each publisher started holds two pipes: the same count
    reader = Reader(name)
    try:
        assert reader.ask()
        os.unlink(L.demand_path(name))
        assert reader.ask()  # through the kept connection: the path is not looked at again
        first.stop()
        assert not reader.ask()  # its socket closed and the path is gone: nothing to ask
        if os.geteuid() == 0:
            planted = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            planted.bind(L.demand_path(name))
            os.chown(L.demand_path(name), NOBODY, NOBODY)
            try:
                assert not reader.ask()
                planted.setblocking(False)
                with pytest.raises(BlockingIOError):
                    planted.recv(64)  # nothing was sent to it
            finally:
                planted.close()
                os.unlink(L.demand_path(name))
        start_publisher(name, "--interval", "0.2")
        wait_for(lambda: os.path.exists(L.demand_path(name)), what="the new publisher's demand socket")
        assert reader.ask()
    finally:
        reader.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before

"""Wake on publish: followers sleep in the kernel and receive every sample, in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import READER, PtyProcess, run_reader, shm_files, wait_for

from shm_metrics import shm_wake
from shm_metrics.readers import Reader


def cpu_seconds_of(pid: int) -> float:
    """CPU time of a process from the scheduler (ns precision, all threads)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def test_follow_yields_every_sample_in_order_and_sleeps_between_them(name, start_publisher):
    # --always-full: the publisher works as much as before sampling on demand, the yardstick of the CPU check
    pub = start_publisher(name, "--interval", "0.05", "--always-full")
    samples = 60
    with Reader(name) as reader:
        assert reader.wake == "futex"
        seqs = []
        follow = reader.follow(arrays=False)
        seqs.append(next(follow).seq)  # started: from here on every sample must arrive
        cpu0, pub0 = time.process_time(), cpu_seconds_of(pub.pid)
        for snap in follow:
            seqs.append(snap.seq)
            if len(seqs) > samples:
                break
        follower_cpu, publisher_cpu = time.process_time() - cpu0, cpu_seconds_of(pub.pid) - pub0
    assert [b - a for a, b in zip(seqs, seqs[1:])] == [2] * samples, f"missed or repeated samples: {seqs}"
    # Measured here: the follower ~0.15 ms per sample, the publisher ~1.5 ms; the same loop
    # polling every 2.5 ms (the fallback's period at this interval) costs ~0.9 ms per sample.
    assert follower_cpu < 0.25 * publisher_cpu, (follower_cpu, publisher_cpu)


def test_wait_for_sample_returns_at_once_when_seq_already_moved(name, start_publisher):
    start_publisher(name, "--interval", "0.05", "--top", "0")
    with Reader(name) as reader:
        old = reader.seq
        wait_for(lambda: reader.seq > old, what="a new sample")
        os.kill(reader.publisher_pid, signal.SIGSTOP)  # from here on nobody writes or wakes
        try:
            assert reader.wait_for_sample(old, timeout=5.0) is True  # the word differs: no wake needed
            assert reader.wait_for_sample(reader.seq, timeout=0.2) is False  # nothing comes: timeout
        finally:
            os.kill(reader.publisher_pid, signal.SIGCONT)


def test_shm_read_json_follows_every_sample(name, start_publisher):
    start_publisher(name, "--interval", "0.05", "--top", "0")
    out = run_reader("--name", name, "--json", "--count", "40", "seq", "forks_per_second")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    seqs = [row["seq"] for row in rows]
    assert len(seqs) == 40 and all(b - a == 2 for a, b in zip(seqs, seqs[1:])), seqs
    assert all(row["forks_per_second"] is None or row["forks_per_second"] >= 0 for row in rows)


def test_sixteen_waiting_readers_all_receive_every_sample(name, start_publisher):
    start_publisher(name, "--interval", "0.1", "--top", "0")
    procs = [subprocess.Popen([*READER, "--name", name, "--json", "--count", "15", "seq"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(16)]
    try:
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        seqs = [json.loads(line)["seq"] for line in stdout.splitlines()]
        assert len(seqs) == 15 and all(b - a == 2 for a, b in zip(seqs, seqs[1:])), seqs


def test_a_follower_notices_a_publisher_stopping_and_a_killed_one(name, start_publisher):
    pub = start_publisher(name, "--interval", "0.1", "--top", "0")
    follower = subprocess.Popen([*READER, "--name", name, "-f", "seq"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline().strip().isdigit()
        pub.stop(signal.SIGKILL)
        # Nobody wakes the futex now: the bounded wait must notice the dead publisher by itself.
        line = wait_for(lambda: follower.stderr.readline(), timeout=15, what="a warning from the follower")
        assert "stale" in line or "waiting" in line, line
        assert follower.poll() is None, "a follower keeps waiting for a new publisher"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
        follower.stdout.close()
        follower.stderr.close()
    for path in shm_files(name):  # what the SIGKILLed publisher left: segment, semaphore, demand socket
        os.unlink(path)


def test_the_poll_fallback_works_and_info_says_so(name, start_publisher):
    start_publisher(name, "--interval", "0.05", "--top", "0")
    env = dict(os.environ, **{shm_wake.FORCE_POLL_ENV: "poll"})
    info = json.loads(run_reader("--name", name, "--info", "--json", env=env).stdout)
    assert info["wake"].startswith("poll (") and shm_wake.FORCE_POLL_ENV in info["wake"]
    assert json.loads(run_reader("--name", name, "--info", "--json").stdout)["wake"] == "futex"
    out = run_reader("--name", name, "--json", "--count", "10", "seq", env=env)
    assert out.returncode == 0, out.stderr
    seqs = [json.loads(line)["seq"] for line in out.stdout.splitlines()]
    assert len(seqs) == 10 and seqs == sorted(set(seqs))


def test_live_view_redraws_on_new_samples(name, start_publisher):
    start_publisher(name, "--interval", "0.1")
    view = PtyProcess([*READER, "--name", name])
    try:
        view.read_until(b"FILESYSTEM", count=3)  # a frame per sample: three frames
    finally:
        code = view.stop(signal.SIGINT)
    assert code in (0, 130), view.output[-2000:]


def test_a_pread_reader_sleeps_on_the_futex_and_a_truncated_segment_ends_its_wait(name):
    """The exporter's kind of reader (``pread=True``) sleeps on the futex through a mapping of the header's page
    it never reads itself: woken by the publish, and a segment its owner truncated ends the wait with
    IncompatibleSegment, not SIGBUS."""
    import threading

    import pytest
    from synthetic import sample

    from shm_metrics import shm_layout as L
    from shm_metrics.publisher.segment import OwnedSegment
    from shm_metrics.readers.reader import IncompatibleSegment

    segment = OwnedSegment(name, L.Layout.for_capacities(2, 1, 1, 1, history=4, top=2), 0o600, interval=1.0)
    path, size = L.segment_path(name), os.path.getsize(L.segment_path(name))
    try:
        segment.set_state(L.STATE_RUNNING)
        segment.publish(sample(2, 1, 1, 1, 2, 10.0, 1.0), time.time(), 1000.0, 0.01, 0)
        reader = Reader(name, pread=True)
        try:
            assert reader.wake == "futex"
            seq = reader.read().seq
            publish = threading.Timer(0.3, segment.publish, (sample(2, 1, 1, 1, 2, 10.0, 1.01), time.time(), 1001.0,
                                                             0.01, 0))
            publish.start()
            started = time.monotonic()
            assert reader.wait_for_sample(seq, 20.0)
            assert time.monotonic() - started < 15.0  # woken by the publish, not by the end of its 20 s (generous)
            publish.join()
            assert reader.read().seq == seq + 2
            os.truncate(path, 0)  # its owner (us) cuts it short
            with pytest.raises(IncompatibleSegment):
                reader.wait_for_sample(seq + 2, 5.0)
        finally:
            reader.close()
    finally:
        os.truncate(path, size)  # whole again (zeros) before the owner's own mapping is touched by its close
        segment.close(unlink=True)

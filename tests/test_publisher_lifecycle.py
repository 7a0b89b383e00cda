"""The publisher's life against real processes and real files in /dev/shm.

Start and stop (SIGTERM, SIGINT, SIGHUP, SIGQUIT; --keep-on-exit; nohup),
exact modes whatever the umask, exclusivity (flock liveness, SIGSTOP),
takeover after SIGKILL (also with a wedged semaphore), the liveness lock
readers test, a semaphore kept taken by a dead or rogue process while a
publisher runs, refusal of anything foreign (left byte-for-byte alone),
argument errors, and the order "first sample, then running".

No mocks and no wall-clock thresholds: waits have timeouts, assertions do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import signal
import stat
import string
import subprocess
import sys
import time

import posix_ipc
import pytest
from conftest import PUBLISHER, shm_files, wait_for

from shm_metrics import shm_layout as L

NOBODY = 65534
OLD_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09: any write would move mtime/ctime away from it
STATIC_FIELDS = ("magic", "layout_version", "header_size", "total_size", "table_hash", "instance_id",
                 "publisher_pid", "state", "publisher_start_time", "interval_seconds", "section_count",
                 "section_size", "sections_offset", "hostname")


# ---------------------------------------------------------------- helpers
def run_publisher(name: str, *args: str, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    """A publisher expected to exit by itself (refused or bad arguments)."""
    return subprocess.run([*PUBLISHER, "--name", name, *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def stop_collect(pub, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Stop a Publisher by its pid and return (exit code, everything it wrote to stderr)."""
    pub.proc.send_signal(sig)
    rc = pub.proc.wait(10)
    err = pub.proc.stderr.read()
    pub.stop()  # closes the pipes
    return rc, err


def leave_stale_segment(start_publisher, name: str) -> None:
    """A publisher SIGKILLed: its segment and semaphore stay, its lock is gone."""
    first = start_publisher(name, "--interval", "0.05")
    first.proc.kill()
    assert first.proc.wait(10) == -signal.SIGKILL


def start_takeover(start_publisher, name: str, *args: str):
    """Start a publisher on a name whose stale segment still says "running" (which fools the
    fixture's own wait) and wait until the header is the new publisher's and running."""
    pub = start_publisher(name, *args, wait=False)

    def ready():
        if pub.proc.poll() is not None:
            return True
        try:
            hdr = read_header(name)
        except (FileNotFoundError, AssertionError):
            return False
        return hdr["publisher_pid"] == pub.pid and hdr["state"] == L.STATE_RUNNING

    wait_for(ready, what=f"publisher {pub.pid} to take {name} over")
    assert pub.proc.poll() is None, f"publisher exited {pub.proc.returncode}: {pub.proc.stderr.read()}"
    return pub


def header_at(fd: int) -> dict:
    """A seqlock-consistent header read through ``fd`` (pread sees the shared pages)."""
    seq_at = L.HEADER_SEQ_OFFSET
    for _ in range(10_000):
        before = int.from_bytes(os.pread(fd, 8, seq_at), "little")
        data = os.pread(fd, L.HEADER.size, 0)
        after = int.from_bytes(os.pread(fd, 8, seq_at), "little")
        if before == after and before % 2 == 0 and len(data) == L.HEADER.size:
            return dict(zip(L.HEADER.names, L.HEADER.struct.unpack(data)))
    raise AssertionError("no consistent header snapshot")


def read_header(name: str) -> dict:
    fd = os.open(L.segment_path(name), os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return header_at(fd)
    finally:
        os.close(fd)


def samples(name: str) -> int:
    return read_header(name)["seq"] // 2


def wait_for_more_samples(name: str, than: int, what: str = "seq to advance") -> int:
    return wait_for(lambda: (n := samples(name)) > than and n, what=what)


def inode(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def fingerprint(path: str) -> tuple:
    """Everything that would change if anything wrote, chmod-ed, chown-ed or replaced ``path``."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            content = hashlib.sha256(os.read(fd, st.st_size + 1)).hexdigest()
        finally:
            os.close(fd)
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        content = tuple(sorted(os.listdir(path)))
    else:
        content = None
    return (st.st_mode, st.st_ino, st.st_uid, st.st_gid, st.st_nlink, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns, content)


def age(path: str) -> None:
    """Set mtime far in the past so that a write, however quick, shows."""
    os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)


def fake_segment(pid: int = 1) -> bytes:
    """A complete, valid, stopped segment image (small capacities), as another user could plant it."""
    layout = L.Layout.for_capacities(1, 1, 1, 1)
    values = {"magic": L.MAGIC, "layout_version": L.LAYOUT_VERSION, "header_size": layout.header_size,
              "total_size": layout.total_size, "table_hash": L.TABLE_HASH, "instance_id": 42,
              "publisher_pid": pid, "state": L.STATE_STOPPED, "publisher_start_time": 1.0,
              "interval_seconds": 1.0, "section_count": len(L.SECTIONS), "section_size": L.SECTION.size,
              "sections_offset": layout.sections_offset, "hostname": L.encode_string("elsewhere", 128),
              "seq": 2, "sample_time": 2.0, "sample_monotonic": 2.0, "sample_duration_seconds": 0.0,
              "overruns_total": 0, "generation": 0, "full_sample_time": 0.0}
    image = bytearray(layout.total_size)
    L.HEADER.struct.pack_into(image, 0, *(values[n] for n in L.HEADER.names))
    for i, rec in enumerate(L.SECTIONS):
        L.SECTION.struct.pack_into(image, layout.section_entry_offset(i), layout.offsets[i], rec.size,
                                   layout.capacities[i], 0, 0)
    L.parse_header(bytes(image), len(image))  # the fake must be one a reader would accept
    return bytes(image)


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def sighup(disposition):
    """Children started inside inherit this SIGHUP disposition (nohup sets SIG_IGN): the tests
    set it explicitly rather than depend on how pytest itself was started."""
    old = signal.signal(signal.SIGHUP, disposition)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, old)


def proc_umask(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise AssertionError("no Umask line")


# ---------------------------------------------------------------- 1. stop signals
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
STOP_IDS = ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"]


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=STOP_IDS)
def test_stop_signal_marks_stopped_and_removes_files(name, start_publisher, sig):
    with sighup(signal.SIG_DFL):
        pub = start_publisher(name, "--interval", "0.05")
    seg, sem = L.segment_path(name), L.semaphore_path(name)
    assert os.path.isfile(seg) and os.path.isfile(sem)
    fd = os.open(seg, os.O_RDONLY)  # keeps the bytes readable after the unlink
    try:
        assert header_at(fd)["state"] == L.STATE_RUNNING
        rc, err = stop_collect(pub, sig)
        assert rc == 0, err
        assert header_at(fd)["state"] == L.STATE_STOPPED
    finally:
        os.close(fd)
    assert shm_files(name) == []
    assert "Traceback" not in err and "stopped" in err


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=STOP_IDS)
def test_keep_on_exit_leaves_stopped_segment(name, start_publisher, sig):
    with sighup(signal.SIG_DFL):
        pub = start_publisher(name, "--interval", "0.05", "--keep-on-exit")
    seg, sem = L.segment_path(name), L.semaphore_path(name)
    before = read_header(name)
    try:
        assert pub.stop(sig) == 0
        assert os.path.isfile(seg) and os.path.isfile(sem)
        after = read_header(name)
        assert after["state"] == L.STATE_STOPPED
        assert after["instance_id"] == before["instance_id"]
        assert after["seq"] % 2 == 0 and after["seq"] >= before["seq"]
        with open(seg, "rb") as f:
            L.parse_header(f.read(), os.path.getsize(seg))  # still a valid segment
        kept = posix_ipc.Semaphore(L.semaphore_name(name))
        try:
            assert kept.value == 1  # released, not left taken
        finally:
            kept.close()
        # The next publisher takes the stopped segment over and removes it when it stops.
        nxt = start_takeover(start_publisher, name, "--interval", "0.05")
        assert read_header(name)["instance_id"] != before["instance_id"]
        assert nxt.stop() == 0
        assert shm_files(name) == []
    finally:
        for path in shm_files(name):
            os.unlink(path)


def test_sighup_ignored_on_start_stays_ignored(name, start_publisher):
    """Under nohup the caller asked the publisher to outlive its terminal: SIGHUP does not stop it."""
    with sighup(signal.SIG_IGN):
        pub = start_publisher(name, "--interval", "0.05")
    before = samples(name)
    pub.proc.send_signal(signal.SIGHUP)
    wait_for_more_samples(name, before + 3, "the publisher to keep sampling after SIGHUP")
    assert pub.proc.poll() is None
    rc, err = stop_collect(pub)
    assert rc == 0, err
    assert shm_files(name) == []


def test_sigterm_during_startup_never_leaves_files(name):
    """Whenever SIGTERM lands (before or after the signal mask is set), nothing is left."""
    for delay in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3):
        proc = subprocess.Popen([*PUBLISHER, "--name", name, "--interval", "0.05"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        err = proc.stderr.read()
        proc.stderr.close()
        assert rc in (0, -signal.SIGTERM), err
        assert shm_files(name) == [], f"after SIGTERM at +{delay}s"


# ---------------------------------------------------------------- 2. modes whatever the umask
@pytest.mark.parametrize("umask", [0o077, 0o000], ids=["umask077", "umask000"])
@pytest.mark.parametrize("mode_args, mode", [(("--mode", "0640"), 0o640), ((), 0o644), (("--mode", "600"), 0o600)],
                         ids=["0640", "default0644", "0600"])
def test_modes_are_exact_whatever_the_umask(name, start_publisher, umask, mode_args, mode):
    old = os.umask(umask)  # inherited by the child
    try:
        pub = start_publisher(name, "--interval", "0.05", *mode_args)
    finally:
        os.umask(old)
    assert proc_umask(pub.pid) == umask
    for path in (L.segment_path(name), L.semaphore_path(name)):
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(stat.S_IMODE(st.st_mode))}"
        assert st.st_uid == os.geteuid()
    assert pub.stop() == 0
    assert shm_files(name) == []


# ---------------------------------------------------------------- 3./4. one publisher per name
def _assert_first_untouched(name, first, seg_id, sem_id, static):
    assert first.proc.poll() is None
    assert inode(L.segment_path(name)) == seg_id
    assert inode(L.semaphore_path(name)) == sem_id
    hdr = read_header(name)
    assert {k: hdr[k] for k in STATIC_FIELDS} == static


@pytest.mark.parametrize("sigstop", [False, True], ids=["running", "SIGSTOPped"])
def test_second_publisher_refused_while_first_alive(name, start_publisher, sigstop):
    first = start_publisher(name, "--interval", "0.05")
    seg_id, sem_id = inode(L.segment_path(name)), inode(L.semaphore_path(name))
    hdr = read_header(name)
    static = {k: hdr[k] for k in STATIC_FIELDS}
    assert static["publisher_pid"] == first.pid
    if sigstop:
        os.kill(first.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(first.pid) == "T", what="first publisher to stop")
        time.sleep(0.2)  # stopped past its next deadline: SIGCONT then interrupts its wait (EINTR)
    try:
        second = run_publisher(name, "--interval", "0.05")
    finally:
        if sigstop:
            os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    _assert_first_untouched(name, first, seg_id, sem_id, static)
    wait_for_more_samples(name, hdr["seq"] // 2 + 1, "the first publisher to keep sampling")
    _assert_first_untouched(name, first, seg_id, sem_id, static)
    assert first.stop() == 0
    assert shm_files(name) == []


@pytest.mark.parametrize("kind", ["empty", "header-no-magic"])
def test_publisher_in_creation_is_not_taken_over(name, kind):
    """A file of ours still being created (flock held, magic not written yet) belongs to a live publisher."""
    content = b"" if kind == "empty" else header_without_magic()
    path = L.segment_path(name)
    write_file(path, content, 0o600)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fp = fingerprint(path)
        res = run_publisher(name)
        assert res.returncode == 1, res.stderr
        assert "starting" in res.stderr
        assert fingerprint(path) == fp
        assert not os.path.lexists(L.semaphore_path(name))
    finally:
        os.close(fd)
        os.unlink(path)


# ---------------------------------------------------------------- 5./6. takeover after SIGKILL
def test_takeover_after_sigkill(name, start_publisher):
    first = start_publisher(name, "--interval", "0.05")
    seg = L.segment_path(name)
    first.proc.kill()
    assert first.proc.wait(10) == -signal.SIGKILL
    assert sorted(shm_files(name)) == sorted([seg, L.semaphore_path(name), L.demand_path(name)])
    old_fd = os.open(seg, os.O_RDONLY)  # pins the old inode, like a reader that still maps it
    try:
        old = header_at(old_fd)
        assert old["state"] == L.STATE_RUNNING and old["publisher_pid"] == first.pid
        time.sleep(0.2)  # several intervals: a dead publisher's segment stays stale
        assert header_at(old_fd)["seq"] == old["seq"]
        old_ino = os.fstat(old_fd).st_ino

        second = start_takeover(start_publisher, name, "--interval", "0.05")
        new = read_header(name)
        assert new["instance_id"] != old["instance_id"]
        assert new["publisher_pid"] == second.pid
        assert os.lstat(seg).st_ino != old_ino
        wait_for_more_samples(name, new["seq"] // 2 + 1, "the new publisher to sample")
        assert header_at(old_fd)["seq"] == old["seq"]  # the old object was not written in place
    finally:
        os.close(old_fd)
    assert second.stop() == 0
    assert shm_files(name) == []


@pytest.mark.parametrize("stale_segment", [True, False], ids=["stale-segment", "no-segment"])
def test_semaphore_left_taken_does_not_wedge_next_publisher(name, start_publisher, stale_segment):
    sem_name = L.semaphore_name(name)
    if stale_segment:
        leave_stale_segment(start_publisher, name)
        posix_ipc.unlink_semaphore(sem_name)
    sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, initial_value=0)
    sem.close()  # value 0, as if its holder died mid-write
    assert os.path.isfile(L.semaphore_path(name))

    pub = start_takeover(start_publisher, name, "--interval", "0.05")
    wait_for_more_samples(name, 3, "seq to advance past the leftover semaphore")
    live = posix_ipc.Semaphore(sem_name)
    try:
        assert live.value in (0, 1)  # the fresh one: 0 only while a sample is being written
    finally:
        live.close()
    rc, err = stop_collect(pub)
    assert rc == 0, err
    assert "stayed taken" not in err and "skipped" not in err
    assert shm_files(name) == []


def header_without_magic() -> bytes:
    image = bytearray(fake_segment(pid=999_999))
    image[:8] = bytes(8)
    return bytes(image)


@pytest.mark.parametrize("content", [header_without_magic()], ids=["header-no-magic"])
def test_segment_left_mid_creation_is_taken_over(name, start_publisher, content):
    """What a publisher SIGKILLed between sizing the file and writing the magic leaves behind."""
    seg = L.segment_path(name)
    write_file(seg, content, 0o644)
    hold = os.open(seg, os.O_RDONLY)  # pins the inode number
    try:
        old_ino = os.fstat(hold).st_ino
        pub = start_takeover(start_publisher, name, "--interval", "0.05")
        assert os.lstat(seg).st_ino != old_ino
        wait_for_more_samples(name, 1)
        assert os.pread(hold, len(content), 0) == content  # replaced, never rewritten in place
    finally:
        os.close(hold)
    rc, err = stop_collect(pub)
    assert rc == 0, err
    assert "taking over stale segment" in err
    assert shm_files(name) == []


_GLIBC_SEM_TEMP = re.compile(r"sem\.[A-Za-z0-9]{6}")


def glibc_sem_temps() -> set[str]:
    """sem_open(O_CREAT) builds the semaphore in /dev/shm/sem.XXXXXX, then links and unlinks it."""
    return {e for e in os.listdir(L.SHM_DIR) if _GLIBC_SEM_TEMP.fullmatch(e)}


def test_sigkill_during_creation_never_wedges_the_next(name, start_publisher):
    """Kill each publisher as soon as its own file appears (mid-creation); the next must take over."""
    seg = L.segment_path(name)
    hold = None
    temps_before = glibc_sem_temps()
    try:
        for _ in range(10):
            prev = os.fstat(hold).st_ino if hold is not None else None
            proc = subprocess.Popen([*PUBLISHER, "--name", name, "--interval", "0.05"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

            def own_file_or_exit(proc=proc, prev=prev):
                if proc.poll() is not None:
                    return True
                try:
                    return os.lstat(seg).st_ino != prev
                except FileNotFoundError:
                    return False

            wait_for(own_file_or_exit, what="the publisher to create its file")
            proc.kill()
            rc = proc.wait(10)
            err = proc.stderr.read()
            proc.stderr.close()
            assert rc == -signal.SIGKILL, f"publisher exited {rc} on its own: {err}"
            if hold is not None:
                os.close(hold)
            hold = os.open(seg, os.O_RDONLY)
        pub = start_takeover(start_publisher, name, "--interval", "0.05")
        assert pub.stop() == 0
        assert shm_files(name) == []
    finally:
        if hold is not None:
            os.close(hold)
        # A SIGKILL inside sem_open before its link() leaks glibc's temporary (an empty or 32-byte
        # file under a random name nobody can refer to); one that outlives a grace period is an
        # orphan: remove it.
        new_temps = glibc_sem_temps() - temps_before
        if new_temps:
            time.sleep(0.2)
            for entry in new_temps & glibc_sem_temps():
                path = os.path.join(L.SHM_DIR, entry)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1 and st.st_size <= 32:
                    os.unlink(path)


# ---------------------------------------------------------------- 7./8. foreign objects under the name
def _plant(kind: str, path: str, tmp_path) -> list[str]:
    """Create a foreign object at ``path``; return every path whose fingerprint must not change."""
    if kind == "random-bytes":
        data = os.urandom(16384)
        write_file(path, b"NOTOURS!" + data)
    elif kind == "zero-magic-then-garbage":
        write_file(path, bytes(8) + os.urandom(8192))
    elif kind == "all-zero":  # our publisher writes its header first: zeros alone are not ours
        write_file(path, bytes(40960))
    elif kind == "zeros-then-data":
        write_file(path, bytes(40960 - 4) + b"data")
    elif kind == "zeros-other-user":
        write_file(path, bytes(40960))
        os.chown(path, NOBODY, NOBODY)
    elif kind == "short-garbage":
        write_file(path, b"hello")
    elif kind == "wrong-magic-valid-layout":
        write_file(path, b"SHMMETR\x01" + fake_segment()[8:])
    elif kind == "our-magic-other-user":
        write_file(path, fake_segment(pid=os.getpid()))
        os.chown(path, NOBODY, NOBODY)
    elif kind == "empty-other-user":
        write_file(path, b"", 0o600)
        os.chown(path, NOBODY, NOBODY)
    elif kind == "symlink-to-segment":
        target = str(tmp_path / "target")
        write_file(target, fake_segment(pid=os.getpid()))
        age(target)
        os.symlink(target, path)
        age(path)
        return [path, target]
    elif kind == "symlink-to-empty":
        target = str(tmp_path / "target")
        write_file(target, b"", 0o600)
        age(target)
        os.symlink(target, path)
        age(path)
        return [path, target]
    elif kind == "dangling-symlink":
        os.symlink(str(tmp_path / "nothing-here"), path)
        age(path)
        return [path]
    elif kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "directory":
        os.mkdir(path, 0o755)
    elif kind == "hard-link":
        other = path + "-other"
        write_file(other, fake_segment(pid=os.getpid()))
        os.link(other, path)
        age(path)
        return [path, other]
    else:
        raise AssertionError(kind)
    age(path)
    return [path]


FOREIGN = ["random-bytes", "zero-magic-then-garbage", "all-zero", "zeros-then-data", "zeros-other-user",
           "short-garbage",
           "wrong-magic-valid-layout", "our-magic-other-user", "empty-other-user", "symlink-to-segment",
           "symlink-to-empty", "dangling-symlink", "fifo", "directory", "hard-link"]


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_object_under_name_is_refused_and_left_alone(name, tmp_path, kind):
    seg, sem = L.segment_path(name), L.semaphore_path(name)
    watched = _plant(kind, seg, tmp_path)
    try:
        before = [fingerprint(p) for p in watched]
        res = run_publisher(name, "--interval", "0.05", timeout=20)  # a FIFO must not hang it
        assert res.returncode == 1, res.stderr
        assert "left untouched" in res.stderr and seg in res.stderr
        assert "Traceback" not in res.stderr
        assert [fingerprint(p) for p in watched] == before
        assert not os.path.lexists(sem), "a refused publisher created the semaphore"
        if kind == "dangling-symlink":
            assert not os.path.lexists(tmp_path / "nothing-here")
    finally:
        for p in watched:
            remove(p)


def test_empty_file_of_ours_is_taken_over(name, start_publisher):
    seg = L.segment_path(name)
    write_file(seg, b"", 0o600)
    old_ino = os.lstat(seg).st_ino
    hold = os.open(seg, os.O_RDONLY)  # so the new file cannot reuse the inode number
    try:
        pub = start_publisher(name, "--interval", "0.05")
        assert os.lstat(seg).st_ino != old_ino
        assert read_header(name)["publisher_pid"] == pub.pid
        wait_for_more_samples(name, 1)
    finally:
        os.close(hold)
    assert pub.stop() == 0
    assert shm_files(name) == []


# ---------------------------------------------------------------- 9. squatter semaphore
@pytest.mark.parametrize("kind", ["other-user", "symlink", "hard-link"])
def test_squatter_semaphore_is_refused_and_left_alone(name, tmp_path, kind):
    seg, sem = L.segment_path(name), L.semaphore_path(name)
    if kind in ("other-user", "hard-link"):
        s = posix_ipc.Semaphore(L.semaphore_name(name), posix_ipc.O_CREX, mode=0o644, initial_value=1)
        s.close()
        if kind == "other-user":
            os.chown(sem, NOBODY, NOBODY)
            watched = [sem]
        else:  # a second name that is not glibc's sem_open temporary
            os.link(sem, seg + "-other")
            watched = [sem, seg + "-other"]
    else:
        target = str(tmp_path / "sem-target")
        write_file(target, b"x" * 32)
        age(target)
        os.symlink(target, sem)
        watched = [sem, target]
    age(sem)
    try:
        before = [fingerprint(p) for p in watched]
        res = run_publisher(name, "--interval", "0.05")
        assert res.returncode == 1, res.stderr
        assert "left untouched" in res.stderr and sem in res.stderr
        assert [fingerprint(p) for p in watched] == before
        assert not os.path.lexists(seg), "a refused publisher left a segment behind"
    finally:
        for p in watched:
            remove(p)


def unused_glibc_temp_path() -> str:
    alphabet = string.ascii_letters + string.digits
    while True:
        path = os.path.join(L.SHM_DIR, "sem." + "".join(secrets.choice(alphabet) for _ in range(6)))
        if not os.path.lexists(path):
            return path


@pytest.mark.parametrize("stale_segment", [True, False], ids=["stale-segment", "no-segment"])
def test_semaphore_left_inside_sem_open_does_not_wedge_next(name, start_publisher, stale_segment):
    """Killed between glibc's link(sem.XXXXXX, name) and unlink(sem.XXXXXX): two links, both ours."""
    sem = L.semaphore_path(name)
    if stale_segment:
        leave_stale_segment(start_publisher, name)
    else:
        s = posix_ipc.Semaphore(L.semaphore_name(name), posix_ipc.O_CREX, initial_value=1)
        s.close()
    temp = unused_glibc_temp_path()
    os.link(sem, temp)
    try:
        assert os.lstat(sem).st_nlink == 2
        pub = start_takeover(start_publisher, name, "--interval", "0.05")
        wait_for_more_samples(name, 1)
        assert not os.path.lexists(temp), "the dead creator's temporary name was left behind"
        assert os.lstat(sem).st_nlink == 1
        assert pub.stop() == 0
        assert shm_files(name) == []
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


# ---------------------------------------------------------------- 10. arguments
BAD_ARGS = {
    "interval-0": ["--interval", "0"],
    "interval-5000": ["--interval", "5000"],
    "interval-abc": ["--interval", "abc"],
    "interval-nan": ["--interval", "nan"],
    "interval-inf": ["--interval", "inf"],
    "mode-0666": ["--mode", "0666"],
    "mode-999": ["--mode", "999"],
    "mode-0700": ["--mode", "0700"],
    "mode-0444": ["--mode", "0444"],
    "name-slash": ["--name", "bad/name"],
    "name-empty": ["--name", ""],
    "name-dotdot": ["--name", ".."],
    "name-201": ["--name", "a" * 201],
    "disk-exclude-paren": ["--disk-exclude", "("],
    "unknown-option": ["--frobnicate"],
}


@pytest.mark.parametrize("args", list(BAD_ARGS.values()), ids=list(BAD_ARGS))
def test_bad_arguments_exit_2_with_one_line(name, args):
    # --name <fixture> first: if a case were wrongly accepted it would run on our name, not a real one.
    res = run_publisher(name, *args, timeout=20)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("shm-publisher: error:")
    assert res.stdout == ""
    assert shm_files(name) == []


def test_bad_name_from_environment_exits_2(name):
    env = {**os.environ, L.NAME_ENV: "bad/name"}
    res = subprocess.run([*PUBLISHER], capture_output=True, text=True, timeout=20, env=env)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr


def test_help_names_every_stop_signal(name):
    res = run_publisher(name, "--help")
    assert res.returncode == 0, res.stderr
    for sig in STOP_IDS:
        assert sig in res.stdout, sig
    assert "nohup" in res.stdout


def test_version(name):
    res = subprocess.run([*PUBLISHER, "--version"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0
    assert L.__version__ in res.stdout
    assert shm_files(name) == []


def test_longest_valid_name_works(name, start_publisher):
    long_name = (name + "-" + "x" * 200)[:201]  # "/" + 200 characters: the limit
    assert len(long_name.lstrip("/")) == 200
    try:
        pub = start_publisher(long_name, "--interval", "0.05")
        assert os.path.isfile(L.semaphore_path(long_name))
        assert pub.stop() == 0
        assert shm_files(long_name) == []
    finally:
        for path in shm_files(long_name):
            os.unlink(path)


# ---------------------------------------------------------------- 11./12. sampling order and schedule
def test_first_sample_is_written_before_running(name, start_publisher):
    pub = start_publisher(name, "--interval", "0.05", wait=False)
    seg = L.segment_path(name)
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and pub.proc.poll() is None:
        try:
            with open(seg, "rb") as f:
                data = f.read(L.HEADER.size)
        except FileNotFoundError:
            continue
        if len(data) < L.HEADER.size or data[:8] != L.MAGIC:
            continue
        hdr = dict(zip(L.HEADER.names, L.HEADER.struct.unpack(data)))
        if not seen or seen[-1] != hdr["state"]:
            seen.append(hdr["state"])
        if hdr["state"] == L.STATE_RUNNING:
            assert hdr["seq"] >= 2, hdr
            assert hdr["sample_time"] > 0, hdr
            assert hdr["sample_monotonic"] > 0, hdr
            break
    else:
        raise AssertionError(f"never saw state running (states seen: {seen})")
    assert L.STATE_INIT not in seen and seen[-1] == L.STATE_RUNNING
    assert seen == sorted(seen)  # starting -> running, never back
    assert pub.stop() == 0


def test_schedule_sanity(name, start_publisher):
    interval = 0.05
    start_publisher(name, "--interval", str(interval))
    first = read_header(name)
    time.sleep(1.0)
    wait_for(lambda: samples(name) >= first["seq"] // 2 + 5, what="at least 5 samples")
    last = read_header(name)
    taken = (last["seq"] - first["seq"]) // 2
    skipped = last["overruns_total"] - first["overruns_total"]
    slots = (last["sample_monotonic"] - first["sample_monotonic"]) / interval
    assert taken >= 5
    # Drift-free grid: samples taken + slots skipped track elapsed slots (very loosely).
    assert slots / 2 - 1 <= taken + skipped <= slots * 2 + 1, (taken, skipped, slots)
    assert last["sample_time"] > first["sample_time"]
    assert last["interval_seconds"] == interval


# ---------------------------------------------------------------- 13. the liveness lock readers test
def test_liveness_lock_follows_the_process_not_the_header(name, start_publisher):
    first = start_publisher(name, "--interval", "0.05")
    seg = L.segment_path(name)
    fd = os.open(seg, os.O_RDONLY)  # a reader's descriptor: testing the lock never takes it
    try:
        assert L.publisher_alive(fd)
        first.proc.kill()
        assert first.proc.wait(10) == -signal.SIGKILL
        assert not L.publisher_alive(fd)
        assert header_at(fd)["state"] == L.STATE_RUNNING  # what the header alone would call alive
        assert sorted(shm_files(name)) == sorted([seg, L.semaphore_path(name), L.demand_path(name)])

        second = start_takeover(start_publisher, name, "--interval", "0.05")
        new_fd = os.open(seg, os.O_RDONLY)
        try:
            assert os.fstat(new_fd).st_ino != os.fstat(fd).st_ino
            assert L.publisher_alive(new_fd)
            assert not L.publisher_alive(fd)  # the old object stays dead
            rc, err = stop_collect(second)
            assert rc == 0, err
            assert "taking over stale segment" in err
            assert not L.publisher_alive(new_fd)  # a clean stop drops it too
            assert header_at(new_fd)["state"] == L.STATE_STOPPED
        finally:
            os.close(new_fd)
        assert shm_files(name) == []
    finally:
        os.close(fd)
        for path in shm_files(name):  # what the SIGKILL left, if a step above failed before the takeover
            os.unlink(path)


def test_liveness_lock_is_taken_before_the_header(name):
    """However early a reader looks, a segment file with content has its publisher's lock held."""
    seg = L.segment_path(name)
    for _ in range(5):
        proc = subprocess.Popen([*PUBLISHER, "--name", name, "--interval", "0.05"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def content_or_exit(proc=proc):
                try:
                    return proc.poll() is not None or os.stat(seg).st_size > 0
                except FileNotFoundError:
                    return False

            wait_for(content_or_exit, what="the publisher to write its header")
            fd = os.open(seg, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                alive = L.publisher_alive(fd)
            finally:
                os.close(fd)
            running = proc.poll() is None  # after the test: it held the file's content all along
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(10)
            err = proc.stderr.read()
            proc.stderr.close()
        assert running and size > 0, f"publisher exited {rc}: {err}"
        assert alive, f"header of live publisher {proc.pid} visible without its liveness lock"
        assert rc == 0, err
        assert shm_files(name) == []


def test_liveness_lock_held_elsewhere_is_not_taken_over(name):
    """Readers call a segment whose lock is held alive, so a publisher must not call it stale."""
    path = L.segment_path(name)
    write_file(path, header_without_magic(), 0o600)
    fd = os.open(path, os.O_RDWR)
    try:
        L.hold_liveness_lock(fd)  # no flock: only the liveness lock is held
        fp = fingerprint(path)
        res = run_publisher(name)
        assert res.returncode == 1, res.stderr
        assert "liveness lock" in res.stderr and "Traceback" not in res.stderr
        assert fingerprint(path) == fp
        assert not os.path.lexists(L.semaphore_path(name))
    finally:
        os.close(fd)
        os.unlink(path)


# ---------------------------------------------------------------- 14. a semaphore kept taken while publishing
HOLD_SEMAPHORE = """\
import posix_ipc, sys, time
sem = posix_ipc.Semaphore(sys.argv[1])
sem.acquire()
print("held", flush=True)
time.sleep(3600)
"""


def hold_semaphore(name: str) -> subprocess.Popen:
    """A process of our user that takes NAME.lock and keeps it until it is killed."""
    helper = subprocess.Popen([sys.executable, "-c", HOLD_SEMAPHORE, L.semaphore_name(name)],
                              stdout=subprocess.PIPE, text=True)
    assert helper.stdout.readline() == "held\n"
    return helper


def end_helper(helper: subprocess.Popen) -> None:
    if helper.poll() is None:
        helper.kill()
    helper.wait(10)
    helper.stdout.close()


def inode_or_none(path: str) -> tuple[int, int] | None:
    try:
        return inode(path)
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("holder", ["sigkilled", "stuck"])
def test_semaphore_kept_taken_is_replaced_and_publishing_goes_on(name, start_publisher, holder):
    old_umask = os.umask(0o077)  # the replacement's mode must be exact too, not umask-trimmed
    try:
        pub = start_publisher(name, "--interval", "0.05", "--mode", "0640")
    finally:
        os.umask(old_umask)
    sem_path = L.semaphore_path(name)
    old_sem = inode(sem_path)
    helper = hold_semaphore(name)
    try:
        if holder == "sigkilled":  # dies holding it: nobody will ever post it again
            helper.kill()
            assert helper.wait(10) == -signal.SIGKILL
        wait_for(lambda: inode_or_none(sem_path) not in (None, old_sem), what="the semaphore to be replaced")
        wait_for_more_samples(name, samples(name) + 3, "publishing to go on")
        st = os.lstat(sem_path)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1
        assert stat.S_IMODE(st.st_mode) == 0o640
        live = posix_ipc.Semaphore(L.semaphore_name(name))
        try:
            assert live.value in (0, 1)  # 0 only while a sample is being written
        finally:
            live.close()
        assert pub.proc.poll() is None
        rc, err = stop_collect(pub)
    finally:
        end_helper(helper)
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if "stayed taken" in line]
    assert len(warnings) == 1, err
    assert "level=warn" in warnings[0] and L.semaphore_name(name) in warnings[0] and "replaced" in warnings[0]
    assert "Traceback" not in err and "level=error" not in err
    assert shm_files(name) == []  # the replacement is removed on exit like the original


def wchan(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def test_stop_signal_while_waiting_for_the_semaphore(name, start_publisher):
    """SIGTERM interrupting the wait for a held semaphore stops cleanly (no traceback, files removed)."""
    pub = start_publisher(name, "--interval", "0.05")
    helper = hold_semaphore(name)
    try:
        try:  # the helper soon sleeps for good; "0" all along means the kernel hides where
            wait_for(lambda: wchan(helper.pid) not in ("", "0"), timeout=5, what="the helper to sleep")
        except AssertionError:
            pytest.skip("this kernel does not show where a process sleeps (/proc/PID/wchan)")
        # In the semaphore's futex wait, not in the select between samples: the signal interrupts it.
        wait_for(lambda: wchan(pub.pid).startswith("futex"), what="the publisher to wait for the semaphore")
        rc, err = stop_collect(pub)
    finally:
        end_helper(helper)
    assert rc == 0, err
    assert "Traceback" not in err and "stopped" in err
    assert shm_files(name) == []

"""Waking readers when a sample is published: a futex on the segment's ``seq``.

Shared memory alone cannot tell a reader that new data is there, so readers
of PCP's MMV, hsperfdata or Aeron's counters poll.  Linux has the tool to do
better: a futex on a 32-bit word of a *shared* mapping is keyed by the file's
inode and offset, so any process mapping the segment can sleep on it, even
through a read-only mapping (``get_futex_key`` falls back to a read-only key
for FUTEX_WAIT), and the publisher wakes them all with one FUTEX_WAKE.

The word is the low half of ``seq`` (``shm_layout.FUTEX_WORD_OFFSET``): it
changes with every sample, so a reader waits with the value it last saw and
the kernel returns at once if a sample came in between (no lost wake-up).
The private flag must not be used: the waiters are other processes.

Everything here goes through ``ctypes`` and the C library's ``syscall(2)``;
where that is not possible (another OS, an architecture whose syscall number
is unknown here, a seccomp filter) ``AVAILABLE`` is False, or ``probe`` says
why, and readers fall back to polling.
"""

from __future__ import annotations

import ctypes
import errno
import os

# SYS_futex per architecture (asm/unistd.h); absent: no futex, readers poll.
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "riscv64": 98, "i386": 240, "i686": 240,
              "armv7l": 240, "ppc64le": 221, "s390x": 238}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_WAKE_ALL = 0x7FFFFFFF
FORCE_POLL_ENV = "SHM_METRICS_WAKE"  # set to "poll" to disable the futex (tests, comparisons)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _PyBuffer(ctypes.Structure):  # Py_buffer (Include/pybuffer.h), stable since 3.3
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


def _load() -> tuple[object | None, int | None, str]:
    if os.environ.get(FORCE_POLL_ENV) == "poll":
        return None, None, f"disabled by {FORCE_POLL_ENV}=poll"
    number = _SYS_FUTEX.get(os.uname().machine)
    if os.uname().sysname != "Linux" or number is None:
        return None, None, f"no futex syscall known for {os.uname().sysname} {os.uname().machine}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError) as exc:
        return None, None, f"no syscall() in the C library: {exc}"
    syscall.restype = ctypes.c_long
    return syscall, number, ""


_syscall, _NR, UNAVAILABLE_REASON = _load()
AVAILABLE = _syscall is not None
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)


def buffer_address(obj: object) -> int:
    """Address of the first byte of a buffer (e.g. a read-only mmap).

    ``ctypes.c_char.from_buffer`` refuses read-only buffers, so ask the buffer
    protocol directly.  The address stays valid while ``obj`` stays open; the
    caller must not close it while another thread waits on it.
    """
    view = _PyBuffer()
    _get_buffer(obj, ctypes.byref(view), 0)  # PyBUF_SIMPLE: read-only is fine
    try:
        return view.buf
    finally:
        _release_buffer(ctypes.byref(view))


def wake_all(address: int) -> int:
    """Wake every process waiting on the word at ``address``; returns how many."""
    if _syscall is None:
        return 0
    return max(0, _syscall(_NR, ctypes.c_void_p(address), _FUTEX_WAKE, _WAKE_ALL, None, None, 0))


class Waiter:
    """Waits on one address, with the ctypes arguments made once (the address, the timespec and a reference
    to it): a follower waits at every sample, where each Python step is paid with cold caches (Q7).  One thread
    at a time (a Reader's): the timespec is shared between its calls."""

    def __init__(self, address: int) -> None:
        self._address = ctypes.c_void_p(address)
        self._timespec = _Timespec(0, 0)
        self._timespec_ref = ctypes.byref(self._timespec)

    def wait(self, expected: int, timeout: float) -> bool:
        """Sleep until the word is woken, or ``timeout`` seconds pass.

        Returns at once (True) if the word no longer holds ``expected``.  True
        means "look again" (woken, changed, or interrupted by a signal, whose
        Python handler runs right after); False means the timeout expired.  Like
        every futex wait it may return early: callers re-check the data.
        """
        timeout = max(0.0, timeout)
        ts = self._timespec
        ts.tv_sec, ts.tv_nsec = int(timeout), int((timeout % 1) * 1e9)
        if _syscall(_NR, self._address, _FUTEX_WAIT, ctypes.c_uint32(expected & 0xFFFFFFFF), self._timespec_ref,
                    None, 0) == 0:
            return True
        return ctypes.get_errno() != errno.ETIMEDOUT


def probe(address: int, current: int) -> str:
    """"" if waiting on ``address`` works, else the reason it does not.

    A FUTEX_WAIT with a value the word does not hold must fail with EAGAIN at
    once; ENOSYS (seccomp, old kernel), EFAULT (not a shared mapping) or EPERM
    mean it cannot be used.
    """
    if _syscall is None:
        return UNAVAILABLE_REASON
    ts = _Timespec(0, 0)
    if _syscall(_NR, ctypes.c_void_p(address), _FUTEX_WAIT, ctypes.c_uint32(~current & 0xFFFFFFFF),
                ctypes.byref(ts), None, 0) == 0:
        return ""
    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
        return ""
    return f"futex wait failed: {os.strerror(err)}"

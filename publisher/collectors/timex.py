"""adjtimex(2): node_exporter's ``timex`` collector (kernel clock discipline state)."""

from __future__ import annotations

import ctypes

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register

_TIME_ERROR = 5  # adjtimex's return value when the clock is not synchronised
_STA_NANO = 0x2000  # offset and jitter in ns instead of us
_PPM16 = 1_000_000.0 * 65536.0  # freq, ppsfreq, stabil: ppm with a 16-bit fraction (adjtimex(2) NOTES)


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("_reserved", ctypes.c_int * 11)]


SYNC = gauge("node_timex_sync_status", "Is clock synchronized to a reliable server (1 = yes, 0 = no).")
OFFSET = gauge("node_timex_offset_seconds", "Time offset in between local system and reference clock.")
FREQ = gauge("node_timex_frequency_adjustment_ratio", "Local clock frequency adjustment.")
MAXERROR = gauge("node_timex_maxerror_seconds", "Maximum error in seconds.")
ESTERROR = gauge("node_timex_estimated_error_seconds", "Estimated error in seconds.")
STATUS = gauge("node_timex_status", "Value of the status array bits.")
CONSTANT = gauge("node_timex_loop_time_constant", "Phase-locked loop time constant.")
TICK = gauge("node_timex_tick_seconds", "Seconds between clock ticks.")
PPSFREQ = gauge("node_timex_pps_frequency_hertz", "Pulse per second frequency.")
JITTER = gauge("node_timex_pps_jitter_seconds", "Pulse per second jitter.")
SHIFT = gauge("node_timex_pps_shift_seconds", "Pulse per second interval duration.")
STABIL = gauge("node_timex_pps_stability_hertz", "Pulse per second stability, average of recent frequency changes.")
JITCNT = counter("node_timex_pps_jitter_total", "Pulse per second count of jitter limit exceeded events.")
CALCNT = counter("node_timex_pps_calibration_total", "Pulse per second count of calibration intervals.")
ERRCNT = counter("node_timex_pps_error_total", "Pulse per second count of calibration errors.")
STBCNT = counter("node_timex_pps_stability_exceeded_total",
                 "Pulse per second count of stability limit exceeded events.")
TAI = gauge("node_timex_tai_offset_seconds", "International Atomic Time (TAI) offset.")


@register
class Timex(Collector):
    name = "timex"
    reports = ("timex",)
    families = (SYNC, OFFSET, FREQ, MAXERROR, ESTERROR, STATUS, CONSTANT, TICK, PPSFREQ, JITTER, SHIFT, STABIL,
                JITCNT, CALCNT, ERRCNT, STBCNT, TAI)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
        self._adjtimex = libc.adjtimex
        self._adjtimex.argtypes = [ctypes.POINTER(_Timex)]
        self._buf = _Timex()

    def collect(self, out: Sample) -> None:
        t = self._buf
        t.modes = 0  # read only
        status = self._adjtimex(ctypes.byref(t))
        if status < 0:
            raise OSError(ctypes.get_errno(), "adjtimex failed")
        divisor = 1e9 if t.status & _STA_NANO else 1e6
        add = out.add
        add(SYNC, (), 0 if status == _TIME_ERROR else 1)
        add(OFFSET, (), t.offset / divisor)
        add(FREQ, (), 1 + t.freq / _PPM16)
        add(MAXERROR, (), t.maxerror / 1e6)
        add(ESTERROR, (), t.esterror / 1e6)
        add(STATUS, (), t.status)
        add(CONSTANT, (), t.constant)
        add(TICK, (), t.tick / 1e6)
        add(PPSFREQ, (), t.ppsfreq / _PPM16)
        add(JITTER, (), t.jitter / divisor)
        add(SHIFT, (), t.shift)
        add(STABIL, (), t.stabil / _PPM16)
        add(JITCNT, (), t.jitcnt)
        add(CALCNT, (), t.calcnt)
        add(ERRCNT, (), t.errcnt)
        add(STBCNT, (), t.stbcnt)
        add(TAI, (), t.tai)

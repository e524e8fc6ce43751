"""A periodic timer on CLOCK_MONOTONIC that never drifts: Linux's timerfd.

The ICMP prober's schedule (attempt ``n`` due at ``t0 + n * interval``) rests
on it: the kernel keeps the period, the event loop only reads how many
expiries passed (``loop.add_reader`` on ``fd``). ``asyncio.sleep`` rounds to
whole milliseconds (measured on this project's machines, shared notes
"icmp-probing": a sleep-based 1 kHz schedule was late by 0.47 ms p50, a
timerfd by ~60 us). Reached through
ctypes: ``os.timerfd_*`` only arrives in Python 3.13.
"""

from __future__ import annotations

import ctypes
import os
import sys

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1
_NS_PER_S = 1_000_000_000


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.timerfd_create.restype = ctypes.c_int
_libc.timerfd_settime.argtypes = (
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.POINTER(_Itimerspec),
)
_libc.timerfd_settime.restype = ctypes.c_int


def _timespec(ns: int) -> _Timespec:
    return _Timespec(ns // _NS_PER_S, ns % _NS_PER_S)


class PeriodicTimer:
    """A non-blocking CLOCK_MONOTONIC timerfd firing at ``first_ns + k * period_ns``."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd: int = fd

    def arm(self, first_ns: int, period_ns: int) -> None:
        """Fire at ``first_ns`` (absolute, as ``time.monotonic_ns()``), then every ``period_ns``."""
        spec = _Itimerspec(_timespec(period_ns), _timespec(first_ns))
        if _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def disarm(self) -> None:
        if self.fd >= 0:
            spec = _Itimerspec(_timespec(0), _timespec(0))
            _libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None)

    def expirations(self) -> int:
        """Expiries since the last call (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), sys.byteorder)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

"""What the measuring machine was during a run, for the manifest's ``machine`` object.

flent records the machine it measured from in every data file, so that two
results can be compared knowing what differed. Here: the kernel, the
clocksource behind ``CLOCK_MONOTONIC`` (a VM falling back from ``tsc`` to
``hpet`` or ``acpi_pm`` reads its clock far more slowly), whether the kernel
considers its wall clock synchronised (``adjtimex``: every UTC label depends on
it; intervals do not), the CPUs and load, and the **CPU steal** during the run:
the share of CPU time the measuring machine, itself a VM, waited for its
hypervisor, which delays probes and stamps.

Everything is read from ``/proc``, ``/sys`` and one read-only ``adjtimex``
call; what cannot be read is ``null``, never an error: the context describes
a run, it never stops one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")
CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0")

# adjtimex(2): the clock state TIME_ERROR means "not synchronised to a reliable server".
TIME_ERROR = 5
STA_UNSYNC = 0x0040


@dataclass(frozen=True)
class CpuTimes:
    """The first line of /proc/stat, in clock ticks: all CPUs together."""

    total: int
    steal: int


def read_cpu_times(path: Path = PROC_STAT) -> CpuTimes | None:
    """user + nice + system + idle + iowait + irq + softirq + steal, and steal; None if
    unreadable. (guest and guest_nice are already counted in user and nice.)"""
    try:
        with open(path, encoding="ascii") as handle:
            first = handle.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 9:
        return None
    try:
        ticks = [int(value) for value in first[1:9]]
    except ValueError:
        return None
    return CpuTimes(total=sum(ticks), steal=ticks[7])


def steal_between(start: CpuTimes | None, end: CpuTimes | None) -> dict[str, Any] | None:
    """CPU steal from ``start`` to ``end``: percent of all CPU time, and seconds."""
    if start is None or end is None or end.total <= start.total:
        return None
    steal = max(0, end.steal - start.steal)
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return {
        "pct": round(100.0 * steal / (end.total - start.total), 3),
        "seconds": round(steal / ticks_per_s, 3),
        "source": "/proc/stat",
    }


class _Timex(ctypes.Structure):
    # The head of struct timex (adjtimex(2)); the rest of the kernel's structure
    # (about 200 bytes) is covered by the padding.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("padding", ctypes.c_byte * 512),
    ]


def clock_state() -> dict[str, Any]:
    """``clock_synchronised`` (None if unknown) and the kernel's error estimates (us)
    from a read-only ``adjtimex`` (modes 0 needs no privilege)."""
    unknown: dict[str, Any] = {
        "clock_synchronised": None,
        "clock_max_error_us": None,
        "clock_est_error_us": None,
    }
    if platform.system() != "Linux":
        return unknown
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return unknown
    if state < 0:
        return unknown
    return {
        "clock_synchronised": state != TIME_ERROR and not timex.status & STA_UNSYNC,
        "clock_max_error_us": int(timex.maxerror),
        "clock_est_error_us": int(timex.esterror),
    }


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def machine_context() -> dict[str, Any]:
    """The measuring machine now (without CPU steal, which needs an interval)."""
    available = _read_text(CLOCKSOURCE / "available_clocksource")
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {
        "kernel": platform.release() or None,
        "kernel_version": platform.version() or None,
        "machine": platform.machine() or None,
        "clocksource": _read_text(CLOCKSOURCE / "current_clocksource"),
        "clocksources_available": available.split() if available else None,
        **clock_state(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
    }


class MachineWatch:
    """The machine context at the start of a run, and CPU steal until its end."""

    def __init__(self) -> None:
        self.context = machine_context()
        self._start = read_cpu_times()

    def finish(self) -> dict[str, Any]:
        """The context with ``cpu_steal`` from the start until now."""
        return {**self.context, "cpu_steal": steal_between(self._start, read_cpu_times())}

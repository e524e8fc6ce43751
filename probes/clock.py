"""The harness clocks.

Every event carries two stamps: CLOCK_MONOTONIC in nanoseconds (for intervals
and ordering; immune to NTP steps) and UTC wall time in nanoseconds since the
Unix epoch (for labelling and for lining up with other machines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from migration_blackout.runformat import utc_iso


@dataclass(frozen=True)
class ClockPair:
    """A monotonic and a wall-clock reading taken as close together as possible."""

    mono_ns: int
    utc_ns: int

    @property
    def offset_ns(self) -> int:
        """UTC minus monotonic: add to a monotonic stamp to get UTC ns."""
        return self.utc_ns - self.mono_ns

    def to_json(self) -> dict[str, int | str]:
        return {"mono_ns": self.mono_ns, "utc_ns": self.utc_ns, "utc": utc_iso(self.utc_ns)}


def clock_pair() -> ClockPair:
    """Read both clocks; the wall clock is bracketed by two monotonic reads."""
    before = time.monotonic_ns()
    utc = time.time_ns()
    after = time.monotonic_ns()
    return ClockPair(mono_ns=(before + after) // 2, utc_ns=utc)

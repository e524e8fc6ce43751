"""Clock alignment: where each host's clock stands against the harness's.

Before and after the migration the harness asks each host for ``Get-Date``
several times. For each round trip the host read its clock somewhere between
our send and our receive; assuming the middle, its offset is
``host_utc - (send_utc + recv_utc) / 2`` with an uncertainty of half the round
trip. The sample with the smallest round trip wins. Every sample is kept in
``raw/clock.jsonl``; the chosen ones and the drift between the "before" and
"after" estimates go to the manifest, and the analysis maps every host
timestamp onto the harness timeline with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from migration_blackout.probes.clock import clock_pair
from migration_blackout.probes.sink import JsonlSink


@dataclass(frozen=True)
class ClockSample:
    host: str
    phase: str  # "before" or "after" the migration
    send_mono_ns: int
    send_utc_ns: int
    recv_mono_ns: int
    recv_utc_ns: int
    host_utc_ns: int

    @property
    def rtt_ns(self) -> int:
        return self.recv_mono_ns - self.send_mono_ns

    @property
    def offset_ns(self) -> int:
        """Host clock minus harness UTC clock, at the middle of the round trip."""
        return self.host_utc_ns - (self.send_utc_ns + self.recv_utc_ns) // 2


@dataclass(frozen=True)
class ClockOffset:
    """A host's offset to the harness clock, from its best sample."""

    host: str
    phase: str
    offset_ns: int
    uncertainty_ns: int  # half the best round trip
    at_mono_ns: int  # harness monotonic time of the estimate
    samples: int

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "phase": self.phase,
            "offset_ms": round(self.offset_ns / 1e6, 3),
            "uncertainty_ms": round(self.uncertainty_ns / 1e6, 3),
            "offset_ns": self.offset_ns,
            "uncertainty_ns": self.uncertainty_ns,
            "at_mono_ns": self.at_mono_ns,
            "samples": self.samples,
        }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc_ns(stamp: datetime) -> int:
    """Exact ns since the epoch of an aware datetime (no float rounding)."""
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def sample_clock(
    host: str,
    get_date: Callable[[], datetime],
    *,
    phase: str,
    count: int = 7,
    sink: JsonlSink | None = None,
) -> ClockOffset:
    """Take ``count`` Get-Date round trips (blocking) and return the best estimate."""
    if count < 1:
        raise ValueError("count must be at least 1")
    samples = []
    for _ in range(count):
        send = clock_pair()
        host_time = get_date()
        recv = clock_pair()
        sample = ClockSample(
            host=host,
            phase=phase,
            send_mono_ns=send.mono_ns,
            send_utc_ns=send.utc_ns,
            recv_mono_ns=recv.mono_ns,
            recv_utc_ns=recv.utc_ns,
            host_utc_ns=_utc_ns(host_time),
        )
        samples.append(sample)
        if sink is not None:
            sink.write(
                {
                    "event": "clock_sample",
                    "host": host,
                    "phase": phase,
                    "send_mono_ns": sample.send_mono_ns,
                    "send_utc_ns": sample.send_utc_ns,
                    "recv_mono_ns": sample.recv_mono_ns,
                    "recv_utc_ns": sample.recv_utc_ns,
                    "host_utc_ns": sample.host_utc_ns,
                    "host_time": host_time.isoformat(),
                    "rtt_ns": sample.rtt_ns,
                    "offset_ns": sample.offset_ns,
                }
            )
    best = min(samples, key=lambda s: s.rtt_ns)
    return ClockOffset(
        host=host,
        phase=phase,
        offset_ns=best.offset_ns,
        uncertainty_ns=(best.rtt_ns + 1) // 2,
        at_mono_ns=(best.send_mono_ns + best.recv_mono_ns) // 2,
        samples=len(samples),
    )


def drift_ppm(before: ClockOffset, after: ClockOffset) -> float | None:
    """How fast the host's clock ran against ours between the two estimates (ppm)."""
    elapsed = after.at_mono_ns - before.at_mono_ns
    if elapsed <= 0:
        return None
    return (after.offset_ns - before.offset_ns) / elapsed * 1e6

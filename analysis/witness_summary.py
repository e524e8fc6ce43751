"""The witnesses no peer has, as summary.json shows them (docs/summary-format.md).

``tcp_summary`` is the ``tcp`` block: the connect outages per port
(``analysis.tcp.analyse_connects``) and the TCP stream's stall per direction
and survival (``analysis.tcp.analyse_stream``), with the stall beyond the ICMP
blackout and, when TCP's backoff made the stall outlast the blackout, the one
line that says why. ``analyse_witnesses`` reads the witness files once (the
derive pipeline keeps it as ``Derived.witnesses``), with the direction
probe's edges (``analysis.direction``): when inbound and outbound came back,
for the decomposition's split of the reconvergence (``analysis.derive``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.analysis.direction import (
    RestoreEdge,
    analyse_direction,
    load_udp_direction,
)
from migration_blackout.analysis.guest import load_heartbeats
from migration_blackout.analysis.tcp import (
    ConnectOutage,
    PortConnects,
    Stall,
    StreamAnalysis,
    analyse_connects,
    analyse_stream,
    beyond_blackout,
    load_tcp_connect,
    load_tcp_stream,
)
from migration_blackout.runformat import (
    HEARTBEAT,
    TCP_CONNECT,
    TCP_STREAM,
    UDP_DIRECTION,
    utc_iso,
)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _port_key(target: str, port: int) -> str:
    return f"[{target}]:{port}" if ":" in target else f"{target}:{port}"


def _connect_outage_json(outage: ConnectOutage) -> dict[str, Any]:
    after = outage.first_connected_after_end_utc_ns
    return {
        "lower_ms": _ms(outage.lower_ms),
        "upper_ms": _ms(outage.upper_ms),
        "failed": outage.failed,
        "outcomes": dict(outage.outcomes),
        "open_start": outage.open_start,
        "open_end": outage.open_end,
        "first_failed_utc": utc_iso(outage.first_failed_start_utc_ns),
        "first_connected_after_utc": None if after is None else utc_iso(after),
        "first_failed_start_mono_ns": outage.first_failed_start_mono_ns,
        "last_failed_start_mono_ns": outage.last_failed_start_mono_ns,
        "last_connected_before_start_mono_ns": outage.last_connected_before_start_mono_ns,
        "first_connected_after_end_mono_ns": outage.first_connected_after_end_mono_ns,
    }


def _port_json(port: PortConnects) -> dict[str, Any]:
    longest = port.longest
    return {
        "target": port.target,
        "port": port.port,
        "attempts": port.attempts,
        "outcomes": dict(port.outcomes),
        "interval_ms": _ms(port.interval_ms),
        "connect_ms_median": _ms(port.connect_ms_median),
        "longest": None if longest is None else _connect_outage_json(longest),
        "outages": [_connect_outage_json(outage) for outage in port.outages],
    }


def _stall_json(stall: Stall | None) -> dict[str, Any] | None:
    if stall is None:
        return None
    return {
        "stall_ms": _ms(stall.stall_ms),
        "lower_ms": _ms(stall.lower_ms),
        "upper_ms": _ms(stall.upper_ms),
        "open_end": stall.open_end,
        "same_connection": stall.same_connection,
        "start_mono_ns": stall.start_mono_ns,
        "end_mono_ns": stall.end_mono_ns,
        "before_seq": stall.before_seq,
        "after_seq": stall.after_seq,
        "delivered": stall.delivered,
    }


def backoff_explanation(stall_ms: float, direction: str, blackout_ms: float) -> str:
    """The one line that says why a TCP stall outlasted the ICMP blackout."""
    sender = "the harness" if direction == "inbound" else "the guest"
    return (
        f"The TCP stream stalled {stall_ms:.0f} ms ({direction}), "
        f"{stall_ms - blackout_ms:.0f} ms longer than the ICMP blackout "
        f"({blackout_ms:.0f} ms): TCP retransmits what the outage dropped at "
        f"doubling timeouts (200 ms, 400 ms, 800 ms, ...), so {sender}'s data "
        "waited for the next retransmission after the network was back."
    )


def _stream_json(stream: StreamAnalysis, blackout: Mapping[str, Any] | None) -> dict[str, Any]:
    stall = stream.stall
    beyond = None
    explanation = None
    if stall is not None and blackout is not None and blackout.get("lower_ms") is not None:
        estimate = blackout.get("estimate_ms")
        figures = beyond_blackout(
            stall,
            float(blackout["lower_ms"]),
            None if blackout.get("upper_ms") is None else float(blackout["upper_ms"]),
            float(estimate if estimate is not None else blackout["lower_ms"]),
        )
        beyond = {
            "beyond_ms": _ms(figures.beyond_ms),
            "lower_ms": _ms(figures.lower_ms),
            "upper_ms": _ms(figures.upper_ms),
            "blackout_ms": _ms(figures.blackout_ms),
            "blackout_source": blackout.get("source"),
        }
        if figures.lower_ms > 0:  # longer than the blackout whatever the truth in the bounds
            explanation = backoff_explanation(stall.stall_ms, stall.direction, figures.blackout_ms)
    return {
        "interval_ms": _ms(stream.interval_ms),
        "connections": stream.connections,
        "survived": stream.survived,
        "closed_reasons": list(stream.closed_reasons),
        "failed_connects": stream.failed_connects,
        "inbound": _stall_json(stream.inbound),
        "outbound": _stall_json(stream.outbound),
        "inbound_undelivered": stream.inbound_undelivered,
        "stall_ms": None if stall is None else _ms(stall.stall_ms),
        "stall_upper_ms": None if stall is None else _ms(stall.upper_ms),
        "stall_direction": None if stall is None else stall.direction,
        "beyond_blackout": beyond,
        "explanation": explanation,
    }


@dataclass(frozen=True)
class WitnessAnalysis:
    """The witnesses of a run, each raw file read once (the derive pipeline's
    ``Derived.witnesses``): the TCP connects per port (None without
    ``--tcp-connect``), the TCP stream (None without one, or with no rows) and
    when inbound and outbound came back after the direction probe's longest
    outage (None without a direction probe, or no outage)."""

    connects: list[PortConnects] | None = None
    stream: StreamAnalysis | None = None
    has_stream: bool = False  # the run had a TCP stream file (even an empty one)
    restored: tuple[RestoreEdge | None, RestoreEdge | None] | None = None


def analyse_witnesses(run_dir: str | os.PathLike[str]) -> WitnessAnalysis:
    """Read the run's witness files once and analyse them (the direction
    probe's inbound edge also reads the guest agent's heartbeats)."""
    path = Path(run_dir)
    connects = None
    if (path / TCP_CONNECT.path).is_file():
        connects = analyse_connects(load_tcp_connect(path))
    stream = None
    has_stream = (path / TCP_STREAM.path).is_file()
    if has_stream:
        header, rows = load_tcp_stream(path)
        interval_s = header.get("interval_s")
        if isinstance(interval_s, int | float) and len(rows):
            stream = analyse_stream(rows, interval_s=float(interval_s))
    return WitnessAnalysis(
        connects=connects,
        stream=stream,
        has_stream=has_stream,
        restored=_direction_restored(path),
    )


def tcp_summary(
    witnesses: WitnessAnalysis, *, blackout: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The ``tcp`` block of summary.json; None when the run had neither TCP witness.
    ``blackout``: summary.json's ``blackout`` block (the stall is set beside it)."""
    if witnesses.connects is None and not witnesses.has_stream:
        return None
    connect = None
    if witnesses.connects is not None:
        connect = {_port_key(p.target, p.port): _port_json(p) for p in witnesses.connects}
    stream = None if witnesses.stream is None else _stream_json(witnesses.stream, blackout)
    return {"connect": connect, "stream": stream}


def _direction_restored(path: Path) -> tuple[RestoreEdge | None, RestoreEdge | None] | None:
    """When inbound and outbound came back after the direction probe's longest
    outage (harness clock), or None when the run has no direction probe."""
    if not (path / UDP_DIRECTION.path).is_file():
        return None
    _, rows = load_udp_direction(path)
    if not len(rows):
        return None
    heartbeats = load_heartbeats(path) if (path / HEARTBEAT.path).is_file() else None
    longest = analyse_direction(rows, heartbeats=heartbeats).longest
    if longest is None:
        return None
    return longest.inbound_restored, longest.outbound_restored


@dataclass(frozen=True)
class WitnessBar:
    """One row of the timeline plot's witness lane, on the harness clock: the
    interval certainly inside (``lower``; None: none proven) and the one that
    may be (``upper``)."""

    label: str
    upper_start_ns: int
    upper_end_ns: int
    lower_start_ns: int | None = None
    lower_end_ns: int | None = None


def witness_bars(witnesses: WitnessAnalysis) -> list[WitnessBar]:
    """The TCP connect outage per port, the stream's stall per direction and
    when each direction came back, for the plot (empty without witnesses)."""
    bars: list[WitnessBar] = []
    for port in witnesses.connects or ():
        outage = port.longest
        if outage is None:
            continue
        before = outage.last_connected_before_start_mono_ns
        after = outage.first_connected_after_end_mono_ns
        bars.append(
            WitnessBar(
                f"connect :{port.port}",
                outage.first_failed_start_mono_ns if before is None else before,
                outage.last_failed_start_mono_ns if after is None else after,
                outage.first_failed_start_mono_ns,
                outage.last_failed_start_mono_ns,
            )
        )
    stream = witnesses.stream
    if stream is not None:
        interval_ns = round(stream.interval_ms * 1e6)
        for stall in (stream.inbound, stream.outbound):
            if stall is not None:
                bars.append(
                    WitnessBar(
                        f"stream {stall.direction[:-5]}",
                        stall.start_mono_ns,
                        stall.end_mono_ns,
                        stall.start_mono_ns + interval_ns,
                        stall.end_mono_ns,
                    )
                )
    for edge in witnesses.restored or ():
        if edge is not None:
            label = f"{edge.direction[:-5]} back"
            bars.append(WitnessBar(label, edge.after_mono_ns, edge.by_mono_ns))
    return bars

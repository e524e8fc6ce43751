"""The witnesses no peer has, from the harness's side: TCP connects to the
guest's ports (``[probes.tcp_connect]``, ``--tcp-connect PORT``; no agent
needed) and, with the guest agent, its direction probe and TCP stream
(``[probes.witnesses]``, ``--witnesses``). ``measure run`` and ``measure
watch`` start them the same way: created with their raw files and
registered in the manifest, run by the run's TaskGroup; the agent's two
start once the agent is there (before, every probe would be a loss).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from migration_blackout.probes.tcp_connect import TcpConnectProbe
from migration_blackout.probes.tcp_stream import TcpStreamProbe
from migration_blackout.probes.udp_direction import UdpDirectionProbe
from migration_blackout.runformat import TCP_CONNECT, TCP_STREAM, UDP_DIRECTION

from .config import ProbeConfig
from .runwriter import RunWriter


@dataclass(frozen=True)
class WitnessStats:
    """For progress lines: what failed last, per witness."""

    connect_failing: dict[str, int]  # "target:port" -> current failure streak
    direction_lost: int | None
    stream_connected: bool | None


class Witnesses:
    """The witness probes of one run (possibly none: then ``run`` returns at once)."""

    def __init__(
        self,
        run: RunWriter,
        probes: ProbeConfig,
        *,
        targets: Sequence[str],
        token: str | None,
    ) -> None:
        self.agent_ready = asyncio.Event()  # set by the caller once the agent runs
        self._agent_stop = asyncio.Event()  # the agent's witnesses end (before the agent)
        self._agent_done = asyncio.Event()
        self.connect: TcpConnectProbe | None = None
        self.direction: UdpDirectionProbe | None = None
        self.stream: TcpStreamProbe | None = None
        try:
            if probes.tcp_connect_ports and targets:
                self.connect = TcpConnectProbe.create(
                    run.path,
                    targets=list(targets),
                    ports=list(probes.tcp_connect_ports),
                    interval_s=probes.tcp_connect_interval_s,
                    timeout_s=probes.tcp_connect_timeout_s,
                )
                run.register_probe(TCP_CONNECT.probe, TCP_CONNECT.path, format="csv")
            if probes.witnesses and token is not None and targets:
                agent: dict[str, Any] = {
                    "target": targets[0],
                    "port": probes.witness_port,
                    "token": token,
                    "interval_s": probes.witness_interval_s,
                }
                self.direction = UdpDirectionProbe.create(run.path, **agent)
                run.register_probe(UDP_DIRECTION.probe, UDP_DIRECTION.path, format="csv")
                self.stream = TcpStreamProbe.create(run.path, **agent)
                run.register_probe(TCP_STREAM.probe, TCP_STREAM.path, format="csv")
        except BaseException:
            self.close()
            raise

    @property
    def probes(self) -> list[Any]:
        return [p for p in (self.connect, self.direction, self.stream) if p is not None]

    @property
    def ready(self) -> list[asyncio.Event]:
        return [probe.ready for probe in self.probes]

    def not_ready(self) -> list[str]:
        """The names of the witness probes not ready yet (for the error)."""
        named = (
            ("tcp_connect", self.connect),
            ("udp_direction", self.direction),
            ("tcp_stream", self.stream),
        )
        return [name for name, probe in named if probe is not None and not probe.ready.is_set()]

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop``; the agent's witnesses from ``agent_ready`` until
        ``stop`` or ``finish_agent_witnesses()``."""
        async with asyncio.TaskGroup() as tasks:
            if self.connect is not None:
                tasks.create_task(self.connect.run(stop))
            tasks.create_task(self._agent_witnesses(stop))

    async def finish_agent_witnesses(self) -> None:
        """End the agent's witnesses and wait until they wrote their last rows:
        before the agent stops, or the stream would seem to break."""
        self._agent_stop.set()
        await self._agent_done.wait()

    async def _agent_witnesses(self, stop: asyncio.Event) -> None:
        probes = [p for p in (self.direction, self.stream) if p is not None]
        try:
            if probes and await _first(self.agent_ready, stop, self._agent_stop):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(_relay(stop, self._agent_stop))
                    for probe in probes:
                        tasks.create_task(probe.run(self._agent_stop))
        finally:
            self._agent_done.set()

    def stats(self) -> WitnessStats:
        failing = {}
        if self.connect is not None:
            for (target, port), stats in self.connect.stats().items():
                failing[f"{target}:{port}"] = stats.current_failure_streak
        return WitnessStats(
            connect_failing=failing,
            direction_lost=None if self.direction is None else self.direction.stats().lost,
            stream_connected=None if self.stream is None else self.stream.stats().connected,
        )

    def close(self) -> None:
        for probe in self.probes:
            probe.sink.close()


async def _first(wanted: asyncio.Event, *others: asyncio.Event) -> bool:
    """Wait until one of the events is set; whether ``wanted`` was."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (wanted, *others)]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
    return wanted.is_set() and not any(e.is_set() for e in others)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    """Set ``target`` when ``source`` is set (or return when ``target`` is)."""
    await _first(source, target)
    target.set()

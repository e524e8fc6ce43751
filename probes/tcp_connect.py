"""The TCP connect probe: can a new connection be made to the guest right now?

No agent needed: every ``interval_s`` the probe opens a TCP connection to
each port the user names on the guest (``measure run --tcp-connect 3389``,
Remote Desktop on a Windows guest) and closes it again as soon as it is
established. Every attempt is one row with both clocks at its start and at
its end, so the window in which no new connection could be made is bounded
from both sides, like the ICMP outages.

An attempt that is not established within ``timeout_s`` (default 0.5 s) is a
``timeout``. The default stays below Linux's first SYN retransmission (1 s),
so an attempt stands for the network at the moment it began: a SYN lost in
an outage is not rescued by a retransmission that happens to fall after it.

Rows (``raw/tcp_connect.csv``; columns ``TCP_CONNECT.columns``), written when
the attempt resolves (not in start order; sort by ``target, port, n``):

``connected``   the handshake completed (``connect_ns`` after the start)
``refused``     the guest answered with a reset: it is reachable, nothing
                listens on the port
``timeout``     not established within ``timeout_s``
``unreachable`` the kernel reported the host or network unreachable (an ICMP
                error came back, or no route)
``error``       any other failure (``errno``, ``detail``)
``unresolved``  the run stopped while the attempt was in flight
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_blackout.runformat import TCP_CONNECT

from .clock import ClockPair, clock_pair
from .schedule import send_on_schedule
from .sink import CsvSink, with_new_csv

DEFAULT_TIMEOUT_S = 0.5
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}


@dataclass
class PortStats:
    """Counters of one (target, port) so far."""

    attempts: int = 0
    connected: int = 0
    failed: int = 0
    current_failure_streak: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class _Attempt:
    def __init__(self, target: str, port: int, n: int, sock: socket.socket, start: ClockPair):
        self.target = target
        self.port = port
        self.n = n
        self.sock = sock
        self.start = start
        self.timer: asyncio.TimerHandle | None = None


class TcpConnectProbe:
    """Connect to every ``ports`` of every ``targets`` every ``interval_s``; one
    row per attempt into ``sink`` (columns ``TCP_CONNECT.columns``). Same shape
    as every probe: ``ready``, ``run(stop)``; ``stats()`` per (target, port)."""

    def __init__(
        self,
        *,
        targets: Sequence[str],
        ports: Sequence[int],
        sink: CsvSink,
        interval_s: float = 0.05,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not targets or not ports:
            raise ValueError("at least one target and one port are needed")
        if any(not 0 < port < 65536 for port in ports):
            raise ValueError(f"ports must be 1-65535: {list(ports)}")
        if not interval_s >= 0.001:
            raise ValueError(f"interval_s={interval_s!r}: at least 1 ms")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive")
        if tuple(sink.columns) != TCP_CONNECT.columns:
            raise ValueError("the sink's columns must be TCP_CONNECT.columns")
        self.targets = [_resolve(target) for target in targets]
        self.ports = list(dict.fromkeys(int(port) for port in ports))
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.sink = sink
        self.ready = asyncio.Event()
        self._in_flight: set[_Attempt] = set()
        self._stats = {(t[0], p): PortStats() for t in self.targets for p in self.ports}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Event | None = None  # set when the last attempt in flight ends

    @classmethod
    def create(
        cls, run_dir: Path, *, extra_meta: Mapping[str, Any] | None = None, **settings: Any
    ) -> TcpConnectProbe:
        """A probe writing a new ``raw/tcp_connect.csv`` in ``run_dir``."""
        meta = {
            "targets": [_resolve(t)[0] for t in settings["targets"]],
            "ports": [int(p) for p in settings["ports"]],
            "interval_s": float(settings.get("interval_s", 0.05)),
            "timeout_s": float(settings.get("timeout_s", DEFAULT_TIMEOUT_S)),
            "start_stamp": "clocks read immediately before connect()",
            "end_stamp": "clocks read when the event loop saw the socket writable",
            **(extra_meta or {}),
        }
        return with_new_csv(
            Path(run_dir) / TCP_CONNECT.path,
            lambda sink: cls(sink=sink, **settings),
            probe=TCP_CONNECT.probe,
            columns=TCP_CONNECT.columns,
            meta=meta,
        )

    def stats(self) -> dict[tuple[str, int], PortStats]:
        return dict(self._stats)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect on schedule until ``stop`` is set; attempts in flight then get
        until their own deadline, and whatever remains is ``unresolved``."""
        self._loop = asyncio.get_running_loop()
        try:
            await send_on_schedule(max(1, round(self.interval_s * 1e9)), stop, self._start_all)
            if self._in_flight:
                self._idle = asyncio.Event()
                # Every attempt ends by its own deadline; this bounds the wait too.
                async with asyncio.timeout(self.timeout_s + 1.0):
                    await self._idle.wait()
        finally:
            for attempt in list(self._in_flight):
                self._finish(attempt, "unresolved")
            self.sink.flush()

    def _start_all(self, n: int, _due_ns: int) -> None:
        for address, family in self.targets:
            for port in self.ports:
                self._start(address, family, port, n)
        if not self.ready.is_set():
            self.ready.set()

    def _start(self, address: str, family: int, port: int, n: int) -> None:
        loop = self._loop
        assert loop is not None
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        start = clock_pair()
        attempt = _Attempt(address, port, n, sock, start)
        code = sock.connect_ex((address, port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._finish(attempt, _outcome(code), code)
            return
        self._in_flight.add(attempt)
        loop.add_writer(sock.fileno(), self._writable, attempt)
        attempt.timer = loop.call_at(loop.time() + self.timeout_s, self._expire, attempt)

    def _writable(self, attempt: _Attempt) -> None:
        code = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(attempt, "connected" if code == 0 else _outcome(code), code or None)

    def _expire(self, attempt: _Attempt) -> None:
        self._finish(attempt, "timeout")

    def _finish(self, attempt: _Attempt, outcome: str, code: int | None = None) -> None:
        end = clock_pair()
        if attempt in self._in_flight:
            self._in_flight.discard(attempt)
            assert self._loop is not None
            self._loop.remove_writer(attempt.sock.fileno())
            if not self._in_flight and self._idle is not None:
                self._idle.set()
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.sock.close()
        stats = self._stats[(attempt.target, attempt.port)]
        stats.attempts += 1
        stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        if outcome == "connected":
            stats.connected += 1
            stats.current_failure_streak = 0
        elif outcome != "unresolved":
            stats.failed += 1
            stats.current_failure_streak += 1
        self.sink.write_row(
            (
                attempt.target,
                attempt.port,
                attempt.n,
                outcome,
                attempt.start.mono_ns,
                attempt.start.utc_ns,
                end.mono_ns,
                end.utc_ns,
                end.mono_ns - attempt.start.mono_ns if outcome == "connected" else None,
                None if not code else errno.errorcode.get(code, str(code)),
                None if not code else os.strerror(code),
            )
        )
        self.sink.flush()


def _outcome(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return "refused"
    if code in _UNREACHABLE:
        return "unreachable"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "error"


def _resolve(target: str) -> tuple[str, int]:
    """(address, family) of a target: resolved once, at the start."""
    family, _, _, _, sockaddr = socket.getaddrinfo(target, None, type=socket.SOCK_STREAM)[0]
    return str(sockaddr[0]), family

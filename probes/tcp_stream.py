"""The TCP stream probe: one long-lived connection to the guest agent, what an
application's connection lives through during a migration.

The harness connects to the agent's ``--witness-port`` (TCP), says hello
(authenticated with the run token, asking for ``interval_s``), then sends a
small data frame every ``interval_s``; the agent sends a tick every
``interval_s`` of its own, listing the data frames it received since the
previous tick with the guest's receive stamp of each (``probes/guest_agent.py``,
version 1). So both directions are measured on the receiving side: inbound
(harness -> guest) on the guest's clock, outbound (guest -> harness) on the
harness's. TCP retransmits whatever the network drops, with its exponential
backoff, so after an outage data arrives late rather than never: the stall
an application feels, often longer than the outage itself.

When the connection breaks the probe records why and connects again every
``reconnect_s``; a connection that lasts the whole run *survived*.

Rows (``raw/tcp_stream.csv``; columns ``TCP_STREAM.columns``), by ``kind``:

``in``        a data frame: ``seq``, ``send_*`` (harness), ``guest_mono_ns`` (when
              the agent read it, guest clock), ``recv_*`` (when the tick that
              reported it arrived); written when reported, or at the end of
              the connection with no guest or recv stamps (never reported:
              lost with the connection, or the run ended first)
``out``       a tick: ``seq``, ``guest_mono_ns`` / ``guest_utc_ns`` (when the agent
              sent it), ``recv_*`` (when the harness read it)
``connected`` the agent's welcome arrived: ``send_*`` when the connect began,
              ``recv_*`` when the welcome came, ``detail`` the agent id
``closed``    the connection ended (``recv_*``; ``detail``: ``eof``, an errno
              name, ``stopped`` at the end of the run)
``failed``    a connect attempt failed (``send_*``, ``recv_*``, ``detail``)

``conn`` numbers the connections of the run (0, 1, ...). ``recv_*`` are
stamps taken when the event loop read the bytes (no kernel stamps on TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.runformat import TCP_STREAM

from .clock import ClockPair, clock_pair
from .guest_agent import (
    STREAM_DATA,
    STREAM_ECHO,
    STREAM_FRAME_HEAD,
    STREAM_MAX_FRAME,
    STREAM_TICK,
    STREAM_WELCOME,
    WITNESS_DEFAULT_PORT,
    WITNESS_VERSION,
    stream_frame,
    stream_hello,
    welcome_mac,
)
from .schedule import send_on_schedule
from .sink import CsvSink, with_new_csv

CONNECT_TIMEOUT_S = 3.0
WELCOME_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class StreamStats:
    connections: int
    connected: bool
    sent: int
    echoed: int
    ticks: int


class _Connection:
    def __init__(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer
        self.unreported: dict[int, ClockPair] = {}  # data seq -> send clocks


class TcpStreamProbe:
    """One stream to the agent at ``target``:``port``; one row per frame and
    connection event into ``sink`` (columns ``TCP_STREAM.columns``).
    ``ready`` is set once the agent has welcomed the first connection."""

    def __init__(
        self,
        *,
        target: str,
        token: str,
        sink: CsvSink,
        port: int = WITNESS_DEFAULT_PORT,
        interval_s: float = 0.01,
        reconnect_s: float = 1.0,
    ) -> None:
        if not interval_s >= 0.001:
            raise ValueError(f"interval_s={interval_s!r}: at least 1 ms")
        if tuple(sink.columns) != TCP_STREAM.columns:
            raise ValueError("the sink's columns must be TCP_STREAM.columns")
        self.target = target
        self.port = port
        self.interval_s = float(interval_s)
        self.reconnect_s = reconnect_s
        self.sink = sink
        self._key = token.encode("ascii")
        self.session = random.getrandbits(64)
        self.ready = asyncio.Event()
        self._connection: _Connection | None = None
        self._connections = 0
        self._sent = 0
        self._echoed = 0
        self._ticks = 0

    @classmethod
    def create(
        cls, run_dir: Path, *, extra_meta: Mapping[str, Any] | None = None, **settings: Any
    ) -> TcpStreamProbe:
        """A probe writing a new ``raw/tcp_stream.csv`` in ``run_dir``."""
        meta = {
            "target": settings["target"],
            "port": int(settings.get("port", WITNESS_DEFAULT_PORT)),
            "interval_s": float(settings.get("interval_s", 0.01)),
            "reconnect_s": float(settings.get("reconnect_s", 1.0)),
            "witness_version": WITNESS_VERSION,
            "recv_stamp": "event loop, when the bytes were read",
            **(extra_meta or {}),
        }
        return with_new_csv(
            Path(run_dir) / TCP_STREAM.path,
            lambda sink: cls(sink=sink, **settings),
            probe=TCP_STREAM.probe,
            columns=TCP_STREAM.columns,
            meta=meta,
        )

    def stats(self) -> StreamStats:
        return StreamStats(
            self._connections,
            self._connection is not None,
            self._sent,
            self._echoed,
            self._ticks,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a stream open and send on schedule until ``stop`` is set."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_connected(stop))
                tasks.create_task(
                    send_on_schedule(max(1, round(self.interval_s * 1e9)), stop, self._send)
                )
        finally:
            if self._connection is not None:
                self._close(self._connection, "stopped")
            self.sink.flush()

    # -- the connection ----------------------------------------------------------

    async def _keep_connected(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            connection = await self._connect()
            if connection is not None:
                self._connection = connection
                reason = await self._read_ticks(connection, stop)
                self._close(connection, reason)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.reconnect_s):
                    await stop.wait()

    async def _connect(self) -> _Connection | None:
        number = self._connections
        self._connections += 1
        began = clock_pair()
        nonce = random.getrandbits(64)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self.target, self.port)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            writer.write(stream_hello(self._key, self.session, self._interval_us, nonce))
            async with asyncio.timeout(WELCOME_TIMEOUT_S):
                kind, payload = await _read_frame(reader)
            welcomed = clock_pair()
            if kind != ord("W") or len(payload) != STREAM_WELCOME.size + 32:
                raise ConnectionError("the agent did not welcome the stream")
            body, mac = payload[: STREAM_WELCOME.size], payload[STREAM_WELCOME.size :]
            if not hmac.compare_digest(mac, welcome_mac(self._key, nonce, body)):
                raise ConnectionError("the welcome is not signed with the run token")
        except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as error:
            if writer is not None:
                writer.close()
            self._row("failed", number, send=began, recv=clock_pair(), detail=_reason(error))
            return None
        _, agent_id, _, _ = STREAM_WELCOME.unpack(body)
        self._row("connected", number, send=began, recv=welcomed, detail=f"{agent_id:016x}")
        self.ready.set()
        return _Connection(number, reader, writer)

    @property
    def _interval_us(self) -> int:
        return max(1, round(self.interval_s * 1e6))

    async def _read_ticks(self, connection: _Connection, stop: asyncio.Event) -> str:
        """Read ticks until the connection ends or ``stop``; why it ended."""
        reading = asyncio.ensure_future(_read_frame(connection.reader))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {reading, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if reading not in done:
                    return "stopped"
                try:
                    kind, payload = reading.result()
                except asyncio.IncompleteReadError:
                    return "eof"
                except (OSError, ConnectionError, ValueError) as error:
                    return _reason(error)
                at = clock_pair()
                if kind == ord("T"):
                    self._tick(connection, payload, at)
                reading = asyncio.ensure_future(_read_frame(connection.reader))
        finally:
            for future in (reading, stopping):
                if not future.done():
                    future.cancel()
                    with contextlib.suppress(BaseException):
                        await future

    def _tick(self, connection: _Connection, payload: bytes, at: ClockPair) -> None:
        seq, guest_mono, guest_utc, count = STREAM_TICK.unpack_from(payload)
        self._ticks += 1
        self._row(
            "out",
            connection.number,
            seq=seq,
            guest_mono=guest_mono,
            guest_utc=guest_utc,
            recv=at,
        )
        offset = STREAM_TICK.size
        for _ in range(min(count, (len(payload) - offset) // STREAM_ECHO.size)):
            data_seq, guest_recv = STREAM_ECHO.unpack_from(payload, offset)
            offset += STREAM_ECHO.size
            sent = connection.unreported.pop(data_seq, None)
            if sent is None:
                continue  # not ours (or reported twice): nothing to pair it with
            self._echoed += 1
            self._row(
                "in", connection.number, seq=data_seq, send=sent, guest_mono=guest_recv, recv=at
            )
        self.sink.flush()

    def _send(self, seq: int, _due_ns: int) -> None:
        connection = self._connection
        if connection is None or connection.writer.is_closing():
            return
        at = clock_pair()
        connection.writer.write(stream_frame(b"D", STREAM_DATA.pack(seq, at.mono_ns, at.utc_ns)))
        connection.unreported[seq] = at
        self._sent += 1

    def _close(self, connection: _Connection, reason: str) -> None:
        if self._connection is connection:
            self._connection = None
        for seq, sent in sorted(connection.unreported.items()):
            self._row("in", connection.number, seq=seq, send=sent)
        connection.unreported.clear()
        self._row("closed", connection.number, recv=clock_pair(), detail=reason)
        connection.writer.close()
        self.sink.flush()

    def _row(
        self,
        kind: str,
        conn: int,
        *,
        seq: int | None = None,
        send: ClockPair | None = None,
        guest_mono: int | None = None,
        guest_utc: int | None = None,
        recv: ClockPair | None = None,
        detail: str | None = None,
    ) -> None:
        self.sink.write_row(
            (
                kind,
                conn,
                seq,
                None if send is None else send.mono_ns,
                None if send is None else send.utc_ns,
                guest_mono,
                guest_utc,
                None if recv is None else recv.mono_ns,
                None if recv is None else recv.utc_ns,
                detail,
            )
        )


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(STREAM_FRAME_HEAD.size)
    length, kind = STREAM_FRAME_HEAD.unpack(head)
    if not 1 <= length <= STREAM_MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes")
    return kind, await reader.readexactly(length - 1)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError) and error.errno:
        return errno.errorcode.get(error.errno, str(error))
    return f"{type(error).__name__}: {error}"[:200]

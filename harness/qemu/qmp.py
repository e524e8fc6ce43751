"""A small asyncio client for QEMU's machine protocol (QMP).

One ``QmpClient`` is one connection to one QEMU monitor, over a UNIX socket
(``-chardev socket,path=...,server=on``) or TCP. ``connect`` reads the
greeting and negotiates capabilities; then:

* ``execute(command, arguments)`` sends a command and returns its ``return``
  value, or raises ``QmpCommandError`` with QEMU's error class and text.
  Commands may be issued concurrently: each carries an ``id`` and its answer
  is matched by it.
* Events (``STOP``, ``RESUME``, ``MIGRATION``, ``MIGRATION_PASS``, ...) are
  kept, in arrival order, as ``QmpEvent`` with QEMU's own timestamp (the
  host's wall clock when QEMU emitted the event, microsecond resolution)
  beside the harness clocks at arrival. ``events`` is the whole log;
  ``next_event`` / ``wait_event`` wait for what comes next.

The client owns exactly one task, the reader; ``close()`` (or leaving
``async with``) cancels and awaits it. A connection that QEMU closes (it
quit, or was killed) fails every pending command with ``QmpConnectionError``
and ends the event stream.

Typed wrappers cover what the lab and the migration driver need
(``query_status``, ``query_migrate``, ``migrate``, ``migrate_cancel``,
``migrate_set_parameters``, ``migrate_set_capabilities``, ``announce_self``,
``pmemsave``, ``cont``, ``stop``, ``quit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_blackout.probes.clock import ClockPair, clock_pair

_READ_LIMIT = 16 * 1024 * 1024  # one QMP message per line; query results can be large


class QmpError(Exception):
    """Base class of everything this module raises."""


class QmpConnectionError(QmpError):
    """The monitor could not be reached, or the connection closed."""


class QmpProtocolError(QmpError):
    """QEMU said something this client does not understand."""


class QmpTimeoutError(QmpError, TimeoutError):
    """A command or an awaited event did not arrive in time."""


class QmpCommandError(QmpError):
    """QEMU refused or failed a command (its ``error`` answer)."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"{command}: {error_class}: {description}")
        self.command = command
        self.error_class = error_class
        self.description = description


@dataclass(frozen=True)
class QmpEvent:
    """One asynchronous event.

    ``qemu_utc_ns``: QEMU's timestamp (host wall clock, microsecond
    resolution, ns since the epoch). ``recv``: harness clocks when the line
    was read. ``qemu_mono_ns`` puts QEMU's stamp on the harness's monotonic
    clock (through the UTC-minus-monotonic offset read at arrival), so it can
    be compared with probe stamps.
    """

    name: str
    data: Mapping[str, Any]
    qemu_utc_ns: int
    recv: ClockPair

    @property
    def qemu_mono_ns(self) -> int:
        return self.qemu_utc_ns - self.recv.offset_ns

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.name,
            "data": dict(self.data),
            "qemu_utc_ns": self.qemu_utc_ns,
            "qemu_mono_ns": self.qemu_mono_ns,
            "recv_mono_ns": self.recv.mono_ns,
            "recv_utc_ns": self.recv.utc_ns,
        }


@dataclass(frozen=True)
class RunState:
    """``query-status``: ``status`` is QEMU's RunState (running, paused, inmigrate,
    postmigrate, finish-migrate, prelaunch, ...)."""

    status: str
    running: bool


@dataclass(frozen=True)
class RamStats:
    """The ``ram`` part of ``query-migrate`` (bytes, pages, bytes/s, Mbit/s as QEMU says)."""

    transferred: int
    remaining: int
    total: int
    duplicate: int
    normal: int
    normal_bytes: int
    dirty_sync_count: int
    dirty_pages_rate: int
    mbps: float
    precopy_bytes: int | None
    downtime_bytes: int | None

    @classmethod
    def from_qmp(cls, ram: Mapping[str, Any]) -> RamStats:
        def opt(name: str) -> int | None:
            value = ram.get(name)
            return None if value is None else int(value)

        return cls(
            transferred=int(ram.get("transferred", 0)),
            remaining=int(ram.get("remaining", 0)),
            total=int(ram.get("total", 0)),
            duplicate=int(ram.get("duplicate", 0)),
            normal=int(ram.get("normal", 0)),
            normal_bytes=int(ram.get("normal-bytes", 0)),
            dirty_sync_count=int(ram.get("dirty-sync-count", 0)),
            dirty_pages_rate=int(ram.get("dirty-pages-rate", 0)),
            mbps=float(ram.get("mbps", 0.0)),
            precopy_bytes=opt("precopy-bytes"),
            downtime_bytes=opt("downtime-bytes"),
        )


@dataclass(frozen=True)
class MigrationInfo:
    """``query-migrate``. Times in milliseconds as QEMU reports them; ``None``
    where QEMU left a field out (it fills ``downtime`` and ``total-time`` only
    once the migration completed, QEMU 7.2 even some time after)."""

    status: str  # none, setup, active, device, completed, failed, cancelling, cancelled, ...
    total_time_ms: int | None
    setup_time_ms: int | None
    downtime_ms: int | None
    expected_downtime_ms: int | None
    cpu_throttle_percentage: int | None
    ram: RamStats | None
    error_desc: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_qmp(cls, info: Mapping[str, Any]) -> MigrationInfo:
        def opt(name: str) -> int | None:
            value = info.get(name)
            return None if value is None else int(value)

        ram = info.get("ram")
        return cls(
            status=str(info.get("status", "none")),
            total_time_ms=opt("total-time"),
            setup_time_ms=opt("setup-time"),
            downtime_ms=opt("downtime"),
            expected_downtime_ms=opt("expected-downtime"),
            cpu_throttle_percentage=opt("cpu-throttle-percentage"),
            ram=None if ram is None else RamStats.from_qmp(ram),
            error_desc=info.get("error-desc"),
            raw=dict(info),
        )

    @property
    def finished(self) -> bool:
        """No further change will come (completed, failed or cancelled)."""
        return self.status in ("completed", "failed", "cancelled")


Address = str | Path | tuple[str, int]


def _qemu_stamp_ns(timestamp: Mapping[str, Any] | None) -> int:
    if not timestamp:
        return 0
    return (
        int(timestamp.get("seconds", 0)) * 1_000_000_000
        + int(timestamp.get("microseconds", 0)) * 1_000
    )


class QmpClient:
    """One QMP connection. Use ``async with await QmpClient.connect(...)`` or ``close()``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str,
        on_event: Callable[[QmpEvent], None] | None = None,
    ) -> None:
        self.name = name
        self.greeting: Mapping[str, Any] = {}
        self.events: list[QmpEvent] = []
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._event_arrived = asyncio.Condition()
        self._reader_task: asyncio.Task[None] | None = None
        self._closed_error: QmpConnectionError | None = None

    # -- lifetime -------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        address: Address,
        *,
        timeout_s: float = 10.0,
        on_event: Callable[[QmpEvent], None] | None = None,
    ) -> QmpClient:
        """Connect, read the greeting, negotiate capabilities.

        ``address``: a UNIX socket path, or ``(host, port)`` for TCP.
        ``on_event`` is called (on the event loop) for every event as it arrives.
        """
        name = str(address) if not isinstance(address, tuple) else f"{address[0]}:{address[1]}"
        try:
            async with asyncio.timeout(timeout_s):
                if isinstance(address, tuple):
                    reader, writer = await asyncio.open_connection(
                        address[0], address[1], limit=_READ_LIMIT
                    )
                else:
                    reader, writer = await asyncio.open_unix_connection(
                        str(address), limit=_READ_LIMIT
                    )
        except (OSError, TimeoutError) as exc:
            raise QmpConnectionError(f"cannot connect to QMP at {name}: {exc!r}") from None
        client = cls(reader, writer, name=name, on_event=on_event)
        try:
            async with asyncio.timeout(timeout_s):
                line = await reader.readline()
                if not line:
                    raise QmpConnectionError(f"QMP at {name} closed before its greeting")
                greeting = json.loads(line)
                if "QMP" not in greeting:
                    raise QmpProtocolError(f"QMP at {name}: not a greeting: {line[:200]!r}")
                client.greeting = greeting["QMP"]
                client._reader_task = asyncio.get_running_loop().create_task(
                    client._read_loop(), name=f"qmp-reader {name}"
                )
                await client.execute("qmp_capabilities")
        except TimeoutError:
            await client.close()
            raise QmpTimeoutError(f"QMP at {name} did not greet within {timeout_s} s") from None
        except (OSError, ValueError) as exc:
            await client.close()
            raise QmpConnectionError(f"QMP at {name} failed during the greeting: {exc!r}") from None
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def qemu_version(self) -> tuple[int, int, int]:
        qemu = self.greeting.get("version", {}).get("qemu", {})
        return int(qemu.get("major", 0)), int(qemu.get("minor", 0)), int(qemu.get("micro", 0))

    @property
    def connected(self) -> bool:
        return self._closed_error is None and self._reader_task is not None

    async def close(self) -> None:
        """Close the connection and stop the reader. Idempotent."""
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(QmpConnectionError(f"QMP connection to {self.name} closed"))
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    async def wait_closed(self, *, timeout_s: float | None = None) -> bool:
        """Wait until QEMU closed the connection (it quit or died); False after ``timeout_s``."""
        task = self._reader_task
        if task is None:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(task)
        except TimeoutError:
            return False
        return True

    async def __aenter__(self) -> QmpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reading --------------------------------------------------------------

    async def _read_loop(self) -> None:
        error = QmpConnectionError(f"QMP at {self.name}: QEMU closed the connection")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                recv = clock_pair()
                try:
                    message = json.loads(line)
                except ValueError:
                    error = QmpConnectionError(f"QMP at {self.name}: not JSON: {line[:200]!r}")
                    break
                if "event" in message:
                    await self._record_event(message, recv)
                    continue
                future = self._pending.pop(str(message.get("id")), None)
                if future is not None and not future.done():
                    future.set_result(message)
        except (OSError, ConnectionError) as exc:
            error = QmpConnectionError(f"QMP at {self.name}: {exc!r}")
        except asyncio.LimitOverrunError:
            error = QmpConnectionError(f"QMP at {self.name}: a message over {_READ_LIMIT} bytes")
        self._closed_error = error
        self._fail_pending(error)
        async with self._event_arrived:
            self._event_arrived.notify_all()

    async def _record_event(self, message: Mapping[str, Any], recv: ClockPair) -> None:
        event = QmpEvent(
            name=str(message["event"]),
            data=message.get("data") or {},
            qemu_utc_ns=_qemu_stamp_ns(message.get("timestamp")),
            recv=recv,
        )
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        async with self._event_arrived:
            self._event_arrived.notify_all()

    def _fail_pending(self, error: QmpConnectionError) -> None:
        if self._closed_error is None:
            self._closed_error = error
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # -- commands -------------------------------------------------------------

    async def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = 30.0,
    ) -> Any:
        """Run ``command``; its ``return`` value, or ``QmpCommandError``.

        ``timeout_s`` (None: no limit) bounds the wait for the answer; a late
        answer raises ``QmpTimeoutError`` (the command may still take effect).
        """
        if self._closed_error is not None:
            raise self._closed_error
        command_id = f"mb-{next(self._ids)}"
        message: dict[str, Any] = {"execute": command, "id": command_id}
        if arguments:
            message["arguments"] = dict(arguments)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()
        except (OSError, ConnectionError) as exc:
            self._pending.pop(command_id, None)
            raise QmpConnectionError(f"QMP at {self.name}: {command}: {exc!r}") from None
        try:
            async with asyncio.timeout(timeout_s):
                answer = await future
        except TimeoutError:
            self._pending.pop(command_id, None)
            raise QmpTimeoutError(
                f"QMP at {self.name}: no answer to {command} within {timeout_s} s"
            ) from None
        if "error" in answer:
            error = answer["error"]
            raise QmpCommandError(command, str(error.get("class")), str(error.get("desc")))
        return answer.get("return")

    # -- events ---------------------------------------------------------------

    async def wait_event(
        self,
        name: str | None = None,
        *,
        since: int = 0,
        predicate: Callable[[QmpEvent], bool] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, QmpEvent]:
        """The first event at index >= ``since`` of ``events`` that matches; waits if none yet.

        Returns ``(index, event)``; pass ``index + 1`` as ``since`` to wait for
        the next one. Raises ``QmpTimeoutError`` after ``timeout_s``, and
        ``QmpConnectionError`` if the connection closes first.
        """

        def match(event: QmpEvent) -> bool:
            return (name is None or event.name == name) and (predicate is None or predicate(event))

        try:
            async with asyncio.timeout(timeout_s), self._event_arrived:
                while True:
                    for index in range(since, len(self.events)):
                        if match(self.events[index]):
                            return index, self.events[index]
                    since = max(since, len(self.events))
                    if self._closed_error is not None:
                        raise self._closed_error
                    await self._event_arrived.wait()
        except TimeoutError:
            raise QmpTimeoutError(
                f"QMP at {self.name}: no {name or 'event'} within {timeout_s} s"
            ) from None

    # -- typed wrappers ----------------------------------------------------------

    async def query_status(self) -> RunState:
        result = await self.execute("query-status")
        return RunState(status=str(result["status"]), running=bool(result["running"]))

    async def query_migrate(self) -> MigrationInfo:
        return MigrationInfo.from_qmp(await self.execute("query-migrate"))

    async def migrate_set_parameters(self, parameters: Mapping[str, Any]) -> None:
        """``migrate-set-parameters`` with QEMU's names (``downtime-limit`` in ms,
        ``max-bandwidth`` in bytes/s, ``announce-rounds``, ...)."""
        await self.execute("migrate-set-parameters", parameters)

    async def query_migrate_parameters(self) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self.execute("query-migrate-parameters")
        return result

    async def migrate_set_capabilities(self, capabilities: Mapping[str, bool]) -> None:
        """``migrate-set-capabilities``, e.g. ``{"auto-converge": True, "events": True}``."""
        await self.execute(
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": name, "state": bool(state)}
                    for name, state in capabilities.items()
                ]
            },
        )

    async def migrate(self, uri: str) -> None:
        """Start an outgoing migration to ``uri`` (e.g. ``tcp:127.0.0.1:4444``); returns at once."""
        await self.execute("migrate", {"uri": uri})

    async def migrate_cancel(self) -> None:
        await self.execute("migrate_cancel")

    async def announce_self(
        self,
        *,
        initial_ms: int = 50,
        max_ms: int = 550,
        rounds: int = 5,
        step_ms: int = 100,
    ) -> None:
        """Make QEMU send RARP announcements for the guest's NICs (switches learn its port)."""
        await self.execute(
            "announce-self",
            {"initial": initial_ms, "max": max_ms, "rounds": rounds, "step": step_ms},
        )

    async def pmemsave(self, address: int, size: int, filename: Path) -> None:
        """Write guest-physical memory ``[address, address + size)`` to ``filename`` (a path
        QEMU opens; it runs as root in the lab)."""
        await self.execute(
            "pmemsave", {"val": address, "size": size, "filename": str(filename)}, timeout_s=120
        )

    async def cont(self) -> None:
        await self.execute("cont")

    async def stop(self) -> None:
        """Pause the guest; on a destination still waiting for its migration
        (``inmigrate``) it means "do not start the guest once it arrived"."""
        await self.execute("stop")

    async def quit(self, *, timeout_s: float = 10.0) -> None:
        """Ask QEMU to exit and wait (up to ``timeout_s``) until it closed the connection."""
        with contextlib.suppress(QmpConnectionError):
            await self.execute("quit", timeout_s=timeout_s)
        await self.wait_closed(timeout_s=timeout_s)

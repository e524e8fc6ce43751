"""QEMU over QMP: a real hypervisor in the loop.

Two QEMU processes, one running the guest, one started with ``-incoming``
waiting for it, each reachable on a QMP endpoint (UNIX socket or
``host:port``). The migration is QMP ``migrate`` on the source after
``migrate-set-parameters`` / capabilities from the config; the driver
(``harness.qemu.migration``) polls ``query-migrate`` every 20 ms and collects the
STOP and RESUME events with QEMU's own timestamps; all of it lands in
``raw/qemu_migration.jsonl`` as QEMU said it, beside QEMU's final
``downtime``, ``setup-time``, ``total-time`` and RAM statistics. QEMU
measures ``downtime`` on the source only; the analysis keeps it apart from
STOP -> RESUME.

QEMU's event timestamps are the host's wall clock. With QMP endpoints on this
machine (the QEMU lab), that is the harness's own clock: no alignment is
needed. QMP over TCP to another machine would need the clock alignment Hyper-V
gets from Get-Date; QMP has no such call, so such a setup is refused with a
clear message rather than measured wrongly.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.harness.qemu.migration import (
    MigrationError,
    MigrationResult,
    MigrationSettings,
    migrate,
)
from migration_blackout.harness.qemu.qmp import QmpClient, QmpError
from migration_blackout.probes.sink import JsonlSink
from migration_blackout.runformat import QEMU_MIGRATION

from ..clocksync import ClockOffset
from ..config import QemuConfig, RunConfig
from ..runwriter import RunWriter
from . import MigrationOutcome, PolledSide, PreflightError, PreparedRun, Recorder

LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
SHARED_MEMORY = Path("/dev/shm")


@dataclass(frozen=True)
class QemuSide:
    """One QEMU: a name for the reports, its QMP endpoint, and the URI it
    listens on for an incoming migration (when it is the destination)."""

    name: str
    qmp: str  # a UNIX socket path, or host:port
    incoming_uri: str | None = None


def migration_settings(qemu: QemuConfig) -> MigrationSettings:
    """``[qemu]``'s migration parameters as the driver takes them."""
    bandwidth = qemu.max_bandwidth_mib_s
    return MigrationSettings(
        downtime_limit_ms=qemu.downtime_limit_ms,
        max_bandwidth=None if bandwidth is None else int(bandwidth * 1024 * 1024),
        auto_converge=qemu.auto_converge,
    )


@contextlib.contextmanager
def ram_dump_folder() -> Iterator[Path]:
    """A private folder for ``verify_memory``'s RAM dumps (in memory where there is
    /dev/shm), removed after the ``with`` block."""
    with tempfile.TemporaryDirectory(
        prefix="mb-ram-", dir=SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
    ) as folder:
        yield Path(folder)


@contextlib.contextmanager
def configured_run(config: RunConfig) -> Iterator[PreparedRun]:
    """A QEMU run (or session) on the two QEMUs ``[qemu]`` names (a user's own),
    with the folder the memory comparison dumps into while it lasts."""
    with ram_dump_folder() as ram_dumps:
        first, second = (QemuSide(s.name, s.qmp, s.incoming_uri) for s in config.qemu.sides)
        backend = QemuBackend(
            (first, second),
            settings=migration_settings(config.qemu),
            verify_memory=ram_dumps if config.qemu.verify_memory else None,
        )
        yield PreparedRun(config=config, backend=backend)


def _address(qmp: str) -> str | tuple[str, int]:
    host, _, port = qmp.rpartition(":")
    if port.isdigit() and host and "/" not in qmp:
        if host.strip("[]") not in LOCAL_HOSTS:
            raise PreflightError(
                f"QMP endpoint {qmp} is on another machine: QEMU's timestamps would be on "
                f"its clock, which QMP cannot align; run the harness on the QEMU host"
            )
        return host.strip("[]"), int(port)
    return qmp


class QemuBackend:
    kind = "qemu"
    migration_name = "QMP migrate"

    def __init__(
        self,
        sides: tuple[QemuSide, QemuSide],
        *,
        settings: MigrationSettings | None = None,
        verify_memory: Path | None = None,
        memory_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.sides = {side.name: side for side in sides}
        self.settings = settings or MigrationSettings()
        self.verify_memory = verify_memory
        self.memory_bytes = memory_bytes
        self.clients: dict[str, QmpClient] = {}
        self.result: MigrationResult | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sides": [
                {"name": s.name, "qmp": s.qmp, "incoming_uri": s.incoming_uri}
                for s in self.sides.values()
            ],
            "settings": self.settings.to_json(),
            "verify_memory": self.verify_memory is not None,
        }

    async def open(self, record: Recorder) -> None:
        for name, side in self.sides.items():
            try:
                self.clients[name] = await QmpClient.connect(_address(side.qmp), timeout_s=10)
            except (QmpError, OSError) as exc:
                record("preflight", check="connect", host=name, ok=False, error=str(exc))
                raise PreflightError(
                    f"{name}: cannot reach QMP at {side.qmp}: {exc}; check that QEMU runs "
                    f"with -qmp unix:{side.qmp},server=on,wait=off"
                ) from None
            record("preflight", check="connect", host=name, ok=True)

    async def locate(self, record: Recorder) -> tuple[str, str]:
        """The QEMU that runs the guest is the source; the one waiting for an
        incoming migration (``inmigrate``) the destination."""
        statuses = {}
        for name, client in self.clients.items():
            status = (await client.query_status()).status
            statuses[name] = status
            record("preflight", check="locate", host=name, state=status)
        running = [n for n, s in statuses.items() if s == "running"]
        waiting = [n for n, s in statuses.items() if s == "inmigrate"]
        if len(running) != 1:
            found = ", ".join(f"{n}: {s}" for n, s in statuses.items())
            raise PreflightError(f"no single QEMU runs the guest ({found})")
        if len(waiting) != 1:
            found = ", ".join(f"{n}: {s}" for n, s in statuses.items())
            raise PreflightError(
                f"no QEMU waits for the migration ({found}): start the destination with -incoming"
            )
        destination = waiting[0]
        if self.sides[destination].incoming_uri is None:
            raise PreflightError(f"{destination}: no incoming_uri is configured")
        return running[0], destination

    async def describe_hosts(self, source: str, destination: str) -> dict[str, Any]:
        """Each QEMU's version (QMP query-version) and the guest's memory
        (query-memory-size-summary base-memory on the source)."""
        hosts: dict[str, Any] = {}
        for name, client in self.clients.items():
            try:
                version = (await client.execute("query-version", timeout_s=5))["qemu"]
                hosts[name] = {
                    "qemu_version": f"{version['major']}.{version['minor']}.{version['micro']}"
                }
            except (QmpError, OSError, KeyError, TypeError) as exc:
                hosts[name] = {"error": f"query-version: {exc}"}
        try:
            memory = (await self.clients[source].execute("query-memory-size-summary", timeout_s=5))[
                "base-memory"
            ]
        except (QmpError, OSError, KeyError, TypeError):
            memory = None
        return {
            "hosts": hosts,
            "vm": {"memory_bytes": memory, "memory_source": "QMP query-memory-size-summary"},
        }

    async def align_clocks(
        self,
        phase: str,
        sink: JsonlSink,
        record: Recorder,
        *,
        tolerate_failures: bool,
        deadline_s: float | None = None,
    ) -> dict[str, ClockOffset | None]:
        # Local QEMUs stamp events with this machine's clock (see the module doc).
        return {}

    def polled_sides(self, source: str, destination: str) -> list[PolledSide]:
        # The driver itself polls query-migrate every 20 ms and records STOP and
        # RESUME; a second poller on the same QMP monitor would add nothing.
        return []

    def console_poll(self, source: str) -> Callable[[], Any] | None:
        return None

    async def migrate(
        self,
        run: RunWriter,
        source: str,
        destination: str,
        *,
        timeout_s: float,
        interrupted: threading.Event,
        record: Recorder,
        tick: Callable[[], None],
    ) -> MigrationOutcome:
        uri = self.sides[destination].incoming_uri
        assert uri is not None
        sink = JsonlSink(
            run.raw / "qemu_migration.jsonl",
            probe="qemu_migration",
            meta={
                "source": source,
                "destination": destination,
                "uri": uri,
                "settings": self.settings.to_json(),
                "timeout_s": timeout_s,
            },
        )
        run.register_probe(QEMU_MIGRATION.probe, QEMU_MIGRATION.path, format="jsonl")
        names = {"source": source, "destination": destination}

        def on_event(role: str, event: Any) -> None:
            sink.write(
                {
                    "event": "qmp_event",
                    "side": role,
                    "host": names.get(role, role),
                    **{("name" if k == "event" else k): v for k, v in event.to_json().items()},
                }
            )

        def on_poll(poll: Any) -> None:
            sink.write({"event": "migrate_poll", **poll.to_json()})

        if interrupted.is_set():
            sink.close()
            record("migrate_not_started", host=source, reason="interrupted")
            return MigrationOutcome("interrupted", "interrupted: the migration was not started")
        record("migrate_start", host=source, destination=destination, uri=uri)
        try:
            async with asyncio.TaskGroup() as group:
                job = group.create_task(
                    migrate(
                        self.clients[source],
                        self.clients[destination],
                        uri=uri,
                        settings=self.settings,
                        timeout_s=timeout_s,
                        on_event=on_event,
                        on_poll=on_poll,
                        verify_memory=self.verify_memory,
                        memory_bytes=self.memory_bytes,
                    )
                )
                while not job.done():
                    if interrupted.is_set():
                        job.cancel()
                        try:
                            await self.clients[source].migrate_cancel()
                        except QmpError as exc:
                            record("migrate_cancel_failed", host=source, error=str(exc))
                        record("migrate_stopped", host=source, reason="interrupted")
                        break
                    tick()
                    await asyncio.wait([job], timeout=0.1)
        except ExceptionGroup as group:
            refused = [e for e in group.exceptions if isinstance(e, MigrationError)]
            if not refused:
                raise
            record("migrate_error", host=source, error=str(refused[0]))
            sink.close()
            return MigrationOutcome("failed", f"{source}: {refused[0]}")
        if job.cancelled():
            sink.close()
            return MigrationOutcome("interrupted", "interrupted: the migration was cancelled")
        result = job.result()
        self.result = result
        summary = {
            k: v
            for k, v in result.to_json().items()
            if k not in ("polls", "source_events", "destination_events")
        }
        sink.write({"event": "result", **summary})
        sink.close()
        if result.outcome == "completed":
            record("migrate_return", host=source, destination=destination)
            return MigrationOutcome("returned")
        if result.outcome == "cancelled":
            record("migrate_stopped", host=source, reason="timeout")
            return MigrationOutcome(
                "timeout",
                f"{source}: the migration did not complete within {timeout_s:g} s and was "
                f"cancelled; the guest runs on the source",
            )
        record("migrate_error", host=source, error=result.error)
        return MigrationOutcome("failed", f"{source}: migration failed: {result.error}")

    async def harvest(self, run: RunWriter, record: Recorder, *, deadline_s: float) -> None:
        """QEMU's own figures were stored with the migration (``raw/qemu_migration.jsonl``)."""

    async def close(self) -> None:
        for client in self.clients.values():
            try:
                await client.close()
            except (QmpError, OSError):
                pass
        self.clients.clear()

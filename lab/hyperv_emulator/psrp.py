"""The PSRP side of one WinRM shell: a psrpcore runspace pool and its pipelines.

WS-Man carries PSRP fragments; this module feeds them to psrpcore's
``ServerRunspacePool`` / ``ServerPipeline``, runs each pipeline's commands as
a task, and keeps what psrpcore has to send in one outbox per target (the
pool, or one pipeline), because a Receive asks for exactly one target and
psrpcore's own send buffer interleaves them all.

Pipelines beyond the pool's MaxRunspaces wait for a runspace, as on Windows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from psrpcore import (
    Command,
    CreatePipelineEvent,
    GetAvailableRunspacesEvent,
    PSRPPayload,
    ServerPipeline,
    ServerRunspacePool,
    SetMaxRunspacesEvent,
    SetMinRunspacesEvent,
    StreamType,
)
from psrpcore.types import (
    ErrorCategory,
    ErrorRecord,
    PSInvocationState,
    PSRPMessageType,
    RunspacePoolState,
)

# What a host answers beyond cmdlets.py registers with it when imported.
from migration_blackout.lab.hyperv_emulator import cmdlets, eventlog, preflight, pstypes, thumbnail
from migration_blackout.lab.hyperv_emulator.identity import ANONYMOUS, SessionIdentity
from migration_blackout.lab.hyperv_emulator.model import Lab, ReachDestination

# What a host answers beyond cmdlets.py: each registers with it when imported.
HOST_COMMANDS = (eventlog, preflight, thumbnail)

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]

_TERMINAL = (PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped)


class UnknownCommandError(LookupError):
    pass


@dataclass
class _PipelineRun:
    pipeline: ServerPipeline
    task: asyncio.Task[Any] | None = None
    started: bool = False
    commands: list[Command] = field(default_factory=list)


class _Writer:
    """What a running cmdlet writes, straight into the pipeline's outbox."""

    def __init__(self, session: PoolSession, pipeline: ServerPipeline) -> None:
        self._session = session
        self._pipeline = pipeline

    def write_output(self, value: Any) -> None:
        self._pipeline.write_output(value)
        self._session.flush()

    def write_error(self, record: ErrorRecord) -> None:
        self._pipeline.prepare_message(
            pstypes.for_error_stream(record), message_type=PSRPMessageType.ErrorRecord
        )
        self._session.flush()


def _internal_error(error: BaseException) -> ErrorRecord:
    return pstypes.error_record(
        f"The emulated host failed while running the command: {error!r}",
        exception_types=["System.Management.Automation.RuntimeException", "System.SystemException"],
        fully_qualified_error_id="EmulatorInternalError",
        category=ErrorCategory.NotSpecified,
        activity="",
        reason="RuntimeException",
    )


class PoolSession:
    """One WinRM shell = one PSRP runspace pool on the emulated host."""

    def __init__(
        self,
        shell_id: str,
        *,
        lab: Lab,
        host: str,
        spawn: Spawn,
        identity: SessionIdentity = ANONYMOUS,
        reach: ReachDestination | None = None,
    ) -> None:
        self.shell_id = shell_id
        self.identity = identity
        self._lab = lab
        self._host = host
        self._spawn = spawn
        # How Move-VM and Compare-VM reach a destination for this identity.
        self._reach = reach
        self.pool = ServerRunspacePool()
        self._outbox: dict[uuid.UUID | None, collections.deque[bytes]] = collections.defaultdict(
            collections.deque
        )
        self._changed = asyncio.Event()
        self._runs: dict[uuid.UUID, _PipelineRun] = {}
        # Runspaces in use; a pipeline waits while all MaxRunspaces are busy.
        self._busy = 0
        self._runspace_free = asyncio.Condition()
        self._closing = False

    # ---- data in -------------------------------------------------------------

    def open(self, creation_xml: bytes) -> None:
        self.pool.receive_data(PSRPPayload(creation_xml, StreamType.default, None))
        self._process_events()
        self.flush()

    def create_pipeline(self, command_id: str, first_fragment: bytes) -> None:
        pipeline_id = uuid.UUID(command_id)
        self._runs[pipeline_id] = _PipelineRun(ServerPipeline(self.pool, pipeline_id))
        self.send(command_id, first_fragment)

    def send(self, command_id: str | None, data: bytes) -> None:
        pipeline_id = uuid.UUID(command_id) if command_id else None
        if pipeline_id is not None and pipeline_id not in self._runs:
            raise UnknownCommandError(command_id)
        self.pool.receive_data(PSRPPayload(data, StreamType.default, pipeline_id))
        self._process_events()
        self.flush()

    def _process_events(self) -> None:
        while True:
            event = self.pool.next_event()
            if event is None:
                return
            if isinstance(event, CreatePipelineEvent):
                run = self._runs[event.pipeline_id]
                run.commands = list(event.pipeline.commands)
                run.task = self._spawn(self._run_pipeline(run))
            elif isinstance(event, SetMaxRunspacesEvent | SetMinRunspacesEvent):
                self.pool.runspace_availability_response(event.ci, True)
            elif isinstance(event, GetAvailableRunspacesEvent):
                busy = sum(
                    1 for r in self._runs.values() if r.started and r.task and not r.task.done()
                )
                self.pool.runspace_availability_response(
                    event.ci, max(self.pool.max_runspaces - busy, 0)
                )

    # ---- data out ------------------------------------------------------------

    def flush(self) -> None:
        """Move what psrpcore has queued into the per-target outboxes; wake receivers."""
        moved = False
        while True:
            payload = self.pool.data_to_send()
            if payload is None:
                break
            self._outbox[payload.pipeline_id].append(payload.data)
            moved = True
        if moved:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _done(self, target: uuid.UUID | None) -> bool:
        if target is None:
            return False
        run = self._runs.get(target)
        finished = run is None or run.pipeline.state in _TERMINAL
        return finished and not self._outbox.get(target)

    async def receive(
        self, command_id: str | None, timeout_s: float
    ) -> tuple[list[bytes], bool] | None:
        """Wait for data for the pool (``command_id`` None) or one pipeline.

        Returns (chunks, done) or None when ``timeout_s`` passed with nothing
        to send (the caller answers with the OperationTimeout fault).
        """
        target = uuid.UUID(command_id) if command_id else None
        if target is not None and target not in self._runs and target not in self._outbox:
            raise UnknownCommandError(command_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._closing:
            box = self._outbox.get(target)
            if box:
                chunks = list(box)
                box.clear()
                done = self._done(target)
                if done:
                    self._release(target)
                return chunks, done
            if self._done(target):
                self._release(target)
                return [], True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None
        return None

    # ---- running commands ------------------------------------------------------

    def _release(self, target: uuid.UUID | None) -> None:
        """Forget a finished pipeline once the client has received all of it.

        pypsrp 0.9 never sends Terminate after ``invoke()``; without this a
        long polling run would keep every pipeline it ever ran.
        """
        if target is None:
            return
        run = self._runs.pop(target, None)
        if run is not None:
            run.pipeline.close()
        self.pool.pipeline_table.pop(target, None)
        self._outbox.pop(target, None)

    @contextlib.asynccontextmanager
    async def _runspace(self) -> AsyncIterator[None]:
        async with self._runspace_free:
            await self._runspace_free.wait_for(lambda: self._busy < max(self.pool.max_runspaces, 1))
            self._busy += 1
        try:
            yield
        finally:
            async with self._runspace_free:
                self._busy -= 1
                self._runspace_free.notify_all()

    async def _run_pipeline(self, run: _PipelineRun) -> None:
        pipeline = run.pipeline
        try:
            async with self._runspace():
                run.started = True
                pipeline.start()
                self.flush()
                context = cmdlets.CmdletContext(
                    self._lab,
                    self._host,
                    _Writer(self, pipeline),
                    self.identity,
                    reach=self._reach,
                )
                try:
                    for statement in _statements(run.commands):
                        await cmdlets.run_statement(context, statement)
                except cmdlets.TerminatingError as error:
                    self._fail(pipeline, error.record)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    log.exception("pipeline %s failed inside the emulator", pipeline.pipeline_id)
                    self._fail(pipeline, _internal_error(error))
                else:
                    pipeline.complete()
        except asyncio.CancelledError:
            # Ctrl-C (or the lab shutting down): the pipeline ends Stopped.
            if pipeline.state == PSInvocationState.NotStarted:
                pipeline.start()
            if pipeline.state in (PSInvocationState.Running, PSInvocationState.Stopping):
                pipeline.stop()
            raise
        finally:
            self.flush()

    def _fail(self, pipeline: ServerPipeline, record: ErrorRecord) -> None:
        # psrpcore has no public call for a terminating error: PipelineState
        # Failed carrying the ErrorRecord is what PowerShell sends.
        pipeline._change_state(PSInvocationState.Failed, error=record)

    async def stop_pipeline(self, command_id: str) -> None:
        """Ctrl-C: stop a running pipeline and wait until it has stopped."""
        run = self._runs.get(uuid.UUID(command_id))
        if run is None or run.task is None:
            return
        if not run.task.done():
            run.task.cancel()
            await asyncio.wait([run.task])

    async def close_pipeline(self, command_id: str) -> None:
        """Terminate signal: release a pipeline's resources."""
        pipeline_id = uuid.UUID(command_id)
        await self.stop_pipeline(command_id)
        run = self._runs.pop(pipeline_id, None)
        if run is not None and run.pipeline.state in (*_TERMINAL, PSInvocationState.NotStarted):
            run.pipeline.close()
        self.pool.pipeline_table.pop(pipeline_id, None)
        self._outbox.pop(pipeline_id, None)

    async def close(self) -> None:
        """Delete of the shell: stop every pipeline and close the pool."""
        self._closing = True
        self._wake()
        for command_id in [str(p) for p in self._runs]:
            await self.close_pipeline(command_id)
        self.pool.pipeline_table.clear()
        if self.pool.state == RunspacePoolState.Opened:
            self.pool.close()
        self._outbox.clear()

    def shutdown(self) -> None:
        """Lab shutdown: release every waiting Receive."""
        self._closing = True
        self._wake()


def _statements(commands: list[Command]) -> list[list[Command]]:
    statements: list[list[Command]] = [[]]
    for command in commands:
        statements[-1].append(command)
        if command.end_of_statement:
            statements.append([])
    return [s for s in statements if s]

"""A Hyper-V host reached through PowerShell remoting (pypsrp 0.9, blocking).

One :class:`HostSession` per host holds one WSMan connection and one
RunspacePool for the whole run; every call creates a ``PowerShell`` on it
with ``add_cmdlet`` / ``add_parameter`` only, so values such as a VM name
reach the host as typed parameter values, never as script text. Calls are
serialised by a lock (WinRM message encryption numbers every message, so two
threads must not interleave on one connection). The Move-VM call runs on a
connection of its own (:class:`MoveVmCall`), because its long-polling
``Receive`` would otherwise hold up the state polls.

Everything here blocks: the harness calls it from worker threads
(``asyncio.to_thread``). Every call has a deadline: the HTTP read timeout.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan
from requests.exceptions import RequestException, SSLError

from . import kerberos
from .config import HostConfig


class HostError(Exception):
    """A host could not be reached, refused us, or a call failed; names the host."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message


class HostUnreachableError(HostError):
    pass


class HostAuthError(HostError):
    pass


class HostCallError(HostError):
    """A terminating error from a cmdlet (the pipeline failed)."""

    def __init__(self, host: str, cmdlet: str, errors: Sequence[PowerShellError]) -> None:
        text = "; ".join(e.message for e in errors) or "the pipeline failed without an error record"
        super().__init__(host, f"{cmdlet} failed: {text}")
        self.cmdlet = cmdlet
        self.errors = tuple(errors)


@dataclass(frozen=True)
class PowerShellError:
    """One ErrorRecord, terminating or not."""

    message: str
    fully_qualified_error_id: str | None
    category: int | None

    @classmethod
    def from_record(cls, record: Any) -> PowerShellError:
        message = getattr(record, "details_message", None) or ""
        if not message:
            exception = getattr(record, "exception", None)
            props = getattr(exception, "adapted_properties", None) or {}
            message = str(props.get("Message") or "")
            if not message:
                message = str(getattr(exception, "extended_properties", {}).get("Message") or "")
        if not message:
            message = str(getattr(record, "message", "") or record)
        return cls(
            message=" ".join(message.split()),
            fully_qualified_error_id=getattr(record, "fq_error", None),
            category=getattr(record, "category", None),
        )


@dataclass(frozen=True)
class CallResult:
    output: tuple[Any, ...]
    errors: tuple[PowerShellError, ...]  # non-terminating errors; terminating ones raise


@dataclass(frozen=True)
class VmStatus:
    """One Get-VM answer for one VM."""

    name: str
    state: str  # Running, Paused, Off, Saved, ... as Get-VM prints it
    status: str | None
    computer_name: str | None
    vm_id: str | None
    memory_assigned: int | None


@dataclass(frozen=True)
class VmPoll:
    """One poll of a host: its clock, the VM (None: not listed), its migration job."""

    vm: VmStatus | None
    host_time: datetime | None
    job: MigrationJob | None
    errors: tuple[str, ...]  # non-terminating errors other than "VM not found"


@dataclass(frozen=True)
class MigrationJob:
    vm_name: str | None
    percent_complete: int | None
    job_state: int | None


def _prop(obj: Any, name: str) -> Any:
    """A property of a deserialised object, adapted (<Props>) or extended (<MS>)."""
    for attribute in ("adapted_properties", "extended_properties"):
        props = getattr(obj, attribute, None) or {}
        if name in props:
            return props[name]
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


_DATE_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)?$")


def parse_host_datetime(value: Any) -> datetime:
    """A serialised .NET DateTime (string in pypsrp 0.9, 7 fractional digits,
    with offset or Z) as an aware datetime. A naive value is an error: a host
    time without an offset cannot be placed on the timeline."""
    # Windows' Get-Date adds a DisplayHint note to the DateTime, so pypsrp 0.9
    # hands back a GenericComplexObject whose primitive value is property_sets[0].
    property_sets = getattr(value, "property_sets", None)
    if property_sets:
        value = property_sets[0]
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"host time {value!r} has no UTC offset")
        return value
    match = _DATE_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"unrecognised host time {value!r}")
    base, fraction, zone = match.groups()
    if zone is None:
        raise ValueError(f"host time {value!r} has no UTC offset")
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    if fraction:
        stamp += timedelta(microseconds=int(fraction.ljust(7, "0")[:7]) / 10)
    return stamp.astimezone(UTC)


def _wsman(host: HostConfig, password: str | None, read_timeout_s: float) -> WSMan:
    encryption = "never" if host.auth == "basic" else "auto"
    if host.auth == "basic" and host.https:
        encryption = "never"
    return WSMan(
        host.address,
        port=host.port,
        path=host.path,
        ssl=host.https,
        auth=host.auth,
        username=kerberos.client_principal(host.username)
        if host.auth == "kerberos"
        else host.username,
        password=password,
        # pypsrp also takes a CA bundle path here, though it is typed bool.
        cert_validation=host.cert_validation,  # type: ignore[arg-type]
        encryption=encryption,
        connection_timeout=max(1, int(min(read_timeout_s, 10))),
        read_timeout=max(2, int(read_timeout_s)),
        operation_timeout=max(1, int(read_timeout_s) - 1),
        **kerberos.wsman_options(host),
    )


def _translate(host: str, exc: BaseException) -> HostError:
    if isinstance(exc, AuthenticationError):
        return HostAuthError(host, "authentication failed: check the user name and password")
    if isinstance(exc, WinRMTransportError):
        if exc.code == 401:
            return HostAuthError(host, "authentication failed (HTTP 401): check the credentials")
        return HostUnreachableError(host, f"WinRM answered HTTP {exc.code}")
    if isinstance(exc, SSLError):
        return HostUnreachableError(
            host,
            "TLS failed (the certificate is not trusted or does not match the address): "
            "set cert_validation to the CA bundle that signed it, or check the address",
        )
    if isinstance(exc, RequestException):
        kind = type(exc).__name__
        return HostUnreachableError(
            host, f"cannot reach WinRM ({kind}): check the address, port, firewall and transport"
        )
    if isinstance(exc, WinRMError):
        return HostError(host, f"WinRM error: {exc}")
    if kerberos.is_kerberos_failure(exc):
        return HostAuthError(host, kerberos.explain(None, exc))
    return HostError(host, f"{type(exc).__name__}: {exc}")


MIGRATION_JOB_QUERY = (("Namespace", r"root\virtualization\v2"), ("ClassName", "Msvm_MigrationJob"))


def _find_vm(output: Sequence[Any], vm: str) -> VmStatus | None:
    for obj in output:
        types = getattr(obj, "types", None) or []
        if types and not any("VirtualMachine" in t for t in types):
            continue
        name = _text(_prop(obj, "Name"))
        if name is not None and name.lower() == vm.lower():
            memory = _prop(obj, "MemoryAssigned")
            return VmStatus(
                name=name,
                state=str(_prop(obj, "State")),
                status=_text(_prop(obj, "Status")),
                computer_name=_text(_prop(obj, "ComputerName")),
                vm_id=_text(_prop(obj, "VMId")),
                memory_assigned=None if memory is None else int(memory),
            )
    return None


def _job(obj: Any) -> MigrationJob:
    percent = _prop(obj, "PercentComplete")
    state = _prop(obj, "JobState")
    return MigrationJob(
        vm_name=_text(_prop(obj, "ElementName") or _prop(obj, "VirtualSystemName")),
        percent_complete=None if percent is None else int(str(percent)),
        job_state=None if state is None else int(str(state)),
    )


def _is_vm_not_found(error: PowerShellError) -> bool:
    return "unable to find a virtual machine" in error.message


class HostSession:
    """One open RunspacePool on one host, for queries and polls."""

    def __init__(self, host: HostConfig, password: str | None, *, call_timeout_s: float = 20.0):
        self.host = host
        self._password = password
        self.call_timeout_s = call_timeout_s
        self._lock = threading.Lock()
        self._wsman: WSMan | None = None
        self._pool: RunspacePool | None = None

    @property
    def name(self) -> str:
        return self.host.name

    def open(self) -> None:
        with self._lock:
            if self._pool is not None:
                return
            wsman = _wsman(self.host, self._password, self.call_timeout_s)
            pool = RunspacePool(wsman, max_runspaces=2)
            try:
                pool.open()
            except Exception as exc:
                wsman.close()
                raise _translate(self.name, exc) from None
            self._wsman, self._pool = wsman, pool

    def close(self) -> None:
        with self._lock:
            pool, wsman = self._pool, self._wsman
            self._pool = self._wsman = None
        if pool is not None:
            # Closing a dead host must not mask the error that brought us here.
            with contextlib.suppress(Exception):
                pool.close()
        if wsman is not None:
            wsman.close()

    def __enter__(self) -> HostSession:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def invoke(self, cmdlet: str, parameters: Sequence[tuple[str, Any]] = ()) -> CallResult:
        """Run one cmdlet. Terminating errors raise :class:`HostCallError`;
        non-terminating ones come back in ``CallResult.errors``."""
        return self.invoke_statements([(cmdlet, parameters)])

    def invoke_statements(
        self, statements: Sequence[tuple[str, Sequence[tuple[str, Any]]]]
    ) -> CallResult:
        """Run several cmdlets as separate statements of one pipeline: one
        round trip, outputs in statement order."""

        def build(ps: PowerShell) -> None:
            for index, (cmdlet, parameters) in enumerate(statements):
                if index:
                    ps.add_statement()
                ps.add_cmdlet(cmdlet)
                for name, value in parameters:
                    ps.add_parameter(name, value)

        return self._invoke(build, "; ".join(c for c, _ in statements))

    def invoke_script(
        self, script: str, parameters: Sequence[tuple[str, Any]] = (), *, name: str = "script"
    ) -> CallResult:
        """Run a script shipped as package data (never text assembled from
        values); ``parameters`` bind by name to its ``param()`` block, as typed
        values. ``name`` labels errors."""

        def build(ps: PowerShell) -> None:
            ps.add_script(script)
            for parameter, value in parameters:
                ps.add_parameter(parameter, value)

        return self._invoke(build, name)

    def _invoke(self, build: Callable[[PowerShell], None], label: str) -> CallResult:
        """One pipeline on the open pool. Terminating errors raise
        :class:`HostCallError`; non-terminating ones come back in
        ``CallResult.errors`` (pypsrp sets ``had_errors`` only for the former)."""
        with self._lock:
            if self._pool is None:
                raise HostError(self.name, "session is not open")
            ps = PowerShell(self._pool)
            build(ps)
            try:
                output = ps.invoke()
            except Exception as exc:
                raise _translate(self.name, exc) from None
        errors = tuple(PowerShellError.from_record(r) for r in ps.streams.error)
        if ps.had_errors or ps.state == PSInvocationState.FAILED:
            raise HostCallError(self.name, label, errors)
        return CallResult(output=tuple(output), errors=errors)

    # -- the calls the harness makes ---------------------------------------

    def get_vm(self, vm: str) -> VmStatus | None:
        """The VM as this host lists it, or None when the host does not hold it."""
        return _find_vm(self.invoke("Get-VM", [("Name", vm)]).output, vm)

    def poll_vm(self, vm: str) -> VmPoll:
        """Get-Date; Get-VM; Get-CimInstance Msvm_MigrationJob in one round trip."""
        result = self.invoke_statements(
            [
                ("Get-Date", ()),
                ("Get-VM", [("Name", vm)]),
                ("Get-CimInstance", MIGRATION_JOB_QUERY),
            ]
        )
        host_time = None
        jobs = []
        for obj in result.output:
            types = getattr(obj, "types", None) or []
            if any("Msvm_MigrationJob" in t for t in types):
                jobs.append(_job(obj))
            elif host_time is None and not any("VirtualMachine" in t for t in types):
                try:
                    host_time = parse_host_datetime(obj)
                except ValueError:
                    pass
        return VmPoll(
            vm=_find_vm(result.output, vm),
            host_time=host_time,
            job=next((j for j in jobs if j.vm_name and j.vm_name.lower() == vm.lower()), None),
            errors=tuple(e.message for e in result.errors if not _is_vm_not_found(e)),
        )

    def get_date(self) -> datetime:
        result = self.invoke("Get-Date")
        if not result.output:
            raise HostError(self.name, "Get-Date returned nothing")
        return parse_host_datetime(result.output[0])

    def migration_jobs(self) -> list[MigrationJob]:
        return [_job(obj) for obj in self.invoke("Get-CimInstance", MIGRATION_JOB_QUERY).output]

    def win_events(
        self, log_name: str, ids: Sequence[int], start_time: datetime
    ) -> list[dict[str, Any]]:
        """Get-WinEvent -FilterHashtable for ``ids`` since ``start_time``; [] if none."""
        # pypsrp 0.9 cannot serialise a datetime inside a hashtable; Windows
        # converts the ISO 8601 string (with its offset) to a DateTime itself.
        filter_table = {
            "LogName": log_name,
            "Id": list(ids),
            "StartTime": start_time.isoformat(),
        }
        try:
            result = self.invoke("Get-WinEvent", [("FilterHashtable", filter_table)])
        except HostCallError as exc:
            if any("No events were found" in e.message for e in exc.errors):
                return []
            raise
        events = []
        for obj in result.output:
            created = _prop(obj, "TimeCreated")
            events.append(
                {
                    "id": int(str(_prop(obj, "Id"))),
                    "log_name": _text(_prop(obj, "LogName")),
                    "provider": _text(_prop(obj, "ProviderName")),
                    "time_created": None if created is None else str(created),
                    "level": _text(_prop(obj, "LevelDisplayName")),
                    "machine": _text(_prop(obj, "MachineName")),
                    "message": _text(_prop(obj, "Message")),
                }
            )
        return events


class MoveVmCall:
    """``Move-VM`` on the source host, on a connection of its own.

    ``start()`` sends the pipeline; ``poll(max_wait_s)`` waits for progress
    (long-poll) and returns True once the call has ended; ``stop()`` sends
    Ctrl-C. All from one thread: the caller's worker.
    """

    def __init__(
        self,
        host: HostConfig,
        password: str | None,
        *,
        vm: str,
        destination: str,
        include_storage: bool = False,
        destination_storage_path: str | None = None,
    ) -> None:
        self.host = host
        self._wsman = _wsman(host, password, read_timeout_s=30)
        self._pool = RunspacePool(self._wsman)
        self._ps: PowerShell | None = None
        self.vm = vm
        self.destination = destination
        self.include_storage = include_storage
        self.destination_storage_path = destination_storage_path

    def start(self) -> None:
        try:
            self._pool.open()
            ps = PowerShell(self._pool)
            ps.add_cmdlet("Move-VM").add_parameter("Name", self.vm)
            ps.add_parameter("DestinationHost", self.destination)
            if self.include_storage:
                ps.add_parameter("IncludeStorage", True)
            if self.destination_storage_path:
                ps.add_parameter("DestinationStoragePath", self.destination_storage_path)
            ps.begin_invoke()
        except Exception as exc:
            raise _translate(self.host.name, exc) from None
        self._ps = ps

    def poll(self, max_wait_s: int = 1) -> bool:
        """Wait up to ``max_wait_s`` (whole seconds, WinRM's unit) for the call to end."""
        assert self._ps is not None
        if self._ps.state == PSInvocationState.RUNNING:
            try:
                self._ps.poll_invoke(timeout=max(1, max_wait_s))
            except Exception as exc:
                raise _translate(self.host.name, exc) from None
        return self._ps.state != PSInvocationState.RUNNING

    def result(self) -> CallResult:
        """After :meth:`poll` returned True: the output, or HostCallError."""
        assert self._ps is not None
        errors = tuple(PowerShellError.from_record(r) for r in self._ps.streams.error)
        if self._ps.had_errors or self._ps.state == PSInvocationState.FAILED:
            raise HostCallError(self.host.name, "Move-VM", errors)
        if self._ps.state == PSInvocationState.STOPPED:
            raise HostCallError(
                self.host.name, "Move-VM", [PowerShellError("the pipeline was stopped", None, None)]
            )
        return CallResult(output=tuple(self._ps.output), errors=errors)

    def stop(self) -> None:
        if self._ps is not None and self._ps.state == PSInvocationState.RUNNING:
            try:
                self._ps.stop()
            except Exception as exc:
                raise _translate(self.host.name, exc) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.close()
        self._wsman.close()

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
import importlib
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree

import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import NAMESPACES, SelectorSet, WSMan, WSManAction
from requests.exceptions import ReadTimeout, RequestException, SSLError

from . import kerberos, scripts
from .config import DEFAULT_PORTS, HostConfig


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
    """A cmdlet failed: a terminating error (the pipeline failed) or, for
    Move-VM, any error record at all."""

    def __init__(self, host: str, cmdlet: str, errors: Sequence[PowerShellError]) -> None:
        text = "; ".join(e.message for e in errors) or "the pipeline failed without an error record"
        super().__init__(host, f"{cmdlet} failed: {text}")
        self.cmdlet = cmdlet
        self.errors = tuple(errors)


@dataclass(frozen=True)
class PowerShellError:
    """One ErrorRecord, terminating or not.

    ``message`` is in the host's language; code should decide on
    ``fully_qualified_error_id`` (``<ErrorId>,<command type>``, never
    translated), ``category`` and ``target_name``, and show ``message``.
    """

    message: str
    fully_qualified_error_id: str | None
    category: int | None
    target_name: str | None = None

    @property
    def error_id(self) -> str:
        """The FullyQualifiedErrorId's first part, e.g. ``InvalidParameter``."""
        return (self.fully_qualified_error_id or "").split(",", 1)[0]

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
        target = getattr(record, "target_name", None)
        return cls(
            message=" ".join(message.split()),
            fully_qualified_error_id=getattr(record, "fq_error", None),
            category=getattr(record, "category", None),
            target_name=str(target) if target else None,
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
    version: str | None = None  # the VM's configuration version, e.g. "8.0"


@dataclass(frozen=True)
class VmPoll:
    """One poll of a host: its clock, the VM (None: not listed), its migration job."""

    vm: VmStatus | None
    host_time: datetime | None
    job: MigrationJob | None
    errors: tuple[str, ...]  # non-terminating errors other than "VM not found"


@dataclass(frozen=True)
class MigrationJob:
    """One ``Msvm_MigrationJob``. ``virtual_system_name`` is the migrated VM's
    GUID (``Msvm_ComputerSystem.Name``); ``element_name`` is a display name,
    not the VM's name: jobs are matched to the VM by its Id."""

    virtual_system_name: str | None
    element_name: str | None
    percent_complete: int | None
    job_state: int | None
    start_time: datetime | None = None

    def is_for(self, vm_id: str | None) -> bool:
        return vm_id is not None and _same_guid(self.virtual_system_name, vm_id)


def _same_guid(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return uuid.UUID(str(a).strip("{}")) == uuid.UUID(str(b).strip("{}"))
    except ValueError:
        return False


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


# auth -> (module that must import, the extra that installs it).
AUTH_EXTRAS = {
    "kerberos": ("gssapi", "kerberos"),
    "credssp": ("requests_credssp", "credssp"),
}


def missing_auth_support(auth: str) -> str | None:
    """Why ``auth`` cannot work on this machine (an optional package is not
    installed), as one line with the fix; None when it can."""
    needed = AUTH_EXTRAS.get(auth)
    if needed is None:
        return None
    module, extra = needed
    try:
        importlib.import_module(module)
    except ImportError:
        return (
            f'auth = "{auth}" needs the optional {extra} support: '
            f"pip install 'migration-blackout[{extra}]' (it provides {module})"
        )
    return None


def listener_hint(host: HostConfig, timeout_s: float = 3.0) -> str | None:
    """What answers where the harness expected the host's WinRM listener, and
    what to change in the config: one sentence, or None when nothing more is
    known. Asks the configured port without credentials, and the other
    standard port when the configured one refuses."""
    url = host.url
    try:
        response = requests.post(
            url,
            data=b"",
            timeout=timeout_s,
            verify=host.cert_validation if host.https else False,
        )
    except SSLError as exc:
        if "WRONG_VERSION_NUMBER" in str(exc).upper().replace(" ", "_"):
            return (
                f'port {host.port} answers plain HTTP, not HTTPS: set transport = "http" '
                "(Enable-PSRemoting creates an HTTP listener only)"
            )
        return None
    except requests.exceptions.ConnectionError as exc:
        refused = "refused" in str(exc).lower()
        other = "http" if host.https else "https"
        other_port = DEFAULT_PORTS[other]
        if refused and other_port != host.port and _port_open(host.address, other_port, timeout_s):
            return (
                f"nothing listens on port {host.port}; port {other_port} ({other.upper()}) does: "
                f'set transport = "{other}" and port = {other_port}'
            )
        if not refused and not host.https:
            return (
                f"port {host.port} does not speak plain HTTP (is it the HTTPS listener?): "
                'set transport = "https"'
            )
        return None
    except RequestException:
        return None
    if response.status_code == 401:
        offered = [
            value.split()[0].lower()
            for value in response.headers.get("WWW-Authenticate", "").split(",")
            if value.strip()
        ]
        wanted = {"basic": "basic", "credssp": "credssp"}.get(host.auth, "negotiate")
        if (
            offered
            and wanted not in offered
            and not (wanted == "negotiate" and "kerberos" in offered)
        ):
            return (
                f"the {host.transport.upper()} listener on port {host.port} offers "
                f'{", ".join(offered)}, not {host.auth}: set auth = "negotiate"'
            )
    return None


def _port_open(address: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class _NoRetryWSMan(WSMan):
    """WSMan whose Receive is not retried after a read timeout.

    pypsrp 0.9 retries a timed-out Receive five times, sleeping 2, 6, 14, 30
    and 62 s in between (``reconnection_backoff * (2**attempt - 1)``): a host
    that stops answering holds one call for over two minutes, or, if it comes
    back within that, the call just takes longer and nothing records the
    outage. A host call is to fail at its timeout, so here the first read
    timeout raises, as on every other message."""

    def receive(
        self,
        resource_uri: str,
        resource: ElementTree.Element,
        option_set: Any = None,
        selector_set: Any = None,
        timeout: int | None = None,
    ) -> ElementTree.Element:
        res = self.invoke(
            WSManAction.RECEIVE,
            resource_uri,
            resource,
            option_set,
            selector_set,
            timeout,
            retries_on_read_timeout=0,
        )
        body = res.find("s:Body", namespaces=NAMESPACES)
        assert body is not None  # a WS-Man response always has one
        return body


def _wsman(
    host: HostConfig, password: str | None, read_timeout_s: float, *, retry_receive: bool = True
) -> WSMan:
    encryption = "never" if host.auth == "basic" else "auto"
    if host.auth == "basic" and host.https:
        encryption = "never"
    return (WSMan if retry_receive else _NoRetryWSMan)(
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
    if isinstance(exc, ReadTimeout):
        return HostUnreachableError(
            host, "no answer within the read timeout; the session is reopened on the next call"
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


POWERSHELL_RESOURCE_URI = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"
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
                version=_text(_prop(obj, "Version")),
            )
    return None


def _job(obj: Any) -> MigrationJob:
    percent = _prop(obj, "PercentComplete")
    state = _prop(obj, "JobState")
    started = _prop(obj, "StartTime")
    start_time = None
    if started is not None:
        with contextlib.suppress(ValueError):
            start_time = parse_host_datetime(started)
    return MigrationJob(
        virtual_system_name=_text(_prop(obj, "VirtualSystemName")),
        element_name=_text(_prop(obj, "ElementName")),
        percent_complete=None if percent is None else int(str(percent)),
        job_state=None if state is None else int(str(state)),
        start_time=start_time,
    )


def latest_job(jobs: Sequence[MigrationJob], vm_id: str | None) -> MigrationJob | None:
    """The VM's most recent migration job: finished jobs stay listed for minutes
    (a ping-pong session sees the previous migration's)."""
    mine = [j for j in jobs if j.is_for(vm_id)]
    if not mine:
        return None
    oldest = datetime.min.replace(tzinfo=UTC)
    return max(mine, key=lambda j: j.start_time or oldest)


# FullyQualifiedErrorIds of "no such VM": Get-VM's (InvalidParameter on
# Windows Server 2016-2022, ObjectNotFound when asked by -Id; the command part
# GetVM or GetVMCommand), and the one our own scripts write (VMNotFound).
GET_VM_NOT_FOUND_IDS = frozenset({"InvalidParameter", "ObjectNotFound"})
SCRIPT_NOT_FOUND_ID = "VMNotFound"
_NOT_FOUND_TEXT = "unable to find a virtual machine"


def _is_vm_not_found(error: PowerShellError) -> bool:
    """Decided on the error id, which Windows never translates; the English
    text only when a record has no id at all."""
    fq = error.fully_qualified_error_id
    if fq:
        command = fq.split(",", 1)[1] if "," in fq else ""
        return error.error_id == SCRIPT_NOT_FOUND_ID or (
            error.error_id in GET_VM_NOT_FOUND_IDS
            and command.split(".")[-1] in ("GetVM", "GetVMCommand")
        )
    return _NOT_FOUND_TEXT in error.message


@dataclass(frozen=True)
class HostFacts:
    """What a Hyper-V host says about its live-migration set-up and itself
    (Get-VMHost, Get-VMMigrationNetwork, Win32_OperatingSystem)."""

    computer_name: str | None
    fqdn: str | None
    migration_enabled: bool | None
    migration_auth: str | None  # "Kerberos" or "CredSSP" (incoming migrations)
    performance_option: str | None
    use_any_network: bool | None
    max_migrations: int | None
    migration_networks: tuple[str, ...]
    os_version: str | None  # "10.0.14393"
    os_caption: str | None
    os_language: int | None  # Windows LCID, 1041 = Japanese

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["migration_networks"] = list(self.migration_networks)
        return document


@dataclass(frozen=True)
class MigrationCheck:
    """Compare-VM's answer on the source (``Test-VMMigration.ps1``)."""

    incompatibilities: tuple[str, ...]
    errors: tuple[PowerShellError, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "incompatibilities": list(self.incompatibilities),
            "errors": [e.message for e in self.errors],
            "error_ids": [e.fully_qualified_error_id for e in self.errors],
        }


def _flag(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def _host_facts(output: Sequence[Any]) -> HostFacts:
    host = next((o for o in output if _has_type(o, "Microsoft.HyperV.PowerShell.VMHost")), None)
    os = next((o for o in output if _has_type(o, "Win32_OperatingSystem")), None)
    networks = tuple(
        str(_prop(o, "Subnet"))
        for o in output
        if _has_type(o, "Microsoft.HyperV.PowerShell.VMMigrationNetwork")
    )

    def get(obj: Any, name: str) -> Any:
        return None if obj is None else _prop(obj, name)

    maximum = get(host, "MaximumVirtualMachineMigrations")
    language = get(os, "OSLanguage")
    return HostFacts(
        computer_name=_text(get(host, "ComputerName")),
        fqdn=_text(get(host, "FullyQualifiedDomainName")),
        migration_enabled=_flag(get(host, "VirtualMachineMigrationEnabled")),
        migration_auth=_text(get(host, "VirtualMachineMigrationAuthenticationType")),
        performance_option=_text(get(host, "VirtualMachineMigrationPerformanceOption")),
        use_any_network=_flag(get(host, "UseAnyNetworkForMigration")),
        max_migrations=None if maximum is None else int(str(maximum)),
        migration_networks=networks,
        os_version=_text(get(os, "Version")),
        os_caption=_text(get(os, "Caption")),
        os_language=None if language is None else int(str(language)),
    )


def _has_type(obj: Any, name: str) -> bool:
    return any(name in t for t in getattr(obj, "types", None) or [])


SessionEvent = Callable[..., None]  # (event name, **fields): the run's recorder


class HostSession:
    """One open RunspacePool on one host, for queries and polls.

    A pool does not survive a failed round trip: after a read timeout pypsrp
    0.9 keeps the connection's message-encryption state while the server
    (on a new connection) expects a new one, so every later call fails
    (pypsrp issue 21; the lab shows the same with NTLM: HTTP 400), and a
    pipeline the server still runs may hold a runspace. So when a call fails
    on the transport (read timeout, connection lost, an HTTP or WS-Man
    error) the session drops its pool and raises (its connection does not
    retry a timed-out Receive, see ``_NoRetryWSMan``); the next call opens a new
    one (and deletes the old shell through it), and polling goes on. Each
    call in between fails and is recorded by its caller: the gap shows as
    failed polls. ``record`` (optional) is told ``session_broken`` and
    ``session_reopened``.
    """

    def __init__(
        self,
        host: HostConfig,
        password: str | None,
        *,
        call_timeout_s: float = 20.0,
        record: SessionEvent | None = None,
    ):
        self.host = host
        self._password = password
        self.call_timeout_s = call_timeout_s
        self._record = record
        self._lock = threading.Lock()
        self._wsman: WSMan | None = None
        self._pool: RunspacePool | None = None
        self._opened = False  # between open() and close()
        self._broken_at: float | None = None  # monotonic, when the pool was dropped
        self._stale_shells: list[str] = []  # shells of dropped pools, deleted on reopen
        self.reopens = 0

    @property
    def name(self) -> str:
        return self.host.name

    def open(self) -> None:
        with self._lock:
            if self._pool is not None:
                return
            self._connect()
            self._opened = True

    def _connect(self) -> None:
        """A new connection and pool (lock held); HostError when the host refuses."""
        wsman = _wsman(self.host, self._password, self.call_timeout_s, retry_receive=False)
        pool = RunspacePool(wsman, max_runspaces=2)
        try:
            pool.open()
        except Exception as exc:
            wsman.close()
            raise _translate(self.name, exc) from None
        self._wsman, self._pool = wsman, pool

    def _usable_pool(self) -> RunspacePool:
        """The open pool; after a dropped one, a new one (lock held)."""
        if self._pool is not None:
            return self._pool
        if not self._opened:
            raise HostError(self.name, "session is not open")
        self._connect()
        self.reopens += 1
        broken_for = None if self._broken_at is None else time.monotonic() - self._broken_at
        self._delete_stale_shells()
        if self._record is not None:
            self._record(
                "session_reopened",
                host=self.name,
                reopens=self.reopens,
                broken_for_s=None if broken_for is None else round(broken_for, 3),
            )
        pool = self._pool
        assert pool is not None  # set by _connect
        return pool

    def _drop_pool(self, exc: BaseException) -> None:
        """Forget a pool that a transport failure left unusable (lock held)."""
        pool, wsman = self._pool, self._wsman
        self._pool = self._wsman = None
        self._broken_at = time.monotonic()
        shell_id = getattr(getattr(pool, "shell", None), "id", None)
        if shell_id:
            self._stale_shells.append(str(shell_id))
        if wsman is not None:
            wsman.close()  # local only: the connection's state is what broke
        if self._record is not None:
            self._record("session_broken", host=self.name, error=f"{type(exc).__name__}: {exc}")

    def _delete_stale_shells(self) -> None:
        """Best effort: the dropped pools' shells would otherwise stay on the
        host until its idle timeout (2 h by default), counting against the
        user's shell quota."""
        assert self._wsman is not None
        for shell_id in self._stale_shells:
            selectors = SelectorSet()
            selectors.add_option("ShellId", shell_id)
            with contextlib.suppress(Exception):
                self._wsman.delete(POWERSHELL_RESOURCE_URI, selector_set=selectors)
        self._stale_shells.clear()

    def close(self) -> None:
        with self._lock:
            pool, wsman = self._pool, self._wsman
            self._pool = self._wsman = None
            self._opened = False
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
            ps = PowerShell(self._usable_pool())
            build(ps)
            try:
                output = ps.invoke()
            except Exception as exc:
                # The pipeline never completed: the pool's transport failed.
                self._drop_pool(exc)
                raise _translate(self.name, exc) from None
        errors = tuple(PowerShellError.from_record(r) for r in ps.streams.error)
        if ps.had_errors or ps.state == PSInvocationState.FAILED:
            raise HostCallError(self.name, label, errors)
        return CallResult(output=tuple(output), errors=errors)

    # -- the calls the harness makes ---------------------------------------

    def get_vm(self, vm: str) -> VmStatus | None:
        """The VM as this host lists it, or None when the host does not hold it."""
        return _find_vm(self.invoke("Get-VM", [("Name", vm)]).output, vm)

    def poll_vm(self, vm: str, vm_id: str | None = None) -> VmPoll:
        """Get-Date; Get-VM; Get-CimInstance Msvm_MigrationJob in one round trip.

        The job is the VM's latest, matched by ``vm_id`` (the VM's GUID, from
        an earlier Get-VM; this poll's own when the host lists the VM)."""
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
        listed = _find_vm(result.output, vm)
        return VmPoll(
            vm=listed,
            host_time=host_time,
            job=latest_job(jobs, vm_id or (listed.vm_id if listed else None)),
            errors=tuple(e.message for e in result.errors if not _is_vm_not_found(e)),
        )

    def get_date(self) -> datetime:
        result = self.invoke("Get-Date")
        if not result.output:
            raise HostError(self.name, "Get-Date returned nothing")
        return parse_host_datetime(result.output[0])

    def host_facts(self) -> HostFacts:
        """Get-VMHost; Get-VMMigrationNetwork; Win32_OperatingSystem, one round trip."""
        result = self.invoke_statements(
            [
                ("Get-VMHost", ()),
                ("Get-VMMigrationNetwork", ()),
                ("Get-CimInstance", [("ClassName", "Win32_OperatingSystem")]),
            ]
        )
        return _host_facts(result.output)

    def supported_vm_versions(self) -> tuple[str, ...] | None:
        """The VM configuration versions this host runs (Get-VMHostSupportedVersion),
        or None on a host older than Windows Server 2016, which has no such
        cmdlet (it runs version 5.0 and older)."""
        try:
            result = self.invoke("Get-VMHostSupportedVersion")
        except HostCallError as exc:
            if any(e.error_id == "CommandNotFoundException" for e in exc.errors):
                return None
            raise
        return tuple(str(_prop(o, "Version")) for o in result.output)

    def test_migration(
        self,
        vm: str,
        destination: str,
        *,
        include_storage: bool = False,
        destination_storage_path: str | None = None,
    ) -> MigrationCheck:
        """Compare-VM on this (the source) host: reaches ``destination`` as
        Move-VM does (the second hop, migration enabled, versions) and moves
        nothing. Its failures come back as errors, not exceptions."""
        parameters: list[tuple[str, Any]] = [("VMName", vm), ("DestinationHost", destination)]
        if include_storage:
            parameters.append(("IncludeStorage", True))
            if destination_storage_path:
                parameters.append(("DestinationStoragePath", destination_storage_path))
        result = self.invoke_script(scripts.load(COMPARE_SCRIPT), parameters, name=COMPARE_SCRIPT)
        incompatibilities: list[str] = []
        for obj in result.output:
            listed = _prop(obj, "Incompatibilities") or []
            incompatibilities += [str(i) for i in listed]
        return MigrationCheck(tuple(incompatibilities), result.errors)

    def migration_jobs(self) -> list[MigrationJob]:
        return [_job(obj) for obj in self.invoke("Get-CimInstance", MIGRATION_JOB_QUERY).output]

    def migration_events(
        self, log_name: str, ids: Sequence[int], start_time: datetime
    ) -> list[WinEvent]:
        """Events of ``log_name`` with an id in ``ids`` written since
        ``start_time`` (an aware datetime), newest first, with their event data.

        Through the shipped ``Get-MigrationEvents.ps1``, not ``Get-WinEvent
        -FilterHashtable``: a list sent over remoting arrives as an ArrayList,
        which Get-WinEvent's hashtable query builder pastes as one value and
        then finds nothing (PowerShell's GetEventCommand.cs,
        HandleEventIdHashValue); the script binds the ids to [int[]] and
        builds its XPath from integers and a UTC time. No events is []."""
        if start_time.tzinfo is None:
            raise ValueError("start_time must carry its UTC offset")
        result = self.invoke_script(
            scripts.load(EVENTS_SCRIPT),
            [
                ("LogName", log_name),
                ("Id", [int(i) for i in ids]),
                ("StartTime", start_time.astimezone(UTC).isoformat()),
            ],
            name=EVENTS_SCRIPT,
        )
        if result.errors:
            raise HostCallError(self.name, EVENTS_SCRIPT, result.errors)
        return [WinEvent.from_output(obj) for obj in result.output]


EVENTS_SCRIPT = "Get-MigrationEvents.ps1"
COMPARE_SCRIPT = "Test-VMMigration.ps1"


@dataclass(frozen=True)
class WinEvent:
    """One event as ``Get-MigrationEvents.ps1`` returns it.

    ``event_data`` is what the event's XML carries under ``UserData`` (for
    Hyper-V's events ``VmlEventLog/Parameter0..n``) or ``EventData/Data``, as
    (name, value) pairs in document order: figures independent of the host's
    display language. ``message`` is rendered in that language (or empty).
    """

    id: int
    log_name: str | None
    provider: str | None
    record_id: int | None
    time_created: str | None  # the host's clock as it sent it (ISO 8601, its offset)
    level: int | None
    level_name: str | None
    machine: str | None
    message: str | None
    xml: str | None
    event_data: tuple[tuple[str, str], ...]

    @classmethod
    def from_output(cls, obj: Any) -> WinEvent:
        def integer(name: str) -> int | None:
            value = _prop(obj, name)
            return None if value is None else int(str(value))

        created = _prop(obj, "TimeCreated")
        # As the host sent it (its offset kept); a DateTime with notes arrives
        # as an object whose first property set is the text.
        sets = getattr(created, "property_sets", None)
        time_created = _text(sets[0] if sets else created)
        xml = _text(_prop(obj, "Xml"))
        return cls(
            id=int(str(_prop(obj, "Id"))),
            log_name=_text(_prop(obj, "LogName")),
            provider=_text(_prop(obj, "ProviderName")),
            record_id=integer("RecordId"),
            time_created=time_created,
            level=integer("Level"),
            level_name=_text(_prop(obj, "LevelDisplayName")),
            machine=_text(_prop(obj, "MachineName")),
            message=_text(_prop(obj, "Message")),
            xml=xml,
            event_data=event_data(xml),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "log_name": self.log_name,
            "provider": self.provider,
            "record_id": self.record_id,
            "time_created": self.time_created,
            "level": self.level,
            "level_name": self.level_name,
            "machine": self.machine,
            "message": self.message,
            "event_data": dict(self.event_data),
            "xml": self.xml,
        }


def event_data(xml: str | None) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs of an event's data: the children of the element
    below ``UserData`` (Hyper-V: ``VmlEventLog``), else ``EventData/Data``
    by their Name attribute; () when the XML is missing or unreadable."""
    if not xml:
        return ()
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return ()

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    for child in root:
        if local(child.tag) == "UserData":
            for block in child:
                return tuple((local(e.tag), (e.text or "").strip()) for e in block)
        if local(child.tag) == "EventData":
            return tuple(
                (e.get("Name") or f"Data{i}", (e.text or "").strip())
                for i, e in enumerate(child)
                if local(e.tag) == "Data"
            )
    return ()


COMPATIBILITY_REPORT_TYPE = "Microsoft.HyperV.PowerShell.VMCompatibilityReport"


def _is_compatibility_report(obj: Any) -> bool:
    return any(t.endswith(COMPATIBILITY_REPORT_TYPE) for t in getattr(obj, "types", None) or [])


def _report_error(report: Any) -> PowerShellError:
    """A compatibility report as an error. Its Incompatibilities lie below the
    serialisation depth and arrive as type names; the report is what is said."""
    destination = _text(_prop(report, "Destination")) or "the destination"
    return PowerShellError(
        f"the VM is not compatible with {destination} (a compatibility report came back)",
        "VMCompatibilityReport",
        None,
    )


class MoveVmCall:
    """``Move-VM`` on the source host, on a connection of its own.

    ``connect()`` opens the connection; ``start()`` sends the pipeline (the
    irreversible step); ``poll(max_wait_s)`` waits for progress
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
        self._connected = False
        self._ps: PowerShell | None = None
        self.vm = vm
        self.destination = destination
        self.include_storage = include_storage
        self.destination_storage_path = destination_storage_path

    def connect(self) -> None:
        """Open the connection: reversible, nothing is asked of the host yet."""
        if self._connected:
            return
        try:
            self._pool.open()
        except Exception as exc:
            raise _translate(self.host.name, exc) from None
        self._connected = True

    def start(self) -> None:
        self.connect()
        try:
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
        """After :meth:`poll` returned True: the output, or :class:`HostCallError`.

        Any error record fails the call, terminating or not: Hyper-V cmdlets
        report a failed migration with WriteError and the pipeline still
        completes (pypsrp's ``had_errors`` is then False). So does a
        compatibility report in the output (Move-VM's answer to an
        incompatible destination)."""
        assert self._ps is not None
        errors = [PowerShellError.from_record(r) for r in self._ps.streams.error]
        if self._ps.state == PSInvocationState.STOPPED:
            errors.append(PowerShellError("the pipeline was stopped", None, None))
        output = tuple(self._ps.output)
        errors += [_report_error(o) for o in output if _is_compatibility_report(o)]
        if errors or self._ps.had_errors or self._ps.state == PSInvocationState.FAILED:
            raise HostCallError(self.host.name, "Move-VM", errors)
        return CallResult(output=output, errors=())

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

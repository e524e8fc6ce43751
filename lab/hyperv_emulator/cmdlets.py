"""The cmdlets an emulated Hyper-V host understands, dispatched by command name.

Each cmdlet binds its parameters the way PowerShell does for a remote
``AddCommand`` / ``AddParameter`` pipeline (case-insensitive names, unique
prefixes, aliases, positional arguments), then reads or drives the
:class:`~lab.hyperv_emulator.model.Lab`. Output objects and error records carry the
real .NET type names and error ids; whether an error terminates the pipeline
follows Windows.

Scripts (``AddScript``) are not interpreted: the lab answers them with a
terminating error that says so, except the harness's thumbnail script, which
:mod:`lab.hyperv_emulator.thumbnail` recognises by its text and answers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from psrpcore import Command
from psrpcore.types import ErrorCategory, ErrorRecord, PSObject

from migration_blackout.lab.hyperv_emulator import model, pstypes
from migration_blackout.lab.hyperv_emulator.identity import ANONYMOUS, SessionIdentity

HYPERV_EXCEPTION = "Microsoft.HyperV.PowerShell.VirtualizationException"
PARAMETER_BINDING_EXCEPTION = [
    "System.Management.Automation.ParameterBindingException",
    "System.Management.Automation.RuntimeException",
    "System.SystemException",
]
CIM_EXCEPTION = ["Microsoft.Management.Infrastructure.CimException", "System.SystemException"]
VIRTUALIZATION_NAMESPACE = "root/virtualization/v2"


class TerminatingError(Exception):
    """The pipeline fails with this record (PipelineState Failed)."""

    def __init__(self, record: ErrorRecord) -> None:
        super().__init__(str(record))
        self.record = record


class PipelineWriter(Protocol):
    def write_output(self, value: Any) -> None: ...

    def write_error(self, record: ErrorRecord) -> None: ...


@dataclass(frozen=True)
class CmdletContext:
    lab: model.Lab
    host: str
    out: PipelineWriter
    # Who runs the pipeline (the WinRM shell's authenticated session).
    identity: SessionIdentity = ANONYMOUS
    # How this session reaches another host (the second hop of Move-VM and
    # Compare-VM) with the lab's KDC; None: the lab has none (lab.toml decides).
    reach: model.ReachDestination | None = None


@dataclass(frozen=True)
class Parameter:
    name: str
    position: int | None = None
    switch: bool = False
    mandatory: bool = False
    aliases: tuple[str, ...] = ()


Handler = Callable[[CmdletContext, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Cmdlet:
    name: str
    # .NET class that implements it; the suffix of its FullyQualifiedErrorIds.
    implementing_type: str
    parameters: tuple[Parameter, ...]
    handler: Handler

    def error_id(self, error: str) -> str:
        return f"{error},{self.implementing_type}"


# ---- parameter binding --------------------------------------------------------


def binding_error(cmdlet: Cmdlet, message: str, error: str, target: Any = None) -> TerminatingError:
    return TerminatingError(
        pstypes.error_record(
            message,
            exception_types=PARAMETER_BINDING_EXCEPTION,
            fully_qualified_error_id=cmdlet.error_id(error),
            category=ErrorCategory.InvalidArgument,
            activity=cmdlet.name,
            reason="ParameterBindingException",
            target_object=target,
        )
    )


def _match_parameter(cmdlet: Cmdlet, given: str) -> Parameter:
    key = given.lstrip("-").lower()
    exact = [
        p
        for p in cmdlet.parameters
        if key == p.name.lower() or key in (a.lower() for a in p.aliases)
    ]
    if exact:
        return exact[0]
    prefixed = [p for p in cmdlet.parameters if p.name.lower().startswith(key)]
    if len(prefixed) == 1:
        return prefixed[0]
    if len(prefixed) > 1:
        names = ", ".join(p.name for p in prefixed)
        raise binding_error(
            cmdlet,
            f"Parameter cannot be processed because the parameter name '{given}' is ambiguous. "
            f"Possible matches include: {names}.",
            "AmbiguousParameter",
        )
    raise binding_error(
        cmdlet,
        f"A parameter cannot be found that matches parameter name '{given}'.",
        "NamedParameterNotFound",
    )


def bind_parameters(cmdlet: Cmdlet, command: Command) -> dict[str, Any]:
    """Bind a remote command's parameters; raises TerminatingError as PowerShell would."""
    bound: dict[str, Any] = {}
    positional: list[Any] = []
    for name, value in command.parameters:
        if name is None:
            positional.append(value)
            continue
        parameter = _match_parameter(cmdlet, name)
        if parameter.name in bound:
            raise binding_error(
                cmdlet,
                f"Cannot bind parameter because parameter '{parameter.name}' is specified more "
                "than once.",
                "ParameterAlreadyBound",
            )
        if parameter.switch:
            bound[parameter.name] = value is None or bool(value)
        else:
            bound[parameter.name] = value
    slots = sorted(
        (p for p in cmdlet.parameters if p.position is not None and p.name not in bound),
        key=lambda p: p.position or 0,
    )
    for value in positional:
        if not slots:
            raise binding_error(
                cmdlet,
                f"A positional parameter cannot be found that accepts argument '{value}'.",
                "PositionalParameterNotFound",
                target=value,
            )
        bound[slots.pop(0).name] = value
    missing = [p.name for p in cmdlet.parameters if p.mandatory and p.name not in bound]
    if missing:
        raise binding_error(
            cmdlet,
            "Cannot process command because of one or more missing mandatory parameters: "
            f"{' '.join(missing)}.",
            "MissingMandatoryParameter",
        )
    return bound


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


# ---- Hyper-V cmdlets ----------------------------------------------------------


def hyperv_error(cmdlet: Cmdlet, error: model.HyperVError, *, target: Any = None) -> ErrorRecord:
    """The ErrorRecord a Hyper-V cmdlet writes for a lab error."""
    if isinstance(error, model.VmNotFoundError):
        error_id, category = "InvalidParameter", ErrorCategory.InvalidArgument
        target = error.name
    elif isinstance(error, model.AccessDeniedError):
        error_id, category = "AccessDenied", ErrorCategory.PermissionDenied
    elif isinstance(error, model.InvalidStateError):
        error_id, category = "InvalidState", ErrorCategory.InvalidOperation
    else:
        error_id, category = "OperationFailed", ErrorCategory.NotSpecified
    return pstypes.error_record(
        error.message,
        exception_types=[HYPERV_EXCEPTION],
        fully_qualified_error_id=cmdlet.error_id(error_id),
        category=category,
        activity=cmdlet.name,
        reason="VirtualizationException",
        target_object=target,
    )


async def _get_vm(ctx: CmdletContext, params: dict[str, Any]) -> None:
    names = [str(n) for n in as_list(params.get("Name"))] or None
    try:
        vms, missing = ctx.lab.get_vms(ctx.host, names)
    except model.AccessDeniedError as error:
        raise TerminatingError(hyperv_error(GET_VM, error)) from None
    for vm in vms:
        ctx.out.write_output(pstypes.virtual_machine(vm))
    for name in missing:
        # Non-terminating, as on Windows: one missing name does not stop the others.
        ctx.out.write_error(
            hyperv_error(GET_VM, model.VmNotFoundError(name, ctx.lab.culture(ctx.host)))
        )


async def _move_vm(ctx: CmdletContext, params: dict[str, Any]) -> None:
    storage_path = params.get("DestinationStoragePath")
    try:
        await ctx.lab.move_vm(
            ctx.host,
            str(params["Name"]),
            str(params["DestinationHost"]),
            include_storage=bool(params.get("IncludeStorage", False)),
            storage_path=None if storage_path is None else str(storage_path),
            delegated_credentials=ctx.identity.delegated_credentials,
            reach=ctx.reach,
        )
    except model.HyperVError as error:
        # Non-terminating, as Hyper-V's cmdlets report a failed operation: the
        # pipeline completes, and a client that checks only for a failed
        # pipeline (pypsrp's had_errors) sees success.
        ctx.out.write_error(hyperv_error(MOVE_VM, error))


def _hyperv_host(ctx: CmdletContext, cmdlet: Cmdlet) -> model.HostConfig:
    """The host's settings, or the cmdlet's terminating access-denied error."""
    try:
        ctx.lab.check_access(ctx.host)
    except model.AccessDeniedError as error:
        raise TerminatingError(hyperv_error(cmdlet, error)) from None
    return ctx.lab.host(ctx.host).config


async def _get_vmhost(ctx: CmdletContext, params: dict[str, Any]) -> None:
    config = _hyperv_host(ctx, GET_VMHOST)
    ctx.out.write_output(pstypes.vm_host(config, fqdn=ctx.lab.fqdn(ctx.host)))


async def _get_vmmigrationnetwork(ctx: CmdletContext, params: dict[str, Any]) -> None:
    config = _hyperv_host(ctx, GET_VMMIGRATIONNETWORK)
    for priority, subnet in enumerate(config.migration_networks):
        ctx.out.write_output(pstypes.migration_network(subnet, priority, ctx.host))


async def _get_vmhostsupportedversion(ctx: CmdletContext, params: dict[str, Any]) -> None:
    config = _hyperv_host(ctx, GET_VMHOSTSUPPORTEDVERSION)
    for version in config.supported_vm_versions:
        ctx.out.write_output(
            pstypes.supported_version(
                version, is_default=version == config.supported_vm_versions[-1]
            )
        )


async def _compare_vm(ctx: CmdletContext, params: dict[str, Any]) -> None:
    try:
        incompatibilities = await ctx.lab.compare_vm(
            ctx.host,
            str(params["Name"]),
            str(params["DestinationHost"]),
            delegated_credentials=ctx.identity.delegated_credentials,
            reach=ctx.reach,
        )
    except model.HyperVError as error:
        # As Move-VM: a record in the error stream, the pipeline completes.
        ctx.out.write_error(hyperv_error(COMPARE_VM, error))
        return
    ctx.out.write_output(
        pstypes.compatibility_report(str(params["DestinationHost"]), incompatibilities)
    )


async def _get_date(ctx: CmdletContext, params: dict[str, Any]) -> None:
    now_ns = ctx.lab.host_time_ns(ctx.host)
    offset = ctx.lab.host_utc_offset(ctx.host)
    ctx.out.write_output(pstypes.get_date_output(now_ns, utc_offset=offset))


# ---- Get-CimInstance ----------------------------------------------------------

_FILTER_TERM = re.compile(r"^\s*(\w+)\s*=\s*(?:'([^']*)'|\"([^\"]*)\"|(\d+))\s*$")


def _cim_error(message: str, hresult: str, category: ErrorCategory, target: str) -> ErrorRecord:
    return pstypes.error_record(
        message,
        exception_types=CIM_EXCEPTION,
        fully_qualified_error_id=GET_CIMINSTANCE.error_id(f"HRESULT {hresult}"),
        category=category,
        activity=GET_CIMINSTANCE.name,
        reason="CimException",
        target_object=target,
    )


def _cim_filter(expression: str) -> list[tuple[str, str]]:
    terms = []
    for part in re.split(r"\s+and\s+", expression.strip(), flags=re.IGNORECASE):
        match = _FILTER_TERM.match(part)
        if match is None:
            raise TerminatingError(
                _cim_error(
                    "Invalid query ", "0x80041017", ErrorCategory.InvalidArgument, expression
                )
            )
        name, quoted, double_quoted, number = match.groups()
        value = quoted if quoted is not None else double_quoted or number or ""
        terms.append((name, value))
    return terms


async def _get_ciminstance(ctx: CmdletContext, params: dict[str, Any]) -> None:
    namespace = str(params.get("Namespace") or "root/cimv2")
    class_name = str(params["ClassName"])
    if ctx.lab.host(ctx.host).config.access_denied:
        ctx.out.write_error(
            _cim_error("Access denied ", "0x80041003", ErrorCategory.PermissionDenied, namespace)
        )
        return
    ns = namespace.replace("\\", "/").lower()
    if ns not in ("root/cimv2", VIRTUALIZATION_NAMESPACE):
        ctx.out.write_error(
            _cim_error("Invalid namespace ", "0x8004100e", ErrorCategory.ObjectNotFound, namespace)
        )
        return
    if ns == "root/cimv2" and class_name.lower() == "win32_operatingsystem":
        config = ctx.lab.host(ctx.host).config
        ctx.out.write_output(pstypes.operating_system(config, ctx.host))
        return
    if ns != VIRTUALIZATION_NAMESPACE or class_name.lower() != "msvm_migrationjob":
        if class_name.lower().startswith(("msvm_", "cim_", "win32_")):
            raise TerminatingError(
                pstypes.error_record(
                    f"The emulated Hyper-V host does not implement CIM class '{class_name}' in "
                    f"namespace '{namespace}'.",
                    exception_types=["System.NotImplementedException", "System.SystemException"],
                    fully_qualified_error_id=GET_CIMINSTANCE.error_id("NotEmulated"),
                    category=ErrorCategory.NotImplemented,
                    activity=GET_CIMINSTANCE.name,
                    reason="NotImplementedException",
                    target_object=class_name,
                )
            )
        ctx.out.write_error(
            _cim_error("Invalid class ", "0x80041010", ErrorCategory.MetadataError, class_name)
        )
        return
    offset = ctx.lab.host_utc_offset(ctx.host)
    objects = [
        pstypes.migration_job(job, ctx.host, utc_offset=offset) for job in ctx.lab.jobs_on(ctx.host)
    ]
    expression = params.get("Filter")
    if expression:
        terms = _cim_filter(str(expression))
        objects = [o for o in objects if all(_cim_matches(o, n, v) for n, v in terms)]
    for obj in objects:
        ctx.out.write_output(obj)


def _cim_matches(obj: PSObject, name: str, value: str) -> bool:
    for prop in obj.PSObject.adapted_properties:
        if prop.name.lower() == name.lower():
            actual = prop.get_value(obj)
            return actual is not None and str(actual).lower() == value.lower()
    return False


# ---- registry -------------------------------------------------------------------

GET_VM = Cmdlet(
    "Get-VM",
    "Microsoft.HyperV.PowerShell.Commands.GetVM",
    (
        Parameter("Name", position=0, aliases=("VMName",)),
        Parameter("ComputerName"),
    ),
    _get_vm,
)
MOVE_VM = Cmdlet(
    "Move-VM",
    "Microsoft.HyperV.PowerShell.Commands.MoveVM",
    (
        Parameter("Name", position=0, mandatory=True, aliases=("VMName",)),
        Parameter("DestinationHost", position=1, mandatory=True),
        Parameter("IncludeStorage", switch=True),
        Parameter("DestinationStoragePath"),
        Parameter("ComputerName"),
    ),
    _move_vm,
)
GET_DATE = Cmdlet("Get-Date", "Microsoft.PowerShell.Commands.GetDateCommand", (), _get_date)
GET_CIMINSTANCE = Cmdlet(
    "Get-CimInstance",
    "Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand",
    (
        Parameter("ClassName", position=0, mandatory=True),
        Parameter("Namespace"),
        Parameter("Filter"),
        Parameter("ComputerName"),
    ),
    _get_ciminstance,
)

GET_VMHOST = Cmdlet(
    "Get-VMHost",
    "Microsoft.HyperV.PowerShell.Commands.GetVMHost",
    (Parameter("ComputerName", position=0),),
    _get_vmhost,
)
GET_VMMIGRATIONNETWORK = Cmdlet(
    "Get-VMMigrationNetwork",
    "Microsoft.HyperV.PowerShell.Commands.GetVMMigrationNetwork",
    (Parameter("Subnet", position=0), Parameter("Priority"), Parameter("ComputerName")),
    _get_vmmigrationnetwork,
)
GET_VMHOSTSUPPORTEDVERSION = Cmdlet(
    "Get-VMHostSupportedVersion",
    "Microsoft.HyperV.PowerShell.Commands.GetVMHostSupportedVersion",
    (Parameter("Default", switch=True), Parameter("ComputerName")),
    _get_vmhostsupportedversion,
)
COMPARE_VM = Cmdlet(
    "Compare-VM",
    "Microsoft.HyperV.PowerShell.Commands.CompareVM",
    (
        Parameter("Name", position=0, mandatory=True, aliases=("VMName",)),
        Parameter("DestinationHost", position=1, mandatory=True),
        Parameter("IncludeStorage", switch=True),
        Parameter("DestinationStoragePath"),
        Parameter("ComputerName"),
    ),
    _compare_vm,
)

# What a host answers: cmdlets by name (AddCommand), and the scripts the harness
# ships by their text (AddScript). The modules that emulate more of a host add
# theirs with register_cmdlet / register_script when they are imported (eventlog:
# Get-WinEvent and the events script; preflight and thumbnail: scripts); the
# runspace (psrp) imports them all.
CMDLETS: dict[str, Cmdlet] = {
    c.name.lower(): c
    for c in (
        GET_VM,
        MOVE_VM,
        GET_DATE,
        GET_CIMINSTANCE,
        GET_VMHOST,
        GET_VMMIGRATIONNETWORK,
        GET_VMHOSTSUPPORTEDVERSION,
        COMPARE_VM,
    )
}
# Cmdlets a host of an older Hyper-V generation does not have
# (Get-VMHostSupportedVersion came with Windows Server 2016).
NEWER_CMDLETS = frozenset({GET_VMHOSTSUPPORTEDVERSION.name.lower()})


SCRIPTS: dict[str, Cmdlet] = {}


def normalise_script(text: str) -> str:
    """A script's text as it is compared: line ends aside, without surrounding space."""
    return text.replace("\r\n", "\n").strip()


def register_cmdlet(cmdlet: Cmdlet) -> Cmdlet:
    CMDLETS[cmdlet.name.lower()] = cmdlet
    return cmdlet


def register_script(text: str, script: Cmdlet) -> Cmdlet:
    """Answer the script whose text is ``text`` with ``script``'s handler, its
    ``param()`` block as ``script``'s parameters."""
    SCRIPTS[normalise_script(text)] = script
    return script


def command_not_found(name: str) -> ErrorRecord:
    return pstypes.error_record(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or "
        "operable program. Check the spelling of the name, or if a path was included, verify "
        "that the path is correct and try again.",
        exception_types=[
            "System.Management.Automation.CommandNotFoundException",
            "System.Management.Automation.RuntimeException",
            "System.SystemException",
        ],
        fully_qualified_error_id="CommandNotFoundException",
        category=ErrorCategory.ObjectNotFound,
        activity="",
        reason="CommandNotFoundException",
        target_object=name,
    )


def scripts_not_supported() -> ErrorRecord:
    return pstypes.error_record(
        "The emulated Hyper-V host runs only commands added with AddCommand; scripts "
        "(AddScript) are not interpreted.",
        exception_types=[
            "System.Management.Automation.RuntimeException",
            "System.SystemException",
        ],
        fully_qualified_error_id="ScriptsNotEmulated",
        category=ErrorCategory.NotImplemented,
        activity="",
        reason="RuntimeException",
    )


async def run_statement(ctx: CmdletContext, commands: list[Command]) -> None:
    """Run one statement (commands piped together); the lab runs one command per statement."""
    first = commands[0]
    if first.is_script:
        script = SCRIPTS.get(normalise_script(first.command_text))
        if script is None:
            raise TerminatingError(scripts_not_supported())
        await script.handler(ctx, bind_parameters(script, one_command(commands, script.name)))
        return
    # Module-qualified names (Hyper-V\Get-VM) resolve to the cmdlet.
    name = first.command_text.rsplit("\\", 1)[-1]
    cmdlet = CMDLETS.get(name.lower())
    older = ctx.lab.host(ctx.host).config.older_version
    if cmdlet is None or (older and name.lower() in NEWER_CMDLETS):
        raise TerminatingError(command_not_found(first.command_text))
    await cmdlet.handler(ctx, bind_parameters(cmdlet, one_command(commands, cmdlet.name)))


def one_command(commands: list[Command], activity: str) -> Command:
    """A statement's only command: piping on the host is not emulated."""
    if len(commands) > 1:
        raise TerminatingError(
            pstypes.error_record(
                "The emulated Hyper-V host runs one command per statement; pipe the output on "
                "the client instead.",
                exception_types=["System.NotImplementedException", "System.SystemException"],
                fully_qualified_error_id="PipelinesNotEmulated",
                category=ErrorCategory.NotImplemented,
                activity=activity,
                reason="NotImplementedException",
            )
        )
    return commands[0]


def transformation_error(
    cmdlet: Cmdlet, parameter: str, value: Any, target_type: str, detail: str = ""
) -> TerminatingError:
    """PowerShell's "Cannot process argument transformation" binding error."""
    return TerminatingError(
        pstypes.error_record(
            f"Cannot process argument transformation on parameter '{parameter}'. Cannot convert "
            f'value "{value}" to type "{target_type}".{detail}',
            exception_types=[
                "System.Management.Automation.ParameterBindingArgumentTransformationException",
                "System.Management.Automation.ParameterBindingException",
                "System.Management.Automation.RuntimeException",
                "System.SystemException",
            ],
            fully_qualified_error_id=cmdlet.error_id("ParameterArgumentTransformationError"),
            category=ErrorCategory.InvalidData,
            activity=cmdlet.name,
            reason="ParameterBindingArgumentTransformationException",
            target_object=str(value),
        )
    )

"""The one script that reads the VM's console screen on the emulated hosts.

On a real host, ``Msvm_VirtualSystemManagementService.GetVirtualSystemThumbnailImage``
returns the VM's screen as raw RGB565: the host-side twin of the VM Connection
window the write-up watched. The harness reads it with
``harness/scripts/Get-VMThumbnail.ps1``, sent unchanged with ``AddScript`` and
the VM name, width and height as parameters. The lab does not interpret
PowerShell: it recognises that script by its text (loaded from the same package
path the harness sends it from) and answers what the script answers on a real
host: one object with ``VMName``, ``VMId``, ``ComputerName``, ``Width``,
``Height``, ``ImageData`` and ``HostTime`` from the host that lists the VM; on a
host that does not, the script's non-terminating "unable to find a virtual
machine" error and nothing else. Any other script text is still refused.

What the screen shows, and its pixels, is ``screen``'s; this module registers
the script with the cmdlet layer when it is imported.
"""

from __future__ import annotations

from typing import Any

from psrpcore.types import ErrorCategory, ErrorRecord, PSByteArray, PSCustomObject, PSInt

from migration_blackout.lab.hyperv_emulator import cmdlets, model, pstypes, scripts
from migration_blackout.lab.hyperv_emulator.cmdlets import (
    CmdletContext,
    Parameter,
    TerminatingError,
)

SCRIPT_RESOURCE = "scripts/Get-VMThumbnail.ps1"
SCRIPT_NAME = "Get-VMThumbnail.ps1"

# The script's [ValidateRange(1, 4096)] on Width and Height.
MIN_PIXELS = 1
MAX_PIXELS = 4096


# ---- the script -----------------------------------------------------------------


async def _thumbnail(ctx: CmdletContext, params: dict[str, Any]) -> None:
    vm_name = _string_argument(params["VMName"])
    width = _int_argument(params, "Width", 320)
    height = _int_argument(params, "Height", 240)
    lab = ctx.lab
    if lab.host(ctx.host).config.access_denied:
        # Get-CimInstance in root\virtualization\v2 fails; $ErrorActionPreference
        # = 'Stop' makes that terminating.
        raise TerminatingError(_cim_access_denied())
    # ElementName -eq $VMName: literal and case-insensitive, no wildcards.
    listed = [v for v in lab.vms_on(ctx.host) if v.name.lower() == vm_name.lower()]
    if not listed:
        ctx.out.write_error(vm_not_found(vm_name))
        return
    offset = lab.host_utc_offset(ctx.host)
    for vm in listed:
        image = lab.console.frame(
            running=vm.state == model.VmState.Running,
            host=ctx.host,
            width=width,
            height=height,
            host_time_ns=lab.host_time_ns(ctx.host),
            utc_offset=offset,
        )
        ctx.out.write_output(
            PSCustomObject(
                VMName=vm.name,
                VMId=str(vm.vm_id).upper(),
                ComputerName=ctx.host,
                Width=PSInt(width),
                Height=PSInt(height),
                ImageData=PSByteArray(image),
                HostTime=pstypes.get_date_output(lab.host_time_ns(ctx.host), utc_offset=offset),
            )
        )


# The script's param() block: positions in declaration order, as PowerShell
# gives a script's parameters.
THUMBNAIL_SCRIPT = scripts.register_shipped(
    SCRIPT_RESOURCE,
    cmdlets.Cmdlet(
        SCRIPT_NAME,
        SCRIPT_NAME,
        (
            Parameter("VMName", position=0, mandatory=True),
            Parameter("Width", position=1),
            Parameter("Height", position=2),
        ),
        _thumbnail,
    ),
)


def _validation_error(parameter: str, message: str, value: Any) -> TerminatingError:
    return TerminatingError(
        pstypes.error_record(
            f"Cannot validate argument on parameter '{parameter}'. {message}",
            exception_types=[
                "System.Management.Automation.ParameterBindingValidationException",
                "System.Management.Automation.ParameterBindingException",
                "System.Management.Automation.RuntimeException",
                "System.SystemException",
            ],
            fully_qualified_error_id=THUMBNAIL_SCRIPT.error_id("ParameterArgumentValidationError"),
            category=ErrorCategory.InvalidData,
            activity=SCRIPT_NAME,
            reason="ParameterBindingValidationException",
            target_object=value,
        )
    )


def _string_argument(value: Any) -> str:
    text = "" if value is None else str(value)
    if not text:
        raise TerminatingError(
            pstypes.error_record(
                "Cannot bind argument to parameter 'VMName' because it is an empty string.",
                exception_types=[
                    "System.Management.Automation.ParameterBindingValidationException",
                    "System.Management.Automation.ParameterBindingException",
                    "System.Management.Automation.RuntimeException",
                    "System.SystemException",
                ],
                fully_qualified_error_id=THUMBNAIL_SCRIPT.error_id(
                    "ParameterArgumentValidationErrorEmptyStringNotAllowed"
                ),
                category=ErrorCategory.InvalidData,
                activity=SCRIPT_NAME,
                reason="ParameterBindingValidationException",
            )
        )
    return text


def _int_argument(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else int(value)
    except ValueError:
        raise cmdlets.transformation_error(
            THUMBNAIL_SCRIPT,
            name,
            value,
            "System.Int32",
            ' Error: "Input string was not in a correct format."',
        ) from None
    if number < MIN_PIXELS:
        raise _validation_error(
            name,
            f"The {number} argument is less than the minimum allowed range of {MIN_PIXELS}. "
            f"Supply an argument that is greater than or equal to {MIN_PIXELS} and then try the "
            "command again.",
            number,
        )
    if number > MAX_PIXELS:
        raise _validation_error(
            name,
            f"The {number} argument is greater than the maximum allowed range of {MAX_PIXELS}. "
            f"Supply an argument that is less than or equal to {MAX_PIXELS} and then try the "
            "command again.",
            number,
        )
    return number


def vm_not_found(name: str) -> ErrorRecord:
    """The script's Write-Error for a host that does not hold the VM (non-terminating)."""
    return pstypes.error_record(
        f'Hyper-V was unable to find a virtual machine with name "{name}".',
        exception_types=[
            "Microsoft.PowerShell.Commands.WriteErrorException",
            "System.SystemException",
        ],
        fully_qualified_error_id="VMNotFound",
        category=ErrorCategory.ObjectNotFound,
        activity="Write-Error",
        reason="WriteErrorException",
        target_object=name,
    )


def _cim_access_denied() -> ErrorRecord:
    return pstypes.error_record(
        "Access denied ",
        exception_types=cmdlets.CIM_EXCEPTION,
        fully_qualified_error_id=cmdlets.GET_CIMINSTANCE.error_id("HRESULT 0x80041003"),
        category=ErrorCategory.PermissionDenied,
        activity=cmdlets.GET_CIMINSTANCE.name,
        reason="CimException",
        target_object=cmdlets.VIRTUALIZATION_NAMESPACE,
    )

"""The harness's migration check, ``Test-VMMigration.ps1``, as an emulated host answers it.

The script runs ``Compare-VM -Name <vm> -DestinationHost <dest>`` on the
VM's source host and flattens the compatibility report into text (its
incompatibilities lie below the remoting serialisation depth). Compare-VM
reaches the destination as Move-VM does, so the lab answers with
:meth:`Lab.compare_vm`: a second hop that the source cannot make, live
migration disabled on either host, or a destination of an older Hyper-V
generation are the same error records Move-VM writes (non-terminating; the
script lets them through), and nothing moves.
"""

from __future__ import annotations

from typing import Any

from psrpcore.types import PSCustomObject, PSList

from migration_blackout.lab.hyperv_emulator import cmdlets, model, scripts

SCRIPT_RESOURCE = "scripts/Test-VMMigration.ps1"
SCRIPT_NAME = "Test-VMMigration.ps1"


async def _test_migration(ctx: cmdlets.CmdletContext, params: dict[str, Any]) -> None:
    vm_name = str(params["VMName"])
    destination = str(params["DestinationHost"])
    try:
        incompatibilities = await ctx.lab.compare_vm(
            ctx.host,
            vm_name,
            destination,
            delegated_credentials=ctx.identity.delegated_credentials,
            reach=ctx.reach,
        )
    except model.HyperVError as error:
        ctx.out.write_error(cmdlets.hyperv_error(cmdlets.COMPARE_VM, error))
        return
    ctx.out.write_output(
        PSCustomObject(
            VMName=vm_name,
            DestinationHost=destination,
            OperationType="MoveVirtualMachine",
            Incompatibilities=PSList(incompatibilities),
        )
    )


COMPARE_SCRIPT = scripts.register_shipped(
    SCRIPT_RESOURCE,
    cmdlets.Cmdlet(
        SCRIPT_NAME,
        SCRIPT_NAME,
        (
            cmdlets.Parameter("VMName", position=0, mandatory=True),
            cmdlets.Parameter("DestinationHost", position=1, mandatory=True),
            cmdlets.Parameter("IncludeStorage", switch=True),
            cmdlets.Parameter("DestinationStoragePath", position=2),
        ),
        _test_migration,
    ),
)

""".NET objects the emulated hosts return, as psrpcore types with the real type names.

``rehydrate=False`` everywhere: these classes describe what the server sends;
a psrpcore client in the same process must not turn incoming objects back
into them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PSDateTime,
    PSDuration,
    PSEnumBase,
    PSGuid,
    PSInt,
    PSInt64,
    PSList,
    PSNoteProperty,
    PSObject,
    PSString,
    PSType,
    PSUInt16,
    add_note_property,
)

from migration_blackout.lab.hyperv.model import EventLevel, HostEvent, JobView, VmState, VmView

CIM_PREFIX = "Microsoft.Management.Infrastructure.CimInstance"


@PSType(["Microsoft.HyperV.PowerShell.VMState"], rehydrate=False)
class PSVMState(PSEnumBase):
    Other = VmState.Other.value
    Running = VmState.Running.value
    Off = VmState.Off.value
    Stopping = VmState.Stopping.value
    Saved = VmState.Saved.value
    Paused = VmState.Paused.value
    Starting = VmState.Starting.value
    Reset = VmState.Reset.value
    Saving = VmState.Saving.value
    Pausing = VmState.Pausing.value
    Resuming = VmState.Resuming.value
    FastSaved = VmState.FastSaved.value
    FastSaving = VmState.FastSaving.value
    ForceShutdown = VmState.ForceShutdown.value
    ForceReboot = VmState.ForceReboot.value
    RunningCritical = VmState.RunningCritical.value
    OffCritical = VmState.OffCritical.value
    StoppingCritical = VmState.StoppingCritical.value
    SavedCritical = VmState.SavedCritical.value
    PausedCritical = VmState.PausedCritical.value
    StartingCritical = VmState.StartingCritical.value
    ResetCritical = VmState.ResetCritical.value
    SavingCritical = VmState.SavingCritical.value
    PausingCritical = VmState.PausingCritical.value
    ResumingCritical = VmState.ResumingCritical.value
    FastSavedCritical = VmState.FastSavedCritical.value
    FastSavingCritical = VmState.FastSavingCritical.value


@PSType(["Microsoft.PowerShell.Commands.DisplayHintType"], rehydrate=False)
class DisplayHintType(PSEnumBase):
    Date = 0
    Time = 1
    DateTime = 2


@PSType(
    [
        "Microsoft.HyperV.PowerShell.VirtualMachine",
        "Microsoft.HyperV.PowerShell.VirtualMachineBase",
        "Microsoft.HyperV.PowerShell.VirtualizationObject",
    ],
    adapted_properties=[
        PSNoteProperty("Name", ps_type=PSString),
        PSNoteProperty("VMName", ps_type=PSString),
        PSNoteProperty("Id", ps_type=PSGuid),
        PSNoteProperty("VMId", ps_type=PSGuid),
        PSNoteProperty("State", ps_type=PSVMState),
        PSNoteProperty("Status", ps_type=PSString),
        PSNoteProperty("ComputerName", ps_type=PSString),
        PSNoteProperty("Uptime", ps_type=PSDuration),
        PSNoteProperty("MemoryAssigned", ps_type=PSInt64),
        PSNoteProperty("Generation", ps_type=PSInt),
        PSNoteProperty("Version", ps_type=PSString),
        PSNoteProperty("IsClustered", ps_type=None),
    ],
    rehydrate=False,
)
class VirtualMachine(PSObject):
    pass


@PSType(
    ["System.Diagnostics.Eventing.Reader.EventProperty"],
    adapted_properties=[PSNoteProperty("Value")],
    rehydrate=False,
)
class EventProperty(PSObject):
    pass


@PSType(
    [
        "System.Diagnostics.Eventing.Reader.EventLogRecord",
        "System.Diagnostics.Eventing.Reader.EventRecord",
    ],
    adapted_properties=[
        PSNoteProperty("Id", ps_type=PSInt),
        PSNoteProperty("Version"),
        PSNoteProperty("Level"),
        PSNoteProperty("RecordId", ps_type=PSInt64),
        PSNoteProperty("ProviderName", ps_type=PSString),
        PSNoteProperty("LogName", ps_type=PSString),
        PSNoteProperty("MachineName", ps_type=PSString),
        PSNoteProperty("TimeCreated", ps_type=PSDateTime),
        PSNoteProperty("LevelDisplayName", ps_type=PSString),
        PSNoteProperty("Properties", ps_type=PSList),
    ],
    extended_properties=[PSNoteProperty("Message", ps_type=PSString)],
    rehydrate=False,
)
class EventLogRecord(PSObject):
    pass


_MIGRATION_JOB_CLASSES = [
    "root/virtualization/v2/Msvm_MigrationJob",
    "ROOT/virtualization/v2/Msvm_ConcreteJob",
    "ROOT/virtualization/v2/CIM_ConcreteJob",
    "ROOT/virtualization/v2/CIM_Job",
    "ROOT/virtualization/v2/CIM_LogicalElement",
    "ROOT/virtualization/v2/CIM_ManagedSystemElement",
    "ROOT/virtualization/v2/CIM_ManagedElement",
    "Msvm_MigrationJob",
    "Msvm_ConcreteJob",
    "CIM_ConcreteJob",
    "CIM_Job",
    "CIM_LogicalElement",
    "CIM_ManagedSystemElement",
    "CIM_ManagedElement",
]


@PSType(
    [f"{CIM_PREFIX}#{c}" for c in _MIGRATION_JOB_CLASSES] + [CIM_PREFIX],
    adapted_properties=[
        PSNoteProperty("InstanceID", ps_type=PSString),
        PSNoteProperty("Caption", ps_type=PSString),
        PSNoteProperty("Description", ps_type=PSString),
        PSNoteProperty("ElementName", ps_type=PSString),
        PSNoteProperty("Name", ps_type=PSString),
        PSNoteProperty("JobState", ps_type=PSUInt16),
        PSNoteProperty("PercentComplete", ps_type=PSUInt16),
        PSNoteProperty("ElapsedTime", ps_type=PSDuration),
        PSNoteProperty("StartTime", ps_type=PSDateTime),
        PSNoteProperty("ErrorCode", ps_type=PSUInt16),
        PSNoteProperty("ErrorDescription", ps_type=PSString),
        PSNoteProperty("VirtualSystemName", ps_type=PSString),
        PSNoteProperty("DestinationHost", ps_type=PSString),
        PSNoteProperty("MigrationType", ps_type=PSUInt16),
        PSNoteProperty("PSComputerName", ps_type=PSString),
    ],
    rehydrate=False,
)
class MsvmMigrationJob(PSObject):
    pass


_OPERATING_SYSTEM_CLASSES = [
    "root/cimv2/Win32_OperatingSystem",
    "ROOT/cimv2/CIM_OperatingSystem",
    "ROOT/cimv2/CIM_LogicalElement",
    "ROOT/cimv2/CIM_ManagedSystemElement",
    "Win32_OperatingSystem",
    "CIM_OperatingSystem",
    "CIM_LogicalElement",
    "CIM_ManagedSystemElement",
]


@PSType(
    [f"{CIM_PREFIX}#{c}" for c in _OPERATING_SYSTEM_CLASSES] + [CIM_PREFIX],
    adapted_properties=[
        PSNoteProperty("Caption", ps_type=PSString),
        PSNoteProperty("Version", ps_type=PSString),
        PSNoteProperty("BuildNumber", ps_type=PSString),
        PSNoteProperty("CSName", ps_type=PSString),
        PSNoteProperty("PSComputerName", ps_type=PSString),
    ],
    rehydrate=False,
)
class Win32OperatingSystem(PSObject):
    """The few properties of Win32_OperatingSystem the harness reads (learn.microsoft.com:
    Win32_OperatingSystem class; all strings)."""


def operating_system(caption: str, version: str, computer_name: str) -> Win32OperatingSystem:
    return Win32OperatingSystem(
        Caption=caption,
        Version=version,
        BuildNumber=version.rsplit(".", 1)[-1],
        CSName=computer_name.upper(),
        PSComputerName=computer_name,
    )


def host_datetime(ns: int, *, utc_offset: dt.timedelta = dt.timedelta(0)) -> PSDateTime:
    """A .NET DateTime for a host-clock instant (ns since the epoch)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    tz = dt.timezone(utc_offset)
    stamp = dt.datetime.fromtimestamp(seconds, tz=tz).replace(microsecond=rest // 1000)
    return PSDateTime(stamp, nanosecond=rest % 1000)


def get_date_output(ns: int, *, utc_offset: dt.timedelta = dt.timedelta(0)) -> PSDateTime:
    """What Get-Date writes: a DateTime with the DisplayHint note property."""
    value = host_datetime(ns, utc_offset=utc_offset)
    add_note_property(value, "DisplayHint", DisplayHintType.DateTime)
    return value


def virtual_machine(vm: VmView) -> VirtualMachine:
    vm_id = PSGuid(vm.vm_id)
    return VirtualMachine(
        Name=vm.name,
        VMName=vm.name,
        Id=vm_id,
        VMId=vm_id,
        State=PSVMState(int(vm.state)),
        Status=vm.status,
        ComputerName=vm.computer_name,
        Uptime=PSDuration(seconds=vm.uptime_s),
        MemoryAssigned=PSInt64(vm.memory_assigned),
        Generation=PSInt(2),
        Version="8.0",
        IsClustered=False,
    )


def event_log_record(
    event: HostEvent, *, utc_offset: dt.timedelta = dt.timedelta(0)
) -> EventLogRecord:
    properties = PSList([EventProperty(Value=value) for value in event.properties])
    return EventLogRecord(
        Id=PSInt(event.event_id),
        Version=0,
        Level=int(event.level),
        RecordId=PSInt64(event.record_id),
        ProviderName=event.provider_name,
        LogName=event.log_name,
        MachineName=event.machine_name,
        TimeCreated=host_datetime(event.time_created_ns, utc_offset=utc_offset),
        LevelDisplayName=EventLevel(event.level).name,
        Properties=properties,
        Message=event.message,
    )


def migration_job(
    job: JobView, computer_name: str, *, utc_offset: dt.timedelta = dt.timedelta(0)
) -> MsvmMigrationJob:
    return MsvmMigrationJob(
        InstanceID=job.instance_id,
        Caption="Virtual Machine Migration",
        Description="Migrating a virtual machine",
        ElementName=job.vm_name,
        Name="Virtual Machine Migration",
        JobState=PSUInt16(int(job.job_state)),
        PercentComplete=PSUInt16(job.percent_complete),
        ElapsedTime=PSDuration(seconds=job.elapsed_s),
        StartTime=host_datetime(job.start_time_ns, utc_offset=utc_offset),
        ErrorCode=PSUInt16(32768 if job.error_description else 0),
        ErrorDescription=job.error_description or None,
        VirtualSystemName=str(job.vm_id).upper(),
        DestinationHost=job.destination,
        MigrationType=PSUInt16(32768),  # VirtualSystem (live migration)
        PSComputerName=computer_name,
    )


# ---- error records ---------------------------------------------------------


def net_exception(message: str, type_names: list[str], hresult: int = -2146233088) -> NETException:
    """A serialized .NET exception with the given type chain (most derived first)."""
    exception = NETException(Message=message, HResult=hresult)
    exception.PSObject.type_names = [*type_names, "System.Exception", "System.Object"]
    return exception


def error_record(
    message: str,
    *,
    exception_types: list[str],
    fully_qualified_error_id: str,
    category: ErrorCategory,
    activity: str,
    reason: str,
    target_object: Any = None,
    target_type: str | None = None,
) -> ErrorRecord:
    """An ErrorRecord shaped as PowerShell serialises it for a remote client."""
    target_name = "" if target_object is None else str(target_object)
    return ErrorRecord(
        Exception=net_exception(message, exception_types),
        CategoryInfo=ErrorCategoryInfo(
            Category=category,
            Activity=activity,
            Reason=reason,
            TargetName=target_name,
            TargetType=target_type or ("" if target_object is None else "String"),
        ),
        TargetObject=target_object,
        FullyQualifiedErrorId=fully_qualified_error_id,
    )


def guid(value: uuid.UUID) -> PSGuid:
    return PSGuid(value)

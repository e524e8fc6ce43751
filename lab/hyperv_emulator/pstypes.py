""".NET objects the emulated hosts return, as psrpcore types with the real type names.

``rehydrate=False`` everywhere: these classes describe what the server sends;
a psrpcore client in the same process must not turn incoming objects back
into them.

Serialisation depth: PowerShell remoting writes an output object with depth
1 (PowerShell's serialization.cs, ``WriteOneObject``: "If depth is zero,
complex type should be serialized as string"; containers are written but
their items get depth zero). So a property that holds anything but a
primitive known type (string, numbers, DateTime, TimeSpan, Guid, Version,
byte[] ...) arrives as its ToString(): an enum as its name (a real host's
ServiceController.Status arrives as ``<S N="Status">Running</S>``, pypsrp's
recorded test_psrp_multiple_commands), an EventLogRecord's Properties as a
list of the text ``System.Diagnostics.Eventing.Reader.EventProperty``, a
compatibility report's VM as ``Microsoft.HyperV.PowerShell.VirtualMachine``.
The types below are declared that way.
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
    PSBool,
    PSDateTime,
    PSDuration,
    PSGuid,
    PSInt,
    PSInt64,
    PSList,
    PSNoteProperty,
    PSObject,
    PSString,
    PSType,
    PSUInt,
    PSUInt16,
    PSVersion,
    add_note_property,
)

from migration_blackout.lab.hyperv_emulator.model import (
    VM_VERSION,
    EventLevel,
    HostConfig,
    HostEvent,
    JobView,
    VmView,
)

CIM_PREFIX = "Microsoft.Management.Infrastructure.CimInstance"


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
        # VMState is an enum: at depth 0 its name, as a string.
        PSNoteProperty("State", ps_type=PSString),
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


EVENT_PROPERTY_TYPE = "System.Diagnostics.Eventing.Reader.EventProperty"


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


def host_datetime(ns: int, *, utc_offset: dt.timedelta = dt.timedelta(0)) -> PSDateTime:
    """A .NET DateTime for a host-clock instant (ns since the epoch)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    tz = dt.timezone(utc_offset)
    stamp = dt.datetime.fromtimestamp(seconds, tz=tz).replace(microsecond=rest // 1000)
    return PSDateTime(stamp, nanosecond=rest % 1000)


def get_date_output(ns: int, *, utc_offset: dt.timedelta = dt.timedelta(0)) -> PSDateTime:
    """What Get-Date writes: a DateTime with the DisplayHint note property
    (an enum, so at depth 0 its name)."""
    value = host_datetime(ns, utc_offset=utc_offset)
    add_note_property(value, "DisplayHint", "DateTime")
    return value


def virtual_machine(vm: VmView) -> VirtualMachine:
    vm_id = PSGuid(vm.vm_id)
    return VirtualMachine(
        Name=vm.name,
        VMName=vm.name,
        Id=vm_id,
        VMId=vm_id,
        State=vm.state.name,
        Status=vm.status,
        ComputerName=vm.computer_name,
        Uptime=PSDuration(seconds=vm.uptime_s),
        MemoryAssigned=PSInt64(vm.memory_assigned),
        Generation=PSInt(2),
        Version=VM_VERSION,
        IsClustered=False,
    )


def event_log_record(
    event: HostEvent,
    *,
    utc_offset: dt.timedelta = dt.timedelta(0),
    level_display_name: str | None = None,
) -> EventLogRecord:
    """An EventLogRecord as it arrives: its Properties (EventProperty objects,
    below the serialisation depth) as their type name, one per property."""
    properties = PSList([EVENT_PROPERTY_TYPE for _ in event.properties])
    return EventLogRecord(
        Id=PSInt(event.event_id),
        Version=0,
        Level=int(event.level),
        RecordId=PSInt64(event.record_id),
        ProviderName=event.provider_name,
        LogName=event.log_name,
        MachineName=event.machine_name,
        TimeCreated=host_datetime(event.time_created_ns, utc_offset=utc_offset),
        LevelDisplayName=level_display_name or EventLevel(event.level).name,
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
        # A display name, not the VM's: a client must match jobs by
        # VirtualSystemName (the VM's GUID). Real wording not verified.
        ElementName="Virtual Machine Migration",
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


# ---- host, versions, compatibility ----------------------------------------------


@PSType(
    ["Microsoft.HyperV.PowerShell.VMHost", "Microsoft.HyperV.PowerShell.VirtualizationObject"],
    adapted_properties=[
        PSNoteProperty("Name", ps_type=PSString),
        PSNoteProperty("ComputerName", ps_type=PSString),
        PSNoteProperty("FullyQualifiedDomainName", ps_type=PSString),
        PSNoteProperty("VirtualMachineMigrationEnabled", ps_type=PSBool),
        # MigrationAuthenticationType and VMMigrationPerformance are enums: names.
        PSNoteProperty("VirtualMachineMigrationAuthenticationType", ps_type=PSString),
        PSNoteProperty("VirtualMachineMigrationPerformanceOption", ps_type=PSString),
        PSNoteProperty("UseAnyNetworkForMigration", ps_type=PSBool),
        PSNoteProperty("MaximumVirtualMachineMigrations", ps_type=PSUInt),
        PSNoteProperty("MaximumStorageMigrations", ps_type=PSUInt),
        PSNoteProperty("VirtualMachinePath", ps_type=PSString),
        PSNoteProperty("VirtualHardDiskPath", ps_type=PSString),
    ],
    rehydrate=False,
)
class VMHost(PSObject):
    pass


@PSType(
    ["Microsoft.HyperV.PowerShell.VMMigrationNetwork"],
    adapted_properties=[
        PSNoteProperty("Subnet", ps_type=PSString),
        PSNoteProperty("Priority", ps_type=PSUInt),
        PSNoteProperty("ComputerName", ps_type=PSString),
    ],
    rehydrate=False,
)
class VMMigrationNetwork(PSObject):
    pass


@PSType(
    ["Microsoft.HyperV.PowerShell.VMHostSupportedVersion"],
    adapted_properties=[
        PSNoteProperty("Name", ps_type=PSString),
        PSNoteProperty("Version", ps_type=PSVersion),
        PSNoteProperty("IsDefault", ps_type=PSBool),
    ],
    rehydrate=False,
)
class VMHostSupportedVersion(PSObject):
    pass


@PSType(
    ["Microsoft.HyperV.PowerShell.VMCompatibilityReport"],
    adapted_properties=[
        # Below the serialisation depth: the VM and each error as a type name.
        PSNoteProperty("VM", ps_type=PSString),
        PSNoteProperty("OperationType", ps_type=PSString),
        PSNoteProperty("Destination", ps_type=PSString),
        PSNoteProperty("Path", ps_type=PSString),
        PSNoteProperty("SnapshotPath", ps_type=PSString),
        PSNoteProperty("VhdDestinationPath", ps_type=PSString),
        PSNoteProperty("VhdSourcePath", ps_type=PSString),
        PSNoteProperty("Incompatibilities", ps_type=PSList),
    ],
    rehydrate=False,
)
class VMCompatibilityReport(PSObject):
    pass


@PSType(
    [f"{CIM_PREFIX}#{c}" for c in _OPERATING_SYSTEM_CLASSES] + [CIM_PREFIX],
    adapted_properties=[
        PSNoteProperty("Caption", ps_type=PSString),
        PSNoteProperty("Version", ps_type=PSString),
        PSNoteProperty("BuildNumber", ps_type=PSString),
        PSNoteProperty("OSLanguage", ps_type=PSUInt),
        PSNoteProperty("MUILanguages", ps_type=PSList),
        PSNoteProperty("CSName", ps_type=PSString),
        PSNoteProperty("PSComputerName", ps_type=PSString),
    ],
    rehydrate=False,
)
class Win32OperatingSystem(PSObject):
    pass


MIGRATION_AUTH_NAMES = {"credssp": "CredSSP", "kerberos": "Kerberos"}
# Windows language ids (LCID) of the lab's cultures.
OS_LANGUAGES = {"en-US": 1033, "ja-JP": 1041}


def vm_host(config: HostConfig, *, fqdn: str) -> VMHost:
    return VMHost(
        Name=config.name,
        ComputerName=config.name,
        FullyQualifiedDomainName=fqdn,
        VirtualMachineMigrationEnabled=config.migration_enabled,
        VirtualMachineMigrationAuthenticationType=MIGRATION_AUTH_NAMES[config.migration_auth],
        VirtualMachineMigrationPerformanceOption="Compression",
        UseAnyNetworkForMigration=config.use_any_network,
        MaximumVirtualMachineMigrations=PSUInt(config.max_migrations),
        MaximumStorageMigrations=PSUInt(2),
        VirtualMachinePath="C:\\ProgramData\\Microsoft\\Windows\\Hyper-V",
        VirtualHardDiskPath="C:\\Users\\Public\\Documents\\Hyper-V\\Virtual Hard Disks",
    )


def migration_network(subnet: str, priority: int, computer_name: str) -> VMMigrationNetwork:
    return VMMigrationNetwork(Subnet=subnet, Priority=PSUInt(priority), ComputerName=computer_name)


def supported_version(version: str, *, is_default: bool) -> VMHostSupportedVersion:
    return VMHostSupportedVersion(
        Name=f"Microsoft Windows Server 2016 ({version})",
        Version=PSVersion(version),
        IsDefault=is_default,
    )


def compatibility_report(destination: str, incompatibilities: list[str]) -> VMCompatibilityReport:
    return VMCompatibilityReport(
        VM="Microsoft.HyperV.PowerShell.VirtualMachine",
        OperationType="MoveVirtualMachine",
        Destination=destination,
        Path="",
        SnapshotPath="",
        VhdDestinationPath=None,
        VhdSourcePath=None,
        Incompatibilities=PSList(
            ["Microsoft.HyperV.PowerShell.VMCompatibilityError" for _ in incompatibilities]
        ),
    )


def operating_system(config: HostConfig, computer_name: str) -> Win32OperatingSystem:
    version, caption = config.os
    return Win32OperatingSystem(
        Caption=caption,
        Version=version,
        BuildNumber=version.rsplit(".", 1)[-1],
        OSLanguage=PSUInt(OS_LANGUAGES[config.culture]),
        MUILanguages=PSList([config.culture.lower()]),
        CSName=computer_name.upper(),
        PSComputerName=computer_name,
    )


class ErrorStreamRecord(ErrorRecord):
    """An ErrorRecord written to the error stream (a non-terminating error):
    PowerShell serialises it with ``writeErrorStream = true`` (a real host's
    ERROR_RECORD message, pypsrp's recorded test_psrp_stream_no_output_invocation)."""

    @classmethod
    def ToPSObjectForRemoting(cls, instance: ErrorRecord, **kwargs: Any) -> PSObject:
        obj = ErrorRecord.ToPSObjectForRemoting(instance, **kwargs)
        add_note_property(obj, "writeErrorStream", True)
        return obj


def for_error_stream(record: ErrorRecord) -> ErrorRecord:
    """``record`` as the error stream carries it."""
    return ErrorStreamRecord(
        Exception=record.Exception,
        CategoryInfo=record.CategoryInfo,
        TargetObject=record.TargetObject,
        FullyQualifiedErrorId=record.FullyQualifiedErrorId,
    )

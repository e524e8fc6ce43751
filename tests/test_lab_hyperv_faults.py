"""Errors and faults surface as a real Hyper-V host shows them to pypsrp."""

from __future__ import annotations

import pytest
import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.powershell import RunspacePool
from test_lab_hyperv_support import (
    DST,
    SRC,
    VIRTUALIZATION_NS,
    VM,
    cmdlet,
    error_ids,
    error_texts,
    fast_config,
    fast_timing,
    migration_job,
    open_pool,
    run,
    vm_state,
    wait_until,
    wsman_for,
)

from migration_blackout.lab.hyperv_emulator import (
    FaultConfig,
    HostConfig,
    LabThread,
    Span,
    UnresponsiveFault,
    read_ground_truth,
)
from migration_blackout.lab.hyperv_emulator import groundtruth as gt
from migration_blackout.lab.hyperv_emulator.model import MigrationFailedError

MOVE_FAILED_ID = "OperationFailed,Microsoft.HyperV.PowerShell.Commands.MoveVM"


# A migration that fails in pre-copy: its brownout ends, then it rolls back.
ROLLED_BACK = [
    gt.MIGRATION_START,
    gt.BROWNOUT_START,
    gt.BROWNOUT_END,
    gt.ROLLBACK,
    gt.MOVE_VM_FAILED,
]


def _source_prefix(host: str = SRC) -> str:
    return f"Virtual machine migration operation for '{VM}' failed at migration source '{host}'."


def _ground_truth_names(lab: LabThread) -> list[str]:
    return [e["event"] for e in read_ground_truth(lab.ground_truth_path)[1]]


def test_vm_name_is_passed_literally_never_as_script() -> None:
    hostile = "x'; Remove-VM HVSW10Home; '"
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        ps = run(src, "Get-VM", Name=hostile)
        assert ps.output == []
        assert not ps.had_errors, "a missing VM is a non-terminating error"
        assert error_texts(ps) == [
            f'Hyper-V was unable to find a virtual machine with name "{hostile}".'
        ]
        assert error_ids(ps) == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"]
        assert ps.streams.error[0].target_object == hostile

        # Move-VM looks the name up exactly; its not-found error is a record
        # in the error stream, the pipeline completes (had_errors stays False).
        move = run(src, "Move-VM", "x'; Remove-VM *", DestinationHost=DST)
        assert not move.had_errors and move.state == PSInvocationState.COMPLETED
        assert error_texts(move) == [
            'Hyper-V was unable to find a virtual machine with name "x\'; Remove-VM *".'
        ]
        assert vm_state(src) == "Running"


def test_wildcard_names_that_match_nothing_are_not_errors() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        ps = run(src, "Get-VM", Name="x'; Remove-VM *")
        assert ps.output == [] and ps.streams.error == []
        assert [v.adapted_properties["Name"] for v in run(src, "Get-VM", Name="hvsw*").output] == [
            VM
        ]


def test_unknown_command_terminates_with_command_not_found() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        ps = run(src, "Remove-VM", Name=VM)
        assert ps.had_errors
        assert error_texts(ps) == [
            "The term 'Remove-VM' is not recognized as the name of a cmdlet, function, script "
            "file, or operable program. Check the spelling of the name, or if a path was "
            "included, verify that the path is correct and try again."
        ]
        assert error_ids(ps) == ["CommandNotFoundException"]
        assert vm_state(src) == "Running"


def test_parameter_binding_errors_terminate() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        unknown = run(src, "Get-VM", Bogus="1")
        assert unknown.had_errors
        assert error_texts(unknown) == [
            "A parameter cannot be found that matches parameter name 'Bogus'."
        ]
        assert error_ids(unknown) == [
            "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.GetVM"
        ]
        missing = run(src, "Move-VM", VM)
        assert missing.had_errors
        assert error_ids(missing) == [
            "MissingMandatoryParameter,Microsoft.HyperV.PowerShell.Commands.MoveVM"
        ]
        # Unique prefixes and aliases bind, as in PowerShell.
        assert run(src, "Get-VM", VMName=VM).output
        assert run(src, "Get-VM", Na=VM).output


def test_destination_of_an_older_version_refuses_the_protocol() -> None:
    config = fast_config(hosts=(HostConfig(SRC), HostConfig(DST, older_version=True)))
    with LabThread(config) as lab, open_pool(lab, SRC) as src, open_pool(lab, DST) as dst:
        move = run(
            src,
            "Move-VM",
            VM,
            DestinationHost=DST,
            IncludeStorage=True,
            DestinationStoragePath="C:\\Temp",
        )
        assert not move.had_errors and move.state == PSInvocationState.COMPLETED
        (text,) = error_texts(move)
        assert text.startswith(_source_prefix())
        assert text.endswith(
            f"The Virtual Machine Management Service failed to establish a connection for a "
            f"Virtual Machine migration with host '{DST}': The connection could not be "
            "established because protocol version 6.0 is not supported."
        )
        assert error_ids(move) == [MOVE_FAILED_ID]
        assert (vm_state(src), vm_state(dst)) == ("Running", None)
        job = migration_job(src)
        assert job is not None and job["JobState"] == 10
        assert gt.PAUSE not in _ground_truth_names(lab)


def test_move_started_on_a_host_without_the_vm_cannot_connect() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, DST) as dst:
        move = run(dst, "Move-VM", VM, DestinationHost=SRC)
        assert not move.had_errors
        (text,) = error_texts(move)
        assert text.startswith(_source_prefix(DST))
        assert text.endswith(f"Could not establish a connection with host '{SRC}'.")
        assert error_ids(move) == [MOVE_FAILED_ID]
        assert gt.MOVE_VM_FAILED in _ground_truth_names(lab)


def test_missing_vm_fault() -> None:
    with (
        LabThread(fast_config(faults=FaultConfig(vm_missing=True))) as lab,
        open_pool(lab, SRC) as src,
    ):
        assert run(src, "Get-VM").output == []
        get = run(src, "Get-VM", Name=VM)
        assert not get.had_errors
        assert error_texts(get) == [
            f'Hyper-V was unable to find a virtual machine with name "{VM}".'
        ]
        move = run(src, "Move-VM", VM, DestinationHost=DST)
        assert not move.had_errors
        assert error_ids(move) == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.MoveVM"]


def test_access_denied_terminates() -> None:
    config = fast_config(hosts=(HostConfig(SRC, access_denied=True), HostConfig(DST)))
    with LabThread(config) as lab, open_pool(lab, SRC) as src:
        expected = (
            "You do not have the required permission to complete this task. Contact the "
            f"administrator of the authorization policy for the computer '{SRC}'."
        )
        get = run(src, "Get-VM")
        assert get.had_errors
        assert error_texts(get) == [expected]
        assert error_ids(get) == ["AccessDenied,Microsoft.HyperV.PowerShell.Commands.GetVM"]
        move = run(src, "Move-VM", VM, DestinationHost=DST)
        assert not move.had_errors and error_texts(move) == [expected]
        cim = run(
            src, "Get-CimInstance", Namespace=VIRTUALIZATION_NS, ClassName="Msvm_MigrationJob"
        )
        assert not cim.had_errors
        assert error_ids(cim) == [
            "HRESULT 0x80041003,"
            "Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand"
        ]


def test_failure_midway_rolls_back_to_the_source() -> None:
    config = fast_config(faults=FaultConfig(fail_midway_at_percent=40))
    with LabThread(config) as lab, open_pool(lab, SRC) as src, open_pool(lab, DST) as dst:
        move = run(src, "Move-VM", VM, DestinationHost=DST)
        assert not move.had_errors and move.state == PSInvocationState.COMPLETED
        (text,) = error_texts(move)
        assert text.startswith(_source_prefix())
        assert "(0x80072746)" in text
        assert (vm_state(src), vm_state(dst)) == ("Running", None)
        job = migration_job(src)
        assert job is not None
        assert job["JobState"] == 10 and 30 <= job["PercentComplete"] <= 41
        events = run(src, "Get-WinEvent", FilterHashtable={"LogName": "System", "Id": 21502})
        (event,) = events.output
        assert (
            event.adapted_properties["ProviderName"]
            == "Microsoft-Windows-Hyper-V-High-Availability"
        )
        assert event.extended_properties["Message"].startswith(
            f"Live migration of 'Virtual Machine {VM}' failed."
        )
        names = _ground_truth_names(lab)
        assert names == ROLLED_BACK


def test_ctrl_c_cancels_the_migration() -> None:
    config = fast_config(timing=fast_timing(precopy_overhead=Span(30.0)))
    with (
        LabThread(config) as lab,
        open_pool(lab, SRC, max_runspaces=2) as src,
        open_pool(lab, DST) as dst,
    ):
        move = cmdlet(src, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        wait_until(
            lambda: (job := migration_job(src)) is not None and job["JobState"] == 4,
            deadline_s=5,
            what="the migration job to run",
        )
        move.stop()
        assert move.state == PSInvocationState.STOPPED
        assert (vm_state(src), vm_state(dst)) == ("Running", None)
        job = migration_job(src)
        assert job is not None and job["JobState"] == 8
        names = _ground_truth_names(lab)
        assert names == ROLLED_BACK
        # The VM can be moved again afterwards.
        assert (
            run(src, "Get-VM", Name=VM).output[0].adapted_properties["Status"]
            == "Operating normally"
        )


def test_host_that_closes_connections() -> None:
    with LabThread(fast_config()) as lab, wsman_for(lab, SRC) as wsman:
        pool = RunspacePool(wsman)
        pool.open()
        lab.set_unresponsive(SRC, "close")
        with pytest.raises(requests.exceptions.ConnectionError):
            run(pool, "Get-VM")
        lab.set_responsive(SRC)
        assert run(pool, "Get-VM").output
        pool.close()
        assert gt.HOST_UNRESPONSIVE in _ground_truth_names(lab)


def test_host_that_hangs() -> None:
    with (
        LabThread(fast_config()) as lab,
        wsman_for(lab, SRC, read_timeout=1, operation_timeout=1) as wsman,
    ):
        pool = RunspacePool(wsman)
        pool.open()
        lab.set_unresponsive(SRC, "hang")
        with pytest.raises(requests.exceptions.ReadTimeout):
            run(pool, "Get-VM")
        lab.set_responsive(SRC)
        pool.close()


def test_source_goes_dark_mid_migration_while_the_vm_still_lands() -> None:
    faults = FaultConfig(unresponsive=(UnresponsiveFault(SRC, "close", after_event=gt.PAUSE),))
    with (
        LabThread(fast_config(faults=faults)) as lab,
        wsman_for(lab, SRC) as wsman,
        open_pool(lab, DST) as dst,
    ):
        src = RunspacePool(wsman)
        src.open()
        move = cmdlet(src, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        with pytest.raises(requests.exceptions.ConnectionError):
            move.end_invoke()
        wait_until(
            lambda: vm_state(dst) == "Running", deadline_s=10, what="the VM on the destination"
        )
        lab.set_responsive(SRC)
        src.close()
        names = _ground_truth_names(lab)
        assert names.index(gt.HOST_UNRESPONSIVE) == names.index(gt.PAUSE) + 1


@pytest.mark.parametrize(
    ("source", "destination", "delegated", "code"),
    [
        pytest.param({}, {"migration_auth": "credssp"}, False, "0x8009030E", id="credssp-no-creds"),
        pytest.param({}, {"migration_auth": "credssp"}, True, None, id="credssp-delegated"),
        pytest.param({"delegation": False}, {}, False, "0x8009030E", id="kerberos-no-delegation"),
        pytest.param({"delegation": False}, {}, True, "0x8009030E", id="kerberos-creds-no-help"),
        pytest.param({}, {}, False, None, id="kerberos-delegation"),
        pytest.param({}, {"migration_enabled": False}, True, "not configured", id="disabled"),
    ],
)
def test_the_second_hop_is_decided_as_windows_does(
    source: dict, destination: dict, delegated: bool, code: str | None
) -> None:
    """lab.toml per host and one fact about the session (did it delegate
    credentials) decide whether a remote Move-VM / Compare-VM reaches the
    destination (docs/lab.md, "The second hop")."""
    config = fast_config(hosts=(HostConfig(SRC, **source), HostConfig(DST, **destination)))
    with LabThread(config) as lab:

        def compare() -> list[str]:
            return lab.lab.compare_vm(SRC, VM, DST, delegated_credentials=delegated)

        if code is None:
            assert lab.call(compare) == []
        else:
            with pytest.raises(MigrationFailedError) as failed:
                lab.call(compare)
            assert code in failed.value.message


def test_a_remote_move_without_a_second_hop_fails_and_the_vm_stays() -> None:
    config = fast_config(hosts=(HostConfig(SRC), HostConfig(DST, migration_auth="credssp")))
    with LabThread(config) as lab, open_pool(lab, SRC) as src, open_pool(lab, DST) as dst:
        # A Basic session never delegates credentials.
        compare = run(src, "Compare-VM", VM, DestinationHost=DST)
        assert compare.output == [] and not compare.had_errors
        assert error_ids(compare) == [
            "OperationFailed,Microsoft.HyperV.PowerShell.Commands.CompareVM"
        ]
        move = run(src, "Move-VM", VM, DestinationHost=DST)
        assert not move.had_errors and move.state == PSInvocationState.COMPLETED
        (text,) = error_texts(move)
        assert text.startswith(_source_prefix())
        assert "No credentials are available in the security package (0x8009030E)" in text
        assert (vm_state(src), vm_state(dst)) == ("Running", None)
        assert gt.PAUSE not in _ground_truth_names(lab)


def test_a_japanese_host_speaks_japanese_but_keeps_ids_and_enum_names() -> None:
    config = fast_config(hosts=(HostConfig(SRC, culture="ja-JP"), HostConfig(DST)))
    with LabThread(config) as lab, open_pool(lab, SRC) as src:
        missing = run(src, "Get-VM", Name="nothere")
        assert error_texts(missing) == [
            'Hyper-V は、名前が "nothere" の仮想マシンを見つけることができませんでした。'
        ]
        assert error_ids(missing) == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"]
        (vm,) = run(src, "Get-VM", Name=VM).output
        assert vm.adapted_properties["State"] == "Running"
        assert vm.adapted_properties["Status"] == "正常稼働中"
        (host,) = run(src, "Get-VMHost").output
        assert host.adapted_properties["VirtualMachineMigrationAuthenticationType"] == "Kerberos"

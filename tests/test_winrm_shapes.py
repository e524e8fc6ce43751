"""Shapes of what real Windows hosts send (tests/data/winrm-shapes, modelled on
the WinRM exchanges pypsrp recorded from Windows Server 2016/2019): the
harness's parsers read them, and the emulated lab sends the same shapes.

A shape is the set of element paths a client relies on, e.g.
``MS/S[FullyQualifiedErrorId]`` (an ``<S N="FullyQualifiedErrorId">`` inside
``<MS>``); values, RefIds and type-name lists aside. The lab's side is
captured from the unmodified pypsrp client's own debug log of every PSRP
message it unpacks and every WS-Man response it receives.
"""

from __future__ import annotations

import logging
import re
import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import WSManFaultError
from pypsrp.messages import ErrorRecordMessage, Message, PipelineState
from pypsrp.serializer import Serializer
from pypsrp.wsman import WSMan
from test_lab_hyperv_support import DST, SRC, VM, cmdlet, fast_config, fast_timing, open_pool, run

from migration_blackout.harness.psrp_session import (
    PowerShellError,
    _find_vm,
    _is_vm_not_found,
    parse_host_datetime,
)
from migration_blackout.lab.hyperv_emulator import HostConfig, LabThread, Span

SHAPES = Path(__file__).parent / "data" / "winrm-shapes"

# What a client reads, per shape.
DATE = {"DT", "MS/S[DisplayHint]"}
VM_STATE = {"Props/S[State]", "Props/S[Name]", "Props/G[VMId]"}
ERROR_RECORD = {
    "MS/Obj[Exception]/Props/S[Message]",
    "MS/S[FullyQualifiedErrorId]",
    "MS/I32[ErrorCategory_Category]",
    "MS/S[ErrorCategory_TargetName]",
    "MS/S[ErrorCategory_Message]",
}
PIPELINE_FAILED = {"MS/I32[PipelineState]"} | {
    "MS/Obj[ExceptionAsErrorRecord]/" + path for path in ERROR_RECORD
}
FAULT = {
    "Body/Fault/Code/Value",
    "Body/Fault/Code/Subcode/Value",
    "Body/Fault/Reason/Text",
    "Body/Fault/Detail/WSManFault/Message",
}


def paths(element: ET.Element, prefix: str = "") -> Iterator[str]:
    for child in element:
        tag = child.tag.rsplit("}", 1)[-1]
        if tag in ("TN", "TNRef", "ToString"):
            continue
        name = child.get("N")
        path = f"{prefix}{tag}" + (f"[{name}]" if name else "")
        yield path
        yield from paths(child, path + "/")


def shape(xml: str) -> set[str]:
    return set(paths(ET.fromstring(xml)))


def fixture(name: str) -> str:
    return (SHAPES / name).read_text(encoding="utf-8").strip()


# ---- the harness reads the recorded shapes ------------------------------------


def test_get_date_with_few_fractional_digits_parses_with_its_offset() -> None:
    value = Serializer().deserialize(fixture("get_date.clixml"))
    stamp = parse_host_datetime(value)
    assert stamp.isoformat() == "2026-11-25T04:02:38.410000+00:00"
    assert shape(fixture("get_date.clixml")) >= DATE


def test_an_enum_at_depth_is_a_plain_string() -> None:
    vm = Serializer().deserialize(fixture("vm_state_at_depth.clixml"))
    status = _find_vm([vm], VM)
    assert status is not None
    assert (status.state, status.version) == ("Running", "8.0")
    assert status.vm_id == "6e5f1b0c-98a0-4a3b-9f2b-3c6c0ad1e7a4"


def test_an_error_record_is_read_by_its_id() -> None:
    record = Serializer().deserialize(fixture("error_record.clixml"))
    assert isinstance(record, ErrorRecordMessage)
    error = PowerShellError.from_record(record)
    assert error.fully_qualified_error_id == (
        "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"
    )
    assert error.error_id == "InvalidParameter" and error.target_name == VM
    assert error.message == 'Hyper-V was unable to find a virtual machine with name "HVSW10Home".'
    assert _is_vm_not_found(error)


def test_a_failed_pipeline_carries_its_error_record() -> None:
    # As pypsrp unpacks it off the wire: the PSRP message header, then the CLIXML.
    data = (
        struct.pack("<II", 2, PIPELINE_STATE)  # destination: client; PIPELINE_STATE
        + uuid.uuid4().bytes_le
        + uuid.uuid4().bytes_le
        + b"\xef\xbb\xbf"
        + fixture("pipeline_failed.clixml").encode()
    )
    state = Message.unpack(data, Serializer()).data
    assert isinstance(state, PipelineState)
    assert state.state == PSInvocationState.FAILED
    error = PowerShellError.from_record(state.error_record)
    assert error.error_id == "CommandNotFoundException"
    assert "Get-VMHostSupportedVersion" in error.message


def test_a_receive_timeout_is_the_fault_pypsrp_polls_through() -> None:
    fault = WSMan._parse_wsman_fault(fixture("receive_timeout_fault.xml"))
    assert fault.code == 2150858793  # pypsrp swallows exactly this code and polls again
    assert "OperationTimeout" in (fault.reason or "")


# ---- the lab sends the same shapes ------------------------------------------------

_UNPACKED = re.compile(r"Unpacking PSRP message of type (\d+): (.*)", re.S)
PIPELINE_OUTPUT = 0x00041004
ERROR_RECORD_MESSAGE = 0x00041005
PIPELINE_STATE = 0x00041006


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    found = []
    for record in caplog.records:
        match = _UNPACKED.match(record.getMessage())
        if match:
            found.append((int(match.group(1)), match.group(2)))
    caplog.clear()
    return found


def test_the_lab_sends_what_real_hosts_send(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pypsrp.messages")
    caplog.set_level(logging.DEBUG, logger="pypsrp.wsman")
    config = fast_config(
        hosts=(HostConfig(SRC), HostConfig(DST)),
        timing=fast_timing(precopy_overhead=Span(3.0)),
    )
    with LabThread(config) as lab, open_pool(lab, SRC, max_runspaces=2) as src:
        caplog.clear()
        run(src, "Get-Date")
        (date,) = [xml for kind, xml in _messages(caplog) if kind == PIPELINE_OUTPUT]
        assert shape(date) >= DATE, shape(date)
        parse_host_datetime(Serializer().deserialize(date))

        run(src, "Get-VM", Name=VM)
        (vm,) = [xml for kind, xml in _messages(caplog) if kind == PIPELINE_OUTPUT]
        assert shape(vm) >= VM_STATE, shape(vm)

        run(src, "Get-VM", Name="nothere")
        (error,) = [xml for kind, xml in _messages(caplog) if kind == ERROR_RECORD_MESSAGE]
        assert shape(error) >= ERROR_RECORD, shape(error)
        assert "MS/B[writeErrorStream]" in shape(error) & shape(fixture("error_record.clixml"))

        run(src, "Remove-VM", Name=VM)  # not a command the lab knows: the pipeline fails
        states = [xml for kind, xml in _messages(caplog) if kind == PIPELINE_STATE]
        assert shape(states[-1]) >= PIPELINE_FAILED, shape(states[-1])

        move = cmdlet(src, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        command_id = str(move.id).upper()
        src.shell.receive("stdout", command_id=command_id, timeout=1)
        caplog.clear()
        with pytest.raises(WSManFaultError) as timed_out:
            src.shell.receive("stdout", command_id=command_id, timeout=1)
        assert timed_out.value.code == 2150858793
        (fault,) = [
            r.getMessage().removeprefix("Received message: ")
            for r in caplog.records
            if r.getMessage().startswith("Received message: ") and "Fault" in r.getMessage()
        ]
        lab_fault = ET.fromstring(fault)
        assert (
            set(paths(lab_fault)) >= FAULT
            and set(paths(ET.fromstring(fixture("receive_timeout_fault.xml")))) >= FAULT
        )
        ns = {"s": "http://www.w3.org/2003/05/soap-envelope"}
        assert lab_fault.findtext("s:Body/s:Fault/s:Code/s:Subcode/s:Value", namespaces=ns) == (
            "w:TimedOut"
        )
        move.end_invoke()

    # The fixtures hold every path the harness reads, too.
    assert shape(fixture("vm_state_at_depth.clixml")) >= VM_STATE
    assert shape(fixture("error_record.clixml")) >= ERROR_RECORD
    assert shape(fixture("pipeline_failed.clixml")) >= PIPELINE_FAILED

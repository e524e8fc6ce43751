"""Get-VMThumbnail.ps1 from the harness to the emulated hosts, through the
unmodified pypsrp client over real HTTP: the script travels as its shipped
text, every value as a parameter."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from test_lab_hyperv_support import DST, SRC, VM, fast_config

from migration_blackout.harness.config import HostConfig
from migration_blackout.harness.console import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    SCRIPT_NAME,
    fetch_thumbnail,
    thumbnail_script,
)
from migration_blackout.harness.psrp_session import HostCallError, HostSession
from migration_blackout.lab.hyperv_emulator import HostConfig as LabHostConfig
from migration_blackout.lab.hyperv_emulator import LabThread, read_ground_truth
from migration_blackout.lab.hyperv_emulator.thumbnail import THUMBNAIL_SCRIPT

HOSTILE = "x'; Remove-VM *"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabThread]:
    with LabThread(fast_config()) as running:
        yield running


def endpoint(lab: LabThread, name: str) -> HostConfig:
    host = lab.hosts[name]
    return HostConfig(
        name=name,
        address=host.address,
        port=host.port,
        https=False,
        auth="basic",
        username=lab.credentials.username,
    )


@pytest.fixture(scope="module")
def source(lab: LabThread) -> Iterator[HostSession]:
    with HostSession(endpoint(lab, SRC), lab.credentials.password) as session:
        yield session


@pytest.fixture(scope="module")
def destination(lab: LabThread) -> Iterator[HostSession]:
    with HostSession(endpoint(lab, DST), lab.credentials.password) as session:
        yield session


def test_holder_answers_the_screen_with_its_clock(source: HostSession) -> None:
    thumbnail = fetch_thumbnail(source, VM)
    assert thumbnail is not None
    assert thumbnail.host == SRC
    assert (thumbnail.width, thumbnail.height) == (DEFAULT_WIDTH, DEFAULT_HEIGHT)
    assert len(thumbnail.rgb565) == DEFAULT_WIDTH * DEFAULT_HEIGHT * 2
    assert thumbnail.host_time is not None and thumbnail.host_time.tzinfo is not None
    assert any(thumbnail.rgb565), "a running VM's screen is not black"


def test_size_reaches_the_script_as_parameters(source: HostSession) -> None:
    thumbnail = fetch_thumbnail(source, VM, 64, 48)
    assert thumbnail is not None
    assert len(thumbnail.rgb565) == 64 * 48 * 2
    # Without Width/Height the script's own defaults apply.
    result = source.invoke_script(thumbnail_script(), [("VMName", VM)], name=SCRIPT_NAME)
    (obj,) = result.output
    assert obj.extended_properties["Width"] == 320
    assert obj.extended_properties["Height"] == 240
    assert obj.extended_properties["ComputerName"] == SRC
    assert len(obj.extended_properties["ImageData"]) == 320 * 240 * 2


def test_a_host_without_the_vm_answers_none(destination: HostSession) -> None:
    assert fetch_thumbnail(destination, VM) is None
    result = destination.invoke_script(thumbnail_script(), [("VMName", VM)], name=SCRIPT_NAME)
    assert result.output == ()
    (error,) = result.errors
    assert error.message == f'Hyper-V was unable to find a virtual machine with name "{VM}".'


def test_hostile_name_arrives_literally(lab: LabThread, source: HostSession) -> None:
    result = source.invoke_script(thumbnail_script(), [("VMName", HOSTILE)], name=SCRIPT_NAME)
    assert result.output == ()
    (error,) = result.errors
    assert f'name "{HOSTILE}"' in error.message
    assert fetch_thumbnail(source, HOSTILE) is None
    # Nothing ran: the VM is still there, and the lab recorded no migration.
    assert source.get_vm(VM) is not None
    names = [e["event"] for e in read_ground_truth(lab.ground_truth_path)[1]]
    assert not any(n.startswith(("migration", "move_vm")) for n in names)


def test_wildcards_in_the_name_mean_themselves(source: HostSession) -> None:
    assert fetch_thumbnail(source, "HVSW10*") is None
    assert fetch_thumbnail(source, VM.lower()) is not None  # -eq is case-insensitive


def test_any_other_script_text_is_refused(source: HostSession) -> None:
    altered = thumbnail_script() + "\nRemove-VM -Name *\n"
    with pytest.raises(HostCallError, match="scripts \\(AddScript\\) are not interpreted"):
        source.invoke_script(altered, [("VMName", VM)], name=SCRIPT_NAME)


def test_windows_line_ends_are_the_same_script(source: HostSession) -> None:
    crlf = thumbnail_script().replace("\n", "\r\n")
    result = source.invoke_script(crlf, [("VMName", VM), ("Width", 8), ("Height", 8)])
    assert len(result.output) == 1


def test_binding_errors_terminate_as_powershell_would(source: HostSession) -> None:
    with pytest.raises(HostCallError, match="missing mandatory parameters: VMName"):
        source.invoke_script(thumbnail_script(), [("Width", 10)], name=SCRIPT_NAME)
    with pytest.raises(HostCallError, match="less than the minimum allowed range of 1"):
        source.invoke_script(thumbnail_script(), [("VMName", VM), ("Width", 0)], name=SCRIPT_NAME)
    with pytest.raises(HostCallError, match="empty string"):
        source.invoke_script(thumbnail_script(), [("VMName", "")], name=SCRIPT_NAME)


def test_access_denied_is_a_terminating_error() -> None:
    config = fast_config(hosts=(LabHostConfig(SRC, access_denied=True), LabHostConfig(DST)))
    with (
        LabThread(config) as lab,
        HostSession(endpoint(lab, SRC), lab.credentials.password) as session,
        pytest.raises(HostCallError, match="Access denied"),
    ):
        fetch_thumbnail(session, VM)


def test_lab_binds_the_shipped_param_block() -> None:
    """The lab's parameter list is the script's param() block, in order."""
    text = thumbnail_script()
    block = text[text.index("param(") : text.index("\n)\n")]
    declared = re.findall(r"\$(\w+)", block)
    assert declared == [p.name for p in THUMBNAIL_SCRIPT.parameters]
    mandatory = {p.name for p in THUMBNAIL_SCRIPT.parameters if p.mandatory}
    assert mandatory == {"VMName"}
    assert "[Parameter(Mandatory)]\n    [string]$VMName" in block
    assert "GetVirtualSystemThumbnailImage" in text
    for name in ("TargetSystem", "WidthPixels", "HeightPixels", "ReturnValue", "ImageData"):
        assert name in text

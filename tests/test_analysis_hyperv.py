"""Hyper-V's own blackout figure from harvested events (analysis/hyperv_figures.py):
read from the event data, whatever the host's language; the English message
only for events harvested before the data was kept."""

from __future__ import annotations

from migration_blackout.analysis.hyperv_figures import reported_blackout
from migration_blackout.harness.psrp_session import PowerShellError, _is_vm_not_found, event_data

VM = "HVSW10Home"
VM_ID = "6E5F1B0C-98A0-4A3B-9F2B-3C6C0AD1E7A4"
JAPANESE = (
    f"仮想マシン管理サービスは、仮想マシン '{VM}' のライブ マイグレーションを正常に"
    f"完了しました。ブラックアウト時間は 1.4 秒でした (VMID {VM_ID})。"
)
XML = (
    '<Event xmlns="http://schemas.microsoft.com/win/2004/08/events/event"><System>'
    "<EventID>20415</EventID></System><UserData>"
    '<VmlEventLog xmlns="http://www.microsoft.com/Windows/Virtualization/Events">'
    f"<Parameter0>{VM}</Parameter0><Parameter1>{VM_ID}</Parameter1>"
    "<Parameter2>1,4</Parameter2></VmlEventLog></UserData></Event>"
)


def test_the_figure_comes_from_the_event_data_in_any_language() -> None:
    data = dict(event_data(XML))
    assert data == {"Parameter0": VM, "Parameter1": VM_ID, "Parameter2": "1,4"}
    event = {
        "id": 20415,
        "host": "WS16TP4DM1VML1b",
        "time_created": "2026-11-25T13:02:43.1+09:00",
        "message": JAPANESE,
        "event_data": data,
        "matches_vm": True,
    }
    reported = reported_blackout([event], VM)
    assert reported is not None
    assert (reported["blackout_s"], reported["figures_from"]) == (1.4, "event-data")
    # Without the data a Japanese message yields nothing: no English to read.
    assert reported_blackout([{**event, "event_data": None, "matches_vm": None}], VM) is None


def test_an_older_run_folder_is_read_from_the_english_message() -> None:
    event = {
        "id": 20417,
        "message": "The Virtual Machine Management service successfully completed the live "
        f"migration of virtual machine '{VM}' with an unexpectedly long blackout time of "
        f"6.2 seconds (VMID {VM_ID}).",
        "time_created": "2026-11-25T04:02:43Z",
    }
    reported = reported_blackout([event], VM)
    assert reported is not None
    assert (reported["blackout_s"], reported["critical"], reported["figures_from"]) == (
        6.2,
        True,
        "message",
    )


def test_vm_not_found_is_told_by_its_id_not_its_text() -> None:
    japanese = 'Hyper-V は、名前が "x" の仮想マシンを見つけることができませんでした。'
    get_vm = "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"
    assert _is_vm_not_found(PowerShellError(japanese, get_vm, 5))
    assert _is_vm_not_found(PowerShellError(japanese, "VMNotFound,Get-VMThumbnail.ps1", 13))
    other = "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVMHost"
    assert not _is_vm_not_found(PowerShellError(japanese, other, 5))
    assert not _is_vm_not_found(PowerShellError("Access denied", "AccessDenied,x.GetVM", 18))
    # No id at all: the English text is the only clue left.
    english = 'Hyper-V was unable to find a virtual machine with name "x".'
    assert _is_vm_not_found(PowerShellError(english, None, None))

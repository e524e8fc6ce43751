"""The emulated hosts authenticate the unmodified pypsrp client as Windows does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pypsrp.exceptions import AuthenticationError
from pypsrp.powershell import RunspacePool
from pypsrp.wsman import WSMan
from test_lab_hyperv_support import SRC, VM, fast_config, open_pool, run, wsman_for

from migration_blackout.lab.hyperv_emulator import LabThread


@pytest.fixture
def lab() -> Iterator[LabThread]:
    with LabThread(fast_config()) as running:
        yield running


@pytest.mark.parametrize("auth", ["basic", "ntlm", "negotiate"])
def test_get_vm_over_each_auth(lab: LabThread, auth: str) -> None:
    # ntlm/negotiate over http use WinRM message encryption (multipart/encrypted).
    with open_pool(lab, SRC, auth=auth) as pool:
        ps = run(pool, "Get-VM", Name=VM)
    assert not ps.had_errors
    assert ps.streams.error == []
    (vm,) = ps.output
    assert vm.adapted_properties["Name"] == VM
    assert str(vm.adapted_properties["State"]) == "Running"
    assert vm.types[0] == "Microsoft.HyperV.PowerShell.VirtualMachine"


def test_ntlm_accepts_bare_user_name(lab: LabThread) -> None:
    endpoint = lab.hosts[SRC]
    with (
        WSMan(
            endpoint.address,
            port=endpoint.port,
            username=lab.credentials.username,
            password=lab.credentials.password,
            ssl=False,
            auth="ntlm",
        ) as wsman,
        RunspacePool(wsman) as pool,
    ):
        assert run(pool, "Get-VM").output


@pytest.mark.parametrize("auth", ["basic", "ntlm"])
def test_wrong_password_is_refused(lab: LabThread, auth: str) -> None:
    wrong = "not-" + lab.credentials.password
    with (
        wsman_for(lab, SRC, auth=auth, password=wrong) as wsman,
        pytest.raises(AuthenticationError),
    ):
        RunspacePool(wsman).open()


def test_each_lab_generates_its_own_password() -> None:
    with LabThread(fast_config()) as first, LabThread(fast_config(seed=1)) as second:
        assert first.credentials.password != second.credentials.password
        assert len(first.credentials.password) >= 16

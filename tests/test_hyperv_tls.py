"""HTTPS to the hosts, as production defaults to: the emulated hosts serve a
certificate made for the lab; the client validates it (or refuses, clearly)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from migration_blackout.harness.config import HostConfig
from migration_blackout.harness.psrp_session import HostSession, HostUnreachableError
from migration_blackout.lab.hyperv_emulator import (
    DEFAULT_SOURCE_HOST,
    DEFAULT_VM_NAME,
    LabConfig,
    LabThread,
)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabThread]:
    with LabThread(LabConfig(tls=True)) as running:
        yield running


def https_host(lab: LabThread, auth: str, cert_validation: bool | str) -> HostConfig:
    endpoint = lab.hosts[DEFAULT_SOURCE_HOST]
    assert endpoint.url.startswith("https://")
    return HostConfig(
        name=DEFAULT_SOURCE_HOST,
        address=endpoint.address,
        port=endpoint.port,
        https=True,
        auth=auth,
        cert_validation=cert_validation,
        username=lab.credentials.username if auth == "basic" else lab.credentials.principal,
    )


@pytest.mark.parametrize("auth", ["basic", "ntlm"])
def test_https_with_the_labs_certificate_trusted(lab: LabThread, auth: str) -> None:
    assert lab.ca_path is not None
    host = https_host(lab, auth, str(lab.ca_path))
    with HostSession(host, lab.credentials.password) as session:
        vm = session.get_vm(DEFAULT_VM_NAME)
        assert vm is not None and vm.state == "Running"


def test_an_untrusted_certificate_is_refused_with_a_clear_message(lab: LabThread) -> None:
    host = https_host(lab, "basic", True)  # system CAs only: the lab's certificate is unknown
    with pytest.raises(HostUnreachableError, match="certificate is not trusted"):
        HostSession(host, lab.credentials.password, call_timeout_s=5).open()

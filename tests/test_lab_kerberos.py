"""The lab's domain: a real MIT KDC, the hosts' GSSAPI acceptors, and a second hop
decided by the tickets that KDC issues (or refuses).

Everything here talks to the real daemons (``krb5kdc`` on 127.0.0.1, ``slapd`` on a
UNIX socket) through the real libraries: ``kinit``/``klist`` binaries, MIT's GSSAPI
via python-gssapi, and the unmodified pypsrp client over WinRM.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gssapi
import pytest
import spnego
from pypsrp.exceptions import AuthenticationError
from pypsrp.powershell import RunspacePool
from pypsrp.wsman import WSMan
from test_lab_hyperv_support import DST, SRC, VM, error_texts, fast_config, run, vm_state

from migration_blackout.lab.hyperv_emulator import HostConfig, LabThread, read_ground_truth
from migration_blackout.lab.hyperv_emulator.gss import (
    NO_CREDENTIALS,
    HopRefused,
    SecondHop,
    token_kind,
)
from migration_blackout.lab.kerberos import HOST_SERVICES, KerberosSettings

PASSWORD = "Lab-passw0rd"


def kerberos_wsman(lab: LabThread, host: str, *, auth: str = "kerberos", **kwargs: Any) -> WSMan:
    """pypsrp as the harness configures it for the lab: the host's SPN, not its address."""
    assert lab.realm is not None
    endpoint = lab.hosts[host]
    options: dict[str, Any] = {
        "username": lab.realm.user_principal,
        "password": PASSWORD,
        "negotiate_service": "HTTP",
        "negotiate_hostname_override": lab.realm.host(host).fqdn,
        **kwargs,
    }
    return WSMan(endpoint.address, port=endpoint.port, ssl=False, auth=auth, **options)


def lab_with(*hosts: HostConfig, **overrides: Any) -> LabThread:
    config = fast_config(password=PASSWORD, **overrides)
    if hosts:
        config = replace(config, hosts=hosts)
    return LabThread(config)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabThread]:
    """A lab whose VM nobody moves."""
    with lab_with() as running:
        yield running


def move(pool: RunspacePool) -> Any:
    return run(pool, "Move-VM", Name=VM, DestinationHost=DST)


def test_the_realm_has_the_user_and_each_hosts_computer_account(
    lab: LabThread, tmp_path: Path
) -> None:
    realm = lab.realm
    assert realm is not None and realm.realm == "LAB.TEST"
    assert realm.user_principal == f"{lab.credentials.username}@LAB.TEST"
    env = {
        **os.environ,
        "KRB5_CONFIG": str(realm.krb5_config),
        "KRB5CCNAME": f"FILE:{tmp_path / 'cc'}",
    }
    for host in realm.hosts:
        listed = subprocess.run(
            ["klist", "-k", str(host.keytab)], env=env, capture_output=True, text=True, check=True
        ).stdout
        for service in HOST_SERVICES:
            assert host.principal(service) in listed
    # The lab's password gets the user a ticket, and the ticket a service ticket.
    subprocess.run(
        ["kinit", realm.user_principal], input=PASSWORD + "\n", env=env, text=True, check=True
    )
    kvno = subprocess.run(
        ["kvno", realm.host(SRC).service_principal], env=env, capture_output=True, text=True
    )
    assert kvno.returncode == 0, kvno.stderr
    assert realm.host(SRC).service_principal in kvno.stdout


@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])
def test_winrm_over_kerberos_with_message_encryption(lab: LabThread, auth: str) -> None:
    # Over http pypsrp requires message encryption (GSS wrap) for both.
    with kerberos_wsman(lab, SRC, auth=auth) as wsman, RunspacePool(wsman) as pool:
        assert vm_state(pool) == "Running"


def test_a_ticket_for_another_host_is_refused(lab: LabThread) -> None:
    # Each host accepts with its own key only: a ticket for SRC sent to DST fails.
    assert lab.realm is not None
    wsman = kerberos_wsman(lab, DST, negotiate_hostname_override=lab.realm.host(SRC).fqdn)
    with wsman, pytest.raises((AuthenticationError, spnego.exceptions.SpnegoError)):
        RunspacePool(wsman).open()


def test_tokens_are_routed_by_mechanism(lab: LabThread) -> None:
    assert lab.realm is not None
    spn = f"HTTP@{lab.realm.host(SRC).fqdn}"
    user = lab.realm.user_principal
    kerberos = spnego.client(user, PASSWORD, hostname=spn.split("@")[1], service="HTTP")
    assert token_kind(kerberos.step() or b"") == "spnego-kerberos"
    raw = spnego.client(
        user, PASSWORD, hostname=spn.split("@")[1], service="HTTP", protocol="kerberos"
    )
    assert token_kind(raw.step() or b"") == "kerberos"
    ntlm = spnego.client(lab.credentials.username, PASSWORD, protocol="ntlm")
    assert token_kind(ntlm.step() or b"") == "other"
    assert token_kind(b"\x60\x05junk") == "other"


def test_move_vm_hops_with_constrained_delegation() -> None:
    with lab_with() as lab:
        assert lab.realm is not None
        with kerberos_wsman(lab, SRC) as wsman, RunspacePool(wsman) as pool:
            ps = move(pool)
            assert error_texts(ps) == [] and not ps.had_errors
        with kerberos_wsman(lab, DST) as wsman, RunspacePool(wsman) as pool:
            assert vm_state(pool) == "Running"
        (start,) = [
            e
            for e in read_ground_truth(lab.ground_truth_path)[1]
            if e.get("event") == "migration_start"
        ]
        hop = start["second_hop"]
        assert hop["how"] == "constrained-delegation"
        assert hop["client"] == hop["ticket_client"] == lab.realm.user_principal
        assert hop["client_auth"] == "kerberos"
        assert hop["service"] == lab.realm.host(DST).principal(
            "Microsoft Virtual System Migration Service"
        )
        # The KDC really did protocol transition and constrained delegation.
        log = (lab.realm.directory / "kdc.log").read_text()
        assert "PROTOCOL-TRANSITION" in log and "CONSTRAINED-DELEGATION" in log


def refused_move(lab: LabThread, auth: str) -> dict[str, Any]:
    """Move-VM from a session of ``auth``; it must fail and leave the VM where it is."""
    kwargs: dict[str, Any] = {}
    if auth == "ntlm":
        kwargs = {"username": lab.credentials.principal}
    with kerberos_wsman(lab, SRC, auth=auth, **kwargs) as wsman, RunspacePool(wsman) as pool:
        ps = move(pool)
        (text,) = error_texts(ps)
        assert f"Failed to establish a connection with host '{DST}'" in text
        assert vm_state(pool) == "Running"  # the VM stays on the source
    truth = read_ground_truth(lab.ground_truth_path)[1]
    (start,) = [e for e in truth if e.get("event") == "migration_start"]
    assert [e["event"] for e in truth if e.get("event") in ("pause", "resume")] == []
    return {"text": text, **start["second_hop"]}


@pytest.mark.parametrize("auth", ["kerberos", "negotiate", "ntlm"])
def test_without_delegation_the_kdc_refuses_the_hop(auth: str) -> None:
    with lab_with(HostConfig(SRC, delegation=False), HostConfig(DST)) as lab:
        refused = refused_move(lab, auth)
    assert "(0x8009030E)" in refused["text"]  # Windows' code for a Kerberos destination too
    assert refused["client_auth"] == ("ntlm" if auth == "ntlm" else "kerberos")
    # What the KDC answered to S4U2Proxy, not a flag: no delegation is configured.
    assert "KDC" in refused["refused"]


def test_delegation_for_kerberos_only_is_not_enough_over_winrm() -> None:
    # Windows Server 2016 needs "Use any authentication protocol"; "Use Kerberos
    # only" leaves the S4U2Self ticket non-forwardable, and S4U2Proxy fails.
    with lab_with(kerberos=KerberosSettings(protocol_transition=False)) as lab:
        refused = refused_move(lab, "kerberos")
    assert "(0x8009030E)" in refused["text"] and "KDC" in refused["refused"]


def test_credssp_migration_needs_delegated_credentials() -> None:
    # The destination's migration authentication decides (Set-VMHost on it).
    with lab_with(HostConfig(SRC), HostConfig(DST, migration_auth="credssp")) as lab:
        refused = refused_move(lab, "kerberos")
    assert "(0x8009030E)" in refused["text"]
    assert refused["migration_auth"] == "credssp"


def test_second_hop_against_the_kdc(lab: LabThread) -> None:
    assert lab.realm is not None
    hop = SecondHop(lab.realm)
    user = lab.credentials.principal  # LAB\harness, as NTLM shows it
    ticket = hop.obtain(
        source=SRC, destination=DST, user=user, password=None, migration_auth="kerberos"
    )
    assert ticket.client == lab.realm.user_principal and ticket.how == "constrained-delegation"
    # The destination has no delegation towards the source (the lab gives each
    # host delegation to the others; here the accounts say so).
    with lab_with(HostConfig(SRC), HostConfig(DST, delegation=False)) as other:
        assert other.realm is not None
        with pytest.raises(HopRefused) as refused:
            SecondHop(other.realm).obtain(
                source=DST, destination=SRC, user=user, password=None, migration_auth="kerberos"
            )
        assert refused.value.message_key == NO_CREDENTIALS
        # With the user's own password the source needs no delegation at all.
        own = SecondHop(other.realm).obtain(
            source=DST, destination=SRC, user=user, password=PASSWORD, migration_auth="credssp"
        )
        assert own.how == "password" and own.client == other.realm.user_principal


def test_the_kdc_stops_with_the_lab() -> None:
    with lab_with() as lab:
        assert lab.realm is not None
        directory = lab.realm.directory
        assert (directory / "krb5kdc.pid").exists()
        pids = [int((directory / name).read_text()) for name in ("krb5kdc.pid", "slapd.pid")]
        assert os.environ["KRB5_CONFIG"] == str(lab.realm.krb5_config)
    assert not directory.exists()
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
        )
    assert os.environ.get("KRB5_CONFIG") != str(lab.realm.krb5_config)


def test_gssapi_names_use_the_lab_realm(lab: LabThread) -> None:
    # Hostbased names map to LAB.TEST through the lab's krb5.conf, without DNS.
    assert lab.realm is not None
    name = gssapi.Name(f"HTTP@{lab.realm.host(SRC).fqdn}", gssapi.NameType.hostbased_service)
    canonical = name.canonicalize(gssapi.MechType.kerberos)
    assert str(canonical) == lab.realm.host(SRC).service_principal


@pytest.mark.parametrize("migration_auth", ["credssp", "kerberos"])
def test_a_credssp_session_hops_with_the_delegated_password(migration_auth: str) -> None:
    # No constrained delegation anywhere: the user's own credentials suffice.
    hosts = (HostConfig(SRC, delegation=False), HostConfig(DST, migration_auth=migration_auth))
    with lab_with(*hosts, auth_methods=frozenset({"basic", "negotiate", "credssp"})) as lab:
        assert lab.realm is not None
        endpoint = lab.hosts[SRC]
        wsman = WSMan(
            endpoint.address,
            port=endpoint.port,
            ssl=False,
            auth="credssp",
            username=lab.credentials.principal,
            password=PASSWORD,
            credssp_auth_mechanism="ntlm",
        )
        with wsman, RunspacePool(wsman) as pool:
            ps = move(pool)
            assert error_texts(ps) == []
        truth = lab.ground_truth_path.read_text()
        (start,) = [
            e
            for e in read_ground_truth(lab.ground_truth_path)[1]
            if e["event"] == "migration_start"
        ]
    hop = start["second_hop"]
    assert hop["client_auth"] == "credssp" and hop["how"] == "password"
    assert hop["ticket_client"] == lab.realm.user_principal
    assert PASSWORD not in truth

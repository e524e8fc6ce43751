"""The harness's Hyper-V client (harness.psrp_session) against the emulated hosts,
through the unmodified pypsrp client over real HTTP."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests
from pypsrp.exceptions import WinRMTransportError
from pypsrp.powershell import PowerShell, RunspacePool

from migration_blackout.harness.config import HostConfig
from migration_blackout.harness.psrp_session import (
    HostAuthError,
    HostCallError,
    HostSession,
    HostUnreachableError,
    MoveVmCall,
    _wsman,
    listener_hint,
    missing_auth_support,
    parse_host_datetime,
)
from migration_blackout.lab.hyperv_emulator import (
    DEFAULT_DESTINATION_HOST,
    DEFAULT_SOURCE_HOST,
    DEFAULT_VM_NAME,
    LabConfig,
    LabThread,
    MigrationTiming,
    Span,
    read_ground_truth,
)
from migration_blackout.lab.hyperv_emulator import HostConfig as LabHostConfig

FAST = MigrationTiming(
    precopy_overhead=Span(0.3),
    paused_listed=Span(0.2),
    unlisted=Span(0.2),
    completion=Span(0.1),
    network_reconvergence=Span(0.1),
    negotiation=Span(0.05),
    transfer_rate_bytes_per_s=20e9,
)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabThread]:
    config = LabConfig(
        timing=FAST,
        hosts=(
            LabHostConfig(DEFAULT_SOURCE_HOST, clock_offset_s=2.5),
            LabHostConfig(DEFAULT_DESTINATION_HOST),
        ),
    )
    with LabThread(config) as running:
        yield running


def endpoint(lab: LabThread, name: str, auth: str = "basic") -> HostConfig:
    host = lab.hosts[name]
    return HostConfig(
        name=name,
        address=host.address,
        port=host.port,
        https=False,
        auth=auth,
        username=lab.credentials.principal if auth != "basic" else lab.credentials.username,
    )


def test_get_vm_and_get_date(lab: LabThread) -> None:
    with HostSession(endpoint(lab, DEFAULT_SOURCE_HOST), lab.credentials.password) as session:
        vm = session.get_vm(DEFAULT_VM_NAME)
        assert vm is not None
        assert vm.state == "Running"
        assert vm.name == DEFAULT_VM_NAME
        before = datetime.now(UTC)
        host_now = session.get_date()
        after = datetime.now(UTC)
        # The source host's clock runs 2.5 s ahead in this lab.
        skew = host_now - before
        assert timedelta(seconds=2.4) < skew < timedelta(seconds=2.6) + (after - before)
    with HostSession(endpoint(lab, DEFAULT_DESTINATION_HOST), lab.credentials.password) as other:
        assert other.get_vm(DEFAULT_VM_NAME) is None


def test_ntlm_with_message_encryption(lab: LabThread) -> None:
    host = endpoint(lab, DEFAULT_SOURCE_HOST, auth="ntlm")
    with HostSession(host, lab.credentials.password) as session:
        assert session.get_vm(DEFAULT_VM_NAME) is not None


def test_wrong_password_is_an_auth_error_naming_the_host(lab: LabThread) -> None:
    session = HostSession(endpoint(lab, DEFAULT_SOURCE_HOST), "wrong-password")
    with pytest.raises(HostAuthError, match=DEFAULT_SOURCE_HOST):
        session.open()


def test_unreachable_host_names_the_host() -> None:
    host = HostConfig(
        name="nowhere", address="127.0.0.1", port=1, https=False, auth="basic", username="u"
    )
    with pytest.raises(HostUnreachableError, match="nowhere: cannot reach WinRM"):
        HostSession(host, "pw", call_timeout_s=3).open()


def test_vm_name_reaches_the_host_as_a_literal(lab: LabThread) -> None:
    hostile = "x'; Remove-VM HVSW10Home; '"
    with HostSession(endpoint(lab, DEFAULT_SOURCE_HOST), lab.credentials.password) as session:
        assert session.get_vm(hostile) is None
        result = session.invoke("Get-VM", [("Name", hostile)])
        assert len(result.errors) == 1
        assert f'name "{hostile}"' in result.errors[0].message
        # The VM is still there: nothing was executed.
        assert session.get_vm(DEFAULT_VM_NAME) is not None


def test_unknown_cmdlet_is_a_terminating_error(lab: LabThread) -> None:
    with HostSession(endpoint(lab, DEFAULT_SOURCE_HOST), lab.credentials.password) as session:
        error = pytest.raises(HostCallError, match="is not recognized")
        with error:
            session.invoke("Remove-VM", [("Name", DEFAULT_VM_NAME)])


def test_move_vm_with_polls_and_events(lab: LabThread) -> None:
    """Move-VM on its own connection while another thread polls both hosts."""
    password = lab.credentials.password
    source, destination = DEFAULT_SOURCE_HOST, DEFAULT_DESTINATION_HOST
    seen: dict[str, list[tuple[str, int | None]]] = {source: [], destination: []}
    done = threading.Event()

    def poll(session: HostSession) -> None:
        while not done.is_set():
            result = session.poll_vm(DEFAULT_VM_NAME)
            assert result.host_time is not None and result.host_time.tzinfo is not None
            state = result.vm.state if result.vm else "unlisted"
            percent = result.job.percent_complete if result.job else None
            seen[session.name].append((state, percent))

    with (
        HostSession(endpoint(lab, source), password) as src,
        HostSession(endpoint(lab, destination), password) as dst,
    ):
        started = datetime.now(UTC) - timedelta(seconds=5)
        pollers = [threading.Thread(target=poll, args=(s,)) for s in (src, dst)]
        for thread in pollers:
            thread.start()
        call = MoveVmCall(
            endpoint(lab, source), password, vm=DEFAULT_VM_NAME, destination=destination
        )
        try:
            call.start()
            deadline = time.monotonic() + 30
            while not call.poll(1):
                assert time.monotonic() < deadline, "Move-VM did not return"
            call.result()
        finally:
            done.set()
            for thread in pollers:
                thread.join()
            call.close()
        assert src.get_vm(DEFAULT_VM_NAME) is None
        moved = dst.get_vm(DEFAULT_VM_NAME)
        assert moved is not None and moved.state == "Running"
        vmms = "Microsoft-Windows-Hyper-V-VMMS-Admin"
        events = dst.migration_events(vmms, [20415, 20417], started)
        events += src.migration_events(vmms, [20415, 20417], started)
        (event,) = events
        assert event.id == 20415 and event.machine == source
        # The figures are event data: the VM's name, its id and the blackout.
        names = [name for name, _ in event.event_data]
        assert names == ["Parameter0", "Parameter1", "Parameter2"]
        vm_name, vm_id, seconds = (value for _, value in event.event_data)
        assert vm_name == DEFAULT_VM_NAME and vm_id == moved.vm_id.upper()
        assert 0 < float(seconds) < 5
        assert event.time_created is not None
        assert parse_host_datetime(event.time_created) >= started
        assert dst.migration_events(vmms, [20415], datetime.now(UTC) + timedelta(hours=1)) == []
    source_states = [state for state, _ in seen[source]]
    assert source_states[0] == "Running"
    assert "Paused" in source_states
    assert source_states[-1] == "unlisted"
    assert seen[destination][-1][0] == "Running"
    percents = [p for _, p in seen[source] if p is not None]
    assert percents and max(percents) >= 80
    _header, truth = read_ground_truth(lab.ground_truth_path)
    names = [e["event"] for e in truth]
    assert "pause" in names and "resume" in names


def test_a_pool_is_unusable_after_a_read_timeout_and_the_session_reopens() -> None:
    """pypsrp issue 21: after a read timeout, a RunspacePool on a connection
    with WinRM message encryption fails every later call (the client keeps
    its encryption state, the server expects a new one on the new
    connection: HTTP 400). HostSession drops the pool and opens a new one."""
    with LabThread(LabConfig(timing=FAST)) as lab:
        host = endpoint(lab, DEFAULT_SOURCE_HOST, auth="ntlm")
        password = lab.credentials.password
        # The bare pypsrp pool, as issue 21 reports it.
        wsman = _wsman(host, password, read_timeout_s=2)
        pool = RunspacePool(wsman)
        pool.open()
        lab.set_unresponsive(DEFAULT_SOURCE_HOST, "hang")
        with pytest.raises(requests.exceptions.ReadTimeout):
            PowerShell(pool).add_cmdlet("Get-Date").invoke()
        lab.set_responsive(DEFAULT_SOURCE_HOST)
        with pytest.raises(WinRMTransportError) as broken:
            PowerShell(pool).add_cmdlet("Get-Date").invoke()
        assert broken.value.code == 400
        wsman.close()

        server = lab.hosts_runtime._servers[0]
        shells_before = set(server.shells)  # the bare pool's shell stays (nobody deletes it)
        events: list[tuple[str, dict[str, object]]] = []
        with HostSession(
            host, password, call_timeout_s=2, record=lambda e, **f: events.append((e, f))
        ) as session:
            assert session.get_vm(DEFAULT_VM_NAME) is not None
            lab.set_unresponsive(DEFAULT_SOURCE_HOST, "hang")
            with pytest.raises(HostUnreachableError, match="read timeout"):
                session.get_vm(DEFAULT_VM_NAME)
            lab.set_responsive(DEFAULT_SOURCE_HOST)
            assert session.get_vm(DEFAULT_VM_NAME) is not None
            assert session.reopens == 1
            # The dropped pool's shell was deleted through the new connection:
            # one shell of the session's is left.
            assert len(set(server.shells) - shells_before) == 1
        assert [e for e, _ in events] == ["session_broken", "session_reopened"]
        assert events[1][1]["host"] == DEFAULT_SOURCE_HOST


def test_a_host_call_fails_at_its_read_timeout_even_in_receive() -> None:
    """pypsrp retries a Receive that timed out (after 2 s, then 6, 14, ... s):
    a host that stops answering for 3 s costs a waiting Receive 4 s and no
    error. Host sessions' connections raise at the first read timeout
    instead, so the outage is a failed call."""
    outcomes: dict[bool, tuple[str, float]] = {}
    for retry_receive in (True, False):
        with LabThread(LabConfig(timing=FAST)) as lab:
            host = endpoint(lab, DEFAULT_SOURCE_HOST)
            wsman = _wsman(host, lab.credentials.password, 2, retry_receive=retry_receive)
            pool = RunspacePool(wsman)
            pool.open()
            ps = PowerShell(pool)
            ps.add_cmdlet("Move-VM").add_parameter("Name", DEFAULT_VM_NAME)
            ps.add_parameter("DestinationHost", DEFAULT_DESTINATION_HOST)
            ps.begin_invoke()  # Move-VM writes nothing until it ends: Receive waits
            lab.set_unresponsive(DEFAULT_SOURCE_HOST, "hang")
            threading.Timer(3.0, lab.set_responsive, (DEFAULT_SOURCE_HOST,)).start()
            started = time.monotonic()
            try:
                ps.end_invoke()
                outcomes[retry_receive] = ("ok", time.monotonic() - started)
            except requests.exceptions.ReadTimeout:
                outcomes[retry_receive] = ("read timeout", time.monotonic() - started)
            time.sleep(1.2)  # the hang ends before the lab does
            wsman.close()
    outcome, took = outcomes[True]
    assert outcome == "ok" and took >= 4.0
    outcome, took = outcomes[False]
    assert outcome == "read timeout" and 2.0 <= took < 3.0


def test_the_listener_hint_says_what_answered_and_what_to_change() -> None:
    with LabThread(LabConfig(timing=FAST)) as lab:
        plain = endpoint(lab, DEFAULT_SOURCE_HOST, auth="ntlm")
        assert listener_hint(plain) is None  # the right transport: nothing to say
        as_https = replace(plain, https=True, cert_validation=False)
        with pytest.raises(HostUnreachableError):
            HostSession(as_https, lab.credentials.password, call_timeout_s=3).open()
        assert listener_hint(as_https) == (
            f'port {plain.port} answers plain HTTP, not HTTPS: set transport = "http" '
            "(Enable-PSRemoting creates an HTTP listener only)"
        )
    with LabThread(LabConfig(timing=FAST, tls=True)) as lab:
        tls = lab.hosts[DEFAULT_SOURCE_HOST]
        as_http = replace(endpoint(lab, DEFAULT_SOURCE_HOST, auth="ntlm"), port=tls.port)
        assert listener_hint(as_http) == (
            f"port {tls.port} does not speak plain HTTP (is it the HTTPS listener?): "
            'set transport = "https"'
        )
    negotiate_only = LabConfig(timing=FAST, auth_methods=frozenset({"negotiate"}))
    with LabThread(negotiate_only) as lab:
        basic = endpoint(lab, DEFAULT_SOURCE_HOST, auth="basic")
        assert listener_hint(basic) == (
            f"the HTTP listener on port {basic.port} offers negotiate, not basic: "
            'set auth = "negotiate"'
        )


def test_a_missing_optional_auth_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine without the extra: the import fails.
    monkeypatch.setitem(sys.modules, "requests_credssp", None)
    assert missing_auth_support("credssp") == (
        'auth = "credssp" needs the optional credssp support: '
        "pip install 'migration-blackout[credssp]' (it provides requests_credssp)"
    )
    monkeypatch.setitem(sys.modules, "gssapi", None)
    assert "pip install 'migration-blackout[kerberos]'" in (missing_auth_support("kerberos") or "")
    assert missing_auth_support("negotiate") is None

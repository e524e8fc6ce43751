"""``measure run`` over Kerberos against the lab's real KDC, through the real CLI
(a process of its own: its Kerberos environment and ticket cache are the test's).

From the ticket cache (a real ``kinit``) and from a password; and each error a
domain user meets (no ticket, an expired one, clock skew, a host reached by IP
address, no KDC) as a one-line preflight error (exit 3) naming the host and the fix.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_netns import wait_until
from measure_cli import measure
from test_run_lab import FAST_LAB

from migration_blackout.lab import control
from migration_blackout.lab.control import LabState
from migration_blackout.lab.hyperv_emulator import read_ground_truth

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "Kerberos-lab-pw1"
SRC = "WS16TP4DM1VML1b"


def lab_cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return measure("lab", *args, env={"MEASURE_LAB_DIR": str(state_dir)}, timeout=60)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    """A running lab (``measure lab up`` in a private state folder)."""
    state_dir = tmp_path_factory.mktemp("kerberos-lab")
    config = state_dir / "lab.toml"
    config.write_text(f'password = "{PASSWORD}"\n' + FAST_LAB)
    up = lab_cli(state_dir, "up", "--config", str(config))
    assert up.returncode == 0, up.stderr
    try:
        state = control.read_state(state_dir)
        assert state is not None
        yield state
    finally:
        lab_cli(state_dir, "down")


def krb5_env(state: LabState, tmp_path: Path) -> dict[str, str]:
    realm = state.kerberos
    assert realm is not None
    return {"KRB5_CONFIG": realm["krb5_config"], "KRB5CCNAME": f"FILE:{tmp_path / 'ccache'}"}


def kinit(state: LabState, tmp_path: Path, *options: str) -> None:
    realm = state.kerberos
    assert realm is not None
    subprocess.run(
        ["kinit", *options, realm["user_principal"]],
        input=PASSWORD + "\n",
        env={**os.environ, **krb5_env(state, tmp_path)},
        text=True,
        check=True,
        capture_output=True,
    )


def hosts_config(
    state: LabState, *, service_principal: bool = True, krb5_config: str | None = None
) -> str:
    """measure.toml naming the lab's hosts as a domain user would name real ones."""
    realm = state.kerberos
    assert realm is not None
    lines = [
        'auth = "kerberos"',
        "",
        "[kerberos]",
        f'krb5_config = "{krb5_config or realm["krb5_config"]}"',
    ]
    for host in state.hosts:
        lines += [
            "",
            "[[hosts]]",
            f'name = "{host["name"]}"',
            f'address = "{host["address"]}"',
            f"port = {host['port']}",
            'transport = "http"',
            f'username = "{realm["user_principal"]}"',
            'password_env = "MB_KERBEROS_PASSWORD"',
        ]
        if service_principal:
            lines.append(f'service_principal = "{host["service_principal"]}"')
    lines += ["", "[guest]", f'addresses = ["{state.guest_address}"]']
    return "\n".join(lines) + "\n"


def measure_run(
    tmp_path: Path, *args: str, config: str | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path | None]:
    """``measure run`` with no password, ticket cache or lab of the caller's."""
    options = ["run"]
    if config is not None:
        (tmp_path / "measure.toml").write_text(config)
        options += ["--config", str(tmp_path / "measure.toml")]
    out = tmp_path / "results"
    proc = measure(
        *options,
        "--settle",
        "1",
        "--out",
        str(out),
        *args,
        cwd=tmp_path,
        env={"MEASURE_LAB_DIR": str(tmp_path / "no-lab"), **(env or {})},
        without=("MEASURE_PASSWORD", "MB_KERBEROS_PASSWORD", "KRB5CCNAME"),
    )
    runs = sorted(out.glob("*-run-*")) if out.exists() else []
    return proc, (runs[-1] if runs else None)


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie's command line is empty)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except FileNotFoundError:
        return False


def kerberos_preflight(run_dir: Path) -> list[dict[str, Any]]:
    events = [
        json.loads(line) for line in (run_dir / "raw" / "events.jsonl").read_text().splitlines()
    ]
    return [e for e in events if e.get("event") == "preflight" and e.get("check") == "kerberos"]


def assert_no_secret(run_dir: Path, secret: str) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_run_with_the_ticket_cache(lab: LabState, tmp_path: Path) -> None:
    kinit(lab, tmp_path)
    proc, run_dir = measure_run(tmp_path, config=hosts_config(lab), env=krb5_env(lab, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert run_dir is not None
    logins = kerberos_preflight(run_dir)
    assert {e["host"] for e in logins} == {h["name"] for h in lab.hosts}
    for login in logins:
        assert login["ok"] and login["credential_source"] == "ticket cache"
        assert login["ccache"] == f"FILE:{tmp_path / 'ccache'}"
        assert login["client_principal"] == "harness@LAB.TEST"
        assert (
            login["service_principal"].startswith("HTTP/")
            and "forwardable" in login["ticket_flags"]
        )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert {h["auth"] for h in manifest["config"]["hosts"]} == {"kerberos"}
    assert_no_secret(run_dir, PASSWORD)


def test_lab_run_over_kerberos_with_the_labs_password(tmp_path: Path) -> None:
    lab_toml = tmp_path / "lab.toml"
    lab_toml.write_text(f'password = "{PASSWORD}"\n' + FAST_LAB)
    proc, run_dir = measure_run(
        tmp_path, "--lab", "--lab-config", str(lab_toml), config='auth = "kerberos"\n'
    )
    assert proc.returncode == 0, proc.stderr
    assert run_dir is not None
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["auth"] == "kerberos"
    assert {h["auth"] for h in manifest["config"]["hosts"]} == {"kerberos"}
    assert {login["credential_source"] for login in kerberos_preflight(run_dir)} == {"password"}
    _, truth = read_ground_truth(run_dir / "raw" / "ground_truth.jsonl")
    (start,) = [e for e in truth if e["event"] == "migration_start"]
    assert start["second_hop"]["client_auth"] == "kerberos"
    assert start["second_hop"]["how"] == "constrained-delegation"
    # Every witness as over Basic: ICMP, the host polls, Hyper-V's event, the console.
    doc = json.loads((run_dir / "derived" / "summary.json").read_text())
    true_pause = doc["ground_truth"]["pause_to_resume_ms"]
    true_outage = doc["ground_truth"]["pause_to_network_restored_ms"]
    assert doc["blackout"]["lower_ms"] <= true_outage <= doc["blackout"]["upper_ms"]
    host = doc["hyperv"]["host_blackout"]
    assert host["lower_ms"] <= true_pause <= host["upper_ms"]
    assert doc["hyperv"]["reported"]["event_id"] == 20415
    assert abs(doc["hyperv"]["reported"]["blackout_s"] - true_pause / 1000) <= 0.1
    assert doc["console"]["blackout"] is not None
    assert_no_secret(run_dir, PASSWORD)


def preflight_error(proc: subprocess.CompletedProcess[str], run_dir: Path | None) -> str:
    assert proc.returncode == 3, proc.stderr
    # One error line, naming the host and the fix (and where the run folder is); the
    # rest is progress ("[   0.0 s] lab: starting the lab"), never a traceback.
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    (line,) = [line for line in lines if line.startswith("measure:")]
    assert all(other == line or other.startswith("[") for other in lines), lines
    assert line.startswith("measure: error: ") and line.endswith(f"(run folder {run_dir})")
    assert run_dir is not None
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"]["message"] in line
    return line


def test_no_ticket(lab: LabState, tmp_path: Path) -> None:
    line = preflight_error(
        *measure_run(tmp_path, config=hosts_config(lab), env=krb5_env(lab, tmp_path))
    )
    assert line.startswith(f"measure: error: {SRC}: no Kerberos ticket")
    assert "run `kinit harness@LAB.TEST` first, or set MB_KERBEROS_PASSWORD" in line


def test_an_expired_ticket(lab: LabState, tmp_path: Path) -> None:
    kinit(lab, tmp_path, "-l", "2s")
    issued = time.time()
    wait_until(lambda: time.time() > issued + 3, timeout_s=10, what="the ticket to expire")
    line = preflight_error(
        *measure_run(tmp_path, config=hosts_config(lab), env=krb5_env(lab, tmp_path))
    )
    assert re.match(
        rf"measure: error: {SRC}: the Kerberos ticket of harness@LAB.TEST in FILE:\S+ "
        r"expired at \S+Z: run `kinit harness@LAB.TEST` again \(run folder ",
        line,
    ), line


def test_a_host_reached_by_ip_address(lab: LabState, tmp_path: Path) -> None:
    kinit(lab, tmp_path)
    proc, run_dir = measure_run(
        tmp_path, config=hosts_config(lab, service_principal=False), env=krb5_env(lab, tmp_path)
    )
    line = preflight_error(proc, run_dir)
    assert line.startswith(
        f"measure: error: {SRC}: the KDC knows no service principal HTTP/127.0.0.1"
    )
    assert "reached by IP address" in line and "service_principal" in line


def test_no_kdc_reachable(lab: LabState, tmp_path: Path) -> None:
    realm = lab.kerberos
    assert realm is not None
    kdc_port = realm["kdc"].rsplit(":", 1)[1]
    # A krb5.conf naming a KDC where nothing listens (a port the lab's just freed).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    unreachable = tmp_path / "krb5.conf"
    unreachable.write_text(
        Path(realm["krb5_config"]).read_text().replace(f":{kdc_port}", f":{dead}")
    )
    proc, run_dir = measure_run(
        tmp_path,
        config=hosts_config(lab, krb5_config=str(unreachable)),
        env={"MB_KERBEROS_PASSWORD": PASSWORD, "KRB5CCNAME": f"FILE:{tmp_path / 'ccache'}"},
    )
    line = preflight_error(proc, run_dir)
    assert line.startswith(f"measure: error: {SRC}: cannot reach a KDC")
    assert str(unreachable) in line and "port 88" in line
    assert_no_secret(run_dir, PASSWORD)


def test_clock_skew_beyond_the_domains_limit(tmp_path: Path) -> None:
    lab_toml = tmp_path / "lab.toml"
    lab_toml.write_text(FAST_LAB + "\n[kerberos]\nkdc_clock_offset_s = 900\n")
    line = preflight_error(
        *measure_run(tmp_path, "--lab", "--lab-config", str(lab_toml), "--auth", "kerberos")
    )
    assert re.match(
        rf"measure: error: {SRC}: the KDC's clock is \+(89\d|90\d) s from this machine's, "
        r"beyond the 300 s the domain allows: synchronise",
        line,
    ), line


def test_status_shows_the_realm_and_down_removes_the_kdc_after_a_crash(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    up = lab_cli(state_dir, "up")
    assert up.returncode == 0, up.stderr
    try:
        assert "realm LAB.TEST" in up.stdout
        status = json.loads(lab_cli(state_dir, "status", "--json").stdout)
        realm = status["kerberos"]
        assert realm["realm"] == "LAB.TEST" and realm["user_principal"] == "harness@LAB.TEST"
        assert Path(realm["krb5_config"]).is_file()
        assert str(state_dir) in realm["krb5_config"]
        assert [h["service_principal"] for h in status["hosts"]] == [
            "HTTP/ws16tp4dm1vml1b.lab.test@LAB.TEST",
            "HTTP/ws16tp4dm2vml1b.lab.test@LAB.TEST",
        ]
        directory = Path(realm["krb5_config"]).parent
        daemons = [int((directory / f).read_text()) for f in ("krb5kdc.pid", "slapd.pid")]
        os.kill(status["pid"], signal.SIGKILL)  # the lab crashes; its KDC keeps running
        wait_until(lambda: not running(status["pid"]), timeout_s=10, what="the daemon to die")
        assert all(running(pid) for pid in daemons)
    finally:
        down = lab_cli(state_dir, "down")
    assert down.returncode == 0, down.stderr
    wait_until(
        lambda: not any(running(pid) for pid in daemons),
        timeout_s=10,
        what="the KDC and slapd to go",
    )
    assert not directory.exists()


def test_without_delegation_preflight_cannot_reach_the_destination(tmp_path: Path) -> None:
    # The lab's KDC refuses S4U2Proxy (no krbAllowedToDelegateTo on either host), so
    # the preflight's Compare-VM on the source fails as Windows does; nothing moves.
    lab_toml = tmp_path / "lab.toml"
    no_delegation = "".join(
        f"\n[hosts.{name}]\ndelegation = false\n" for name in (SRC, "WS16TP4DM2VML1b")
    )
    lab_toml.write_text(FAST_LAB + no_delegation)
    proc, run_dir = measure_run(
        tmp_path, "--lab", "--lab-config", str(lab_toml), "--auth", "kerberos"
    )
    line = preflight_error(proc, run_dir)
    assert line.startswith(f"measure: error: {SRC}: cannot authenticate to WS16TP4DM2VML1b")
    assert "Use any authentication protocol" in line
    assert run_dir is not None
    _, truth = read_ground_truth(run_dir / "raw" / "ground_truth.jsonl")
    assert not [e for e in truth if e["event"] in ("migration_start", "pause")]

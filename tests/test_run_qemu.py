"""``measure run --hypervisor qemu`` end to end: a real guest live-migrated back
and forth between two QEMU processes (the QEMU lab), in-process as a notebook
or CI script runs it (``harness.commands.run.run``), with the same probes and
analysis as Hyper-V. The lab itself is started and stopped by ``measure lab``."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from measure_cli import measure

from migration_blackout.harness.commands.run import (
    LabTarget,
    Measurement,
    Outcome,
    RunRequest,
    run,
)
from migration_blackout.harness.config import RunConfig, apply_overrides, load_config
from migration_blackout.lab.qemu import control as qemu_control
from migration_blackout.lab.qemu.guest import GuestControl
from migration_blackout.lab.runenv import QEMU_GUEST_WITNESS_PORT

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("in_process")]

# Measured here (bench/README.md): the ping blackout exceeds QEMU's STOP ->
# RESUME by 40-120 ms typically and up to ~185 ms on a loaded machine (TCG).
MAX_EXCESS_MS = 250.0


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One QEMU lab for the module, started and stopped through the CLI."""
    state_dir = tmp_path_factory.mktemp("lab-state")
    up = measure("lab", "up", "--hypervisor", "qemu", env={"MEASURE_LAB_DIR": str(state_dir)})
    assert up.returncode == 0, up.stderr
    try:
        yield state_dir
    finally:
        down = measure(
            "lab", "down", "--hypervisor", "qemu", env={"MEASURE_LAB_DIR": str(state_dir)}
        )
        assert down.returncode == 0, down.stderr


def measure_qemu(
    lab_dir: Path,
    out: Path,
    *,
    config: RunConfig | None = None,
    on_the_lab: bool | None = None,
    repeat: int = 1,
    ping_pong: bool = False,
    **overrides: Any,
) -> Measurement:
    """``measure run --hypervisor qemu --interval-ms 5 --settle 1``: the module's
    lab (``--lab``; the default without a ``config``), or the QEMUs ``config`` names."""
    os.environ["MEASURE_LAB_DIR"] = str(lab_dir)  # in_process gives the old value back
    changed = apply_overrides(
        config or RunConfig(), hypervisor="qemu", icmp_interval_s=0.005, settle_s=1.0, **overrides
    )
    lab = LabTarget() if (config is None if on_the_lab is None else on_the_lab) else None
    return run(RunRequest(config=changed, lab=lab, out=out, repeat=repeat, ping_pong=ping_pong))


def test_ping_pong_with_memory_check(lab_dir: Path, tmp_path: Path) -> None:
    measured = measure_qemu(lab_dir, tmp_path, repeat=2, ping_pong=True, verify_memory=True)
    assert measured.outcome is Outcome.MEASURED, measured
    assert measured.session is not None
    session = measured.session.document
    assert session["status"] == "completed"
    (session_dir,) = tmp_path.glob("*-session-*")
    assert measured.session.session_dir == session_dir
    directions = set()
    for entry, result in zip(session["runs"], measured.runs, strict=True):
        directions.add((entry["source"], entry["destination"]))
        run_dir = session_dir / entry["run_id"]
        assert result.run_dir == run_dir
        manifest = json.loads((run_dir / "manifest.json").read_text())
        # Each QEMU's version and the guest's memory, from QMP.
        assert all(side["qemu_version"] for side in manifest["hosts"].values())
        assert manifest["vm"]["memory_bytes"] == 256 * 2**20
        summary = json.loads((run_dir / "derived" / "summary.json").read_text())
        qemu = summary["qemu"]
        assert qemu["outcome"] == "completed"
        # A broken hypervisor build would be caught here, not measured.
        assert qemu["memory_check"]["identical"] is True
        stop_to_resume = qemu["stop_to_resume_ms"]
        assert stop_to_resume > 0
        # QEMU measures downtime on the source only; it is kept apart.
        assert qemu["downtime_ms"] is not None and qemu["downtime_measured_on"] == "source"
        blackout = summary["blackout"]
        assert blackout is not None
        assert blackout["upper_ms"] >= stop_to_resume
        assert blackout["lower_ms"] - stop_to_resume < MAX_EXCESS_MS
        assert qemu["cross_check"]["icmp_beyond_stop_to_resume"]["contains_stop_to_resume"]
        # The guest still answers and its heartbeat goes on through the migration.
        icmp = next(iter(summary["icmp"].values()))
        assert icmp["replies"] > 100
        heartbeat = summary["guest"]["heartbeat"]
        assert heartbeat["records"] > 100 and heartbeat["agents"] == 1
        # A paused QEMU guest's own clock stops too, so its stamps understate the
        # pause; the heartbeat's delivery gap on the harness clock does not.
        delivery = summary["guest"]["delivery_gap"]
        assert delivery["upper_ms"] >= stop_to_resume
        # The decomposition takes QEMU's own STOP and RESUME as the hypervisor
        # blackout, and measures the network's reconvergence from the RESUME.
        decomposition = summary["decomposition"]
        hypervisor = decomposition["hypervisor_blackout"]
        assert hypervisor["source"] == "qemu-events"
        assert hypervisor["lower_ms"] == pytest.approx(stop_to_resume, abs=0.01)
        assert decomposition["network_reconvergence"]["source"].endswith("qemu-events resume")
    assert len(directions) == 2  # there and back


def test_the_qemu_guest_answers_the_witnesses(lab_dir: Path, tmp_path: Path) -> None:
    """mb-guestd answers the direction probe and carries the TCP stream as the
    agent does: the stream survives the migration and stalls at least as long
    as the guest was stopped (with TCP's 200 ms minimum retransmission timeout,
    usually longer than the ping blackout); its heartbeat reports the work unit."""
    from migration_blackout.analysis.brownout import load_work
    from migration_blackout.analysis.direction import analyse_direction, load_udp_direction
    from migration_blackout.analysis.tcp import analyse_stream, load_tcp_stream

    # A config naming another witness port: the lab's guest answers on its own.
    other_port = replace(RunConfig().probes, witness_port=47999)
    measured = measure_qemu(
        lab_dir,
        tmp_path,
        config=replace(RunConfig(), probes=other_port),
        on_the_lab=True,
        witnesses=True,
    )
    assert measured.outcome is Outcome.MEASURED, measured
    (run_dir,) = tmp_path.glob("*-run-*")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["probes"]["witness_port"] == QEMU_GUEST_WITNESS_PORT
    summary = json.loads((run_dir / "derived" / "summary.json").read_text())
    stop_to_resume = summary["qemu"]["stop_to_resume_ms"]
    header, rows = load_tcp_stream(run_dir)
    interval_s = header["interval_s"]
    assert isinstance(interval_s, float)
    stream = analyse_stream(rows, interval_s=interval_s)
    assert stream.survived and stream.outbound is not None
    assert stream.outbound.upper_ms >= stop_to_resume
    _, answers = load_udp_direction(run_dir)
    direction = analyse_direction(answers)
    assert direction.answered > 100 and direction.longest is not None
    assert len(load_work(run_dir)) > 100
    # summary.json's brownout: the work times, and QEMU's throttle beside them
    # (auto-converge is off without --auto-converge: QEMU never throttled).
    brownout = summary["brownout"]
    assert brownout["heartbeats_with_work"] > 100 and brownout["baseline_work_ms"] > 0
    assert brownout["qemu"]["polls"] == summary["qemu"]["polls"] > 0
    assert brownout["qemu"]["max_cpu_throttle_percentage"] == 0 and brownout["hyperv"] is None


def test_a_migration_that_never_converges_is_cancelled(lab_dir: Path, tmp_path: Path) -> None:
    state = qemu_control.read_state(lab_dir / "qemu")
    assert state is not None
    guest = GuestControl(state.guest_address, state.token, port=state.control_port)
    asyncio.run(guest.set_dirtier(64, 0))
    try:
        measured = measure_qemu(lab_dir, tmp_path, max_bandwidth_mib_s=8.0, timeout_s=3.0)
    finally:
        asyncio.run(guest.set_dirtier(0))
    assert measured.outcome is Outcome.MIGRATION_FAILED, measured
    assert "was cancelled; the guest runs on the source" in (measured.runs[0].message or "")
    (run_dir,) = tmp_path.glob("*-run-*")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "aborted"
    summary = json.loads((run_dir / "derived" / "summary.json").read_text())
    assert summary["qemu"]["outcome"] == "cancelled"
    # The guest never stopped: no blackout, and it still answers after the cancel.
    assert summary["blackout"] is None
    status = asyncio.run(guest.status())
    assert status.agent_id


def qmp_endpoints_config(state: qemu_control.QemuLabState) -> str:
    """A measure.toml naming the QEMU lab's two QEMUs as a user names their own: the
    running one ``left``, the standby ``right``."""
    assert state.running is not None and state.standby is not None
    return f"""
hypervisor = "qemu"
vm = "tiny-guest"

[guest]
addresses = ["{state.guest_address}"]

[qemu]
downtime_limit_ms = 50

[[qemu.sides]]
name = "left"
qmp = "{state.running.qmp}"
incoming_uri = "{state.running.incoming_uri}"

[[qemu.sides]]
name = "right"
qmp = "{state.standby.qmp}"
incoming_uri = "{state.standby.incoming_uri}"
"""


def test_qmp_endpoints_from_the_config_file(lab_dir: Path, tmp_path: Path) -> None:
    """Your own QEMUs: the two QMP sockets and the incoming URI named in [qemu]."""
    state = asyncio.run(qemu_control.wait_ready(state_dir=lab_dir / "qemu"))
    assert state.running is not None and state.standby is not None
    config = tmp_path / "measure.toml"
    config.write_text(qmp_endpoints_config(state))
    measured = measure_qemu(lab_dir, tmp_path / "results", config=load_config(config))
    assert measured.outcome is Outcome.MEASURED, measured
    (result,) = measured.runs
    summary = result.summary
    assert summary is not None
    assert (summary["qemu"]["source"], summary["qemu"]["destination"]) == ("left", "right")
    assert summary["qemu"]["settings"]["downtime_limit_ms"] == 50
    assert summary["blackout"]["upper_ms"] >= summary["qemu"]["stop_to_resume_ms"]
    # Wait for the lab's new standby before the next test migrates again.
    asyncio.run(qemu_control.wait_ready(state_dir=lab_dir / "qemu", after_serial=state.serial))

"""``measure run`` end to end against the emulated lab, through the real CLI:
real WinRM/PSRP to the emulated hosts, real ICMP to a guest in a network
namespace that really goes dark, and the lab's ground truth to check against."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_netns import wait_until
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.root, pytest.mark.slow]

# A short migration: ~1 s of pre-copy, ~0.6-0.9 s blackout, 0.3-0.6 s of
# network reconvergence after the resume.
FAST_LAB = """
[vm]
memory_mb = 64

[timing]
transfer_rate_mb_s = 200
precopy_overhead = 0.5
paused_listed = [0.3, 0.5]
unlisted = [0.3, 0.4]
completion = 0.2
network_reconvergence = [0.3, 0.6]
negotiation = 0.1
"""


# How long a process continued with SIGCONT may wait for a CPU here (seen: 30 ms
# at a load average of 3.8 on 2 cores).
SCHEDULING_ALLOWANCE_MS = 50.0


def measure(
    tmp_path: Path, *args: str, lab_toml: str = FAST_LAB, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path | None]:
    """Run the real ``measure run`` with a lab of its own; return the process and run folder."""
    lab_config = tmp_path / "lab.toml"
    lab_config.write_text(lab_toml)
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "run",
            "--lab-config",
            str(lab_config),
            "--settle",
            "1",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "MEASURE_LAB_DIR": str(tmp_path / "lab-state"), **(env or {})},
    )
    runs = sorted(out.glob("*-run-*")) if out.exists() else []
    return proc, (runs[-1] if runs else None)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "derived" / "summary.json").read_text())


def test_a_migration_measured_end_to_end(tmp_path: Path) -> None:
    proc, run_dir = measure(tmp_path, "--interval-ms", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert run_dir is not None
    doc = json.loads(proc.stdout)
    assert doc["run_dir"] == str(run_dir)
    assert manifest(run_dir)["status"] == "completed"
    # What the hosts and the VM were (Win32_OperatingSystem, Get-VM MemoryAssigned)
    # and the measuring machine, for comparing runs.
    context = manifest(run_dir)
    assert {h["os_version"] for h in context["hosts"].values()} == {"10.0.10586"}
    assert context["vm"]["memory_bytes"] == 64 * 2**20
    assert context["machine"]["cpu_steal"]["pct"] >= 0
    raw = {p.name for p in (run_dir / "raw").iterdir()}
    assert {
        "icmp.csv",
        "events.jsonl",
        "clock.jsonl",
        "hyperv_events.jsonl",
        "ground_truth.jsonl",
        "host_WS16TP4DM1VML1b.jsonl",
        "host_WS16TP4DM2VML1b.jsonl",
    } <= raw
    events = [
        json.loads(line)["event"]
        for line in (run_dir / "raw" / "events.jsonl").read_text().splitlines()[1:]
    ]
    assert "move_vm_start" in events and "move_vm_return" in events

    truth = doc["ground_truth"]
    true_outage = truth["pause_to_network_restored_ms"]
    true_pause = truth["pause_to_resume_ms"]
    blackout = doc["blackout"]
    # ICMP bounds contain the lab's true outage (pause -> network restored).
    assert blackout["lower_ms"] <= true_outage <= blackout["upper_ms"]
    assert blackout["unreachable"] == 0 and blackout["timeouts"] == blackout["lost"]
    # The count-based estimate is within one interval of the truth (5 ms here),
    # plus the stalls this shared VM itself takes now and then (5-25 ms seen).
    assert abs(blackout["estimate_ms"] - true_outage) <= 5 + 15
    # The host-derived pause-to-running window contains the true pause.
    host = doc["hyperv"]["host_blackout"]
    assert host["lower_ms"] <= true_pause <= host["upper_ms"]
    # Hyper-V's own figure (event 20415, one decimal) equals the lab's to 0.1 s.
    reported = doc["hyperv"]["reported"]
    assert reported["event_id"] == 20415
    assert abs(reported["blackout_s"] - true_pause / 1000) <= 0.1
    # The console view went dark across the pause and came back from the
    # destination (the VM Connection title switches hosts).
    console = doc["console"]
    assert console["blackout"] is not None
    assert console["blackout"]["lower_ms"] >= true_pause * 0.5
    assert set(console["frames_by_host"]) == {"WS16TP4DM1VML1b", "WS16TP4DM2VML1b"}
    assert doc["hyperv"]["source"] == "WS16TP4DM1VML1b"
    assert doc["hyperv"]["destination"] == "WS16TP4DM2VML1b"


@pytest.mark.parametrize(
    ("lab_extra", "args", "exit_code", "status", "message"),
    [
        pytest.param(
            "[hosts.WS16TP4DM2VML1b]\nolder_version = true\n",
            (),
            1,
            "failed",
            "protocol version 6.0 is not supported",
            id="protocol-version",
        ),
        pytest.param(
            "",
            ("--source", "WS16TP4DM2VML1b"),
            3,
            "failed",
            "WS16TP4DM2VML1b: does not hold VM",
            id="wrong-source",
        ),
        pytest.param(
            "[faults]\nvm_missing = true\n",
            (),
            3,
            "failed",
            "was found on no host",
            id="vm-not-found",
        ),
        pytest.param(
            "[hosts.WS16TP4DM1VML1b]\naccess_denied = true\n",
            (),
            3,
            "failed",
            "do not have the required permission",
            id="access-denied",
        ),
        pytest.param(
            "[faults]\nfail_midway_at_percent = 40\n",
            (),
            1,
            "failed",
            "failed at migration source",
            id="midway-rollback",
        ),
    ],
)
def test_lab_faults(
    tmp_path: Path,
    lab_extra: str,
    args: tuple[str, ...],
    exit_code: int,
    status: str,
    message: str,
) -> None:
    proc, run_dir = measure(tmp_path, *args, lab_toml=FAST_LAB + lab_extra)
    assert proc.returncode == exit_code, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("measure:")]
    assert error_lines and message in error_lines[0], proc.stderr
    assert run_dir is not None
    doc = manifest(run_dir)
    assert doc["status"] == status
    assert message in doc["error"]["message"]
    assert (run_dir / "derived" / "summary.json").exists()


def test_midway_failure_leaves_the_vm_running_on_the_source(tmp_path: Path) -> None:
    proc, run_dir = measure(tmp_path, lab_toml=FAST_LAB + "[faults]\nfail_midway_at_percent = 40\n")
    assert proc.returncode == 1
    assert run_dir is not None
    polls = (run_dir / "raw" / "host_WS16TP4DM1VML1b.jsonl").read_text().splitlines()[1:]
    last = json.loads(polls[-1])
    assert last["listed"] and last["state"] == "Running"
    assert summary(run_dir)["blackout"] is None


def test_host_that_stops_answering(tmp_path: Path) -> None:
    lab = FAST_LAB + (
        '[faults]\nunresponsive_host = "WS16TP4DM1VML1b"\nunresponsive_mode = "close"\n'
        'unresponsive_after = "pause"\n'
    )
    proc, run_dir = measure(tmp_path, "--timeout", "30", lab_toml=lab)
    assert proc.returncode == 1, proc.stderr
    assert "WS16TP4DM1VML1b" in proc.stderr
    assert run_dir is not None
    doc = manifest(run_dir)
    assert doc["status"] in ("failed", "aborted")
    assert "WS16TP4DM1VML1b" in doc["error"]["message"]
    polls = [
        json.loads(line)
        for line in (run_dir / "raw" / "host_WS16TP4DM1VML1b.jsonl").read_text().splitlines()[1:]
    ]
    assert any(p["outcome"] == "error" for p in polls)


def test_the_password_never_leaves_the_lab(tmp_path: Path) -> None:
    password = "Lab-Secret-7f3a9c"
    proc, run_dir = measure(tmp_path, lab_toml=f'password = "{password}"\n' + FAST_LAB)
    assert proc.returncode == 0, proc.stderr
    assert run_dir is not None
    assert password not in proc.stdout + proc.stderr
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_hostile_vm_name_is_a_literal(tmp_path: Path) -> None:
    proc, _run_dir = measure(tmp_path, "--vm", "x'; Remove-VM *")
    assert proc.returncode == 3, proc.stderr
    assert 'VM "x\'; Remove-VM *" was found on no host' in proc.stderr


def test_guest_agent_sees_the_freeze(tmp_path: Path) -> None:
    """The lab runs the in-guest agent on an Xvfb desktop inside the guest; its
    heartbeats show the guest's execution gap, its frames keep their numbers."""
    proc, run_dir = measure(tmp_path, "--guest-agent", "--agent-interval", "0.25", "--json")
    assert proc.returncode == 0, proc.stderr
    assert run_dir is not None
    doc = json.loads(proc.stdout)
    true_pause = doc["ground_truth"]["pause_to_resume_ms"]
    gap = doc["guest"]["execution_gap"]
    assert gap["source"] == "guest_heartbeat"
    # The guest cannot have run while it was stopped: the gap covers the freeze.
    assert true_pause <= gap["upper_ms"]
    # Within one heartbeat interval (plus the schedule's own jitter) of the truth,
    # allowing for the CPU a thawed process may wait for on a loaded 2-core
    # machine (it then really runs that much later, as a vCPU would).
    allowance = SCHEDULING_ALLOWANCE_MS
    assert gap["lower_ms"] <= true_pause + allowance
    assert gap["gap_ms"] - true_pause <= gap["interval_ms"] + gap["jitter_ms"] + allowance
    frames = doc["guest"]["frames"]
    assert frames["records"] >= 4
    assert frames["missing"] == 0  # no capture during the freeze, and none lost
    stored = sorted((run_dir / "frames").glob("seq_*.png"))
    assert len(stored) == frames["records"]
    # The contact sheet of the frames around the gap is part of derived/.
    with Image.open(run_dir / "derived" / "contact-sheet.png") as sheet:
        assert sheet.width > 1000


def test_repeat_ping_pong_makes_a_session(tmp_path: Path) -> None:
    out = tmp_path / "results"
    lab_config = tmp_path / "lab.toml"
    lab_config.write_text(FAST_LAB)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "run",
            "--lab-config",
            str(lab_config),
            "--settle",
            "1",
            "--repeat",
            "2",
            "--ping-pong",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "MEASURE_LAB_DIR": str(tmp_path / "lab-state")},
    )
    assert proc.returncode == 0, proc.stderr
    (session_dir,) = out.glob("*-session-*")
    session = json.loads((session_dir / "session.json").read_text())
    printed = json.loads(proc.stdout)
    # --json prints session.json with the session's and every run's folder added.
    assert printed["session_dir"] == str(session_dir)
    assert [r.pop("run_dir") for r in printed["runs"]] == [
        str(session_dir / r["run_id"]) for r in session["runs"]
    ]
    assert {k: v for k, v in printed.items() if k != "session_dir"} == session
    assert session["status"] == "completed"
    # A header per run, and the warning before the first: 2 runs give 1 per direction.
    assert "--repeat 2 --ping-pong gives 1 run(s) one way and 1 the other" in proc.stderr
    assert "== run 1/2 ==" in proc.stderr and "== run 2/2 ==" in proc.stderr
    assert any(line.startswith("run 2/2 [") for line in proc.stderr.splitlines())
    first, second = session["runs"]
    assert (first["source"], first["destination"]) == ("WS16TP4DM1VML1b", "WS16TP4DM2VML1b")
    assert (second["source"], second["destination"]) == ("WS16TP4DM2VML1b", "WS16TP4DM1VML1b")
    for entry in session["runs"]:
        run_dir = session_dir / entry["run_id"]
        assert manifest(run_dir)["status"] == "completed"
        # Each run reports its own migration's 20415, not the previous one's.
        doc = summary(run_dir)
        reported = doc["hyperv"]["reported"]["blackout_s"]
        assert abs(reported - doc["ground_truth"]["pause_to_resume_ms"] / 1000) <= 0.1
    directions = {d["direction"]: d for d in session["directions"]}
    assert set(directions) == {
        "WS16TP4DM1VML1b -> WS16TP4DM2VML1b",
        "WS16TP4DM2VML1b -> WS16TP4DM1VML1b",
    }
    for stats in directions.values():
        assert stats["upper"]["n"] == 1
        assert stats["upper"]["median_ms"] == stats["upper"]["max_ms"] > 0


SLOW_PRECOPY = FAST_LAB.replace("precopy_overhead = 0.5", "precopy_overhead = 20")


def test_move_vm_later_than_timeout_is_stopped(tmp_path: Path) -> None:
    proc, run_dir = measure(tmp_path, "--timeout", "2", lab_toml=SLOW_PRECOPY)
    assert proc.returncode == 1, proc.stderr
    assert "Move-VM did not return within 2 s" in proc.stderr
    assert run_dir is not None
    doc = manifest(run_dir)
    assert doc["status"] == "aborted"
    events = [
        json.loads(line) for line in (run_dir / "raw" / "events.jsonl").read_text().splitlines()[1:]
    ]
    assert any(e["event"] == "move_vm_stopped" and e["reason"] == "timeout" for e in events)
    # Stopped during pre-copy: the migration rolled back, the VM runs on the source.
    polls = (run_dir / "raw" / "host_WS16TP4DM1VML1b.jsonl").read_text().splitlines()[1:]
    assert json.loads(polls[-1])["state"] == "Running"


def test_ctrl_c_during_the_migration(tmp_path: Path) -> None:
    lab_config = tmp_path / "lab.toml"
    lab_config.write_text(SLOW_PRECOPY)
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "run",
            "--lab-config",
            str(lab_config),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MEASURE_LAB_DIR": str(tmp_path / "lab-state")},
    )

    def migrating() -> bool:
        return any('"move_vm_start"' in p.read_text() for p in out.glob("*/raw/events.jsonl"))

    wait_until(migrating, timeout_s=60, what="Move-VM to start")
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (run_dir,) = out.glob("*-run-*")
    doc = manifest(run_dir)
    assert doc["status"] == "aborted"
    assert "interrupted" in doc["error"]["message"]
    assert (run_dir / "raw" / "icmp.csv").stat().st_size > 0
    assert (run_dir / "derived" / "summary.json").exists()


def test_a_run_over_https_with_certificate_validation(tmp_path: Path) -> None:
    """The lab's hosts on HTTPS with a certificate made for the lab, which the
    harness validates as it would a real host's."""
    proc, run_dir = measure(tmp_path, lab_toml="tls = true\n" + FAST_LAB)
    assert proc.returncode == 0, proc.stderr
    assert run_dir is not None
    doc = manifest(run_dir)
    assert doc["status"] == "completed"
    assert all(h["url"].startswith("https://") for h in doc["config"]["hosts"])
    assert all(h["cert_validation"] for h in doc["config"]["hosts"])

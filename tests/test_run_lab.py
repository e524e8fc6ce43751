"""``measure run`` end to end against the emulated lab: real WinRM/PSRP to the
emulated hosts, real ICMP to a guest in a network namespace that really goes
dark, and the lab's ground truth to check against. The runs are made
in-process, as a notebook or CI script makes them (``harness.commands.run.run``,
the README's example among them); what only the command line shows (a
session's printout, Ctrl-C) goes through ``measure`` itself."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from fixtures_netns import wait_until
from inprocess_run import lab_run
from measure_cli import measure, start
from PIL import Image

from migration_blackout.harness.commands.run import AgentSettings, Outcome
from migration_blackout.harness.config import load_config

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("in_process")]

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


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "derived" / "summary.json").read_text())


def readme_example() -> str:
    """The Python example under the README's "From Python" (measure run)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### From Python") :]
    begin = section.index("```python\n") + len("```python\n")
    return section[begin : section.index("```", begin)]


def test_a_migration_measured_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example as it stands, in a folder with a lab.toml."""
    (tmp_path / "lab.toml").write_text(FAST_LAB)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEASURE_LAB_DIR", str(tmp_path / "lab-state"))
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    measured, result = namespace["measured"], namespace["result"]
    assert measured.outcome is Outcome.MEASURED and measured.exit_code == 0
    assert result.run_dir.parent == Path("results")  # as the example named it
    run_dir = tmp_path / result.run_dir
    doc = result.summary
    assert doc == summary(run_dir)
    assert manifest(run_dir)["labels"] == {"build": "1.2.0"}
    assert manifest(run_dir)["status"] == "completed"
    # What the hosts and the VM were (Win32_OperatingSystem, Get-VM MemoryAssigned)
    # and the measuring machine, for comparing runs.
    context = manifest(run_dir)
    assert {h["os_version"] for h in context["hosts"].values()} == {"10.0.14393"}
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
    # Preflight's view of the domain set-up is kept in the manifest.
    hyperv = manifest(run_dir)["hyperv"]
    for name in ("WS16TP4DM1VML1b", "WS16TP4DM2VML1b"):
        host = hyperv["hosts"][name]
        assert host["migration_enabled"] is True and host["migration_auth"] == "Kerberos"
        assert host["max_migrations"] == 2 and host["os_version"] == "10.0.14393"
    assert hyperv["versions"]["vm"] == "8.0" and "8.0" in hyperv["versions"]["destination_supports"]
    assert hyperv["compare_vm"] == {"incompatibilities": [], "errors": [], "error_ids": []}


JAPANESE_HOSTS = """
[hosts.WS16TP4DM1VML1b]
culture = "ja-JP"
utc_offset_minutes = 540

[hosts.WS16TP4DM2VML1b]
culture = "ja-JP"
utc_offset_minutes = 540
"""


def test_a_japanese_host_still_yields_hyperv_s_blackout_figure(tmp_path: Path) -> None:
    """The write-up's hosts run Japanese Windows Server 2016: their event and
    error messages are Japanese. The figure comes from the event's data."""
    measured, run_dir = lab_run(tmp_path, FAST_LAB + JAPANESE_HOSTS)
    assert measured.outcome is Outcome.MEASURED, measured
    assert run_dir is not None
    doc = summary(run_dir)
    reported = doc["hyperv"]["reported"]
    assert reported is not None and reported["event_id"] == 20415
    assert reported["figures_from"] == "event-data"
    assert abs(reported["blackout_s"] - doc["ground_truth"]["pause_to_resume_ms"] / 1000) <= 0.1
    harvested = [
        json.loads(line)
        for line in (run_dir / "raw" / "hyperv_events.jsonl").read_text().splitlines()[1:]
    ]
    (event,) = [e for e in harvested if e.get("id") == 20415]
    assert event["matches_vm"] and "blackout time" not in event["message"]
    assert "ブラックアウト" in event["message"]
    assert event["time_created"].endswith("+09:00")
    # "VM not found" while the VM is elsewhere is told by its error id, not its
    # (Japanese) text: no poll reports it as an error.
    for host in ("WS16TP4DM1VML1b", "WS16TP4DM2VML1b"):
        polls = [
            json.loads(line)
            for line in (run_dir / "raw" / f"host_{host}.jsonl").read_text().splitlines()[1:]
        ]
        assert any(not p["listed"] for p in polls)
        assert all(p["outcome"] == "ok" and p["errors"] == [] for p in polls), host


@pytest.mark.parametrize(
    ("lab_extra", "overrides", "exit_code", "status", "message"),
    [
        pytest.param(
            "[hosts.WS16TP4DM2VML1b]\nolder_version = true\n",
            {},
            3,
            "failed",
            "WS16TP4DM2VML1b: Microsoft Windows Server 2012 R2 Datacenter (6.3.9600) cannot run "
            "VM configuration version 8.0 (it runs 5.0)",
            id="older-destination",
        ),
        pytest.param(
            '[hosts.WS16TP4DM2VML1b]\nmigration_auth = "credssp"\n',
            {},
            3,
            "failed",
            "WS16TP4DM1VML1b: cannot authenticate to WS16TP4DM2VML1b (0x8009030E): "
            "WS16TP4DM2VML1b takes CredSSP for live migration",
            id="credssp-without-credssp",
        ),
        pytest.param(
            "[hosts.WS16TP4DM1VML1b]\ndelegation = false\n",
            {},
            3,
            "failed",
            "WS16TP4DM1VML1b: cannot authenticate to WS16TP4DM2VML1b (0x8009030E): in Active "
            "Directory, on WS16TP4DM1VML1b's computer account",
            id="kerberos-without-delegation",
        ),
        pytest.param(
            "[hosts.WS16TP4DM2VML1b]\nmigration_enabled = false\n",
            {},
            3,
            "failed",
            "WS16TP4DM2VML1b: live migration is disabled: run Enable-VMMigration",
            id="migration-disabled",
        ),
        pytest.param(
            "[hosts.WS16TP4DM1VML1b]\nuse_any_network = false\n",
            {},
            3,
            "failed",
            "WS16TP4DM1VML1b: no network may carry live migrations",
            id="no-migration-network",
        ),
        pytest.param(
            "",
            {"source": "WS16TP4DM2VML1b"},
            3,
            "failed",
            "WS16TP4DM2VML1b: does not hold VM",
            id="wrong-source",
        ),
        pytest.param(
            "[faults]\nvm_missing = true\n",
            {},
            3,
            "failed",
            "was found on no host",
            id="vm-not-found",
        ),
        pytest.param(
            "[hosts.WS16TP4DM1VML1b]\naccess_denied = true\n",
            {},
            3,
            "failed",
            "do not have the required permission",
            id="access-denied",
        ),
        pytest.param(
            "[faults]\nfail_midway_at_percent = 40\n",
            {},
            1,
            "failed",
            "failed at migration source",
            id="midway-rollback",
        ),
        pytest.param(
            "[faults]\nvm_off_after_landing = true\n",
            {},
            1,
            "failed",
            "Move-VM returned without an error, but VM 'HVSW10Home' is Off on WS16TP4DM2VML1b",
            id="post-condition",
        ),
    ],
)
def test_lab_faults(
    tmp_path: Path,
    lab_extra: str,
    overrides: dict[str, str],
    exit_code: int,
    status: str,
    message: str,
) -> None:
    measured, run_dir = lab_run(tmp_path, FAST_LAB + lab_extra, **overrides)
    assert measured.exit_code == exit_code, measured
    # What the command prints as its error line.
    (result,) = measured.runs
    assert result.message is not None and message in result.message, measured
    assert run_dir == result.run_dir
    doc = manifest(run_dir)
    assert doc["status"] == status
    assert message in doc["error"]["message"]
    assert (run_dir / "derived" / "summary.json").exists()


def test_midway_failure_leaves_the_vm_running_on_the_source(tmp_path: Path) -> None:
    """Move-VM's failure is a non-terminating error record, as on Windows: the
    pipeline completes, and the run still fails with the host's reason."""
    measured, run_dir = lab_run(tmp_path, FAST_LAB + "[faults]\nfail_midway_at_percent = 40\n")
    assert measured.outcome is Outcome.MIGRATION_FAILED, measured
    assert run_dir is not None
    polls = (run_dir / "raw" / "host_WS16TP4DM1VML1b.jsonl").read_text().splitlines()[1:]
    last = json.loads(polls[-1])
    assert last["listed"] and last["state"] == "Running"
    assert summary(run_dir)["blackout"] is None
    events = [
        json.loads(line) for line in (run_dir / "raw" / "events.jsonl").read_text().splitlines()
    ]
    (error,) = [e for e in events if e.get("event") == "move_vm_error"]
    assert error["error_ids"] == ["OperationFailed,Microsoft.HyperV.PowerShell.Commands.MoveVM"]
    assert "(0x80072746)" in error["errors"][0]
    assert not any(e.get("event") == "move_vm_return" for e in events)
    assert "(0x80072746)" in manifest(run_dir)["error"]["message"]


def test_host_that_stops_answering(tmp_path: Path) -> None:
    lab = FAST_LAB + (
        '[faults]\nunresponsive_host = "WS16TP4DM1VML1b"\nunresponsive_mode = "close"\n'
        'unresponsive_after = "pause"\n'
    )
    measured, run_dir = lab_run(tmp_path, lab, timeout_s=30.0)
    assert measured.outcome is Outcome.MIGRATION_FAILED, measured
    assert "WS16TP4DM1VML1b" in (measured.runs[0].message or "")
    assert run_dir is not None
    doc = manifest(run_dir)
    assert doc["status"] in ("failed", "aborted")
    assert "WS16TP4DM1VML1b" in doc["error"]["message"]
    polls = [
        json.loads(line)
        for line in (run_dir / "raw" / "host_WS16TP4DM1VML1b.jsonl").read_text().splitlines()[1:]
    ]
    assert any(p["outcome"] == "error" for p in polls)


def test_a_host_session_that_times_out_mid_run_recovers(tmp_path: Path) -> None:
    """The destination stops answering as the VM pauses and answers again 6 s
    later. Its calls time out (2 s read timeout, not retried even in a
    Receive), the session is reopened (pypsrp's pool is unusable after a read
    timeout), the gap is failed polls, and the run goes on to see the VM
    Running there."""
    harness_config = tmp_path / "measure.toml"
    harness_config.write_text("[probes.host_state]\ntimeout_ms = 2000\n")
    lab = FAST_LAB + (
        '[faults]\nunresponsive_host = "WS16TP4DM2VML1b"\nunresponsive_mode = "hang"\n'
        'unresponsive_after = "pause"\nunresponsive_for = 6.0\n'
    )
    measured, run_dir = lab_run(tmp_path, lab, config=load_config(harness_config))
    assert measured.outcome is Outcome.MEASURED, measured
    assert run_dir is not None
    polls = [
        json.loads(line)
        for line in (run_dir / "raw" / "host_WS16TP4DM2VML1b.jsonl").read_text().splitlines()[1:]
    ]
    outcomes = [p["outcome"] for p in polls]
    first_failure = outcomes.index("error")
    assert "ok" in outcomes[first_failure:], "polling never recovered"
    assert polls[-1]["outcome"] == "ok" and polls[-1]["state"] == "Running"
    events = [
        json.loads(line) for line in (run_dir / "raw" / "events.jsonl").read_text().splitlines()
    ]
    reopened = [
        e for e in events if e.get("event") == "session_reopened" and e["host"] == "WS16TP4DM2VML1b"
    ]
    # Reopened once the host answered again, within the hang's 6 s.
    truth = [
        json.loads(line)
        for line in (run_dir / "raw" / "ground_truth.jsonl").read_text().splitlines()
    ]
    (responsive,) = [e for e in truth if e.get("event") == "host_responsive"]
    assert reopened and reopened[0]["mono_ns"] >= responsive["mono_ns"]
    assert 0 < reopened[0]["broken_for_s"] < 6.0
    assert any(e.get("event") == "post_condition" and e["holds"] for e in events)
    doc = summary(run_dir)
    assert doc["hyperv"]["polls"]["WS16TP4DM2VML1b"]["failed"] >= 1


def test_the_password_never_leaves_the_lab(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    password = "Lab-Secret-7f3a9c"
    measured, run_dir = lab_run(tmp_path, f'password = "{password}"\n' + FAST_LAB)
    assert measured.outcome is Outcome.MEASURED, measured
    assert run_dir is not None
    printed = capfd.readouterr()  # by the run, the lab it started and what they ran
    assert password not in printed.out + printed.err + repr(measured)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_a_hostile_vm_name_is_a_literal(tmp_path: Path) -> None:
    measured, _run_dir = lab_run(tmp_path, FAST_LAB, vm="x'; Remove-VM *")
    assert measured.outcome is Outcome.PREFLIGHT_FAILED, measured
    assert 'VM "x\'; Remove-VM *" was found on no host' in (measured.runs[0].message or "")


def test_guest_agent_sees_the_freeze(tmp_path: Path) -> None:
    """The lab runs the in-guest agent on an Xvfb desktop inside the guest; its
    heartbeats show the guest's execution gap, its frames keep their numbers."""
    measured, run_dir = lab_run(
        tmp_path, FAST_LAB, guest_agent=True, agent=AgentSettings(interval_s=0.25)
    )
    assert measured.outcome is Outcome.MEASURED, measured
    assert run_dir is not None
    doc = summary(run_dir)
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
    truth = {
        e["event"]: e
        for e in map(json.loads, (run_dir / "raw" / "ground_truth.jsonl").read_text().splitlines())
        if e.get("kind") == "event"
    }
    resumed = truth["resume"]["mono_ns"]
    # All traffic came back when the link filter was lit (just before echo).
    restored = truth["network_restored"]["link_before_mono_ns"]
    assert restored <= truth["network_restored"]["mono_ns"]
    error_ms = gap["gap_ms"] - true_pause
    if gap["lost_between"] == 0:
        assert error_ms <= gap["interval_ms"] + gap["jitter_ms"] + allowance
    else:
        # The heartbeats sent between the resume and the end of reconvergence
        # were lost (the link was dark). The estimate takes them as sent on
        # time; a stall of the guest's sender in that window (a thawed process
        # waiting for CPU) adds to it, and cannot exceed the window.
        window_ms = (restored - resumed) / 1e6
        assert -(gap["interval_ms"] + gap["jitter_ms"]) <= error_ms <= window_ms + allowance
    frames = doc["guest"]["frames"]
    assert frames["records"] >= 4
    assert frames["missing"] == 0  # no capture during the freeze, and none lost
    stored = sorted((run_dir / "frames").glob("seq_*.png"))
    assert len(stored) == frames["records"]
    # Network reconvergence darkens all of the guest's traffic: heartbeats sent
    # after the resume and before the network came back were lost on the way
    # (the delivery gap has holes), while frames captured then were queued by
    # the agent and delivered once the network was back, in order, none lost.
    heartbeat_gap = doc["guest"]["heartbeat"]["delivery_gap"]
    assert heartbeat_gap["missing_between"] > 0
    assert heartbeat_gap["after_recv_mono_ns"] >= restored
    records = [
        json.loads(line)
        for line in (run_dir / "raw" / "guest_frames.jsonl").read_text().splitlines()[1:]
    ]
    queued = [r for r in records if resumed < r["guest_mono_ns"] < restored]
    assert queued, "no frame was captured during the reconvergence window"
    assert all(r["recv_mono_ns"] >= restored for r in queued), queued
    # The contact sheet of the frames around the gap is part of derived/.
    with Image.open(run_dir / "derived" / "contact-sheet.png") as sheet:
        assert sheet.width > 1000


def test_repeat_ping_pong_makes_a_session(tmp_path: Path) -> None:
    out = tmp_path / "results"
    lab_config = tmp_path / "lab.toml"
    lab_config.write_text(FAST_LAB)
    proc = measure(
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
        cwd=tmp_path,
        env={"MEASURE_LAB_DIR": str(tmp_path / "lab-state")},
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
    measured, run_dir = lab_run(tmp_path, SLOW_PRECOPY, timeout_s=2.0)
    assert measured.outcome is Outcome.MIGRATION_FAILED, measured
    assert "Move-VM did not return within 2 s" in (measured.runs[0].message or "")
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
    proc = start(
        "run",
        "--lab-config",
        str(lab_config),
        "--out",
        str(out),
        cwd=tmp_path,
        env={"MEASURE_LAB_DIR": str(tmp_path / "lab-state")},
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
    measured, run_dir = lab_run(tmp_path, "tls = true\n" + FAST_LAB)
    assert measured.outcome is Outcome.MEASURED, measured
    assert run_dir is not None
    doc = manifest(run_dir)
    assert doc["status"] == "completed"
    assert all(h["url"].startswith("https://") for h in doc["config"]["hosts"])
    assert all(h["cert_validation"] for h in doc["config"]["hosts"])

"""``measure watch`` and ``measure analyze`` through the real command line:
bad input, a watch with an injected blackout, Ctrl-C, unknown schema versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_netns import wait_until
from test_guest_display import needs_xvfb

from migration_blackout.harness.cli import main
from migration_blackout.lab.desktop import ScreenClock, XvfbDisplay
from migration_blackout.lab.netns import GuestNamespace

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "runs" / "v1-small"


def one_line_error(result: object) -> str:
    output = getattr(result, "output", "") or getattr(result, "stderr", "")
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch", "--target", "198.18.0.2", "--bogus"], "No such option '--bogus'"),
        (["watch", "--target", "not-an-address"], "is not an IPv4 or IPv6 address"),
        (["watch", "--target", "198.18.0.2", "--interval-ms", "0.5"], "below the 1 ms minimum"),
        (["watch"], "Missing option '--target'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(
        main, ["watch", "--target", "127.0.0.1", "--duration", "1", "--out", str(blocker / "x")]
    )
    assert result.exit_code == 2
    assert one_line_error(result).startswith("measure: error: cannot create output folder")


def test_analyze_refuses_another_schema_version(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(
        json.dumps({**json.loads((SAMPLE / "manifest.json").read_text()), "schema_version": 99})
    )
    result = CliRunner().invoke(main, ["analyze", str(run)])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert line.startswith("measure: error:") and "99" in line


def test_analyze_prints_the_documented_json(tmp_path: Path) -> None:
    run = tmp_path / "v1-small"
    subprocess.run(["cp", "-r", str(SAMPLE), str(run)], check=True)
    result = CliRunner().invoke(main, ["analyze", str(run), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["schema_version"] == 1
    assert set(summary) >= {"schema_version", "run_id", "status", "icmp", "blackout"}
    for target in summary["icmp"].values():
        assert set(target) >= {
            "sent",
            "replies",
            "timeouts",
            "unreachable",
            "errors",
            "interval_ms",
            "outages",
        }
        assert set(target["interval_ms"]) >= {"requested", "achieved_median", "jitter_p99"}
    assert (run / "derived" / "summary.json").exists()


@pytest.fixture
def watch_guest() -> GuestNamespace:
    with GuestNamespace(prefix="mbot-") as guest:
        yield guest


@pytest.mark.root
def test_watch_measures_an_injected_blackout(tmp_path: Path, watch_guest: GuestNamespace) -> None:
    injector = watch_guest.start_injector()
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "watch",
            "--target",
            watch_guest.guest_address,
            "--interval-ms",
            "5",
            "--duration",
            "4",
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    wait_until(lambda: any(out.glob("*/raw/icmp.csv")), timeout_s=20, what="the run folder")
    csv = next(out.glob("*/raw/icmp.csv"))
    wait_until(lambda: csv.stat().st_size > 2000, timeout_s=20, what="first probe rows")
    truth = injector.blackout(0.7317)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    blackout = summary["blackout"]
    assert blackout["source"] == f"icmp:{watch_guest.guest_address}"
    injected_ms = truth.duration_ns / 1e6
    assert blackout["lower_ms"] <= injected_ms <= blackout["upper_ms"]
    assert blackout["unreachable"] == 0
    assert "run folder:" in stderr
    assert summary["run_dir"] == str(csv.parent.parent)
    manifest = json.loads((csv.parent.parent / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["ended_by"] == "duration"
    assert manifest["machine"]["kernel"] and manifest["machine"]["cpu_steal"]["pct"] >= 0


@pytest.mark.root
def test_ctrl_c_ends_a_watch_cleanly(tmp_path: Path, watch_guest: GuestNamespace) -> None:
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "watch",
            "--target",
            watch_guest.guest_address,
            "--interval-ms",
            "2",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_until(lambda: any(out.glob("*/raw/icmp.csv")), timeout_s=20, what="the run folder")
    csv = next(out.glob("*/raw/icmp.csv"))
    wait_until(lambda: csv.stat().st_size > 20000, timeout_s=20, what="probe rows")
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=30)
    # Ctrl-C is how a watch without --duration ends: a normal end, the run counts.
    assert proc.returncode == 0, stderr
    manifest = json.loads((csv.parent.parent / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["error"] is None
    assert manifest["ended_by"] == "SIGINT"
    assert manifest["ended_utc"] is not None
    rows = csv.read_text().splitlines()[2:]
    assert len(rows) > 100
    assert all(line.count(",") == 13 for line in rows)  # no half-written row
    assert (csv.parent.parent / "derived" / "summary.json").exists()


@needs_xvfb
def test_watch_with_the_guest_agent(tmp_path: Path) -> None:
    """`watch --guest-agent` announces the agent's command; the agent, started
    as a user would, delivers frames and heartbeats into the run folder."""
    out = tmp_path / "results"
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "watch",
            "--target",
            "127.0.0.1",
            "--duration",
            "2",
            "--guest-agent",
            "--agent-listen",
            "127.0.0.1:0",
            "--agent-wait",
            "60",
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert watch.stderr is not None
    announced = ""
    while "MB_AGENT_TOKEN=" not in announced:
        line = watch.stderr.readline()
        assert line, "watch ended without announcing the agent"
        announced = line
    words = announced.split()
    token = next(w for w in words if w.startswith("MB_AGENT_TOKEN=")).split("=", 1)[1]
    url = words[words.index("--url") + 1]
    assert url.startswith("http://127.0.0.1:")
    with XvfbDisplay(320, 240) as xvfb, ScreenClock(xvfb.display, period_s=0.05):
        agent = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "probes" / "guest_agent.py"),
                "--url",
                url,
                "--display",
                xvfb.display,
                "--interval",
                "0.2",
            ],
            env={**os.environ, "MB_AGENT_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = watch.communicate(timeout=60)
        finally:
            agent.terminate()
            agent.communicate(timeout=30)
    assert watch.returncode == 0, stderr
    summary = json.loads(stdout)
    guest = summary["guest"]
    assert guest["heartbeat"]["records"] > 50
    assert guest["frames"]["records"] >= 5
    (run_dir,) = out.glob("*-watch-*")
    assert len(list((run_dir / "frames").glob("seq_*.png"))) >= 5
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path

"""The user's workflow, done once per test session through the real command line, and
runs of every other kind: the folders that the workflow test, the notebook tests and
the wheel test read.

Every ``--out`` is absolute: a relative one loses ``raw/icmp.csv`` to the ICMP
child process's working folder (issue 11, defect 1, fixed elsewhere).

The workflow, as docs/workflow.md tells it: a lab started with ``measure lab up``
(fast timing); ``measure watch`` on its guest, ended with Ctrl-C after it saw a
``--repeat 3 --ping-pong`` session (the baseline); a second session (the
candidate); both sessions labelled. Registered from ``tests/conftest.py``
(``pytest_plugins``); every fixture here needs root (the lab's guest is a
network namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures_netns import wait_until
from test_run_lab import FAST_LAB  # a short migration: ~0.6-0.9 s blackout

REPO = Path(__file__).resolve().parent.parent
PING_LOGS = REPO / "tests" / "data" / "ping-logs"


@dataclass(frozen=True)
class Workflow:
    """What the workflow left in ``results`` (every path absolute)."""

    home: Path  # the user's working folder
    results: Path
    watch: Path  # the watch run, ended by Ctrl-C
    baseline_session: Path  # results/old/<session>
    session: Path  # results/new/<session>
    env: dict[str, str]
    watch_stderr: str
    session_stderr: str


def measure(
    home: Path, env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``measure ARGS`` in ``home``, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "migration_blackout.harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
        env=env,
    )


def _only(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


@pytest.fixture(scope="session")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    home = tmp_path_factory.mktemp("workflow")
    env = {
        **os.environ,
        "MEASURE_LAB_DIR": str(home / "lab-state"),
        "PYTHONUNBUFFERED": "1",
    }
    (home / "lab.toml").write_text(FAST_LAB)
    up = measure(home, env, "lab", "up", "--config", "lab.toml", "--seed", "7")
    assert up.returncode == 0, up.stderr
    results = home / "results"
    try:
        status = json.loads(measure(home, env, "lab", "status", "--json").stdout)
        guest = status["guest"]["address"]
        watch = subprocess.Popen(
            [
                *(sys.executable, "-m", "migration_blackout.harness.cli", "watch"),
                *("--target", guest, "--interval-ms", "5", "--label", "role=observer"),
                *("--out", str(results)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=home,
            env=env,
        )
        try:
            wait_until(
                lambda: any(results.glob("*-watch-*/raw/icmp.csv")),
                timeout_s=30,
                what="the watch's run folder",
            )
            old = measure(
                home,
                env,
                *("run", "--settle", "1", "--repeat", "3", "--ping-pong"),
                *("--label", "build=old", "--out", str(results / "old")),
            )
            assert old.returncode == 0, old.stderr
        finally:
            watch.send_signal(signal.SIGINT)  # the user presses Ctrl-C
            _watch_out, watch_err = watch.communicate(timeout=60)
        assert watch.returncode == 0, watch_err
        new = measure(
            home,
            env,
            *("run", "--settle", "1", "--repeat", "3", "--ping-pong"),
            *("--label", "build=new", "--out", str(results / "new")),
        )
        assert new.returncode == 0, new.stderr
    finally:
        # The tests read the folders only: the lab goes as soon as they are made.
        measure(home, env, "lab", "down")
    return Workflow(
        home=home,
        results=results,
        watch=_only(results, "*-watch-*"),
        baseline_session=_only(results / "old", "*-session-*"),
        session=_only(results / "new", "*-session-*"),
        env=env,
        watch_stderr=watch_err,
        session_stderr=new.stderr,
    )


@dataclass(frozen=True)
class OtherRuns:
    """One run folder of each kind the workflow does not make."""

    lab_with_agent: Path  # the emulated Hyper-V lab, the in-guest agent, every witness
    qemu: Path  # the QEMU lab (a real guest; its heartbeat, no screen agent)
    imported: Path  # measure import ping-log (a Windows log in Japanese)


@pytest.fixture(scope="session")
def other_runs(tmp_path_factory: pytest.TempPathFactory) -> OtherRuns:
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed (Debian package xvfb; bootstrap.sh installs it)")
    home = tmp_path_factory.mktemp("other-runs")
    env = {**os.environ, "MEASURE_LAB_DIR": str(home / "lab-state"), "PYTHONUNBUFFERED": "1"}
    (home / "lab.toml").write_text(FAST_LAB)
    agent = measure(
        home,
        env,
        *("run", "--lab-config", "lab.toml", "--settle", "1", "--guest-agent"),
        *("--agent-interval", "0.25", "--witnesses", "--tcp-connect", "3389"),
        *("--out", str(home / "results" / "agent")),
    )
    assert agent.returncode == 0, agent.stderr
    qemu = measure(
        home,
        env,
        *("run", "--hypervisor", "qemu", "--settle", "1", "--out", str(home / "results" / "qemu")),
    )
    assert qemu.returncode == 0, qemu.stderr
    imported = measure(
        home,
        env,
        *("import", "ping-log", str(PING_LOGS / "windows-ja.utf8.log"), "--format", "windows"),
        *("--timezone", "+09:00", "--out", str(home / "results" / "import")),
    )
    assert imported.returncode == 0, imported.stderr
    return OtherRuns(
        lab_with_agent=_only(home / "results" / "agent", "*-run-*"),
        qemu=_only(home / "results" / "qemu", "*-run-*"),
        imported=_only(home / "results" / "import", "*-import-*"),
    )

"""``measure lab up / status / down``: idempotent, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from fixtures_netns import wait_until
from measure_cli import measure

from migration_blackout.lab.guest import LAB_PREFIX

pytestmark = pytest.mark.root


def lab_command(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``measure lab ARGS`` with its state in ``state_dir``."""
    return measure("lab", *args, env={"MEASURE_LAB_DIR": str(state_dir)}, timeout=60)


def lab_leftovers() -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in namespaces.splitlines() if line.startswith(LAB_PREFIX)]
    found += [
        part.strip().split("@")[0]
        for part in (line.split(":")[1] for line in links.splitlines())
        if part.strip().startswith(LAB_PREFIX)
    ]
    return found


def names_of(status: dict) -> set[str]:
    """This lab's namespace and veth (other labs on the machine come and go)."""
    index = status["guest"]["address"].split(".")[2]
    return {f"{LAB_PREFIX}{index}-{status['pid']}", f"{LAB_PREFIX}{index}h"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_up_twice_status_down_twice(tmp_path: Path) -> None:
    first = lab_command(tmp_path, "up")
    assert first.returncode == 0, first.stderr
    try:
        assert "lab started" in first.stderr
        second = lab_command(tmp_path, "up")
        assert second.returncode == 0 and "already running" in second.stderr

        status = json.loads(lab_command(tmp_path, "status", "--json").stdout)
        assert status["running"] is True
        assert [h["name"] for h in status["hosts"]] == ["WS16TP4DM1VML1b", "WS16TP4DM2VML1b"]
        for host in status["hosts"]:
            assert host["url"].startswith("http://127.0.0.1:") and host["url"].endswith("/wsman")
            assert host["username"] and host["password"]
        assert status["guest"]["name"] == "HVSW10Home"
        assert status["guest"]["address"].startswith("198.18.")
        assert Path(status["ground_truth"]).exists()
        pid = status["pid"]
        assert names_of(status) <= set(lab_leftovers())
    finally:
        down = lab_command(tmp_path, "down")
    assert down.returncode == 0 and "stopped" in down.stderr
    assert not alive(pid)
    assert not names_of(status) & set(lab_leftovers())
    again = lab_command(tmp_path, "down")
    # Nothing of this lab is left (orphans of other runs may be reaped meanwhile).
    assert again.returncode == 0 and f"daemon {pid}" not in again.stderr
    assert lab_command(tmp_path, "status").returncode == 1


def test_down_cleans_up_after_a_crashed_lab(tmp_path: Path) -> None:
    assert lab_command(tmp_path, "up").returncode == 0
    try:
        status = json.loads(lab_command(tmp_path, "status", "--json").stdout)
        os.kill(status["pid"], signal.SIGKILL)
        wait_until(lambda: not alive(status["pid"]), timeout_s=10, what="the daemon to die")
        # The crash left its namespace behind.
        assert names_of(status) <= set(lab_leftovers())
    finally:
        down = lab_command(tmp_path, "down")
    assert down.returncode == 0
    assert not names_of(status) & set(lab_leftovers())
    assert not (tmp_path / "lab.json").exists()

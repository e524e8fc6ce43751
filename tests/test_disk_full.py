"""A full disk: one-line errors, finalised manifests, nothing stray.

The run folder lives on a 512 KiB tmpfs (tests/fixtures_disk.py) that is
filled while the measurement runs: the watch or run ends with exit code 1 and
one line naming the file, its manifest is final (status ``failed``), and no
``manifest.json.tmp`` or other temporary file is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixtures_netns import wait_until
from test_run_faults import SLOW_LAB, start_run

from migration_blackout.harness.runwriter import RunStatus, create_run_folder
from migration_blackout.lab.netns import GuestNamespace

pytestmark = pytest.mark.root


def strays(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".part"))]


def test_a_manifest_is_finalised_on_a_full_disk(full_disk: Any) -> None:
    run = create_run_folder(
        full_disk.path,
        kind="watch",
        command=["measure", "watch"],
        config={"icmp": {"interval_s": 0.01}},
        targets=["198.18.0.2"],
    )
    full_disk.fill()
    run.finalize(RunStatus.FAILED, OSError(28, "No space left on device"))
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["status"] == "failed"
    assert manifest["ended_utc"] is not None
    assert manifest["error"]["message"] == "[Errno 28] No space left on device"
    assert strays(full_disk.path) == []


def test_watch_on_a_disk_that_fills_up(full_disk: Any, guest: GuestNamespace) -> None:
    out = full_disk.path / "results"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "watch",
            "--target",
            guest.guest_address,
            "--interval-ms",
            "1",
            "--duration",
            "60",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: any(p.stat().st_size > 20_000 for p in out.glob("*/raw/icmp.csv")),
            timeout_s=30,
            what="the first rows",
        )
        full_disk.fill()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "No space left on device" in stderr
    (run_dir,) = out.glob("*-watch-*")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "No space left on device" in manifest["error"]["message"]
    assert strays(full_disk.path) == []


@pytest.mark.slow
def test_run_on_a_disk_that_fills_up(full_disk: Any, tmp_path: Path) -> None:
    """A run whose disk fills while Move-VM runs goes on stopping what it
    started (the migration completes, the lab is stopped), and ends failed
    with its manifest final."""
    out = full_disk.path / "results"
    proc = start_run(tmp_path, SLOW_LAB, out=str(out))
    try:
        wait_until(
            lambda: any('"move_vm_start"' in p.read_text() for p in out.glob("*/raw/events.jsonl")),
            timeout_s=60,
            what="Move-VM to start",
        )
        full_disk.fill()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith("measure:")]
    assert said and "No space left on device" in said[-1], stderr
    (run_dir,) = out.glob("*-run-*")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["ended_utc"] is not None
    assert strays(full_disk.path) == []

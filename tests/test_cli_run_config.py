"""`measure run` with real hosts configured: missing passwords, unreachable hosts
and bad config files are one-line errors with the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
vm = "HVSW10Home"

[[hosts]]
name = "HOST1"
address = "127.0.0.1"
port = 1
transport = "http"
auth = "ntlm"
username = 'LAB\\measure'
password_env = "MB_TEST_PASSWORD"

[[hosts]]
name = "HOST2"
address = "127.0.0.1"
port = 2
transport = "http"
auth = "ntlm"
username = 'LAB\\measure'
password_env = "MB_TEST_PASSWORD"

[guest]
addresses = ["127.0.0.1"]
"""


def measure(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, config: str = CONFIG
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "measure.toml"
    path.write_text(config)
    environment = {k: v for k, v in os.environ.items() if k != "MB_TEST_PASSWORD"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "run",
            "--config",
            str(path),
            "--out",
            str(tmp_path / "results"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env={**environment, **(env or {})},
    )


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]


def test_a_missing_password_names_the_variable(tmp_path: Path) -> None:
    proc = measure(tmp_path)
    assert proc.returncode == 2
    assert last_line(proc) == (
        "measure: error: HOST1: no password: set the environment variable MB_TEST_PASSWORD"
    )


def test_an_unreachable_host_fails_preflight_with_a_complete_run_folder(tmp_path: Path) -> None:
    proc = measure(tmp_path, env={"MB_TEST_PASSWORD": "s3cret-pw-123"})
    assert proc.returncode == 3, proc.stderr
    (run_dir,) = (tmp_path / "results").glob("*-run-*")
    # Only the one line that says what failed (and where the run folder is).
    (line,) = proc.stderr.splitlines()
    assert line.startswith("measure: error: HOST1: cannot reach WinRM")
    assert line.endswith(f"(run folder {run_dir})")
    assert proc.stdout == ""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "HOST1: cannot reach WinRM" in manifest["error"]["message"]
    assert [h["name"] for h in manifest["config"]["hosts"]] == ["HOST1", "HOST2"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"s3cret-pw-123" not in path.read_bytes()
    assert "s3cret-pw-123" not in proc.stdout + proc.stderr


def test_a_password_in_the_config_file_is_refused(tmp_path: Path) -> None:
    proc = measure(
        tmp_path, config=CONFIG.replace('password_env = "MB_TEST_PASSWORD"', 'password = "oops"', 1)
    )
    assert proc.returncode == 2
    assert "passwords do not belong in the config file" in last_line(proc)

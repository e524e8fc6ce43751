"""`measure run` with real hosts configured: missing passwords, unreachable hosts
and bad config files are one-line errors with the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from measure_cli import last_line, measure
from test_run_lab import FAST_LAB

from migration_blackout.lab.hyperv_emulator import (
    DEFAULT_DESTINATION_HOST,
    DEFAULT_SOURCE_HOST,
    LabConfig,
    LabThread,
)

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


def run_configured(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, config: str = CONFIG
) -> subprocess.CompletedProcess[str]:
    """``measure run --config measure.toml --out results ARGS``, the password
    variable unset unless ``env`` sets it."""
    path = tmp_path / "measure.toml"
    path.write_text(config)
    return measure(
        "run",
        "--config",
        str(path),
        "--out",
        str(tmp_path / "results"),
        *args,
        env=env,
        without=["MB_TEST_PASSWORD"],
        timeout=120,
    )


def test_a_missing_password_names_the_variable(tmp_path: Path) -> None:
    proc = run_configured(tmp_path)
    assert proc.returncode == 2
    assert last_line(proc) == (
        "measure: error: HOST1: no password: set the environment variable MB_TEST_PASSWORD"
    )


def test_an_unreachable_host_fails_preflight_with_a_complete_run_folder(tmp_path: Path) -> None:
    # The guest named by a host name: resolved once, the name kept in the manifest.
    proc = run_configured(
        tmp_path, "--target", "localhost", env={"MB_TEST_PASSWORD": "s3cret-pw-123"}
    )
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
    assert manifest["targets"] == ["127.0.0.1"]
    assert manifest["config"]["target_names"] == {"127.0.0.1": "localhost"}
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"s3cret-pw-123" not in path.read_bytes()
    assert "s3cret-pw-123" not in proc.stdout + proc.stderr


def test_a_password_in_the_config_file_is_refused(tmp_path: Path) -> None:
    proc = run_configured(
        tmp_path, config=CONFIG.replace('password_env = "MB_TEST_PASSWORD"', 'password = "oops"', 1)
    )
    assert proc.returncode == 2
    assert "passwords do not belong in the config file" in last_line(proc)


@pytest.mark.root
@pytest.mark.slow
def test_host_names_never_become_paths(tmp_path: Path) -> None:
    """Host names from measure.toml name the poll records only percent-encoded:
    ``/`` and ``..`` in them create nothing outside raw/."""
    lab = {"MEASURE_LAB_DIR": str(tmp_path / "lab-state")}
    (tmp_path / "lab.toml").write_text(FAST_LAB)  # the path names matter, not the timing
    up = measure("lab", "up", "--config", str(tmp_path / "lab.toml"), env=lab)
    assert up.returncode == 0, up.stderr
    try:
        status = json.loads(measure("lab", "status", "--json", env=lab).stdout)
        names = ["../../escaped", "a/b"]
        hosts = "".join(
            f'[[hosts]]\nname = "{name}"\naddress = "127.0.0.1"\n'
            f"port = {host['url'].rsplit(':', 1)[1].split('/')[0]}\n"
            f'transport = "http"\nauth = "negotiate"\nusername = "{host["username"]}"\n'
            f'computer_name = "{host["name"]}"\npassword_env = "MB_TEST_PASSWORD"\n'
            for name, host in zip(names, status["hosts"], strict=True)
        )
        config = f'{hosts}\n[guest]\naddresses = ["{status["guest"]["address"]}"]\n'
        proc = run_configured(
            tmp_path,
            "--settle",
            "0",
            "--timeout",
            "20",
            config=config,
            env={"MB_TEST_PASSWORD": status["hosts"][0]["password"]},
        )
    finally:
        measure("lab", "down", env=lab)
    runs = list((tmp_path / "results").glob("*-run-*"))
    assert len(runs) == 1, proc.stderr
    (run_dir,) = runs
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] != "running", proc.stderr
    files = {manifest["probes"][f"host:{name}"]["file"] for name in names}
    assert files == {"raw/host_..%2F..%2Fescaped.jsonl", "raw/host_a%2Fb.jsonl"}
    for file in files:
        assert (run_dir / file).is_file()
    assert not (tmp_path / "escaped.jsonl").exists() and not (run_dir / "raw" / "host_a").exists()
    outside = [p for p in tmp_path.rglob("*escaped*") if run_dir not in p.parents]
    assert outside == []


@pytest.mark.parametrize("target", ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"])
@pytest.mark.parametrize("command", ["run", "watch"])
def test_a_target_that_is_no_guest_is_refused_before_anything_starts(
    tmp_path: Path, command: str, target: str
) -> None:
    out = tmp_path / "results"
    proc = measure(command, "--target", target, "--out", str(out), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert last_line(proc).startswith("measure: error: ")
    assert not out.exists() or not list(out.iterdir())  # no run folder for a refused target


def test_an_empty_vm_name_is_refused(tmp_path: Path) -> None:
    proc = run_configured(tmp_path, "--vm", "", env={"MB_TEST_PASSWORD": "x"})
    assert proc.returncode == 2
    assert "the VM name is empty" in last_line(proc)
    assert not (tmp_path / "results").exists()


@pytest.mark.root
def test_an_output_folder_on_a_read_only_disk_is_one_line(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)], check=True
    )
    try:
        proc = run_configured(
            tmp_path, "--out", str(read_only / "results"), env={"MB_TEST_PASSWORD": "x"}
        )
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert last_line(proc).startswith("measure: error: cannot create output folder")


def test_a_lab_config_that_cannot_work_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text("[timing]\nwarp_factor = 9\n")
    proc = measure(
        "run",
        "--lab-config",
        str(tmp_path / "lab.toml"),
        "--out",
        str(tmp_path / "results"),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "warp_factor" in last_line(proc)
    assert not (tmp_path / "results").exists()


def test_a_missing_optional_auth_package_is_a_preflight_line(tmp_path: Path) -> None:
    """auth = "credssp" without the [credssp] extra: one line, not an ImportError.
    The package is made unimportable in the measure process itself."""
    path = tmp_path / "measure.toml"
    path.write_text(CONFIG.replace('auth = "ntlm"', 'auth = "credssp"', 1))
    program = (
        "import sys; sys.modules['requests_credssp'] = None; "
        "from migration_blackout.harness.cli import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program, "run", "--config", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "MB_TEST_PASSWORD": "pw"},
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("measure:")]
    assert line.startswith(
        'measure: error: HOST1: auth = "credssp" needs the optional credssp support: '
        "pip install 'migration-blackout[credssp]' (it provides requests_credssp) (run folder "
    )


def test_the_wrong_transport_is_a_preflight_line_saying_what_answered(tmp_path: Path) -> None:
    """A host configured for HTTPS whose port answers plain HTTP (a stock
    host's only listener): exit 3 with the fix."""
    with LabThread(LabConfig()) as lab:
        port = lab.hosts[DEFAULT_SOURCE_HOST].port
        other = lab.hosts[DEFAULT_DESTINATION_HOST].port
        config = (
            CONFIG.replace('port = 1\ntransport = "http"', f'port = {port}\ntransport = "https"')
            .replace("port = 2", f"port = {other}")
            .replace("'LAB\\measure'", f"'{lab.credentials.principal}'")
        )
        proc = run_configured(
            tmp_path, config=config, env={"MB_TEST_PASSWORD": lab.credentials.password}
        )
    assert proc.returncode == 3, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("measure:")]
    assert line.startswith("measure: error: HOST1: TLS failed")
    assert (
        f'port {port} answers plain HTTP, not HTTPS: set transport = "http" '
        "(Enable-PSRemoting creates an HTTP listener only) (run folder "
    ) in line


def test_the_destination_name_must_be_the_host_s_own(tmp_path: Path) -> None:
    """Move-VM -DestinationHost gets the destination's computer_name (default:
    its name in the config); preflight compares it with what the host calls
    itself, and refuses an IP address when the host takes Kerberos."""
    with LabThread(LabConfig()) as lab:
        config = (
            CONFIG.replace("port = 1", f"port = {lab.hosts[DEFAULT_SOURCE_HOST].port}")
            .replace("port = 2", f"port = {lab.hosts[DEFAULT_DESTINATION_HOST].port}")
            .replace("'LAB\\measure'", f"'{lab.credentials.principal}'")
        )
        env = {"MB_TEST_PASSWORD": lab.credentials.password}
        (tmp_path / "labelled").mkdir()
        (tmp_path / "address").mkdir()
        labelled = run_configured(tmp_path / "labelled", config=config, env=env)
        by_address = run_configured(
            tmp_path / "address",
            config=config.replace(
                'name = "HOST2"\n', 'name = "HOST2"\ncomputer_name = "192.0.2.7"\n'
            ),
            env=env,
        )
    fqdn = f"{DEFAULT_DESTINATION_HOST}.lab.test"
    assert labelled.returncode == 3, labelled.stderr
    assert (
        f"measure: error: HOST2: Move-VM -DestinationHost would be 'HOST2', but the host calls "
        f'itself {DEFAULT_DESTINATION_HOST} / {fqdn}: set computer_name = "{fqdn}" for HOST2'
    ) in labelled.stderr
    assert by_address.returncode == 3, by_address.stderr
    assert (
        "measure: error: HOST2: Move-VM -DestinationHost would be the address 192.0.2.7, but "
        "HOST2 authenticates live migrations with Kerberos, which needs its name"
    ) in by_address.stderr

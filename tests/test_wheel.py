"""A wheel built from a clean checkout, installed WITHOUT the ``[lab]`` extra in a fresh
virtual environment with nothing else of the project, runs ``measure analyze`` /
``report`` and both notebooks on the folders the workflow made
(tests/fixtures_workflow.py), ``import`` and ``watch``, and ``run --hypervisor qemu``
against QMP endpoints named in a measure.toml (the QEMU lab's, started from this
checkout's environment); the lab's commands say what to install.

"Clean checkout": a copy of the tracked files only (``git ls-files``, links kept as
links), so nothing untracked (a venv, results, caches) can leak into the wheel.
"Fresh venv": ``python -m venv --without-pip``; the project comes only from the
wheel. Its third-party requirements come from this test environment, made visible
through a ``.pth`` file pointing at a folder of links to them (every entry of this
venv's site-packages except this project's editable install and what only the lab
needs, psrpcore): the suite must not reach a package index. ``pip check`` then
confirms that what the wheel declares (ranges, not pins) is met.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from fixtures_workflow import PING_LOGS, Workflow
from test_run_qemu import qmp_endpoints_config

from migration_blackout.harness.labseam import LAB_NEEDS
from migration_blackout.lab.qemu import control as qemu_control

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "notebook_runner.py"
# Installed by the [lab] extra alone (cryptography comes with pypsrp too).
LAB_ONLY = ("psrpcore",)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _clean_checkout(into: Path) -> Path:
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO / name, into / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return into


def _dependencies_only(into: Path) -> Path:
    """Links to every package in this venv's site-packages but this project's and what
    only its lab needs."""
    into.mkdir()
    purelib = Path(sysconfig.get_paths()["purelib"])
    for entry in purelib.iterdir():
        name = entry.name.lower()
        if name.startswith(("migration_blackout", "__editable__", *LAB_ONLY)):
            continue
        if name.endswith(".pth"):
            continue
        (into / entry.name).symlink_to(entry)
    return into


def _run(
    args: list[str | Path], cwd: Path, env: dict[str, str], *, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert proc.returncode == expect, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_a_wheel_in_a_fresh_venv_runs_the_workflow(workflow: Workflow, tmp_path: Path) -> None:
    source = _clean_checkout(tmp_path / "checkout")
    dist = tmp_path / "dist"
    _run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--wheel-dir", dist, source),
        ],
        tmp_path,
        {**os.environ},
    )
    (wheel,) = dist.glob("migration_blackout-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    # One distinctive top-level name, and what quickstart hands out.
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "migration_blackout"
    }
    for shipped in (
        "migration_blackout/measure.example.toml",
        "migration_blackout/notebooks/01-timeline.ipynb",
        "migration_blackout/notebooks/02-compare-runs.ipynb",
        "migration_blackout/harness/cli.py",
    ):
        assert shipped in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any("/tests/" in n or n.startswith(("tests/", "results/")) for n in names)

    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, {**os.environ})
    python, measure = venv / "bin" / "python", venv / "bin" / "measure"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path,
            {},
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(f"{_dependencies_only(tmp_path / 'deps')}\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    absent = subprocess.run([python, "-c", "import migration_blackout"], cwd=tmp_path, env=env)
    assert absent.returncode != 0, "the project was importable before the wheel was installed"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], tmp_path, env)
    _run([python, "-m", "pip", "check"], tmp_path, env)
    where = _run([python, "-c", "import migration_blackout as m; print(m.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(site)
    no_lab = subprocess.run([python, "-c", "import psrpcore"], cwd=tmp_path, env=env)
    assert no_lab.returncode != 0, "psrpcore is installed: this venv would have the lab"
    for without_lab in (["lab", "up"], ["run", "--lab"]):
        refused = _run([measure, *without_lab], tmp_path, env, expect=2)
        assert refused.stderr.splitlines() == [
            f"measure: error: {LAB_NEEDS} (psrpcore is not installed)"
        ]

    # The workflow's folders, copied: analyze rewrites derived/.
    home = tmp_path / "user"
    shutil.copytree(workflow.results, home / "results", symlinks=True)
    session = home / "results" / workflow.session.relative_to(workflow.results)
    analysed = _run([measure, "analyze", session], home, env)
    assert analysed.stdout.count("Blackout (icmp:") == 3
    report = _run(
        [measure, "report", session, "--baseline", "results/old/*", "--junit", "junit.xml"],
        home,
        env,
    )
    assert report.stdout.splitlines()[-1] == "PASS: 2 checks skipped: insufficient data"
    assert (home / "junit.xml").read_text().startswith("<?xml")

    # quickstart hands out the example configuration and the notebooks; both run
    # in a kernel of the fresh venv, reading the workflow's folders.
    _run([measure, "quickstart", home], home, env)
    assert (home / "measure.example.toml").read_bytes() == (
        REPO / "measure.example.toml"
    ).read_bytes()
    for notebook, variables in (
        ("01-timeline.ipynb", {"MB_RUN": str(session), "MB_OUT": str(tmp_path / "plots")}),
        ("02-compare-runs.ipynb", {"MB_RUNS": str(session), "MB_BASELINE": "results/old/*"}),
    ):
        done = _run(
            [python, RUNNER, home / "notebooks" / notebook, home], home, {**env, **variables}
        )
        assert "images" in done.stdout

    # import and watch; run against your own QEMUs (here the QEMU lab's, started from
    # this checkout's environment), named in measure.toml.
    imported = _run(
        [
            *(measure, "import", "ping-log", PING_LOGS / "windows-ja.utf8.log"),
            *("--format", "windows", "--timezone", "+09:00", "--out", home / "imported", "--json"),
        ],
        home,
        env,
    )
    assert json.loads(imported.stdout)["blackout"]["timeouts"] == 3
    lab_state = tmp_path / "qemu-lab"
    state, _ = qemu_control.up(state_dir=lab_state, owner_pid=os.getpid())  # ends with pytest
    try:
        watched = _run(
            [
                *(measure, "watch", "--target", state.guest_address, "--duration", "1"),
                *("--out", home / "watched", "--json"),
            ],
            home,
            env,
        )
        assert json.loads(watched.stdout)["icmp"][state.guest_address]["replies"] > 0
        state = asyncio.run(qemu_control.wait_ready(state_dir=lab_state))
        (home / "measure.toml").write_text(qmp_endpoints_config(state))
        migrated = _run(
            [measure, "run", "--settle", "1", "--out", home / "migrated", "--json"], home, env
        )
    finally:
        qemu_control.down(state_dir=lab_state)
    summary = json.loads(migrated.stdout)
    assert (summary["qemu"]["source"], summary["qemu"]["destination"]) == ("left", "right")
    assert summary["blackout"]["upper_ms"] >= summary["qemu"]["stop_to_resume_ms"]

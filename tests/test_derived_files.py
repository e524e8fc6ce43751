"""``derived/`` is the tool's own folder: its files are replaced (written aside
and renamed), never written through a symbolic link planted there, with one
permissions policy; ``derived/`` being a file or a link elsewhere is one line
and exit 2 (through the real ``measure analyze``; the rebuild itself in-process)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from measure_cli import measure

from migration_blackout.harness.commands import analyze as analyze_command

REPO = Path(__file__).resolve().parent.parent
LAB_SAMPLE = REPO / "tests" / "data" / "runs" / "lab-v1-sample"


def copy_sample(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(LAB_SAMPLE, run)
    return run


@pytest.mark.parametrize("kind", ["file", "link"])
def test_derived_that_is_not_a_folder_of_its_own_is_one_line(tmp_path: Path, kind: str) -> None:
    run = copy_sample(tmp_path)
    shutil.rmtree(run / "derived", ignore_errors=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "file":
        (run / "derived").write_text("not a folder")
    else:
        (run / "derived").symlink_to(elsewhere)
    proc = measure("analyze", str(run))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("measure: error: cannot rebuild")
    assert "derived" in proc.stderr
    assert list(elsewhere.iterdir()) == []


def test_links_in_derived_are_replaced_never_written_through(tmp_path: Path) -> None:
    run = copy_sample(tmp_path)
    derived = run / "derived"
    shutil.rmtree(derived, ignore_errors=True)
    derived.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("summary.json", "timeline.png", "timeline.svg", "timeline-zoom.png"):
        (derived / name).symlink_to(victim)
    assert analyze_command.run(run_dir=run) is not None
    assert victim.read_text() == "precious"
    umask = os.umask(0o022)
    os.umask(umask)
    for path in derived.iterdir():
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode), path
        assert stat.S_IMODE(info.st_mode) == 0o666 & ~umask, path  # one policy: umask applies
    assert not [p for p in derived.iterdir() if p.name.endswith(".tmp")]

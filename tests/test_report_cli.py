"""``measure report`` on the command line: flags mapped onto ``harness.commands.report.run``
and its exit code passed through (0 pass, 1 threshold or regression, 2 bad input)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from report_runs import write_run

from migration_blackout.harness.cli import main

DATA = Path(__file__).parent / "data"


def _runs(parent: Path, prefix: str, blackouts_ms: list[float]) -> list[str]:
    return [
        str(write_run(parent / f"{prefix}-{i}", blackout_ms=ms, phase_ms=i % 7))
        for i, ms in enumerate(blackouts_ms)
    ]


def test_cli_report_exit_0_writes_every_output(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "run", [980, 1000, 1020])
    html, markdown, junit = tmp_path / "r.html", tmp_path / "r.md", tmp_path / "r.xml"
    result = CliRunner().invoke(
        main,
        ["report", *runs, "--html", str(html), "--markdown", str(markdown), "--junit", str(junit),
         "--max-blackout-ms", "1200", "--max-timeouts", "150"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert markdown.read_text().startswith("## Migration blackout report")
    assert junit.read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>')
    assert "PASS" in result.output


def test_cli_report_exit_1_when_a_threshold_is_exceeded(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "run", [1000, 1500])
    result = CliRunner().invoke(main, ["report", *runs, "--max-blackout-ms", "1200"])
    assert result.exit_code == 1, result.output
    assert "max_blackout_ms" in result.output


def test_cli_report_exit_1_on_a_regression(tmp_path: Path) -> None:
    baseline = _runs(tmp_path, "base", [990, 1000, 1010, 1020])
    candidate = _runs(tmp_path, "cand", [1290, 1300, 1310, 1320])
    arguments = ["report", *candidate]
    for folder in baseline:
        arguments += ["--baseline", folder]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1, result.output
    assert "regression" in result.output
    # A 30 % rise is within a 40 % limit.
    relaxed = CliRunner().invoke(main, [*arguments, "--max-regression-pct", "40"])
    assert relaxed.exit_code == 0, relaxed.output


def test_cli_report_exit_2_for_a_missing_folder(tmp_path: Path) -> None:
    runs = _runs(tmp_path, "run", [1000])
    result = CliRunner().invoke(main, ["report", *runs, str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    assert "nope" in result.output

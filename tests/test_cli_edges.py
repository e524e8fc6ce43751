"""The command line's small edges: help with no arguments, each command's exit codes,
grouped ``run --help``, host names for ``watch --target``, labels, refused flag
combinations, shell completion, quickstart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from migration_blackout.harness.cli import main
from migration_blackout.harness.commands.session import ping_pong_shortfall

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [[], ["lab"], ["import"]])
def test_no_arguments_print_the_help_as_click_does(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "migration_blackout.harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: measure")
    assert "Commands:" in lines and len(lines) > 8  # the help, not one squashed line
    assert "measure: error" not in result.stderr


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        (["run"], ["0", "1", "2", "3", "130"]),
        (["watch"], ["0", "1", "2", "130"]),
        (["analyze"], ["0", "2"]),
        (["report"], ["0", "1", "2"]),
        (["import", "ping-log"], ["0", "2"]),
        (["lab", "status"], ["0", "1", "2"]),
        (["quickstart"], ["0", "2"]),
    ],
)
def test_each_command_lists_its_own_exit_codes(command: list[str], codes: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    section = result.output.split("Exit codes:\n", 1)[1]
    listed = re.findall(r"^    (\d+) ", section, flags=re.MULTILINE)
    assert listed == codes


def test_run_help_groups_its_options() -> None:
    text = CliRunner().invoke(main, ["run", "--help"]).output
    headings = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headings[1:9] == [
        "Target: the VM and where it goes:",
        "Hosts and configuration:",
        "Probes:",
        "Migration:",
        "QEMU:",
        "Session: several migrations:",
        "Output:",
        "Other options:",
    ]
    qemu = text.split("QEMU:\n", 1)[1].split("\n\n", 1)[0]
    assert "--downtime-limit-ms" in qemu and "--interval-ms" not in qemu


def test_ping_pong_without_repeat_is_refused() -> None:
    result = CliRunner().invoke(main, ["run", "--ping-pong"])
    assert result.exit_code == 2
    assert "--ping-pong needs --repeat N" in result.output


@pytest.mark.parametrize(
    ("repeat", "warned"), [(2, True), (3, True), (5, True), (6, False), (9, False)]
)
def test_ping_pong_warns_when_a_direction_gets_too_few_runs(repeat: int, warned: bool) -> None:
    warning = ping_pong_shortfall(repeat)
    assert (warning is not None) == warned
    if warning:
        assert warning.endswith("use --repeat 6 or more")


def test_watch_target_takes_host_names_and_says_when_one_does_not_resolve() -> None:
    result = CliRunner().invoke(main, ["watch", "--target", "no-such-host.invalid"])
    assert result.exit_code == 2
    assert "does not resolve" in result.output
    twice = CliRunner().invoke(main, ["watch", "--target", "127.0.0.1", "--target", "127.0.0.1"])
    assert "the same address is given twice" in twice.output


@pytest.mark.parametrize(
    ("label", "message"),
    [("novalue", "expected key=value"), ("=x", "expected key=value"), ("a b=1", "key=value")],
)
def test_labels_are_key_value(label: str, message: str) -> None:
    result = CliRunner().invoke(main, ["watch", "--target", "127.0.0.1", "--label", label])
    assert result.exit_code == 2
    assert message in result.output


def test_shell_completion_completes_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "migration_blackout.harness.cli"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "_MEASURE_COMPLETE": "bash_complete",
            "COMP_WORDS": "measure rep",
            "COMP_CWORD": "1",
        },
    )
    assert result.returncode == 0
    assert result.stdout.split() == ["plain,report"]


def test_quickstart_writes_the_example_config_and_notebooks_once(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["quickstart", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = tmp_path / "measure.example.toml"
    assert config.read_bytes() == (REPO / "measure.example.toml").read_bytes()
    for name in ("01-timeline.ipynb", "02-compare-runs.ipynb"):
        assert (tmp_path / "notebooks" / name).read_bytes() == (
            REPO / "notebooks" / name
        ).read_bytes()
    config.write_text("# mine\n")
    again = CliRunner().invoke(main, ["quickstart", str(tmp_path)])
    assert again.exit_code == 0
    assert f"kept  {config}" in again.output
    assert config.read_text() == "# mine\n"

"""The one way the suite runs ``measure`` in a process of its own.

Only for what a process alone shows: the CLI's exit codes and its lines on
stderr, signals and Ctrl-C, a run from a folder outside the checkout, the
lab's commands (``measure lab up/down`` own their daemons). A test about a
run's result (its folder, summary, manifest, outcome) calls
``harness.commands.run.run()`` in-process instead (tests/inprocess_run.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMAND = (sys.executable, "-m", "migration_blackout.harness.cli")


def measure(
    *args: str,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    without: Iterable[str] = (),
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """``measure ARGS`` as a user types it, in ``cwd``, with this process's
    environment less the variables named in ``without`` plus ``env``; no
    terminal on stdin (nothing prompts)."""
    removed = set(without)
    environment = {key: value for key, value in os.environ.items() if key not in removed}
    environment.update(env or {})
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env=environment,
    )


def start(
    *args: str, cwd: Path = REPO, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``measure ARGS`` started, for a test that signals it (Ctrl-C is SIGINT)."""
    return subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last line the command wrote on stderr (its error, when it failed)."""
    return [line for line in proc.stderr.splitlines() if line.strip()][-1]

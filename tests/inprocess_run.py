"""``measure run`` in-process, as a notebook or a CI script calls it
(``harness.commands.run.run()``), for the tests about a run's result.

The fixture ``in_process`` holds every such test to what a caller of ``run()``
may expect: afterwards the SIGINT and SIGTERM handlers are the ones before,
and no thread, file descriptor or child process (a lab started for the run,
the ICMP prober) is left. It also gives back the environment variables the
run removed (passwords and other secrets are read once, then dropped from
the process, so that nothing the run starts inherits one).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from fixtures_netns import wait_until

from migration_blackout.harness.commands.run import (
    AgentSettings,
    LabTarget,
    Measurement,
    RunRequest,
    run,
)
from migration_blackout.harness.config import RunConfig, apply_overrides

LEFT_BEHIND_DEADLINE_S = 10.0  # threads and children end shortly after the run returns
MATPLOTLIB_DATA = matplotlib.get_data_path()


def _children() -> set[int]:
    """This process's children."""
    pid = os.getpid()
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue  # a thread that just ended
        found |= {int(child) for child in text.split()}
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""  # gone meanwhile


def _commands(pids: set[int]) -> str:
    """What each process runs, and its state (a zombie: Z)."""
    found = []
    for pid in sorted(pids):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        found.append(f"{pid} [{state}] {_command(pid)}")
    return "; ".join(found)


def _descriptors() -> set[int]:
    """This process's open descriptors, less the font files matplotlib keeps
    open once per process (its font cache: the first plot of any run opens them)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if not target.startswith(MATPLOTLIB_DATA):
            found.add(int(name))
    return found


def _described(before: set[int]) -> str:
    """The descriptors opened since ``before``, with what each refers to (a
    pipe: which other processes hold it)."""
    found = []
    for fd in sorted(_descriptors() - before):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        holders = _holders(target) if target.startswith("pipe:") else ""
        found.append(f"{fd} -> {target}{holders}")
    return ", ".join(found)


def _holders(target: str) -> str:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == target
                for fd in os.listdir(f"/proc/{pid}/fd")
            ):
                pids.append(f"{pid} {_command(int(pid))}")
        except OSError:
            continue
    return f" (also held by {'; '.join(pids)})" if pids else ""


@pytest.fixture
def in_process() -> Iterator[None]:
    # Multiprocessing's resource tracker (a child and a pipe to it) is started at
    # the first spawn of the process (the guest's image checker) and lives as long
    # as it: started before the snapshot, it is no run's.
    resource_tracker.ensure_running()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    environ = dict(os.environ)
    threads = set(threading.enumerate())
    children = _children()
    descriptors = _descriptors()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    wait_until(
        lambda: set(threading.enumerate()) <= threads,
        timeout_s=LEFT_BEHIND_DEADLINE_S,
        what="the run's threads to end",
    )
    wait_until(
        lambda: _children() <= children,
        timeout_s=LEFT_BEHIND_DEADLINE_S,
        what=f"the run's child processes to end: {_commands(_children() - children)}",
    )
    wait_until(
        lambda: _descriptors() <= descriptors,
        timeout_s=LEFT_BEHIND_DEADLINE_S,
        what=f"the run's file descriptors to be closed: {_described(descriptors)}",
    )


def lab_run(
    tmp_path: Path,
    lab_toml: str,
    *,
    config: RunConfig | None = None,
    vm: str | None = None,
    guest_agent: bool = False,
    agent: AgentSettings | None = None,
    settle_s: float = 1.0,
    **overrides: Any,
) -> tuple[Measurement, Path | None]:
    """``measure run --lab-config LAB_TOML --settle 1`` in-process: a lab of its
    own (``lab_toml``, its state under ``tmp_path``) started for the run;
    ``overrides`` are ``config.apply_overrides``' (the flags). The measurement
    and the run folder it made (None when it made none)."""
    lab_config = tmp_path / "lab.toml"
    lab_config.write_text(lab_toml, encoding="utf-8")
    os.environ["MEASURE_LAB_DIR"] = str(tmp_path / "lab-state")  # in_process gives it back
    out = tmp_path / "results"
    measured = run(
        RunRequest(
            config=apply_overrides(config or RunConfig(), vm=vm, settle_s=settle_s, **overrides),
            lab=LabTarget(lab_config=lab_config, vm=vm),
            guest_agent=guest_agent,
            agent=agent or AgentSettings(),
            out=out,
        )
    )
    runs = sorted(out.glob("*-run-*")) if out.exists() else []
    return measured, (runs[-1] if runs else None)

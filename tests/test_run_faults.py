"""The fault matrix: every phase of ``measure run`` x {SIGINT to the process
group (a terminal's Ctrl-C), SIGTERM, a host that hangs, a host that closes
its connections}, through the real CLI against a lab of its own.

Each cell must end with the documented exit code and status, a complete run
folder (final manifest, ``end`` event, no temporary file, the ICMP record
once the probes ran, the harvest attempted), no Move-VM started after the
signal (the lab's ground truth), in bounded time, and with nothing left
running: no lab daemon, namespace, state folder or registry entry of its
lab, no process of the run. Cells run a few at a time: they mostly wait.

A host's fault is timed to a phase with the lab's ``unresponsive_after =
"signal"``: the test sends SIGUSR1 to the lab daemon when the run enters
the phase (docs/lab.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fixtures_netns import wait_until
from test_run_lab import FAST_LAB

from migration_blackout.lab.control import registered_labs

pytestmark = [pytest.mark.root, pytest.mark.slow]

# A pre-copy of ~3 s: a signal sent once Move-VM started lands while it runs.
SLOW_LAB = FAST_LAB.replace("precopy_overhead = 0.5", "precopy_overhead = 3")
SOURCE, DESTINATION = "WS16TP4DM1VML1b", "WS16TP4DM2VML1b"
CONCURRENT_CELLS = 6
# A signal is honoured within a few seconds: the run folder is final by then
# (the short harvest deadline, 5 s, included); the analysis and the lab's
# teardown follow.
SIGNAL_TO_FINAL_S = 12.0
SIGNAL_TO_EXIT_S = 40.0
# The analysis and the lab's teardown after the run folder is final, several
# runs at once on a shared 2-core machine (seen: up to 20 s).
ANALYSIS_AND_TEARDOWN_S = 30.0
RUN_LIMIT_S = 150.0


def fault(host: str, mode: str, after: str | None) -> str:
    text = f'[faults]\nunresponsive_host = "{host}"\nunresponsive_mode = "{mode}"\n'
    return text + (f'unresponsive_after = "{after}"\n' if after else "")


@dataclass(frozen=True)
class Cell:
    """One run: when (``at``: a phase, or an event of raw/events.jsonl), what
    (``action``), and what the run must end with."""

    name: str
    at: str
    action: str  # "SIGINT-group", "SIGTERM", "host-fault" (SIGUSR1 to the lab), "none"
    exit_code: int
    status: str
    lab: str = FAST_LAB
    args: tuple[str, ...] = ()
    message: str | None = None  # in the manifest's error
    truth: str | None = None  # an event the lab's ground truth must hold (e.g. "rollback")
    bound_s: float = SIGNAL_TO_EXIT_S  # from the action to the exit


@dataclass
class Ran:
    cell: Cell
    returncode: int | None = None
    stderr: str = ""
    action_mono_ns: int | None = None
    action_to_exit_s: float | None = None
    run_dir: Path | None = None
    lab_state: dict | None = None
    pid: int | None = None
    daemons: set[int] = field(default_factory=set)
    state_dirs: set[Path] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _events(run_dir: Path | None) -> list[dict]:
    if run_dir is None:
        return []
    path = run_dir / "raw" / "events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines()[1:]:
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # the line being written
    return events


def _manifest(run_dir: Path | None) -> dict:
    if run_dir is None:
        return {}
    try:
        return json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _reached(ran: Ran, at: str) -> bool:
    if at == "analysis":
        return _manifest(ran.run_dir).get("status") not in (None, "running")
    if at.startswith("truth:"):  # the lab's own record: the lab has done it
        if ran.lab_state is None:
            return False
        truth = Path(ran.lab_state["ground_truth"]).read_text(errors="replace")
        return f'"event": "{at[6:]}"' in truth or f'"event":"{at[6:]}"' in truth
    events = _events(ran.run_dir)
    return any(e.get("phase") == at or e.get("event") == at for e in events)


def start_run(
    tmp: Path, lab: str, *args: str, out: str = "results", env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``measure run`` in ``tmp`` with a lab of its own, in a process group of
    its own (as a shell starts a job); ``--out`` as given (relative to ``tmp``)."""
    (tmp / "lab.toml").write_text(lab)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "run",
            "--lab-config",
            str(tmp / "lab.toml"),
            "--settle",
            "2",
            "--out",
            out,
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
        start_new_session=True,
        env={**os.environ, "MEASURE_LAB_DIR": str(tmp / "lab-state"), **(env or {})},
    )


def run_cell(cell: Cell, tmp: Path) -> Ran:
    ran = Ran(cell)
    out = tmp / "results"
    proc = start_run(tmp, cell.lab, *cell.args)
    ran.pid = proc.pid
    try:
        deadline = time.monotonic() + RUN_LIMIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            runs = sorted(out.glob("*-run-*")) if out.exists() else []
            ran.run_dir = runs[0] if runs else ran.run_dir
            for lab in registered_labs():
                if lab.owner_pid == proc.pid:
                    ran.daemons.add(lab.pid)
                    ran.state_dirs.add(lab.state_dir)
            state_file = _manifest(ran.run_dir).get("lab", {}).get("state_file")
            if ran.lab_state is None and state_file and Path(state_file).exists():
                ran.lab_state = json.loads(Path(state_file).read_text())
            if cell.action != "none" and ran.action_mono_ns is None and _reached(ran, cell.at):
                ran.action_mono_ns = time.monotonic_ns()
                if cell.action == "SIGINT-group":
                    os.killpg(proc.pid, signal.SIGINT)
                elif cell.action == "SIGTERM":
                    proc.send_signal(signal.SIGTERM)
                else:
                    assert ran.lab_state is not None, "the lab's state was not seen"
                    os.kill(int(ran.lab_state["pid"]), signal.SIGUSR1)
            time.sleep(0.005)
        if proc.poll() is None:
            ran.problems.append(f"still running after {RUN_LIMIT_S:g} s")
            os.killpg(proc.pid, signal.SIGKILL)
        _, ran.stderr = proc.communicate(timeout=30)
        ran.returncode = proc.returncode
        if ran.action_mono_ns is not None:
            ran.action_to_exit_s = (time.monotonic_ns() - ran.action_mono_ns) / 1e9
        runs = sorted(out.glob("*-run-*")) if out.exists() else []
        ran.run_dir = runs[0] if runs else None
        judge(ran, tmp)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return ran


def judge(ran: Ran, tmp: Path) -> None:
    cell, problems = ran.cell, ran.problems
    if cell.action != "none" and ran.action_mono_ns is None:
        problems.append(f"the run never reached {cell.at!r}")
    if ran.returncode != cell.exit_code:
        problems.append(f"exit code {ran.returncode}, expected {cell.exit_code}")
    if ran.action_to_exit_s is not None and ran.action_to_exit_s > cell.bound_s:
        problems.append(f"exited {ran.action_to_exit_s:.1f} s after the {cell.action}")
    if "Traceback" in ran.stderr:
        problems.append("a traceback on stderr")
    run_dir = ran.run_dir
    if run_dir is None:
        problems.append("no run folder")
        return
    manifest = _manifest(run_dir)
    if manifest.get("status") != cell.status:
        problems.append(f"status {manifest.get('status')!r}, expected {cell.status!r}")
    if cell.status != "completed" and not manifest.get("error"):
        problems.append("no error in the manifest")
    if cell.message and cell.message not in json.dumps(manifest.get("error")):
        problems.append(f"the error does not say {cell.message!r}: {manifest.get('error')}")
    if manifest.get("ended_utc") is None:
        problems.append("the manifest has no end")
    elif cell.action.startswith("SIG") and ran.action_mono_ns is not None:
        final_s = (manifest["clock"]["end"]["mono_ns"] - ran.action_mono_ns) / 1e9
        if final_s > SIGNAL_TO_FINAL_S:
            problems.append(f"the run folder was final {final_s:.1f} s after the {cell.action}")
    events = _events(run_dir)
    if not events or events[-1].get("event") != "end":
        problems.append("raw/events.jsonl does not end with 'end'")
    phases = [e.get("phase") for e in events if e.get("event") == "phase"]
    if cell.at != "lab" and "harvest" not in phases:
        problems.append("no harvest was attempted")
    icmp_registered = "icmp" in manifest.get("probes", {})
    if icmp_registered and not (run_dir / "raw" / "icmp.csv").is_file():
        problems.append("raw/icmp.csv is missing")
    if cell.at != "analysis" and not (run_dir / "derived" / "summary.json").is_file():
        problems.append("no derived/summary.json")
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".part"))]
    if leftovers:
        problems.append(f"temporary files left: {leftovers}")
    # No Move-VM after the signal: the lab's own record of what it was asked.
    truth = run_dir / "raw" / "ground_truth.jsonl"
    starts = []
    if truth.exists():
        for line in truth.read_text().splitlines()[1:]:
            record = json.loads(line)
            if record.get("event") == "migration_start":
                starts.append(record["mono_ns"])
    if cell.action.startswith("SIG") and ran.action_mono_ns is not None:
        late = [s for s in starts if s > ran.action_mono_ns]
        if late:
            problems.append("Move-VM was started after the signal")
    if 'unresponsive_after = "move_vm_returned"' in cell.lab:
        # The destination hangs once Move-VM returned: the post-condition gives
        # up on it after its own 10 s (not a read timeout and a reopen, ~60 s).
        returned = [e["mono_ns"] for e in events if e.get("event") == "move_vm_return"]
        checked = [e for e in events if e.get("event") == "post_condition"]
        if not returned or not checked:
            problems.append("no post-condition after Move-VM returned")
        elif (checked[0]["mono_ns"] - returned[0]) / 1e9 > 10 + 3:
            waited = (checked[0]["mono_ns"] - returned[0]) / 1e9
            problems.append(f"the post-condition took {waited:.1f} s on a hung destination")
        elif "no answer within 10 s" not in checked[0]["seen"].get(DESTINATION, ""):
            problems.append(f"the post-condition saw {checked[0]['seen']}")
    if cell.truth is not None and f'"{cell.truth}"' not in (
        truth.read_text() if truth.exists() else ""
    ):
        problems.append(f"the lab's ground truth has no {cell.truth!r}")
    # Nothing left running: the lab, its namespace and folders, the run's processes.
    if cell.at == "lab" and not ran.daemons:
        problems.append("no lab daemon was seen starting")
    if _processes_mentioning(f"--owner-pid {ran.pid}"):
        problems.append("a lab daemon of the run still runs")
    if any(r.pid in ran.daemons for r in registered_labs()):
        problems.append("the lab is still registered")
    for state_dir in ran.state_dirs:
        if state_dir.exists():
            problems.append(f"the lab's state folder {state_dir} is left")
        if _processes_mentioning(str(state_dir)):  # the KDC and its directory server too
            problems.append(f"processes of the lab in {state_dir} still run")
    if ran.lab_state is not None:
        namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        if ran.lab_state["guest"]["namespace"] in namespaces.stdout:
            problems.append("the lab's namespace is left")
    for text in (str(run_dir), str(tmp)):
        if _processes_mentioning(text):
            problems.append(f"processes still mention {text}")


def run_cells(cells: list[Cell], tmp_path: Path) -> list[Ran]:
    def one(item: tuple[int, Cell]) -> Ran:
        index, cell = item
        folder = tmp_path / f"{index:02d}-{cell.name}"
        folder.mkdir()
        return run_cell(cell, folder)

    with ThreadPoolExecutor(max_workers=CONCURRENT_CELLS) as pool:
        return list(pool.map(one, enumerate(cells)))


def report(results: list[Ran]) -> str:
    lines = []
    for ran in results:
        if ran.problems:
            tail = " | ".join(ran.stderr.strip().splitlines()[-2:])
            lines.append(f"{ran.cell.name}: {'; '.join(ran.problems)}  [stderr: {tail}]")
    return "\n".join(lines)


SIGNALS = ("SIGINT-group", "SIGTERM")
# Where each phase is caught: a phase, or an event that proves the run is in it.
SIGNAL_PHASES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # name: (at, lab, extra args)
    "lab-start": ("lab", FAST_LAB, ()),
    "preflight": ("preflight", FAST_LAB, ()),
    "probes-starting": ("probes", FAST_LAB, ()),
    # Once the lab has started the migration: the signal must stop it.
    "migrating": ("truth:migration_start", SLOW_LAB, ()),
    "settling": ("settling", FAST_LAB, ("--settle", "4")),
    # The destination hangs once Move-VM returned: the harvest waits on it,
    # so the signal lands in the harvest for sure, with a host that hangs.
    "harvest": (
        "harvest",
        FAST_LAB + fault(DESTINATION, "hang", "move_vm_returned"),
        ("--harvest-timeout", "30"),
    ),
    "analysis": ("analysis", FAST_LAB, ()),
}


def signal_cells() -> list[Cell]:
    cells = []
    for name, (at, lab, args) in SIGNAL_PHASES.items():
        for action in SIGNALS:
            cells.append(
                Cell(
                    name=f"{name}-{action}",
                    at=at,
                    action=action,
                    exit_code=130,
                    status="aborted",
                    lab=lab,
                    args=args,
                    message="interrupted",
                    # Stopped during pre-copy: the lab rolls the migration back.
                    truth="rollback" if name == "migrating" else None,
                )
            )
    return cells


def host_fault_cells() -> list[Cell]:
    cells = []
    for mode in ("hang", "close"):
        cells += [
            # From the start: the preflight fails, naming the host or the step.
            Cell(
                name=f"preflight-host-{mode}",
                at="preflight",
                action="none",
                exit_code=3,
                status="failed",
                lab=FAST_LAB + fault(SOURCE, mode, None),
                args=("--timeout", "8"),
            ),
            # During the migration: Move-VM cannot be followed; the run fails in
            # --timeout plus the stop's grace at the latest.
            Cell(
                name=f"migrating-host-{mode}",
                at="truth:migration_start",
                action="host-fault",
                exit_code=1,
                status="aborted" if mode == "hang" else "failed",
                lab=SLOW_LAB + fault(SOURCE, mode, "signal"),
                args=("--timeout", "8", "--harvest-timeout", "5"),
                message=SOURCE,
                bound_s=8 + 5 + 2 + 5 + 2 + ANALYSIS_AND_TEARDOWN_S,
            ),
            # After Move-VM returned: the measurement stands; the host's polls
            # and harvest record what they could not get.
            Cell(
                name=f"settling-host-{mode}",
                at="settling",
                action="host-fault",
                exit_code=0,
                status="completed",
                lab=FAST_LAB + fault(DESTINATION, mode, "signal"),
                args=("--harvest-timeout", "5"),
                bound_s=2 + 2 + 5 + 2 + ANALYSIS_AND_TEARDOWN_S,
            ),
            Cell(
                name=f"harvest-host-{mode}",
                at="harvest",
                action="host-fault",
                exit_code=0,
                status="completed",
                lab=FAST_LAB + fault(DESTINATION, mode, "signal"),
                args=("--harvest-timeout", "5"),
                bound_s=5 + 2 + ANALYSIS_AND_TEARDOWN_S,
            ),
        ]
    return cells


def expected_length(cell: Cell) -> int:
    """A rank of how long a cell runs (seen on 2 cores under load: the harvest
    signal cells and a host hanging mid-migration ~30 s, waiting out a hung
    host; other hangs ~20 s; the rest 5-15 s). The longest start first, so
    none is left running alone at the end of the matrix."""
    if cell.at == "harvest" and cell.action.startswith("SIG"):
        return 2
    if cell.at == "truth:migration_start" and cell.action == "host-fault":
        return 2
    return 1 if "hang" in cell.lab else 0


def test_fault_matrix(tmp_path: Path) -> None:
    cells = sorted(signal_cells() + host_fault_cells(), key=expected_length, reverse=True)
    results = run_cells(cells, tmp_path)
    problems = report(results)
    assert not problems, "\n" + problems


def test_a_relative_out_keeps_the_icmp_record(tmp_path: Path) -> None:
    """Defect: the ICMP child ran in the project folder and got the run
    folder's path as typed, so ``--out rel_out`` lost raw/icmp.csv (and the
    run still said completed)."""
    proc = start_run(tmp_path, FAST_LAB, out="rel_out")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    (run_dir,) = (tmp_path / "rel_out").glob("*-run-*")
    assert (run_dir / "raw" / "icmp.csv").stat().st_size > 0
    assert _manifest(run_dir)["status"] == "completed"
    assert "analysis failed" not in stderr
    repository = Path(__file__).resolve().parent.parent
    assert not (repository / "rel_out").exists()


def test_a_killed_run_leaves_a_lab_that_the_next_lab_down_removes(tmp_path: Path) -> None:
    """SIGKILL of ``measure run`` and its lab's daemon while it migrates: the
    lab it started is an orphan; ``measure lab down`` (whatever MEASURE_LAB_DIR says) finds it
    and removes its daemon, namespace and state folder."""
    ran = Ran(Cell("killed", "move_vm_start", "SIGKILL", -9, "running", lab=SLOW_LAB))
    out = tmp_path / "results"
    proc = start_run(tmp_path, SLOW_LAB)
    deadline = time.monotonic() + 60
    while not _reached(ran, "move_vm_start"):
        assert proc.poll() is None and time.monotonic() < deadline, "Move-VM never started"
        runs = sorted(out.glob("*-run-*")) if out.exists() else []
        ran.run_dir = runs[0] if runs else None
        time.sleep(0.01)
    (lab,) = [r for r in registered_labs() if r.owner_pid == proc.pid]
    state = json.loads((lab.state_dir / "lab.json").read_text())
    # The run and its lab's daemon killed together (the OOM killer, kill -9 of the
    # session): the daemon cannot stop itself when its run is gone, as it otherwise
    # would (and then, on a busy machine, before this test's `lab down`).
    os.killpg(proc.pid, signal.SIGKILL)
    os.kill(lab.pid, signal.SIGKILL)
    proc.communicate()
    down = subprocess.run(
        [sys.executable, "-m", "migration_blackout.harness.cli", "lab", "down"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MEASURE_LAB_DIR": str(tmp_path / "another-state-dir")},
    )
    assert down.returncode == 0, down.stderr
    assert "nothing was running" not in down.stderr
    assert str(lab.state_dir) in down.stderr
    assert not lab.state_dir.exists()
    assert not _processes_mentioning(f"--owner-pid {proc.pid}")
    assert all(r.pid != lab.pid for r in registered_labs())
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert state["guest"]["namespace"] not in namespaces
    # The ICMP prober (a process group of its own) sees its input end and stops.
    wait_until(lambda: not _processes_mentioning(str(out)), timeout_s=30, what="the prober to end")


def _environment(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat_fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_no_process_the_run_starts_inherits_a_password(tmp_path: Path) -> None:
    """MEASURE_PASSWORD (and any secret-looking variable) reaches none of the
    processes a run starts: the ICMP prober, the image decoder, the lab's
    daemon, and the agent and its desktop inside the guest."""
    secret = "Do-Not-Leak-4f1c"
    proc = start_run(
        tmp_path,
        SLOW_LAB,
        "--guest-agent",
        "--agent-interval",
        "0.25",
        env={"MEASURE_PASSWORD": secret, "SOME_API_TOKEN": secret},
    )
    ran = Ran(Cell("env", "move_vm_start", "none", 0, "completed"))
    deadline = time.monotonic() + 90
    while not _reached(ran, "move_vm_start"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        runs = sorted((tmp_path / "results").glob("*-run-*"))
        ran.run_dir = runs[0] if runs else None
        time.sleep(0.01)
    started = set(_children(proc.pid))
    started |= set(_processes_mentioning(str(ran.run_dir)))  # the prober, its own group
    started |= set(_processes_mentioning("guest_agent.py"))
    started |= set(_processes_mentioning("migration_blackout.lab.desktop"))
    started |= {r.pid for r in registered_labs() if r.owner_pid == proc.pid}
    environments = {pid: _environment(pid) for pid in started}
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert len(environments) >= 5, environments.keys()  # prober, decoder, daemon, agent, clock
    leaked = [pid for pid, env in environments.items() if secret.encode() in env]
    assert leaked == []


def test_lab_down_during_a_run_fails_it_within_its_limits(tmp_path: Path) -> None:
    """The lab taken away under a run (its hosts and its guest gone): the run
    fails within its own limits, not after a minute of waiting for a guest
    that cannot answer again."""
    environment = {**os.environ, "MEASURE_LAB_DIR": str(tmp_path / "lab-state")}
    cli = [sys.executable, "-m", "migration_blackout.harness.cli"]
    # A pre-copy of ~20 s: Move-VM is surely still running when the lab goes down,
    # however long `measure lab down` takes to start on a busy machine.
    (tmp_path / "lab.toml").write_text(
        FAST_LAB.replace("precopy_overhead = 0.5", "precopy_overhead = 20")
    )
    up = subprocess.run(
        [*cli, "lab", "up", "--config", str(tmp_path / "lab.toml")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert up.returncode == 0, up.stderr
    try:
        proc = subprocess.Popen(
            [*cli, "run", "--timeout", "30", "--settle", "1", "--out", "results"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environment,
        )
        ran = Ran(Cell("lab-down", "move_vm_start", "none", 1, "failed"))
        deadline = time.monotonic() + 60
        while not _reached(ran, "move_vm_start"):
            assert proc.poll() is None and time.monotonic() < deadline, "Move-VM never started"
            runs = sorted((tmp_path / "results").glob("*-run-*"))
            ran.run_dir = runs[0] if runs else None
            time.sleep(0.01)
    finally:
        down = subprocess.run([*cli, "lab", "down"], capture_output=True, env=environment)
    downed = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    took_s = time.monotonic() - downed
    assert down.returncode == 0
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert ran.run_dir is not None and _manifest(ran.run_dir)["status"] == "failed"
    # Move-VM's error within a poll, settle 1 s, the harvest's short deadline (no
    # answer), the analysis: well inside --timeout (30 s).
    assert took_s < 30, f"the run took {took_s:.1f} s to end after the lab went down"

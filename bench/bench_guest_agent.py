"""Benchmark of the guest agent: its CPU cost, and how well its heartbeat times a freeze.

    .venv/bin/python bench/bench_guest_agent.py [--cpu-seconds 20] [--freezes 10] [--seed 1]
    .venv/bin/python bench/bench_guest_agent.py --witnesses 10 --cpu-seconds 30 \
        --freezes 0 --compare-with main --rounds 3

1. CPU: the agent captures a 1024x768 Xvfb screen (a clock redrawn 10 times
   a second, so every capture differs) once a second as PNG and sends 100
   heartbeats a second (version 2: each followed by the work unit) to a
   receiver on loopback; with ``--witnesses`` it also answers the direction
   probe and carries the TCP stream, both every 10 ms (every witness on);
   user+system CPU time of the agent process over ``--cpu-seconds``, as % of
   one core (from /proc/PID/stat, after a warm-up), and of each of its
   threads (/proc/PID/task/TID/stat, in the order they started: the main
   thread first). ``--witnesses 10`` is what a user gets with ``measure run
   --guest-agent --witnesses``. With ``--compare-with REV`` the agent of
   that git revision is measured too, alternating with this checkout's
   ``--rounds`` times (each in a fresh receiver and agent), for a ratio
   measured side by side on the same loaded machine.
2. Accuracy: ``--freezes`` freezes of the agent (SIGSTOP ... SIGCONT) of a
   random 0.2-2 s each; the truth is measured around the kill() calls on the
   monotonic clock, which the agent shares (same machine). For each freeze,
   the heartbeat execution gap (analysis/guest.py) minus the truth, the error
   of the bounds' midpoint, and whether the bounds hold the truth.

Prints a Markdown table. Needs Xvfb (the xvfb package) and Linux /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from migration_blackout.analysis.guest import HEARTBEAT_SOURCE, execution_gaps, load_heartbeats  # noqa: E402
from migration_blackout.lab.desktop import ScreenClock, XvfbDisplay  # noqa: E402
from migration_blackout.probes.guest_receiver import GuestReceiver, new_token  # noqa: E402
from migration_blackout.probes.tcp_stream import TcpStreamProbe  # noqa: E402
from migration_blackout.probes.udp_direction import UdpDirectionProbe  # noqa: E402

AGENT = REPO / "probes" / "guest_agent.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> list[float]:
    """User + system CPU time of each thread of a process so far, seconds,
    in the order the threads started (thread ids grow)."""
    times = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda path: int(path.name)):
        with contextlib.suppress(FileNotFoundError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            times.append((int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return times


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class AgentRun:
    """What one agent did in one measurement."""

    label: str
    cpu_percent: float
    thread_percent: list[float]
    wall_s: float
    frames: int
    heartbeats: int
    rss: float
    counts: str
    errors_ms: list[float] = field(default_factory=list)
    midpoint_errors_ms: list[float] = field(default_factory=list)
    held: int = 0


async def bench(
    agent_path: Path,
    label: str,
    display: str,
    run_dir: Path,
    cpu_window_s: float,
    freezes: int,
    seed: int,
    witnesses: float | None,
) -> AgentRun:
    token = new_token()
    receiver = GuestReceiver(run_dir, token=token)
    stop = asyncio.Event()
    rng = random.Random(seed)
    truths: list[tuple[int, int]] = []  # (stop mono ns, freeze ns)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(receiver.run(stop))
        await receiver.ready.wait()
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(agent_path), "--url", receiver.url, "--display", display,
            "--interval", "1", "--heartbeat-hz", "100",
            *(("--witness-port", "0", "--witness-host", "127.0.0.1") if witnesses else ()),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "MB_AGENT_TOKEN": token},
        )  # fmt: skip
        probes: list = []
        probes_stop = asyncio.Event()
        try:
            if witnesses:
                assert agent.stderr is not None
                line = (await agent.stderr.readline()).decode()
                port = int(line.split("127.0.0.1:")[1].split()[0])
                for probe in (UdpDirectionProbe, TcpStreamProbe):
                    probes.append(
                        probe.create(
                            run_dir,
                            target="127.0.0.1",
                            port=port,
                            token=token,
                            interval_s=witnesses,
                        )
                    )
                    tasks.create_task(probes[-1].run(probes_stop))
            async with asyncio.timeout(30):
                await receiver.contact.wait()
                for probe in probes:
                    await probe.ready.wait()
            await asyncio.sleep(3)  # warm-up: imports, first captures
            cpu_before, wall_before = cpu_seconds(agent.pid), time.monotonic()
            threads_before = thread_cpu_seconds(agent.pid)
            frames_before = receiver.stats.frames_stored
            beats_before = receiver.stats.heartbeats
            await asyncio.sleep(cpu_window_s)
            cpu_used = cpu_seconds(agent.pid) - cpu_before
            threads_after = thread_cpu_seconds(agent.pid)
            threads_used = [
                after - before for after, before in zip(threads_after, threads_before, strict=False)
            ]
            wall = time.monotonic() - wall_before
            probes_stop.set()
            frames = receiver.stats.frames_stored - frames_before
            beats = receiver.stats.heartbeats - beats_before
            rss = rss_mib(agent.pid)

            for _ in range(freezes):
                length_s = rng.uniform(0.2, 2.0)
                before_stop = time.monotonic_ns()
                os.kill(agent.pid, signal.SIGSTOP)
                after_stop = time.monotonic_ns()
                await asyncio.sleep(length_s)
                before_cont = time.monotonic_ns()
                os.kill(agent.pid, signal.SIGCONT)
                after_cont = time.monotonic_ns()
                truths.append(
                    (
                        (before_stop + after_stop) // 2,
                        (before_cont + after_cont - before_stop - after_stop) // 2,
                    )
                )
                await asyncio.sleep(rng.uniform(0.8, 1.2))
        finally:
            probes_stop.set()
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
            out, _ = await agent.communicate()
            stop.set()

    result = AgentRun(
        label=label,
        cpu_percent=100 * cpu_used / wall,
        thread_percent=[100 * used / wall for used in threads_used],
        wall_s=wall,
        frames=frames,
        heartbeats=beats,
        rss=rss,
        counts=out.decode().strip(),
    )
    gaps = execution_gaps(load_heartbeats(run_dir), source=HEARTBEAT_SOURCE, min_gap_ms=100)
    for stopped_at, freeze_ns in truths:
        # The gap nearest the stop: SIGSTOP takes effect a little after kill()
        # returns, so the last heartbeat before it may carry a later stamp.
        gap = min(gaps, key=lambda g: abs(g.before_guest_mono_ns - stopped_at))
        truth_ms = freeze_ns / 1e6
        result.errors_ms.append(gap.gap_ms - truth_ms)
        result.midpoint_errors_ms.append((gap.lower_ms + gap.upper_ms) / 2 - truth_ms)
        result.held += gap.lower_ms <= truth_ms <= gap.upper_ms
    return result


def agent_at(revision: str, folder: Path) -> Path:
    """The agent as it was at a git revision, written into ``folder``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:probes/guest_agent.py"],
        check=True,
        capture_output=True,
    ).stdout
    path = folder / f"guest_agent_{revision.replace('/', '_')}.py"
    path.write_bytes(source)
    return path


def print_run(run: AgentRun, load: str) -> None:
    threads = " / ".join(f"{percent:.2f}" for percent in run.thread_percent)
    print(
        f"| {run.label} | {load} | {run.cpu_percent:.2f} | {threads} | {run.wall_s:.1f} s, "
        f"{run.frames} frames, {run.heartbeats} heartbeats | {run.rss:.0f} |"
    )


def print_freezes(run: AgentRun) -> None:
    errors, midpoints = run.errors_ms, run.midpoint_errors_ms
    print(f"\n{run.label}: {len(errors)} freezes (SIGSTOP/SIGCONT, 0.2-2 s)")
    print(
        f"- heartbeat gap - truth: mean / min / max {statistics.mean(errors):.1f} / "
        f"{min(errors):.1f} / {max(errors):.1f} ms"
    )
    print(
        f"- bounds midpoint - truth: mean / min / max {statistics.mean(midpoints):.1f} / "
        f"{min(midpoints):.1f} / {max(midpoints):.1f} ms"
    )
    print(f"- truth within [lower, upper]: {run.held} of {len(errors)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    parser.add_argument("--freezes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--witnesses",
        type=float,
        metavar="MS",
        help="every witness on: the direction probe and the TCP stream every MS ms",
    )
    parser.add_argument(
        "--compare-with",
        metavar="REV",
        help="also measure the agent of this git revision, alternating with this checkout's",
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each agent")
    args = parser.parse_args()
    witnesses = None if args.witnesses is None else args.witnesses / 1000
    load = "1 PNG frame/s 1024x768 + 100 heartbeats/s (work unit each)"
    if witnesses:
        load += f" + direction probe and TCP stream every {args.witnesses:g} ms"
    with (
        XvfbDisplay(1024, 768) as xvfb,
        ScreenClock(xvfb.display, period_s=0.1),
        tempfile.TemporaryDirectory() as tmp,
    ):
        agents = [("this checkout", AGENT)]
        if args.compare_with:
            agents.insert(0, (args.compare_with, agent_at(args.compare_with, Path(tmp))))
        print(f"guest agent bench on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
        print(
            "| agent | load | CPU % of one core | per thread, main first | measured over"
            " | RSS MiB |"
        )
        print("| --- | --- | ---: | --- | --- | ---: |")
        runs: list[AgentRun] = []
        for round_number in range(args.rounds):
            # Alternate which agent goes first: a load that drifts favours neither.
            order = agents if round_number % 2 == 0 else agents[::-1]
            for label, path in order:
                with tempfile.TemporaryDirectory(dir=tmp) as run_dir:
                    run = asyncio.run(
                        bench(
                            path,
                            label,
                            xvfb.display,
                            Path(run_dir),
                            args.cpu_seconds,
                            args.freezes,
                            args.seed,
                            witnesses,
                        )
                    )
                print_run(run, load)
                print(f"<!-- {run.counts} -->", file=sys.stderr)
                runs.append(run)
        if len(agents) > 1:
            medians = {
                label: statistics.median(run.cpu_percent for run in runs if run.label == label)
                for label, _ in agents
            }
            old, new = medians[args.compare_with], medians["this checkout"]
            print(
                f"\nmedian CPU: {args.compare_with} {old:.2f} %, this checkout {new:.2f} % "
                f"({new / old:.2f}x)"
            )
        for run in runs:
            if run.errors_ms:
                print_freezes(run)


if __name__ == "__main__":
    main()

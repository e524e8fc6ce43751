"""Benchmark of the guest agent: its CPU cost, and how well its heartbeat times a freeze.

    .venv/bin/python bench/bench_guest_agent.py [--cpu-seconds 20] [--freezes 10] [--seed 1]

1. CPU: the agent captures a 1024x768 Xvfb screen (a clock redrawn 10 times
   a second, so every capture differs) once a second as PNG and sends 100
   heartbeats a second (version 2: each followed by the work unit) to a
   receiver on loopback; with ``--witnesses`` it also answers the direction
   probe and carries the TCP stream, both every 10 ms (every witness on);
   user+system CPU time of the agent process over ``--cpu-seconds``, as % of
   one core (from /proc/PID/stat, after a warm-up).
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
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
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


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench(
    display: str,
    run_dir: Path,
    cpu_window_s: float,
    freezes: int,
    seed: int,
    witnesses: float | None,
) -> None:
    token = new_token()
    receiver = GuestReceiver(run_dir, token=token)
    stop = asyncio.Event()
    rng = random.Random(seed)
    truths: list[tuple[int, int]] = []  # (stop mono ns, freeze ns)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(receiver.run(stop))
        await receiver.ready.wait()
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(AGENT), "--url", receiver.url, "--display", display,
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
            frames_before = receiver.stats.frames_stored
            beats_before = receiver.stats.heartbeats
            await asyncio.sleep(cpu_window_s)
            cpu_used = cpu_seconds(agent.pid) - cpu_before
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

    gaps = execution_gaps(load_heartbeats(run_dir), source=HEARTBEAT_SOURCE, min_gap_ms=100)
    errors, midpoint_errors, held = [], [], 0
    for stopped_at, freeze_ns in truths:
        gap = next(g for g in gaps if g.before_guest_mono_ns <= stopped_at <= g.after_guest_mono_ns)
        truth_ms = freeze_ns / 1e6
        errors.append(gap.gap_ms - truth_ms)
        midpoint_errors.append((gap.lower_ms + gap.upper_ms) / 2 - truth_ms)
        held += gap.lower_ms <= truth_ms <= gap.upper_ms

    print(f"agent: {out.decode().strip()}\n")
    print("| measure | value |")
    print("| --- | --- |")
    load = "1 frame/s PNG 1024x768 + 100 heartbeats/s (work unit each)"
    if witnesses:
        load += f" + direction probe and TCP stream every {1000 * witnesses:g} ms"
    print(f"| agent CPU, {load} | {100 * cpu_used / wall:.1f} % of one core |")
    print(f"| measured over | {wall:.1f} s ({frames} frames, {beats} heartbeats received) |")
    print(f"| agent RSS | {rss:.0f} MiB |")
    print(f"| freezes (SIGSTOP/SIGCONT, 0.2-2 s) | {len(truths)} |")
    print(
        f"| heartbeat gap - truth: mean / min / max | {statistics.mean(errors):.1f} / "
        f"{min(errors):.1f} / {max(errors):.1f} ms |"
    )
    print(
        f"| bounds midpoint - truth: mean / min / max | {statistics.mean(midpoint_errors):.1f} / "
        f"{min(midpoint_errors):.1f} / {max(midpoint_errors):.1f} ms |"
    )
    print(f"| truth within [lower, upper] | {held} of {len(truths)} |")


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
    args = parser.parse_args()
    with (
        XvfbDisplay(1024, 768) as xvfb,
        ScreenClock(xvfb.display, period_s=0.1),
        tempfile.TemporaryDirectory() as tmp,
    ):
        print(f"guest agent bench on {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
        asyncio.run(
            bench(
                xvfb.display,
                Path(tmp),
                args.cpu_seconds,
                args.freezes,
                args.seed,
                None if args.witnesses is None else args.witnesses / 1000,
            )
        )


if __name__ == "__main__":
    main()

"""Benchmark of the QEMU lab: set-up time, time per migration, and how QEMU's own
downtime compares with what a ping and the guest's heartbeat see.

    .venv/bin/python bench/bench_qemu.py [--migrations 5] [--json out.json]

Needs root and ``lab/qemu/setup.sh`` (run first if the images are missing).

1. ``lab.qemu.control.up`` / ``down`` (the daemon, as ``measure lab up``):
   wall time to a ready lab (guest answering, standby waiting) and to gone.
2. For an idle guest and a dirtying guest (64 MiB rewritten at 256 MiB/s,
   max-bandwidth 1 GiB/s so that it converges), at downtime limits of 10 ms
   and 300 ms: ``--migrations`` migrations back and forth, with ICMP every
   5 ms from the root namespace (``probes.icmp``, SCHED_FIFO) and the guest's
   100 Hz heartbeat into ``probes.guest_receiver``. Per migration: QEMU's
   ``downtime``, STOP->RESUME (QEMU's event timestamps), the ping blackout
   (gap between the replies around STOP), the heartbeat delivery gap, the
   migration's ``total-time``, the driver's wall time and the time until the
   next standby was ready.

Prints Markdown tables (median and range per scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from migration_blackout.harness.qemu.migration import MigrationResult, MigrationSettings, migrate  # noqa: E402
from migration_blackout.harness.qemu.qmp import QmpClient  # noqa: E402
from migration_blackout.lab.qemu import control  # noqa: E402
from migration_blackout.lab.qemu.artefacts import ensure_artefacts  # noqa: E402
from migration_blackout.lab.qemu.guest import GuestControl  # noqa: E402
from migration_blackout.probes.guest_receiver import GuestReceiver  # noqa: E402
from migration_blackout.probes.icmp import IcmpProbe  # noqa: E402
from migration_blackout.runformat import HEARTBEAT  # noqa: E402

PING_INTERVAL_S = 0.005
DIRTY_MIB = 64
DIRTY_RATE_MIB_S = 256
DIRTY_BANDWIDTH = 1 << 30


@dataclass(frozen=True)
class Scenario:
    name: str
    dirty: bool
    downtime_limit_ms: int


@dataclass
class Sample:
    scenario: str
    outcome: str
    downtime_ms: float | None
    stop_to_resume_ms: float | None
    ping_gap_ms: float | None
    pings_lost: int | None
    heartbeat_gap_ms: float | None
    total_time_ms: float | None
    driver_s: float
    next_ready_s: float


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        next(handle)
        return list(csv.DictReader(handle))


def gap_around(recv_ns: list[int], at_ns: int) -> float | None:
    """The gap between consecutive arrivals that spans ``at_ns`` (ms)."""
    before = [t for t in recv_ns if t <= at_ns + 2_000_000]
    after = [t for t in recv_ns if before and t > before[-1]]
    if not before or not after:
        return None
    return (after[0] - before[-1]) / 1e6


async def run_scenarios(
    state: control.QemuLabState, scenarios: list[Scenario], count: int, run_dir: Path
) -> list[Sample]:
    host, port = state.heartbeat_address
    icmp = IcmpProbe.create(
        run_dir / "raw" / "icmp.csv",
        targets=[state.guest_address],
        interval_s=PING_INTERVAL_S,
        realtime_priority=10,
    )
    receiver = GuestReceiver(run_dir, token=state.token, host=host, port=port)
    guest = GuestControl(state.guest_address, state.token, port=state.control_port)
    stop = asyncio.Event()
    results: list[tuple[Scenario, MigrationResult, float, float]] = []
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(icmp.run(stop))
            group.create_task(receiver.run(stop))
            try:
                await icmp.ready.wait()
                await receiver.ready.wait()
                async with asyncio.timeout(30):
                    await receiver.wait_until(lambda stats: stats.heartbeats > 50)
                for scenario in scenarios:
                    if scenario.dirty:
                        await guest.set_dirtier(DIRTY_MIB, DIRTY_RATE_MIB_S)
                    settings = MigrationSettings(
                        downtime_limit_ms=scenario.downtime_limit_ms,
                        max_bandwidth=DIRTY_BANDWIDTH if scenario.dirty else None,
                    )
                    for _ in range(count):
                        state = await control.wait_ready(state_dir=state.path.parent)
                        assert state.running is not None and state.standby is not None
                        source = await QmpClient.connect(state.running.qmp)
                        destination = await QmpClient.connect(state.standby.qmp)
                        begin = time.monotonic()
                        try:
                            result = await migrate(
                                source,
                                destination,
                                uri=state.standby.incoming_uri,
                                settings=settings,
                                timeout_s=30.0,
                            )
                        finally:
                            await source.close()
                            await destination.close()
                        driver_s = time.monotonic() - begin
                        await control.wait_ready(
                            state_dir=state.path.parent, after_serial=state.serial
                        )
                        next_ready_s = time.monotonic() - begin - driver_s
                        results.append((scenario, result, driver_s, next_ready_s))
                        await asyncio.sleep(0.3)  # a settle window between migrations
                    if scenario.dirty:
                        await guest.set_dirtier(0)
            finally:
                stop.set()
    finally:
        icmp.sink.close()
    pings = read_rows(run_dir / "raw" / "icmp.csv")
    replies = sorted(int(r["recv_mono_ns"]) for r in pings if r["outcome"] == "reply")
    heartbeats = sorted(int(r["recv_mono_ns"]) for r in read_rows(run_dir / HEARTBEAT.path))
    samples = []
    for scenario, result, driver_s, next_ready_s in results:
        ping_gap = hb_gap = None
        lost = None
        if result.stop is not None:
            at = result.stop.qemu_mono_ns
            ping_gap = gap_around(replies, at)
            hb_gap = gap_around(heartbeats, at)
            if ping_gap is not None:
                before = max(t for t in replies if t <= at + 2_000_000)
                lost = sum(
                    1
                    for r in pings
                    if r["outcome"] == "timeout"
                    and before < int(r["send_mono_ns"]) < before + ping_gap * 1e6
                )
        samples.append(
            Sample(
                scenario=scenario.name,
                outcome=result.outcome,
                downtime_ms=result.downtime_ms,
                stop_to_resume_ms=result.stop_to_resume_ms,
                ping_gap_ms=ping_gap,
                pings_lost=lost,
                heartbeat_gap_ms=hb_gap,
                total_time_ms=result.total_time_ms,
                driver_s=driver_s,
                next_ready_s=next_ready_s,
            )
        )
    return samples


def summary(values: list[float | None], digits: int = 0) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    fmt = f"{{:.{digits}f}}"
    median = fmt.format(statistics.median(present))
    return f"{median} ({fmt.format(min(present))}-{fmt.format(max(present))})"


def print_tables(setup: dict[str, float], samples: list[Sample], scenarios: list[Scenario]) -> None:
    print(f"QEMU lab: up {setup['up_s']:.1f} s, down {setup['down_s']:.1f} s\n")
    print(
        "| scenario | completed | QEMU downtime ms | STOP->RESUME ms | ping blackout ms "
        "| pings lost | heartbeat gap ms | total-time ms | driver s | next standby s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for scenario in scenarios:
        mine = [s for s in samples if s.scenario == scenario.name]
        done = [s for s in mine if s.outcome == "completed"]
        lost = [None if s.pings_lost is None else float(s.pings_lost) for s in done]
        print(
            f"| {scenario.name} | {len(done)}/{len(mine)} "
            f"| {summary([s.downtime_ms for s in done])} "
            f"| {summary([s.stop_to_resume_ms for s in done])} "
            f"| {summary([s.ping_gap_ms for s in done])} "
            f"| {summary(lost)} "
            f"| {summary([s.heartbeat_gap_ms for s in done])} "
            f"| {summary([s.total_time_ms for s in done])} "
            f"| {summary([s.driver_s for s in mine], 2)} "
            f"| {summary([s.next_ready_s for s in mine], 2)} |"
        )
    print("\nper migration (ms): downtime / STOP->RESUME / ping blackout")
    for scenario in scenarios:
        row = [
            f"{s.downtime_ms}/{s.stop_to_resume_ms or float('nan'):.0f}/"
            f"{s.ping_gap_ms or float('nan'):.0f}"
            if s.outcome == "completed"
            else s.outcome
            for s in samples
            if s.scenario == scenario.name
        ]
        print(f"  {scenario.name}: {', '.join(row)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--migrations", type=int, default=5, help="per scenario")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = parser.parse_args()
    ensure_artefacts()
    scenarios = [
        Scenario("idle, limit 10 ms", False, 10),
        Scenario("idle, limit 300 ms", False, 300),
        Scenario(f"dirty {DIRTY_MIB} MiB @ {DIRTY_RATE_MIB_S} MiB/s, limit 10 ms", True, 10),
        Scenario(f"dirty {DIRTY_MIB} MiB @ {DIRTY_RATE_MIB_S} MiB/s, limit 300 ms", True, 300),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-qemu-") as tmp:
        state_dir = Path(tmp) / "lab"
        begin = time.monotonic()
        state, _ = control.up(state_dir=state_dir)
        up_s = time.monotonic() - begin
        try:
            samples = asyncio.run(
                run_scenarios(state, scenarios, args.migrations, Path(tmp) / "run")
            )
        finally:
            begin = time.monotonic()
            control.down(state_dir=state_dir)
            down_s = time.monotonic() - begin
    setup = {"up_s": up_s, "down_s": down_s}
    print_tables(setup, samples, scenarios)
    if args.json is not None:
        document: dict[str, Any] = {"setup": setup, "samples": [vars(s) for s in samples]}
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

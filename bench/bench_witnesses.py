"""The new witnesses against the emulated lab's truth, over random migrations.

Runs ``measure run --lab --guest-agent --witnesses --tcp-connect 3389
--repeat N --ping-pong`` (root) with a seeded lab whose inbound and outbound
come back at independent random times after the resume (so either may be
first, or both together), then compares, for each migration:

* the TCP connect outage (lower / upper) with the true pause -> both
  directions back (the link filter's edges);
* when inbound and outbound came back (the direction probe's edges, and the
  heartbeats' where the probes cannot tell) with the link filter's edges;
* the TCP stream's stall per direction with the time that direction was dark
  for the application (outbound: pause -> outbound back; inbound: the longer
  of the pause and resume -> inbound back, as what reached the guest before
  the pause waited in its socket), and how often TCP's backoff made the
  stall outlast the ICMP blackout;
* the brownout (the work rate's dip) with the lab's brownout_start ->
  brownout_end, and Hyper-V's 22508 brownout figure beside it.

Prints Markdown tables: the error of each figure in ms (mean / min / max)
and how often its bounds contain the truth.

    sudo .venv/bin/python bench/bench_witnesses.py [--repeat 8] [--seed 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from migration_blackout.analysis.brownout import analyse_work, load_work
from migration_blackout.analysis.direction import analyse_direction, load_udp_direction
from migration_blackout.analysis.guest import HEARTBEAT_SOURCE, analyse_stream, load_heartbeats
from migration_blackout.analysis.icmp import analyse_icmp
from migration_blackout.analysis.rundata import load_icmp, load_run
from migration_blackout.analysis.tcp import (
    analyse_connects,
    load_tcp_connect,
    load_tcp_stream,
)
from migration_blackout.analysis.tcp import (
    analyse_stream as analyse_tcp_stream,
)

REPO = Path(__file__).resolve().parent.parent

LAB = """
seed = {seed}
[vm]
memory_mb = 96
[timing]
transfer_rate_mb_s = 100
precopy_overhead = [0.8, 1.6]
paused_listed = [0.3, 1.2]
unlisted = [0.2, 0.8]
completion = 0.3
reconvergence_in = [0.2, 2.5]
reconvergence_out = [0.2, 2.5]
"""


def truth_events(run_dir: Path) -> dict[str, list[dict]]:
    events: dict[str, list[dict]] = {}
    for line in (run_dir / "raw" / "ground_truth.jsonl").read_text().splitlines()[1:]:
        event = json.loads(line)
        events.setdefault(event["event"], []).append(event)
    return events


def brownout_22508(run_dir: Path) -> float | None:
    """Hyper-V's brownout figure (22508, seconds) as harvested from the host."""
    path = run_dir / "raw" / "hyperv_events.jsonl"
    for line in path.read_text().splitlines()[1:]:
        event = json.loads(line)
        if event.get("id") == 22508 and event.get("event_data"):
            return float(event["event_data"].get("Parameter2"))
    return None


class Table:
    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, bool | None]]] = {}

    def add(self, name: str, error_ms: float, contained: bool | None) -> None:
        self.rows.setdefault(name, []).append((error_ms, contained))

    def print(self) -> None:
        print("| figure | mean error | min | max | bounds contain the truth |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, values in self.rows.items():
            errors = [e for e, _ in values]
            held = [c for _, c in values if c is not None]
            contained = f"{sum(held)}/{len(held)}" if held else "-"
            print(
                f"| {name} | {statistics.mean(errors):+.1f} | {min(errors):+.1f} | "
                f"{max(errors):+.1f} | {contained} |"
            )


def analyse(run_dir: Path, table: Table, facts: dict[str, int]) -> None:
    truth = truth_events(run_dir)
    pause = truth["pause"][0]
    resume = truth["resume"][0]["mono_ns"]
    link = {e["direction"]: e for e in truth["link_restored"]}
    dark_from = (pause["link_before_mono_ns"], pause["link_after_mono_ns"])
    later = max(link.values(), key=lambda e: e["link_before_mono_ns"])
    order = (
        "together"
        if link["inbound"]["mono_ns"] == link["outbound"]["mono_ns"]
        else (
            "inbound first"
            if link["inbound"]["mono_ns"] < link["outbound"]["mono_ns"]
            else "outbound first"
        )
    )
    facts[order] = facts.get(order, 0) + 1

    (port,) = analyse_connects(load_tcp_connect(run_dir))
    outage = port.longest
    assert outage is not None and outage.upper_ms is not None
    lo = (later["link_before_mono_ns"] - dark_from[1]) / 1e6
    hi = (later["link_after_mono_ns"] - dark_from[0]) / 1e6
    mid = (lo + hi) / 2
    inside = outage.lower_ms <= hi and lo <= outage.upper_ms
    table.add(
        "TCP connect, lower bound vs pause -> both directions back", outage.lower_ms - mid, inside
    )
    table.add(
        "TCP connect, upper bound vs pause -> both directions back", outage.upper_ms - mid, inside
    )

    heartbeats = load_heartbeats(run_dir)
    _, rows = load_udp_direction(run_dir)
    direction = analyse_direction(rows, heartbeats=heartbeats).longest
    assert direction is not None
    for name, edge in (
        ("inbound", direction.inbound_restored),
        ("outbound", direction.outbound_restored),
    ):
        event = link[name]
        if edge is None:
            table.add(f"{name} back (no edge found)", 0.0, False)
            continue
        truth_mid = (event["link_before_mono_ns"] + event["link_after_mono_ns"]) / 2
        inside = (
            edge.after_mono_ns <= event["link_after_mono_ns"]
            and event["link_before_mono_ns"] <= edge.by_mono_ns
        )
        table.add(
            f"{name} back, edge midpoint ({edge.source})",
            (edge.mid_mono_ns - truth_mid) / 1e6,
            inside,
        )

    header, stream_rows = load_tcp_stream(run_dir)
    stream = analyse_tcp_stream(stream_rows, interval_s=float(header["interval_s"]))
    facts["stream survived"] = facts.get("stream survived", 0) + stream.survived
    out_dark = (link["outbound"]["link_before_mono_ns"] - dark_from[1]) / 1e6
    in_dark = max(resume - dark_from[1], link["inbound"]["link_before_mono_ns"] - resume) / 1e6
    if stream.outbound is not None:
        table.add(
            "TCP stream outbound stall - time outbound was dark",
            stream.outbound.stall_ms - out_dark,
            stream.outbound.upper_ms >= out_dark,
        )
    if stream.inbound is not None:
        table.add(
            "TCP stream inbound stall - time inbound was dark to the guest",
            stream.inbound.stall_ms - in_dark,
            stream.inbound.upper_ms >= in_dark - stream.interval_ms,
        )
    icmp = analyse_icmp(load_icmp(load_run(run_dir)).frame).blackout
    stall = stream.stall
    if icmp is not None and icmp.upper_ms is not None and stall is not None:
        beyond = stall.lower_ms - icmp.upper_ms
        facts["stall beyond the ICMP blackout (> 100 ms)"] = facts.get(
            "stall beyond the ICMP blackout (> 100 ms)", 0
        ) + (beyond > 100)
        table.add(
            "TCP stall - ICMP blackout estimate (backoff)",
            stall.stall_ms - (icmp.lower_ms + icmp.upper_ms) / 2,
            None,
        )

    # The decomposition (derived/summary.json): the resume it found and the
    # reconvergence figures measured from it, against resume -> link back.
    decomposition = json.loads((run_dir / "derived" / "summary.json").read_text())["decomposition"]
    guest_gap = decomposition.get("guest_execution_gap")
    if guest_gap is not None and guest_gap.get("end"):
        end = guest_gap["end"]
        facts[f"resume from {guest_gap['source']}"] = (
            facts.get(f"resume from {guest_gap['source']}", 0) + 1
        )
        table.add(
            f"resume (end of the guest gap, {guest_gap['source']}) vs the lab's resume",
            (end["t_mono_ns"] - resume) / 1e6,
            end["lo_mono_ns"] <= resume <= end["hi_mono_ns"],
        )
    for name, event in (
        ("network_reconvergence", later),
        ("inbound_reconvergence", link["inbound"]),
        ("outbound_reconvergence", link["outbound"]),
    ):
        figure = decomposition.get(name)
        if figure is None or figure.get("upper_ms") is None:
            continue
        lo = (event["link_before_mono_ns"] - resume) / 1e6
        hi = (event["link_after_mono_ns"] - resume) / 1e6
        target = "both directions back" if name == "network_reconvergence" else "it came back"
        table.add(
            f"{name} (midpoint) vs resume -> {target}",
            (figure["lower_ms"] + figure["upper_ms"]) / 2 - (lo + hi) / 2,
            figure["lower_ms"] <= hi and lo <= figure["upper_ms"],
        )

    gap = analyse_stream(heartbeats, source=HEARTBEAT_SOURCE).execution_gap
    work = analyse_work(
        load_work(run_dir),
        gap_start_guest_mono_ns=None if gap is None else gap.before_guest_mono_ns,
    )
    (start,), (end,) = truth["brownout_start"], truth["brownout_end"]
    truth_ms = (end["mono_ns"] - start["mono_ns"]) / 1e6
    if work is None or work.brownout is None:
        table.add("brownout (none found)", -truth_ms, False)
    else:
        brownout = work.brownout
        table.add(
            "brownout duration vs brownout_start -> brownout_end",
            brownout.duration_ms - truth_ms,
            brownout.lower_ms <= truth_ms <= brownout.upper_ms,
        )
        facts["brownout rate (sum)"] = facts.get("brownout rate (sum)", 0) + brownout.rate  # type: ignore[assignment]
        reported = brownout_22508(run_dir)
        if reported is not None:
            table.add(
                "Hyper-V 22508 brownout (0.1 s) - measured brownout",
                reported * 1000 - brownout.duration_ms,
                None,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument(
        "--results",
        type=Path,
        help="keep the run folders here (and analyse them again with --only)",
    )
    parser.add_argument("--only", action="store_true", help="analyse --results, run nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = Path(tmp) / "lab.toml"
        lab.write_text(LAB.format(seed=args.seed))
        out = args.results or Path(tmp) / "results"
        proc = None if args.only else subprocess.run(
            [
                sys.executable, "-m", "migration_blackout.harness.cli", "run",
                "--lab-config", str(lab), "--guest-agent", "--agent-interval", "0.5",
                "--witnesses", "--tcp-connect", "3389", "--settle", "6",
                "--repeat", str(args.repeat), "--ping-pong", "--out", str(out),
            ],
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "MEASURE_LAB_DIR": str(Path(tmp) / "lab-state")},
        )  # fmt: skip
        if proc is not None and proc.returncode != 0:
            sys.exit(f"measure run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        table = Table()
        facts: dict[str, int] = {}
        runs = sorted(out.glob("*/*-run-*"))
        for run_dir in runs:
            analyse(run_dir, table, facts)
    print(
        f"{len(runs)} migrations (seed {args.seed}), witnesses every 10 ms, connects every 50 ms\n"
    )
    table.print()
    print()
    rate = facts.pop("brownout rate (sum)", 0)
    for name, count in facts.items():
        print(f"- {name}: {count} of {len(runs)}")
    print(f"- brownout work rate, mean: {rate / len(runs):.2f}")


if __name__ == "__main__":
    main()

"""Every witness against the emulated lab's truth, over a session of migrations.

Runs ``measure run --lab --guest-agent --repeat N --ping-pong`` (root) with a
random lab (seeded), then compares, for each migration:

* ICMP blackout (lower / upper / estimate) with the true pause -> network restored;
* the host-poll window with the true pause -> resume;
* Hyper-V's 20415 figure with the true pause -> resume;
* the guest agent's heartbeat gap with the true pause -> resume.

Prints a Markdown table: mean / min / max error of each figure in ms and how
often the bounds contain the truth.

    sudo .venv/bin/python bench/bench_lab_accuracy.py [--repeat 8] [--interval-ms 5]
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

REPO = Path(__file__).resolve().parent.parent

LAB = """
seed = {seed}
[vm]
memory_mb = 96
[timing]
transfer_rate_mb_s = 100
precopy_overhead = 0.5
paused_listed = [0.3, 1.2]
unlisted = [0.2, 0.8]
completion = 0.3
network_reconvergence = [0.3, 1.5]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = Path(tmp) / "lab.toml"
        lab.write_text(LAB.format(seed=args.seed))
        out = Path(tmp) / "results"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "migration_blackout.harness.cli",
                "run",
                "--lab-config",
                str(lab),
                "--guest-agent",
                "--agent-interval",
                "0.5",
                "--interval-ms",
                str(args.interval_ms),
                "--settle",
                "1",
                "--repeat",
                str(args.repeat),
                "--ping-pong",
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "MEASURE_LAB_DIR": str(Path(tmp) / "lab-state")},
        )
        summaries = [
            json.loads(p.read_text()) for p in sorted(out.glob("*/*/derived/summary.json"))
        ]
    rows: dict[str, list[tuple[float, bool]]] = {}

    def add(name: str, value: float | None, truth: float, lower: float, upper: float) -> None:
        if value is not None:
            rows.setdefault(name, []).append((value - truth, lower <= truth <= upper))

    for summary in summaries:
        truth = summary["ground_truth"]
        outage, pause = truth["pause_to_network_restored_ms"], truth["pause_to_resume_ms"]
        blackout = summary["blackout"]
        for figure in ("lower_ms", "upper_ms", "estimate_ms"):
            add(
                f"ICMP {figure[:-3]} vs pause->network",
                blackout[figure],
                outage,
                blackout["lower_ms"],
                blackout["upper_ms"],
            )
        host = summary["hyperv"]["host_blackout"]
        add(
            "host polls (middle) vs pause->resume",
            (host["lower_ms"] + host["upper_ms"]) / 2,
            pause,
            host["lower_ms"],
            host["upper_ms"],
        )
        reported = summary["hyperv"]["reported"]["blackout_s"] * 1000
        add("Hyper-V 20415 vs pause->resume", reported, pause, reported - 50, reported + 100)
        gap = summary["guest"]["execution_gap"]
        add(
            "heartbeat gap vs pause->resume", gap["gap_ms"], pause, gap["lower_ms"], gap["upper_ms"]
        )
    print(
        f"{len(summaries)} migrations, ICMP every {args.interval_ms:g} ms, heartbeat 100 Hz,"
        " host polls 10 Hz"
    )
    print()
    print("| figure | mean error ms | min | max | bounds contain the truth |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in rows.items():
        errors = [e for e, _ in values]
        contained = sum(1 for _, c in values if c)
        print(
            f"| {name} | {statistics.mean(errors):+.2f} | {min(errors):+.2f} | "
            f"{max(errors):+.2f} | {contained}/{len(values)} |"
        )


if __name__ == "__main__":
    main()

"""Benchmark: analyse one hour of 1 kHz ICMP records (3.6 M rows) from a real raw/icmp.csv.

    .venv/bin/python bench/bench_analysis.py [--seconds 3600] [--rate 1000] [--repeat 3]
                                             [--keep DIR]

Writes a run folder (format v1) with a realistic raw/icmp.csv: send lateness
like a timerfd schedule (~60 us p50, rare 0.3-0.9 ms hiccups), rows in the order
attempts resolve, a 1.2 s + 0-10 ms blackout half-way, a few short outages
(timeouts, a burst of unreachable, local send errors), duplicate and late
replies, and an unresolved tail. Each measurement then runs in a fresh
interpreter so that page faults and peak RSS are those of a real
``measure summarize``-style process:

* load: ``load_run`` + ``load_icmp`` (pandas C parser, the analysis columns);
* analysis: ``analyse_icmp`` on the loaded frame;
* summary document: turning the result into the summary dict;
* build_summary (end to end): the public call, in its own fresh process;
* peak RSS (ru_maxrss) of that process, and its RSS after the imports;
* tracemalloc peak of ``build_summary`` (Python + numpy allocations).

If pyarrow happens to be importable, it also times ``read_csv(engine="pyarrow")``
on the same file for comparison (pyarrow is not a dependency).
Prints a Markdown table. Generation (~10-20 s for an hour) is not timed;
``--keep DIR`` keeps the folder and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET = "10.0.0.2"
MS = 1_000_000
MONO0 = 86_400 * 1_000 * MS  # one day of uptime
UTC0 = 1_795_611_600_000_000_000  # 2026-11-25T13:00:00Z
TIMEOUT_S = 1.0
BLACKOUT_AT_S = 1800.0


def generate(run: Path, *, seconds: float, rate_hz: float, seed: int = 20261125) -> dict[str, Any]:
    """Write ``run`` (manifest + raw/icmp.csv); returns what was injected."""
    from migration_blackout.runformat import ICMP

    rng = np.random.default_rng(seed)
    interval_ns = round(1e9 / rate_hz)
    count = int(seconds * rate_hz)
    n = np.arange(count, dtype=np.int64)
    # timerfd-like lateness: gamma around 60 us, plus rare hiccups; stays below one
    # interval at 1 kHz so sends keep their order.
    lateness = rng.gamma(2.0, 30_000.0, count)
    hiccups = rng.random(count) < 1e-4
    lateness[hiccups] += rng.uniform(300_000, 900_000, int(hiccups.sum()))
    lateness = np.minimum(lateness, 0.95 * interval_ns).astype(np.int64)
    send = MONO0 + n * interval_ns + lateness

    outcome = np.full(count, "reply", dtype=object)
    blackout_ns = round(1.2e9 + rng.uniform(0, 10e6))
    blackout_start = MONO0 + round(BLACKOUT_AT_S * 1e9) + int(rng.integers(0, interval_ns))
    in_blackout = (send >= blackout_start) & (send < blackout_start + blackout_ns)
    outcome[in_blackout] = "timeout"
    # Short outages elsewhere: single and double drops, a 40 ms unreachable burst
    # (a route flapping), three local send failures.
    for at_s, length in ((300.0, 1), (900.5, 2), (2400.25, 1), (3000.75, 3), (3300.1, 1)):
        first = int(at_s * rate_hz)
        outcome[first : first + length] = "timeout"
    burst = int(1200.0 * rate_hz)
    outcome[burst : burst + int(0.04 * rate_hz)] = "unreachable"
    for at_s in (600.0, 601.5, 2700.0):
        outcome[int(at_s * rate_hz)] = "error"
    outcome[-3:] = "unresolved"

    rtt = (250_000 + rng.gamma(2.0, 50_000.0, count)).astype(np.int64)
    is_reply = outcome == "reply"
    resolve = np.where(is_reply, send + rtt, send + int(TIMEOUT_S * 1e9))
    resolve = np.where(outcome == "unreachable", send + 2 * MS, resolve)
    resolve = np.where(outcome == "error", send, resolve)
    resolve = np.where(outcome == "unresolved", send[-1] + int(TIMEOUT_S * 1e9), resolve)

    # Extra rows: 20 duplicate replies, late replies to the blackout's last 5 probes.
    duplicate_of = np.sort(rng.choice(np.flatnonzero(is_reply), 20, replace=False))
    late_of = np.flatnonzero(in_blackout)[-5:]
    extra_of = np.concatenate([duplicate_of, late_of])
    extra_outcome = np.array(
        ["duplicate"] * len(duplicate_of) + ["late"] * len(late_of), dtype=object
    )
    extra_recv = np.concatenate(
        [send[duplicate_of] + rtt[duplicate_of] + 80_000, send[late_of] + int(1.3e9)]
    )

    all_n = np.concatenate([n, extra_of])
    all_outcome = np.concatenate([outcome, extra_outcome])
    all_send = np.concatenate([send, send[extra_of]])
    all_recv = np.concatenate([np.where(is_reply, send + rtt, -1), extra_recv])
    all_resolve = np.concatenate([resolve, extra_recv])
    order = np.argsort(all_resolve, kind="stable")

    meta = {"interval_s": 1.0 / rate_hz, "timeout_s": TIMEOUT_S, "targets": [TARGET]}
    header = {"format": "csv", "probe": "icmp", "schema_version": 1, **meta}
    path = run / "raw" / "icmp.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8", newline="") as raw:
        raw.write("# " + json.dumps(header, sort_keys=True) + "\n")
        raw.write(",".join(ICMP.columns) + "\n")
        for chunk in np.array_split(order, max(1, len(order) // 200_000)):
            raw.write(
                _csv_lines(all_n[chunk], all_outcome[chunk], all_send[chunk], all_recv[chunk])
            )
    manifest = {
        "schema_version": 1,
        "run_id": "bench-1h-1khz",
        "status": "completed",
        "error": None,
        "started_utc": "2026-11-25T13:00:00Z",
        "ended_utc": "2026-11-25T14:00:02Z",
        "targets": [TARGET],
        "config": {"icmp": {"interval_s": 1.0 / rate_hz, "timeout_s": TIMEOUT_S}},
        "probes": {"icmp": {"file": "raw/icmp.csv"}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {
        "rows": len(order),
        "attempts": count,
        "blackout_ms": blackout_ns / MS,
        "blackout_lost": int(in_blackout.sum()),
    }


def _csv_lines(n: np.ndarray, outcome: np.ndarray, send: np.ndarray, recv: np.ndarray) -> str:
    utc_shift = UTC0 - MONO0
    lines = []
    for n_i, outcome_i, send_i, recv_i in zip(
        n.tolist(), outcome.tolist(), send.tolist(), recv.tolist(), strict=True
    ):
        head = f"{TARGET},{n_i},{n_i & 0xFFFF},4242,{outcome_i},{send_i},{send_i + utc_shift},"
        if recv_i >= 0:
            tail = f"{recv_i},{recv_i + utc_shift},{recv_i - send_i},0,0,{TARGET},"
        elif outcome_i == "unreachable":
            tail = f"{send_i + 2 * MS},{send_i + 2 * MS + utc_shift},{2 * MS},3,1,10.0.0.254,"
        elif outcome_i == "error":
            tail = ",,,,,,sendto: [Errno 105] No buffer space available"
        else:
            tail = ",,,,,,"
        lines.append(head + tail)
    return "\n".join(lines) + "\n"


# --- measurement, in a fresh interpreter -------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure_stages(run: Path) -> dict[str, Any]:
    import resource

    started = time.perf_counter()
    from migration_blackout.analysis.icmp import analyse_icmp
    from migration_blackout.analysis.rundata import load_icmp, load_run, requested_icmp_interval_s
    from migration_blackout.analysis.summary import blackout_to_json, target_to_json

    imported = time.perf_counter()
    rss_after_imports = _rss_mb()
    folder = load_run(run)
    records = load_icmp(folder)
    assert records is not None
    loaded = time.perf_counter()
    analysis = analyse_icmp(
        records.frame,
        requested_interval_s=requested_icmp_interval_s(folder, records),
        targets=records.targets,
    )
    analysed = time.perf_counter()
    document: dict[str, Any] = {
        "icmp": {t.target: target_to_json(t) for t in analysis.targets},
        "blackout": None if analysis.blackout is None else blackout_to_json(analysis.blackout),
    }
    json.dumps(document)
    documented = time.perf_counter()
    return {
        "imports_s": imported - started,
        "load_s": loaded - imported,
        "analysis_s": analysed - loaded,
        "document_s": documented - analysed,
        "rss_after_imports_mb": rss_after_imports,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "blackout": document["blackout"],
        "target": document["icmp"][TARGET] | {"outages": len(document["icmp"][TARGET]["outages"])},
    }


def measure_build_summary(run: Path, *, trace: bool) -> dict[str, Any]:
    import resource
    import tracemalloc

    from migration_blackout.analysis.summary import build_summary

    rss_after_imports = _rss_mb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    build_summary(run)
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "build_summary_s": elapsed,
        "rss_after_imports_mb": rss_after_imports,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if trace:
        result["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    return result


def measure_pyarrow_read(run: Path) -> dict[str, Any]:
    import pandas as pd

    from migration_blackout.analysis.rundata import _ICMP_DTYPES, ICMP_ANALYSIS_COLUMNS

    columns = list(ICMP_ANALYSIS_COLUMNS)
    started = time.perf_counter()
    pd.read_csv(
        run / "raw" / "icmp.csv",
        skiprows=1,
        engine="pyarrow",
        usecols=columns,
        dtype={c: _ICMP_DTYPES[c] for c in columns},
    )
    return {"pyarrow_read_s": time.perf_counter() - started}


def _child(mode: str, run: Path, *options: str) -> dict[str, Any]:
    # Every step runs in its own interpreter: Linux carries a process's peak RSS
    # over fork + exec, so a parent that had generated 3.6 M rows would inflate
    # its children's ru_maxrss.
    completed = subprocess.run(
        [sys.executable, __file__, *options, "--child", mode, str(run)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _stat(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} | {min(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="probes per second")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the run folder here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, run = args.child[0], Path(args.child[1])
        if mode == "generate":
            result = generate(run, seconds=args.seconds, rate_hz=args.rate)
        elif mode == "stages":
            result = measure_stages(run)
        elif mode == "pyarrow":
            result = measure_pyarrow_read(run)
        else:
            result = measure_build_summary(run, trace=mode == "trace")
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as scratch:
        run = args.keep or Path(scratch) / "run"
        injected: dict[str, Any] | None = None
        generation = "reused an existing run folder"
        if not (run / "manifest.json").exists():
            started = time.perf_counter()
            injected = _child(
                "generate", run, "--seconds", str(args.seconds), "--rate", str(args.rate)
            )
            generation = f"generation {time.perf_counter() - started:.1f} s (not timed below)"
        load_before = os.getloadavg()
        size_mb = (run / "raw" / "icmp.csv").stat().st_size / 2**20

        stages = [_child("stages", run) for _ in range(args.repeat)]
        totals = [_child("summary", run) for _ in range(args.repeat)]
        traced = _child("trace", run)
        try:
            import pyarrow  # noqa: F401

            pyarrow_reads: list[dict[str, Any]] | None = [
                _child("pyarrow", run) for _ in range(args.repeat)
            ]
        except ImportError:
            pyarrow_reads = None
        load_after = os.getloadavg()

    first = stages[0]
    blackout, target = first["blackout"], first["target"]
    print(f"# bench_analysis: {target['sent']:,} attempts, {size_mb:.0f} MiB raw/icmp.csv\n")
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"fresh process per measurement, {args.repeat} repeats; {generation}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n"
    )
    print("| stage | median s | min s |")
    print("| --- | ---: | ---: |")
    for key, label in (
        ("imports_s", "import analysis (pandas, numpy)"),
        ("load_s", "load: manifest + read_csv (C engine, in chunks, 5 of 14 columns)"),
        ("analysis_s", "analysis: analyse_icmp"),
        ("document_s", "summary document (dict + json.dumps)"),
    ):
        print(f"| {label} | {_stat([s[key] for s in stages])} |")
    load_plus = [s["load_s"] + s["analysis_s"] + s["document_s"] for s in stages]
    print(f"| **load + analysis + document** | {_stat(load_plus)} |")
    print(f"| **build_summary end to end** | {_stat([t['build_summary_s'] for t in totals])} |")
    if pyarrow_reads is not None:
        print(
            "| (comparison) read_csv engine=pyarrow, same columns | "
            f"{_stat([p['pyarrow_read_s'] for p in pyarrow_reads])} |"
        )
    print()
    print("| memory | MiB |")
    print("| --- | ---: |")
    print(f"| RSS after imports | {totals[0]['rss_after_imports_mb']:.0f} |")
    peak_rss = max(t["peak_rss_mb"] for t in totals)
    print(f"| peak RSS of a build_summary process (ru_maxrss) | {peak_rss:.0f} |")
    print(f"| tracemalloc peak inside build_summary | {traced['tracemalloc_peak_mb']:.0f} |")
    print()
    print("| check | value |")
    print("| --- | --- |")
    if injected is not None:
        print(
            f"| injected blackout | {injected['blackout_ms']:.3f} ms, "
            f"{injected['blackout_lost']} probes |"
        )
    print(
        f"| found blackout ({blackout['source']}) | lower {blackout['lower_ms']} ms, "
        f"upper {blackout['upper_ms']} ms, estimate {blackout['estimate_ms']} ms, "
        f"{blackout['lost']} lost |"
    )
    interval = target["interval_ms"]
    print(
        f"| counts | {target['replies']:,} replies, {target['timeouts']} timeouts, "
        f"{target['unreachable']} unreachable, {target['errors']} errors, "
        f"{target['unresolved']} unresolved, {target['duplicates']} duplicates, "
        f"{target['late']} late, {target['outages']} outages |"
    )
    print(
        f"| interval | median {interval['achieved_median']} ms, jitter p99 "
        f"{interval['jitter_p99']} ms, rate ratio {target['achieved_rate_ratio']} |"
    )


if __name__ == "__main__":
    main()

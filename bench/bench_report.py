"""Benchmark: ``measure report`` over 100 run folders (target: under a minute).

    .venv/bin/python bench/bench_report.py [--runs 100] [--seconds 30] [--interval-ms 10]
                                           [--repeat 3] [--keep DIR]

Writes ``--runs`` run folders (format v1) with ``tests/data/make_report_runs.py``
(raw/icmp.csv through the prober's own CsvSink): ``--seconds`` of probes every
``--interval-ms`` around a ~1 s blackout, directions alternating HV-A -> HV-B and
HV-B -> HV-A. Then, each in a fresh interpreter (imports included, as a user's
``measure report`` pays them), ``harness.commands.report.run`` with HTML, Markdown
and JUnit outputs and both thresholds set:

* cold: no derived/summary.json yet, so every summary is built from raw/ and written;
* warm: every summary present;
* baseline: the first half of the runs as baseline of the second half (warm), so the
  regression test runs per direction (exact Mann-Whitney U at 25 x 25).

Prints a Markdown table: wall time of each process (interpreter start, imports,
run()), the imports and run() inside it, and in one more process per repeat the
stages one by one.
Generation is not timed; ``--keep DIR`` keeps the folders and reuses them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _generator() -> Any:
    path = REPO / "tests" / "data" / "make_report_runs.py"
    spec = importlib.util.spec_from_file_location("make_report_runs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(parent: Path, *, runs: int, seconds: float, interval_ms: float) -> list[Path]:
    import numpy as np

    write_run = _generator().write_run
    rng = np.random.default_rng(20261125)
    folders = []
    for i in range(runs):
        blackout = float(rng.normal(1000.0, 50.0))
        around = max(0.0, seconds * 1000.0 - blackout) / 2
        forward = i % 2 == 0
        folders.append(
            write_run(
                parent / f"run-{i:03d}",
                blackout_ms=blackout,
                interval_ms=interval_ms,
                before_ms=around,
                after_ms=around,
                phase_ms=float(rng.uniform(0, interval_ms)),
                lone_timeouts=int(rng.integers(0, 3)),
                source="HV-A" if forward else "HV-B",
                destination="HV-B" if forward else "HV-A",
                start_offset_s=600.0 * i,
            )
        )
    return folders


def _sets(parent: Path, mode: str) -> tuple[list[Path], list[Path]]:
    folders = sorted(p for p in parent.iterdir() if p.name.startswith("run-"))
    if mode == "baseline":
        half = len(folders) // 2
        return folders[half:], folders[:half]
    return folders, []


def measure_run(mode: str, parent: Path) -> dict[str, Any]:
    """In a fresh interpreter: the imports and run(), as ``measure report`` does them."""
    started = time.perf_counter()
    from migration_blackout.harness.commands.report import run
    from migration_blackout.runformat import Thresholds

    imported = time.perf_counter()
    candidate, baseline = _sets(parent, mode)
    out = parent / f"out-{mode}"
    out.mkdir(exist_ok=True)
    result = run(
        run_dirs=candidate,
        baseline_dirs=baseline,
        html=out / "report.html",
        markdown=out / "report.md",
        junit=out / "report.xml",
        thresholds=Thresholds(max_blackout_ms=1200.0, max_timeouts=130),
    )
    finished = time.perf_counter()
    report = result.report
    assert report is not None, result.error
    return {
        "imports_s": imported - started,
        "run_s": finished - imported,
        "exit_code": result.exit_code,
        "checks": len(report.checks),
        "failed": len(report.failed_checks),
        "regressions": [(r.direction, r.result.verdict.value) for r in report.regressions],
        "html_kib": (out / "report.html").stat().st_size / 1024,
        "markdown_kib": (out / "report.md").stat().st_size / 1024,
        "junit_kib": (out / "report.xml").stat().st_size / 1024,
    }


def measure_stages(parent: Path) -> dict[str, Any]:
    """In a fresh interpreter: the report's stages one by one (summaries on disk)."""
    from migration_blackout.analysis import report as report_module

    candidate, baseline = _sets(parent, "baseline")
    thresholds = report_module.Thresholds(max_blackout_ms=1200.0, max_timeouts=130)
    t0 = time.perf_counter()
    report = report_module.build_report(candidate, baseline_dirs=baseline, thresholds=thresholds)
    t1 = time.perf_counter()
    report_module.render_markdown(report)
    t2 = time.perf_counter()
    report_module.render_junit(report)
    t3 = time.perf_counter()
    report_module.render_html(report)
    t4 = time.perf_counter()
    return {"build_s": t1 - t0, "markdown_s": t2 - t1, "junit_s": t3 - t2, "html_s": t4 - t3}


def _child(mode: str, parent: Path) -> dict[str, Any]:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(parent)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def _drop_summaries(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder / "derived", ignore_errors=True)


def _stat(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="probing time per run")
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the run folders here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, parent = args.child[0], Path(args.child[1])
        result = measure_stages(parent) if mode == "stages" else measure_run(mode, parent)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        parent = args.keep or Path(scratch)
        parent.mkdir(parents=True, exist_ok=True)
        folders = sorted(p for p in parent.iterdir() if p.name.startswith("run-"))
        generation = "reused existing run folders"
        if not folders:
            started = time.perf_counter()
            folders = generate(
                parent, runs=args.runs, seconds=args.seconds, interval_ms=args.interval_ms
            )
            generation = f"generation {time.perf_counter() - started:.1f} s (not timed)"
        raw_mib = sum((f / "raw" / "icmp.csv").stat().st_size for f in folders) / 2**20
        load_before = os.getloadavg()
        cold = []
        for _ in range(args.repeat):
            _drop_summaries(folders)
            cold.append(_child("cold", parent))
        warm = [_child("warm", parent) for _ in range(args.repeat)]
        baseline = [_child("baseline", parent) for _ in range(args.repeat)]
        stages = [_child("stages", parent) for _ in range(args.repeat)]
        load_after = os.getloadavg()

    print(f"# bench_report: {len(folders)} run folders, {raw_mib:.1f} MiB of raw/icmp.csv\n")
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.seconds:g} s per run at {args.interval_ms:g} ms; fresh process per measurement, "
        f"{args.repeat} repeats; {generation}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after\n"
    )
    print("| measurement | median s | min s | max s |")
    print("| --- | ---: | ---: | ---: |")
    rows = (
        ("cold", cold, "summaries built from raw/ and written"),
        ("warm", warm, "summaries read"),
        ("baseline", baseline, "half as baseline of the other half; summaries read"),
    )
    for name, results, what in rows:
        print(
            f"| **{name}** ({what}): whole process | {_stat([r['process_s'] for r in results])} |"
        )
        print(f"| {name}: imports | {_stat([r['imports_s'] for r in results])} |")
        runs = [r["run_s"] for r in results]
        print(f"| {name}: run() writing HTML + Markdown + JUnit | {_stat(runs)} |")
    for key, label in (
        ("build_s", "build_report (baseline set, summaries read)"),
        ("html_s", "render_html (2 PNG plots)"),
        ("markdown_s", "render_markdown"),
        ("junit_s", "render_junit"),
    ):
        print(f"| stage: {label} | {_stat([r[key] for r in stages])} |")
    first, last = warm[0], baseline[0]
    print()
    print("| check | value |")
    print("| --- | --- |")
    print(f"| exit code (warm / baseline) | {first['exit_code']} / {last['exit_code']} |")
    print(f"| checks (failed) | {first['checks']} ({first['failed']}) |")
    print(f"| regression verdicts | {last['regressions']} |")
    print(
        f"| output sizes | HTML {first['html_kib']:.0f} KiB, Markdown {first['markdown_kib']:.0f} "
        f"KiB, JUnit {first['junit_kib']:.0f} KiB |"
    )


if __name__ == "__main__":
    main()

"""Benchmark: ``measure import ping-log`` of a large log, time and peak memory.

    .venv/bin/python bench/bench_import.py [--megabytes 200] [--repeat 2]
                                           [--compare-with DIR] [--keep FILE]

Writes an iputils ``ping -D -O`` log of ``--megabytes`` (replies every 1 ms,
with an outage of 2 s every 10 s, as ``no answer yet`` lines, and the
banner and summary of a whole run), then imports it with the CLI in a fresh
interpreter per repeat, and reports the wall time and the peak resident set
(``ru_maxrss`` of the child). ``--compare-with DIR`` imports the same log
with the migration-blackout checkout in ``DIR`` too (its ``migration_blackout``
package put first on ``PYTHONPATH``), alternating the two, for a side-by-side
ratio. Also: the two hostile inputs of issue 11 (a 4-line log whose summary
claims 100000000 packets, and ``/dev/zero``), each with a 2 GiB address
space limit and a 60 s deadline.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = "198.18.0.2"


def write_log(path: Path, megabytes: float) -> int:
    """An iputils log of about ``megabytes``; returns the number of lines."""
    limit = int(megabytes * 1_000_000)
    start = 1_764_000_000.0
    lines = 0
    with open(path, "w", encoding="utf-8") as log:
        log.write(f"PING {TARGET} ({TARGET}) 56(84) bytes of data.\n")
        seq = 1
        while log.tell() < limit:
            send = start + (seq - 1) * 0.001
            if (seq // 1000) % 10 in (4, 5):  # 2 s of every 10 s: the guest is dark
                log.write(f"[{send + 0.001:.6f}] no answer yet for icmp_seq={seq % 65536}\n")
            else:
                log.write(
                    f"[{send + 0.000321:.6f}] 64 bytes from {TARGET}: "
                    f"icmp_seq={seq % 65536} ttl=64 time=0.321 ms\n"
                )
            seq += 1
            lines += 1
        transmitted = seq - 1
        log.write(f"\n--- {TARGET} ping statistics ---\n")
        log.write(
            f"{transmitted} packets transmitted, {transmitted * 8 // 10} received, "
            f"20% packet loss, time {transmitted}ms\n"
        )
    return lines + 4


def import_once(
    log: Path, out: Path, checkout: Path | None, *, address_space: int | None = None
) -> dict[str, float | int | str]:
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH")) if p)

    def limit() -> None:
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "migration_blackout.harness.cli",
            "import",
            "ping-log",
            str(log),
            "--format",
            "iputils",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        preexec_fn=limit,
        cwd=out.parent,
    )
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return {
        "seconds": elapsed,
        # ru_maxrss of children is the largest of them so far (KiB on Linux).
        "peak_mib": max(before, after) / 1024,
        "exit": proc.returncode,
        "said": last[:120],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--compare-with", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        folder = Path(tmp)
        log = args.keep or folder / "ping.log"
        if not log.exists():
            lines = write_log(log, args.megabytes)
            print(f"log: {log.stat().st_size / 1e6:.0f} MB, {lines} lines")
        versions: list[tuple[str, Path | None]] = [("this checkout", None)]
        if args.compare_with is not None:
            versions.append((str(args.compare_with), args.compare_with))
        results: dict[str, list[dict[str, float | int | str]]] = {name: [] for name, _ in versions}
        for index in range(args.repeat):
            for name, checkout in versions if index % 2 == 0 else reversed(versions):
                # Each import in a process of its own: ru_maxrss is per process only
                # through this run's children, so measure one at a time.
                result = import_peak(log, folder / f"out-{index}-{len(results[name])}", checkout)
                results[name].append(result)
        print("| version | wall s (median) | peak RSS MiB (max) | exit |")
        print("| --- | ---: | ---: | --- |")
        for name, runs in results.items():
            print(
                f"| {name} | {statistics.median(float(r['seconds']) for r in runs):.1f} | "
                f"{max(float(r['peak_mib']) for r in runs):.0f} | "
                f"{', '.join(str(r['exit']) for r in runs)} |"
            )
        print()
        hostile = folder / "claims.log"
        hostile.write_text(
            f"PING {TARGET} ({TARGET}) 56(84) bytes of data.\n"
            f"[1764000000.000321] 64 bytes from {TARGET}: icmp_seq=1 ttl=64 time=0.321 ms\n"
            f"[1764000001.000321] 64 bytes from {TARGET}: icmp_seq=2 ttl=64 time=0.321 ms\n"
            "100000000 packets transmitted, 2 received, 99% packet loss, time 2000ms\n"
        )
        print("| hostile input (2 GiB address space, 60 s) | version | wall s | exit | said |")
        print("| --- | --- | ---: | --- | --- |")
        for label, path in (("100000000 packets transmitted", hostile), ("/dev/zero", None)):
            for name, checkout in versions:
                source = path if path is not None else Path("/dev/zero")
                try:
                    result = import_once(
                        source, folder / "hostile", checkout, address_space=2 << 30
                    )
                except subprocess.TimeoutExpired:
                    result = {"seconds": 600.0, "exit": "timeout", "said": ""}
                print(
                    f"| {label} | {name} | {float(result['seconds']):.1f} | {result['exit']} | "
                    f"{result['said']} |"
                )


def import_peak(log: Path, out: Path, checkout: Path | None) -> dict[str, float | int | str]:
    """One import in a child that reports its own peak RSS (getrusage(RUSAGE_SELF))."""
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH")) if p)
    script = (
        "import resource, sys, time\n"
        "from migration_blackout.harness.cli import main\n"
        "start = time.monotonic()\n"
        "code = 0\n"
        "try:\n"
        "    main(['import', 'ping-log', sys.argv[1], '--format', 'iputils',\n"
        "          '--out', sys.argv[2]])\n"
        "except SystemExit as end:\n"
        "    code = end.code\n"
        "print('RESULT', time.monotonic() - start,\n"
        "      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(log), str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=out.parent,  # not a checkout: PYTHONPATH decides which package is imported
    )
    found = [li for li in proc.stderr.splitlines() if li.startswith("RESULT")]
    if not found:
        raise RuntimeError(f"the import failed: {proc.stderr[-2000:]}")
    line = found[0]
    _, seconds, peak_kib, code = line.split()
    return {"seconds": float(seconds), "peak_mib": int(peak_kib) / 1024, "exit": code, "said": ""}


if __name__ == "__main__":
    main()

"""Run folders (format v1) with a chosen blackout, for the report tests and bench/bench_report.py.

Nothing written by this script is frozen: the report tests call ``write_run``
into a temporary folder on every run, and the bench writes 100 folders. From
the repository root::

    .venv/bin/python tests/data/make_report_runs.py OUT_DIR [--count 8] [--blackout-ms 1000]
                                                    [--noise-ms 30] [--seed 1]

writes OUT_DIR/<run-id>/ for ``count`` runs whose blackouts are drawn from a
normal distribution.

One target, the migrated guest 10.0.0.2, is probed every ``interval_ms`` for
``before_ms``, then through a blackout of ``blackout_ms`` starting
``phase_ms`` into a probe interval, then for ``after_ms``. A probe whose send
time falls inside the blackout times out; every other probe gets a reply
after 0.4 ms. With ``k`` lost probes the summary reports lower ``(k - 1) x
interval``, upper ``(k + 1) x interval`` and estimate ``k x interval``.
Rows are written in the order they resolve (a timeout 500 ms after its send),
through ``probes.sink.CsvSink``, the prober's own writer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from migration_blackout.probes.sink import CsvSink  # noqa: E402
from migration_blackout.runformat import ICMP  # noqa: E402

GUEST = "10.0.0.2"
MS = 1_000_000
MONO0 = 7_000_000 * MS  # CLOCK_MONOTONIC at the first attempt
UTC0 = 1_795_611_760_000_000_000  # 2026-11-25T13:02:40Z
RTT = 400_000
TIMEOUT = 500 * MS
ERRORS = {
    "failed": {"type": "MigrationError", "message": "Move-VM failed: the operation timed out"},
    "aborted": {"type": "KeyboardInterrupt", "message": "interrupted (Ctrl-C)"},
}


def _iso(utc_ns: int) -> str:
    seconds, ns = divmod(utc_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}Z"


def write_run(
    run_dir: Path,
    *,
    blackout_ms: float,
    interval_ms: float = 10.0,
    before_ms: float = 500.0,
    after_ms: float = 500.0,
    phase_ms: float = 0.0,
    lone_timeouts: int = 0,
    status: str = "completed",
    source: str | None = "HV-A",
    destination: str | None = "HV-B",
    start_offset_s: float = 0.0,
    labels: dict[str, str] | None = None,
) -> Path:
    """Write ``run_dir`` (manifest.json and raw/icmp.csv) and return it.

    ``after_ms=0`` ends the run inside the blackout: the outage is open at its
    end and has no upper bound. ``lone_timeouts`` single probes time out early
    in the run, apart from the blackout. ``source``/``destination`` go to the
    manifest's ``hyperv`` object; both None leaves it out. ``start_offset_s``
    shifts the run's clocks (runs in a set start at different times).
    ``labels`` go to the manifest (``measure run --label``).
    """
    interval = round(interval_ms * MS)
    mono0 = MONO0 + round(start_offset_s * 1e9)
    utc0 = UTC0 + round(start_offset_s * 1e9)
    blackout_start = round((before_ms + phase_ms) * MS)
    blackout_end = blackout_start + round(blackout_ms * MS)
    run_end = blackout_end + round(after_ms * MS) if after_ms > 0 else blackout_end
    count = max(1, math.ceil(run_end / interval))
    lone = {5 + 7 * i for i in range(lone_timeouts)}

    resolved: list[tuple[int, list[object]]] = []
    for n in range(count):
        offset = n * interval
        send = mono0 + offset
        fields: dict[str, object] = {
            "target": GUEST,
            "n": n,
            "seq": n & 0xFFFF,
            "ident": 4660,
            "send_mono_ns": send,
            "send_utc_ns": send - mono0 + utc0,
        }
        if blackout_start <= offset < blackout_end or n in lone:
            fields["outcome"] = "timeout"
            resolve = send + TIMEOUT
        else:
            recv = send + RTT
            fields |= {"outcome": "reply", "recv_mono_ns": recv, "recv_utc_ns": recv - mono0 + utc0}
            fields |= {"rtt_ns": RTT, "icmp_type": 0, "icmp_code": 0, "from_addr": GUEST}
            resolve = recv
        resolved.append((resolve, [fields.get(column) for column in ICMP.columns]))
    resolved.sort(key=lambda item: item[0])

    meta = {"interval_s": interval_ms / 1000, "timeout_s": 0.5, "targets": [GUEST]}
    sink = CsvSink(run_dir / "raw" / "icmp.csv", probe="icmp", columns=ICMP.columns, meta=meta)
    sink.write_rows([row for _, row in resolved])
    sink.close()

    manifest: dict[str, object] = {
        "schema_version": 1,
        "kind": "run",
        "run_id": run_dir.name,
        "run_kind": "run",
        "status": status,
        "error": ERRORS.get(status),
        "started_utc": _iso(utc0 - 100 * MS),
        "ended_utc": None if status == "running" else _iso(utc0 + run_end + TIMEOUT),
        "targets": [GUEST],
        "config": {"icmp": {"interval_s": interval_ms / 1000, "timeout_s": 0.5}},
        "harness_host": {"hostname": "ci-runner-1", "platform": "Linux", "python": "3.11"},
        "probes": {"icmp": {"file": "raw/icmp.csv"}},
    }
    if source is not None or destination is not None:
        manifest["hyperv"] = {"source": source, "destination": destination}
    if labels is not None:
        manifest["labels"] = labels
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--blackout-ms", type=float, default=1000.0)
    parser.add_argument("--noise-ms", type=float, default=30.0)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import numpy as np

    rng = np.random.default_rng(args.seed)
    for i in range(args.count):
        blackout = max(0.0, float(rng.normal(args.blackout_ms, args.noise_ms)))
        write_run(
            args.out_dir / f"20261125T{13 + i // 60:02d}{i % 60:02d}00Z-run-{i:04x}",
            blackout_ms=blackout,
            interval_ms=args.interval_ms,
            phase_ms=float(rng.uniform(0, args.interval_ms)),
            start_offset_s=600.0 * i,
        )


if __name__ == "__main__":
    main()

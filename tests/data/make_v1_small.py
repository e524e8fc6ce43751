"""How tests/data/runs/v1-small was made (once; the folder is frozen, see README.md).

Run from the repository root: ``.venv/bin/python tests/data/make_v1_small.py OUT_DIR``.
It refuses an existing OUT_DIR/raw/icmp.csv (CsvSink never overwrites).

Two targets probed every 20 ms, 200 attempts each, with no randomness, so that
every number in the summary can be checked by hand (tests/test_analysis_summary.py):

* 10.0.0.2, the migrated guest: attempt 10 is sent 0.5 ms late; attempt 60 times
  out alone; attempts 150-164 time out (the blackout: lower 280 ms, upper
  320 ms, estimate 300 ms); 198-199 are unresolved (the run stopped); attempt 30
  gets a duplicate reply and attempt 152 a late reply 700 ms after its send.
* 10.0.0.3, sent 10 ms after each guest probe: attempt 80 comes back ICMP
  destination unreachable (from 10.0.0.254) and attempt 81 fails locally
  (``error``): one outage, lower 20 ms, upper 60 ms, estimate 40 ms.

Rows are written in the order they resolve (reply: on receipt, timeout: 500 ms
after the send, unresolved: at the end), as the real prober does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from migration_blackout.probes.sink import CsvSink
from migration_blackout.runformat import ICMP

COLUMNS = ICMP.columns  # run format v1
MS = 1_000_000
MONO0 = 5_000_000 * MS  # CLOCK_MONOTONIC at the guest's attempt 0
UTC0 = 1_795_611_760_000_000_000  # 2026-11-25T13:02:40Z
INTERVAL = 20 * MS
TIMEOUT = 500 * MS
GUEST, OTHER = "10.0.0.2", "10.0.0.3"
IDENT = {GUEST: 4660, OTHER: 4661}


def row(
    target: str, n: int, send: int, outcome: str, recv: int | None = None, **extra: object
) -> list[object]:
    fields: dict[str, object] = {
        "target": target,
        "n": n,
        "seq": n & 0xFFFF,
        "ident": IDENT[target],
        "outcome": outcome,
        "send_mono_ns": send,
        "send_utc_ns": send - MONO0 + UTC0,
    }
    if recv is not None:
        fields.update(
            recv_mono_ns=recv,
            recv_utc_ns=recv - MONO0 + UTC0,
            rtt_ns=recv - send,
            icmp_type=0,
            icmp_code=0,
            from_addr=target,
        )
    fields.update(extra)
    return [fields.get(column) for column in COLUMNS]


def rows() -> list[tuple[int, list[object]]]:
    """(resolve time on the mono clock, row) for every row."""
    out: list[tuple[int, list[object]]] = []
    end = MONO0 + 200 * INTERVAL + TIMEOUT
    for target, offset in ((GUEST, 0), (OTHER, 10 * MS)):
        for n in range(200):
            send = MONO0 + offset + n * INTERVAL + (MS // 2 if target == GUEST and n == 10 else 0)
            rtt = 400_000 + (n % 5) * 10_000
            if target == GUEST and (n == 60 or 150 <= n <= 164):
                out.append((send + TIMEOUT, row(target, n, send, "timeout")))
                if n == 152:
                    late = send + 700 * MS
                    out.append((late, row(target, n, send, "late", late)))
            elif target == GUEST and n >= 198:
                out.append((end, row(target, n, send, "unresolved")))
            elif target == OTHER and n == 80:
                recv = send + MS
                unreachable = row(target, n, send, "unreachable", recv, icmp_type=3, icmp_code=1)
                unreachable[COLUMNS.index("from_addr")] = "10.0.0.254"
                out.append((recv, unreachable))
            elif target == OTHER and n == 81:
                detail = "sendto: [Errno 105] No buffer space available"
                out.append((send, row(target, n, send, "error", detail=detail)))
            else:
                out.append((send + rtt, row(target, n, send, "reply", send + rtt)))
                if target == GUEST and n == 30:
                    again = send + rtt + 150_000
                    out.append((again, row(target, n, send, "duplicate", again)))
    out.sort(key=lambda item: item[0])
    return out


def main(out_dir: Path) -> None:
    meta = {"interval_s": 0.02, "timeout_s": 0.5, "targets": [GUEST, OTHER]}
    sink = CsvSink(out_dir / "raw" / "icmp.csv", probe=ICMP.probe, columns=COLUMNS, meta=meta)
    sink.write_rows(row for _, row in rows())
    sink.close()
    manifest = {
        "schema_version": 1,
        "run_id": "v1-small",
        "status": "completed",
        "error": None,
        "started_utc": "2026-11-25T13:02:39.900000Z",
        "ended_utc": "2026-11-25T13:02:44.600000Z",
        "targets": [GUEST, OTHER],
        "config": {"icmp": {"interval_s": 0.02, "timeout_s": 0.5}},
        "probes": {"icmp": {"file": "raw/icmp.csv"}},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

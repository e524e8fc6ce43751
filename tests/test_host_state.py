"""The host-state poller's schedule and record, with poll functions that fail
and overrun (the real Hyper-V poll is exercised end to end in test_run_lab.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fixtures_netns import until

from migration_blackout.probes.host_state import HostObservation, HostStatePoller
from migration_blackout.probes.sink import JsonlSink


def test_every_poll_is_an_event_failures_included(tmp_path: Path) -> None:
    calls = 0

    def poll() -> HostObservation:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise ConnectionError("WS16TP4DM1VML1b: cannot reach WinRM")
        if calls == 4:
            time.sleep(0.035)  # overruns three 10 ms slots
        return HostObservation(listed=True, state="Running", host_time="2026-11-25T13:02:38+09:00")

    sink = JsonlSink(tmp_path / "host.jsonl", probe="host_state")
    poller = HostStatePoller(host="h", poll=poll, interval_s=0.01, sink=sink)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await until(lambda: poller.stats().polls >= 12, timeout_s=10, what="12 polls")
        stop.set()
        await task

    asyncio.run(main())
    sink.close()
    events = [json.loads(line) for line in (tmp_path / "host.jsonl").read_text().splitlines()[1:]]
    stats = poller.stats()
    assert len(events) == stats.polls == calls
    failed = [e for e in events if e["outcome"] == "error"]
    assert len(failed) == stats.failures == calls // 3
    assert all("cannot reach WinRM" in e["error"] for e in failed)
    assert all(e["recv_mono_ns"] >= e["send_mono_ns"] for e in events)
    slots = [e["k"] for e in events]
    assert slots == sorted(slots) and len(set(slots)) == len(slots)
    assert stats.skipped >= 2
    assert slots[-1] + 1 == len(slots) + stats.skipped
    ok = [e for e in events if e["outcome"] == "ok"]
    assert ok[0]["state"] == "Running" and ok[0]["host_time"].endswith("+09:00")

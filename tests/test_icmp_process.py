"""The ICMP probe in a process of its own: same rows, same shape, clean stop."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest
from fixtures_netns import ping_group_range, until

from migration_blackout.lab.netns import GuestNamespace
from migration_blackout.probes.icmp import IcmpPermissionError
from migration_blackout.probes.icmp_process import IcmpProbeProcess

pytestmark = pytest.mark.root


def test_probes_and_stops_cleanly(tmp_path: Path, guest: GuestNamespace) -> None:
    path = tmp_path / "raw" / "icmp.csv"
    probe = IcmpProbeProcess(path, targets=[guest.guest_address], interval_s=0.002)

    async def main() -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(probe.run(stop))
            await until(lambda: probe.ready.is_set(), timeout_s=20, what="the prober")
            await until(
                lambda: sum(s.replies for s in probe.stats().values()) >= 200,
                timeout_s=20,
                what="200 replies",
            )
            stop.set()

    asyncio.run(main())
    assert probe.meta["targets"] == [guest.guest_address]
    assert probe.timeout_s is not None
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ")
    rows = list(csv.DictReader(lines[1:]))
    stats = probe.stats()[guest.guest_address]
    assert len(rows) == stats.sent  # every attempt written before the child exited
    assert {r["outcome"] for r in rows} <= {"reply", "timeout"}
    assert stats.replies >= 200


def test_a_permission_problem_surfaces_as_such(tmp_path: Path, guest: GuestNamespace) -> None:
    probe = IcmpProbeProcess(
        tmp_path / "icmp.csv", targets=[guest.guest_address], interval_s=0.01, privileged=False
    )
    with ping_group_range("1 0"), pytest.raises(IcmpPermissionError, match="ping_group_range"):
        asyncio.run(probe.start())

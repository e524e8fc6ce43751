"""The QEMU lab end to end: a real guest (TCG), live-migrated back and forth.

One lab for the whole module (booting takes ~10 s), started the way
``measure lab up --hypervisor qemu`` starts it (``lab.qemu.control.up``, the
daemon) and stopped with ``down``. Probes are the project's own: ICMP every
5 ms from the root namespace (``probes.icmp.IcmpProbe``) and the guest's
heartbeats into ``probes.guest_receiver.GuestReceiver``.

Tolerances (shared 2-core machine, TCG; docs/qemu.md): the ping blackout (gap
between replies) contains QEMU's STOP->RESUME and exceeds it by less than
``BLACKOUT_EXCESS_MAX_MS``. Measured excess: 40-120 ms typically, up to 185 ms
with other jobs on the machine; almost all of it after RESUME, while the
destination's TCG retranslates the guest's code (the guest's clock runs, it
executes little). Clock comparisons allow ``CLOCK_TOLERANCE_NS`` (QEMU stamps
have microsecond resolution and are converted from the wall clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fixtures_netns import wait_until

from migration_blackout.harness.qemu.migration import (
    OUTCOME_CANCELLED,
    OUTCOME_COMPLETED,
    MigrationResult,
    MigrationSettings,
    migrate,
)
from migration_blackout.harness.qemu.qmp import QmpClient
from migration_blackout.lab.netns import process_runs
from migration_blackout.lab.qemu import control
from migration_blackout.lab.qemu.artefacts import ensure_artefacts
from migration_blackout.lab.qemu.control import QemuLabState
from migration_blackout.lab.qemu.guest import GuestControl
from migration_blackout.probes.guest_receiver import GuestReceiver
from migration_blackout.probes.icmp import IcmpProbe
from migration_blackout.runformat import HEARTBEAT

pytestmark = [pytest.mark.root, pytest.mark.slow]

PING_INTERVAL_S = 0.005
BLACKOUT_EXCESS_MAX_MS = 250.0
CLOCK_TOLERANCE_NS = 2_000_000
T = TypeVar("T")


# -- the lab --------------------------------------------------------------------------


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    """Runs and is no zombie (the lab's own test of liveness): a QEMU whose daemon
    died is a zombie until the container's first process reaps it, maybe never."""
    with contextlib.suppress(ChildProcessError):  # reap it if it is our child (the daemon)
        os.waitpid(pid, os.WNOHANG)
    return process_runs(pid)


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # QMP sockets live here: keep the path short (UNIX socket paths < 108 bytes).
    return tmp_path_factory.mktemp("qlab")


@pytest.fixture(scope="module")
def qemu_lab(lab_dir: Path) -> Iterator[QemuLabState]:
    """The lab, once for the module; afterwards nothing of it may remain.

    Started for an owner process that lives as long as this test session (it
    reads its standard input from here): the lab ends by itself when its owner
    is gone, which is how it ends here, and how it ends if pytest is killed."""
    begin = time.monotonic()
    ensure_artefacts()
    prepared = time.monotonic()
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    state, started = control.up(state_dir=lab_dir, owner_pid=owner.pid)
    print(f"\nQEMU lab: artefacts {prepared - begin:.1f} s, up {time.monotonic() - prepared:.1f} s")
    assert started
    namespace = state.document["network"]["namespace"]
    try:
        yield state
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        owner.wait(timeout=10)
        try:
            wait_until(
                lambda: not process_runs(state.pid) and namespace not in _namespaces(),
                timeout_s=30,
                what="the lab to end with its owner",
            )
        finally:
            control.down(state_dir=lab_dir)
        assert namespace not in _namespaces()
        assert not (lab_dir / "qemu-lab.json").exists()


@pytest.fixture
def ready(qemu_lab: QemuLabState, lab_dir: Path) -> QemuLabState:
    """The lab's current state, with a standby waiting (tests move the guest around)."""
    return asyncio.run(control.wait_ready(state_dir=lab_dir, timeout_s=30))


def guest_control(state: QemuLabState) -> GuestControl:
    return GuestControl(state.guest_address, state.token, port=state.control_port)


async def migrate_once(
    state: QemuLabState, **options: Any
) -> tuple[MigrationResult, QemuLabState | None]:
    """One migration from the running QEMU to the standby; then the lab's next ready
    state (None if the lab is not ready again within 30 s)."""
    assert state.running is not None and state.standby is not None
    source = await QmpClient.connect(state.running.qmp)
    destination = await QmpClient.connect(state.standby.qmp)
    try:
        result = await migrate(
            source,
            destination,
            uri=state.standby.incoming_uri,
            memory_bytes=state.memory_bytes,
            **options,
        )
    finally:
        await source.close()
        await destination.close()
    with contextlib.suppress(TimeoutError):
        return result, await control.wait_ready(
            state_dir=state.path.parent, after_serial=state.serial, timeout_s=30
        )
    return result, None


@dataclass
class Probes:
    icmp: IcmpProbe
    receiver: GuestReceiver

    def replies(self) -> int:
        return sum(stats.replies for stats in self.icmp.stats().values())

    async def steady(self, count: int = 30, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` more replies and heartbeats arrived."""
        replies, heartbeats = self.replies(), self.receiver.stats.heartbeats
        deadline = time.monotonic() + timeout_s
        while (
            self.replies() < replies + count or self.receiver.stats.heartbeats < heartbeats + count
        ):
            assert time.monotonic() < deadline, "the guest stopped answering"
            await asyncio.sleep(0.01)


def with_probes(state: QemuLabState, run_dir: Path, body: Callable[[Probes], Awaitable[T]]) -> T:
    """Run ``body`` while pings (5 ms) and the heartbeat receiver run; files in ``run_dir``."""

    async def scenario() -> T:
        host, port = state.heartbeat_address
        # SCHED_FIFO keeps the 5 ms schedule while two QEMUs keep both cores busy.
        icmp = IcmpProbe.create(
            run_dir / "raw" / "icmp.csv",
            targets=[state.guest_address],
            interval_s=PING_INTERVAL_S,
            realtime_priority=10,
        )
        receiver = GuestReceiver(run_dir, token=state.token, host=host, port=port)
        stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(icmp.run(stop))
                group.create_task(receiver.run(stop))
                try:
                    await icmp.ready.wait()
                    await receiver.ready.wait()
                    probes = Probes(icmp, receiver)
                    await probes.steady()
                    return await body(probes)
                finally:
                    stop.set()
        finally:
            icmp.sink.close()

    return asyncio.run(scenario())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        next(handle)  # the header line with the schema version
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class ReplyGap:
    """The gap between ping replies around one migration's STOP (harness monotonic ns)."""

    before_ns: int
    after_ns: int
    lost: int  # requests sent in the gap that timed out
    longest_send_step_ms: float  # the prober's own longest pause in the gap

    @property
    def ms(self) -> float:
        return (self.after_ns - self.before_ns) / 1e6


def reply_gap_around(rows: list[dict[str, str]], stop_mono_ns: int) -> ReplyGap:
    replies = sorted(int(r["recv_mono_ns"]) for r in rows if r["outcome"] == "reply")
    before = max(t for t in replies if t <= stop_mono_ns + CLOCK_TOLERANCE_NS)
    after = min(t for t in replies if t > before)
    sends = sorted(int(r["send_mono_ns"]) for r in rows if r["send_mono_ns"])
    inside = [t for t in sends if before - 50_000_000 < t < after]
    steps = [b - a for a, b in itertools.pairwise(inside)]
    lost = sum(
        1 for r in rows if r["outcome"] == "timeout" and before < int(r["send_mono_ns"]) < after
    )
    return ReplyGap(before, after, lost, max(steps, default=0) / 1e6)


def heartbeat_gap_around(
    rows: list[dict[str, str]], stop_mono_ns: int
) -> tuple[dict[str, str], dict[str, str]]:
    """The heartbeats received last before and first after ``stop_mono_ns``."""
    ordered = sorted(rows, key=lambda r: int(r["recv_mono_ns"]))
    before = [r for r in ordered if int(r["recv_mono_ns"]) <= stop_mono_ns + CLOCK_TOLERANCE_NS]
    return before[-1], ordered[len(before)]


# -- tests ------------------------------------------------------------------------------


def test_ping_pong_blackout_contains_qemu_stop_to_resume(
    ready: QemuLabState, tmp_path: Path
) -> None:
    """Four migrations a->b->a->b->a (or b->...): each completes, the ping blackout
    contains STOP->RESUME and exceeds it by a bounded amount, the guest answers and
    its heartbeats continue in sequence from the same agent."""
    migrations: list[tuple[str, str, MigrationResult]] = []

    async def body(probes: Probes) -> None:
        state = ready
        for _ in range(4):
            assert state.running is not None and state.standby is not None
            sides = (state.running.side, state.standby.side)
            result, next_state = await migrate_once(state)
            migrations.append((*sides, result))
            assert result.outcome == OUTCOME_COMPLETED, result.error
            assert next_state is not None, "no new standby after the migration"
            assert next_state.running is not None and next_state.running.side == sides[1]
            await probes.steady()
            state = next_state

    with_probes(ready, tmp_path, body)
    pings = read_csv(tmp_path / "raw" / "icmp.csv")
    heartbeats = read_csv(tmp_path / HEARTBEAT.path)

    print(
        "\nfrom to  downtime  stop->resume  ping gap  (before STOP, after RESUME)  lost  "
        "send step  heartbeat gap  guest-mono step"
    )
    checks = []
    for source_side, destination_side, result in migrations:
        assert result.stop is not None and result.resume is not None
        assert result.downtime_ms is not None and result.total_time_ms is not None
        stop_to_resume = result.stop_to_resume_ms
        assert stop_to_resume is not None and stop_to_resume >= 0
        gap = reply_gap_around(pings, result.stop.qemu_mono_ns)
        hb_before, hb_after = heartbeat_gap_around(heartbeats, result.stop.qemu_mono_ns)
        hb_gap_ms = (int(hb_after["recv_mono_ns"]) - int(hb_before["recv_mono_ns"])) / 1e6
        mono_step_ms = (int(hb_after["guest_mono_ns"]) - int(hb_before["guest_mono_ns"])) / 1e6
        print(
            f"{source_side:>4} {destination_side:>2} {result.downtime_ms:>9} "
            f"{stop_to_resume:>13.1f} {gap.ms:>9.1f} "
            f"({(result.stop.qemu_mono_ns - gap.before_ns) / 1e6:>6.1f}, "
            f"{(gap.after_ns - result.resume.qemu_mono_ns) / 1e6:>6.1f}) {gap.lost:>18} "
            f"{gap.longest_send_step_ms:>10.1f} {hb_gap_ms:>14.1f} {mono_step_ms:>16.1f}"
        )
        checks.append((result, stop_to_resume, gap, hb_after))
    for result, stop_to_resume, gap, hb_after in checks:
        assert result.stop is not None and result.resume is not None
        # No reply can come while the guest is stopped: the gap contains STOP->RESUME.
        assert gap.before_ns <= result.stop.qemu_mono_ns + CLOCK_TOLERANCE_NS
        assert gap.after_ns >= result.resume.qemu_mono_ns - CLOCK_TOLERANCE_NS
        assert gap.ms - stop_to_resume < BLACKOUT_EXCESS_MAX_MS, (gap, stop_to_resume)
        assert int(hb_after["recv_mono_ns"]) >= result.resume.qemu_mono_ns - CLOCK_TOLERANCE_NS

    # One agent (the same process, migrated), its sequence continuing; at most a few
    # heartbeats lost in flight per switch of taps.
    assert len({row["agent_id"] for row in heartbeats}) == 1
    seqs = sorted(int(row["seq"]) for row in heartbeats)
    assert len(seqs) == len(set(seqs))
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert missing <= 3 * len(migrations), f"{missing} heartbeats missing"
    last_resume = migrations[-1][2].resume
    assert last_resume is not None
    after_last = [r for r in heartbeats if int(r["recv_mono_ns"]) > last_resume.qemu_mono_ns]
    assert len(after_last) >= 30


def test_non_converging_migration_is_cancelled_and_the_guest_stays(
    ready: QemuLabState, tmp_path: Path
) -> None:
    """64 MiB dirtied as fast as the vCPU goes (~3.5 million pages a second), the
    migration stream held to 64 MiB/s: it cannot converge; the driver cancels it at its
    deadline and the guest keeps running on the source, answering pings."""
    assert ready.running is not None and ready.standby is not None
    source_side, standby_generation = ready.running.side, ready.standby.generation
    guest = guest_control(ready)

    async def body(probes: Probes) -> tuple[MigrationResult, QemuLabState | None]:
        await guest.set_dirtier(64, 0)
        try:
            first = await guest.status()
            result, next_state = await migrate_once(
                ready, settings=MigrationSettings(max_bandwidth=64 << 20), timeout_s=3.0
            )
            state = await guest.status()
            assert state.pages_written > first.pages_written
            assert state.agent_id == first.agent_id
            await probes.steady()
        finally:
            await guest.set_dirtier(0)
        return result, next_state

    result, next_state = with_probes(ready, tmp_path, body)
    assert result.outcome == OUTCOME_CANCELLED, result.error
    assert result.error is None
    assert result.stop is None and result.resume is None
    assert any(poll.info.status == "active" for poll in result.polls)
    assert result.polls[-1].info.status == "cancelled"
    # The same QEMU runs the guest; the lab replaced the standby whose migration failed.
    assert next_state is not None and next_state.running is not None
    assert next_state.running.side == source_side
    assert next_state.standby is not None
    assert next_state.standby.generation == standby_generation + 1
    pings = read_csv(tmp_path / "raw" / "icmp.csv")
    answered_after = [
        r
        for r in pings
        if r["outcome"] == "reply" and int(r["send_mono_ns"]) > result.finished.mono_ns
    ]
    assert len(answered_after) >= 30


def test_dirtying_guest_migrates_with_identical_ram(ready: QemuLabState) -> None:
    """With 1 GiB/s a dirtying guest converges; the destination, held paused, has
    exactly the source's RAM (every 4 KiB page compared) before it runs."""
    guest = guest_control(ready)
    dumps = (
        Path("/dev/shm" if Path("/dev/shm").is_dir() else "/var/tmp") / f"mbq-test-{os.getpid()}"
    )

    async def scenario() -> tuple[MigrationResult, QemuLabState | None]:
        await guest.set_dirtier(64, 0)
        try:
            result = await migrate_once(
                ready,
                settings=MigrationSettings(max_bandwidth=1 << 30),
                timeout_s=30.0,
                verify_memory=dumps,
            )
            # The dirtier survived the move: it writes again (after a stall of up to
            # ~0.5 s while the destination's TCG translates its code).
            first = await guest.status()
            deadline = time.monotonic() + 5.0
            while (await guest.status()).pages_written == first.pages_written:
                assert time.monotonic() < deadline, "the dirtier stopped with the migration"
                await asyncio.sleep(0.02)
            print(f"\ndirtier writing again {time.monotonic() - deadline + 5.0:.2f} s later")
            return result
        finally:
            await guest.set_dirtier(0)

    try:
        result, next_state = asyncio.run(scenario())
    finally:
        shutil.rmtree(dumps, ignore_errors=True)
    assert result.outcome == OUTCOME_COMPLETED, result.error
    assert result.memory is not None
    assert result.memory.bytes_compared == ready.memory_bytes
    assert result.memory.identical, result.memory
    assert result.final is not None and result.final.ram is not None
    assert result.final.ram.dirty_sync_count >= 2  # it did iterate: memory was dirtied
    assert next_state is not None
    print(
        f"\nRAM check: {result.memory.bytes_compared >> 20} MiB identical, dumps "
        f"{result.memory.dump_ms:.0f} ms, compare {result.memory.compare_ms:.0f} ms; "
        f"downtime {result.downtime_ms} ms, total {result.total_time_ms} ms"
    )


def test_driver_announces_when_qemu_does_not(ready: QemuLabState) -> None:
    """announce_rounds=0: QEMU sends no RARP after RESUME, so the driver sends
    announce-self; the bridge then forwards to the destination's tap."""
    assert ready.standby is not None
    destination_tap = f"tap-{ready.standby.side}"
    result, next_state = asyncio.run(
        migrate_once(ready, settings=MigrationSettings(announce_rounds=0))
    )
    assert result.outcome == OUTCOME_COMPLETED, result.error
    assert result.announced
    assert next_state is not None
    namespace = ready.document["network"]["namespace"]
    mac = ready.document["guest"]["mac"]
    fdb = subprocess.run(
        ["bridge", "-n", namespace, "fdb", "show", "br", "br0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ports = [line.split()[2] for line in fdb.splitlines() if line.startswith(mac)]
    assert ports == [destination_tap], fdb


def test_down_after_a_crashed_daemon_leaves_nothing(qemu_lab: QemuLabState, lab_dir: Path) -> None:
    """Last test of the module: kill the daemon outright. Its QEMUs die with it
    (PR_SET_PDEATHSIG); ``down`` removes the namespace, veth and files, twice."""
    state = asyncio.run(control.wait_ready(state_dir=lab_dir, timeout_s=30))
    namespace = state.document["network"]["namespace"]
    veth = state.document["network"]["harness_interface"]
    qemu_pids = [q.pid for q in (state.running, state.standby) if q is not None]
    os.kill(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_pid_alive(pid) for pid in [state.pid, *qemu_pids]):
        assert time.monotonic() < deadline, "the QEMUs outlived their daemon"
        time.sleep(0.01)
    assert control.read_state(lab_dir) is None
    removed = control.down(state_dir=lab_dir)
    assert namespace in removed
    assert namespace not in _namespaces()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {veth}@" not in links and f" {veth}:" not in links
    assert not list(lab_dir.glob("*.qmp")) and not (lab_dir / "qemu-lab.json").exists()
    assert control.down(state_dir=lab_dir) == []

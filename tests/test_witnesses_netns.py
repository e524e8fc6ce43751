"""The witnesses no peer has, end to end on real sockets: a guest in a network
namespace runs the agent (heartbeat, direction probe answers, TCP stream) and
a Remote Desktop-like listener; its link filter goes dark in both directions,
then inbound comes back before outbound. The probes' raw records, analysed,
must say which way the network came back and when, and bound the truth."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from fixtures_netns import until
from test_witness_probes import TOKEN, start_agent

from migration_blackout.analysis.brownout import analyse_work, load_work
from migration_blackout.analysis.direction import analyse_direction, load_udp_direction
from migration_blackout.analysis.guest import load_heartbeats
from migration_blackout.analysis.tcp import (
    analyse_connects,
    analyse_stream,
    load_tcp_connect,
    load_tcp_stream,
)
from migration_blackout.lab.guest import (
    REMOTE_DESKTOP_PORT,
    start_guest_service,
    stop_guest_service,
)
from migration_blackout.lab.injector import BlackoutInjector, LinkStamp
from migration_blackout.lab.netns import GuestNamespace
from migration_blackout.probes.guest_agent import WITNESS_DEFAULT_PORT
from migration_blackout.probes.guest_receiver import GuestReceiver
from migration_blackout.probes.tcp_connect import TcpConnectProbe
from migration_blackout.probes.tcp_stream import TcpStreamProbe
from migration_blackout.probes.udp_direction import UdpDirectionProbe

pytestmark = [pytest.mark.root, pytest.mark.slow]

DARK_S = 1.0  # both directions dark
OUTBOUND_LATER_S = 0.6  # outbound stays dark this much longer than inbound
INTERVAL_S = 0.01


async def link(injector: BlackoutInjector, state: str, *directions: str) -> LinkStamp:
    return await asyncio.to_thread(injector.link, state, directions)


def inside(truth_after: int, truth_before: int, after: int, by: int) -> bool:
    """The bracket [truth_after, truth_before] of a link edge meets [after, by]."""
    return after <= truth_before and truth_after <= by


def test_inbound_back_before_outbound_is_told_apart_and_bounded(
    guest: GuestNamespace, tmp_path: Path
) -> None:
    guest.create_link_filter()
    run_dir = tmp_path / "run"
    (run_dir / "raw").mkdir(parents=True)
    services = start_guest_service(guest.name, "listen", str(REMOTE_DESKTOP_PORT))
    injector = guest.start_injector()
    stamps: dict[str, LinkStamp] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        receiver = GuestReceiver(run_dir, token=TOKEN, host=guest.host_address)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(receiver.run(stop))
            await receiver.ready.wait()
            async with start_agent(
                receiver.address,
                prefix=tuple(guest.exec_argv()),
                witness_host="0.0.0.0",
                witness_port=WITNESS_DEFAULT_PORT,
            ):
                target = guest.guest_address
                direction = UdpDirectionProbe.create(
                    run_dir, target=target, token=TOKEN, interval_s=INTERVAL_S
                )
                stream = TcpStreamProbe.create(
                    run_dir, target=target, token=TOKEN, interval_s=INTERVAL_S
                )
                connects = TcpConnectProbe.create(
                    run_dir, targets=[target], ports=[REMOTE_DESKTOP_PORT], interval_s=0.02
                )
                probes_stop = asyncio.Event()
                async with asyncio.TaskGroup() as probing:
                    for probe in (direction, stream, connects):
                        probing.create_task(probe.run(probes_stop))
                    await until(
                        lambda: direction.stats().answered >= 50 and stream.stats().ticks >= 50,
                        timeout_s=20,
                        what="the witnesses to run",
                    )
                    stamps["dark"] = await link(injector, "dark", "inbound", "outbound")
                    await asyncio.sleep(DARK_S)  # the outage being measured
                    stamps["inbound"] = await link(injector, "light", "inbound")
                    await asyncio.sleep(OUTBOUND_LATER_S)
                    stamps["outbound"] = await link(injector, "light", "outbound")
                    # TCP's backoff: both directions deliver again, eventually.
                    after = stream.stats().ticks
                    rdp = (target, REMOTE_DESKTOP_PORT)
                    connected = connects.stats()[rdp].connected
                    await until(
                        lambda: (
                            stream.stats().ticks >= after + 50
                            and direction.stats().current_loss_streak == 0
                            and connects.stats()[rdp].connected >= connected + 5
                        ),
                        timeout_s=30,
                        what="every witness to get through again",
                    )
                    probes_stop.set()
                for probe in (direction, stream, connects):
                    probe.sink.close()
            stop.set()

    try:
        asyncio.run(scenario())
    finally:
        injector.close()
        stop_guest_service(services)
        guest.run("nft", "delete", "table", "netdev", "mb_guest", check=False)

    dark, inbound, outbound = stamps["dark"], stamps["inbound"], stamps["outbound"]
    # Direction: probes lost on the way in and answers lost on the way out, both edges found.
    _, rows = load_udp_direction(run_dir)
    heartbeats = load_heartbeats(run_dir)
    analysis = analyse_direction(rows, heartbeats=heartbeats)
    outage = analysis.longest
    assert outage is not None and outage.lost_inbound and outage.lost_outbound
    assert abs(outage.lost_outbound * INTERVAL_S - OUTBOUND_LATER_S) < 0.15
    assert outage.inbound_restored is not None and outage.outbound_restored is not None
    assert outage.outbound_restored.source == "udp_direction"
    edge = outage.inbound_restored
    assert inside(
        inbound.before_mono_ns, inbound.after_mono_ns, edge.after_mono_ns, edge.by_mono_ns
    )
    edge = outage.outbound_restored
    assert inside(
        outbound.before_mono_ns, outbound.after_mono_ns, edge.after_mono_ns, edge.by_mono_ns
    )
    # Connects fail from the dark edge until both directions are back.
    (port,) = analyse_connects(load_tcp_connect(run_dir))
    longest = port.longest
    assert longest is not None and longest.upper_ms is not None
    truth_low_ms = (outbound.before_mono_ns - dark.after_mono_ns) / 1e6
    truth_high_ms = (outbound.after_mono_ns - dark.before_mono_ns) / 1e6
    assert longest.lower_ms <= truth_high_ms and truth_low_ms <= longest.upper_ms
    # The stream survived; each direction stalled at least as long as it was dark.
    header, stream_rows = load_tcp_stream(run_dir)
    interval_s = header["interval_s"]
    assert isinstance(interval_s, float)
    stream = analyse_stream(stream_rows, interval_s=interval_s)
    assert stream.survived and stream.connections == 1
    assert stream.inbound is not None and stream.outbound is not None
    assert stream.inbound.upper_ms >= (inbound.before_mono_ns - dark.after_mono_ns) / 1e6
    assert stream.outbound.upper_ms >= (outbound.before_mono_ns - dark.after_mono_ns) / 1e6
    # Heartbeats carry the work unit's timing (version 2).
    assert len(load_work(run_dir)) > 100


def test_the_lab_guest_slows_down_during_its_brownout(tmp_path: Path) -> None:
    """The lab guest's brownout (its dirtying workload, the guest throttled)
    slows the agent's work: the work rate dips for as long as it lasts, within bounds."""
    from migration_blackout.lab.guest import NetnsGuest

    run_dir = tmp_path / "run"
    (run_dir / "raw").mkdir(parents=True)
    truth: dict[str, int] = {}

    async def scenario(lab_guest: NetnsGuest) -> None:
        stop = asyncio.Event()
        receiver = GuestReceiver(run_dir, token=TOKEN, host=lab_guest.host_address)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(receiver.run(stop))
            await receiver.ready.wait()
            # Niced up, like a VM whose vCPU has a core: the other jobs on a
            # shared test machine then slow it less than the throttle does.
            nice = ("nice", "-n", "-10")
            async with start_agent(
                receiver.address, prefix=(*lab_guest.namespace.exec_argv(), *nice)
            ):
                await receiver.wait_until(lambda stats: stats.heartbeats >= 150)
                started = await lab_guest.brownout_start(0.15)
                assert started is not None
                truth["start"] = started.mono_ns
                await asyncio.sleep(2.0)  # the brownout being measured
                ended = await lab_guest.brownout_end()
                assert ended is not None
                truth["end"] = ended.mono_ns
                count = receiver.stats.heartbeats
                await receiver.wait_until(lambda stats: stats.heartbeats >= count + 150)
            stop.set()

    with NetnsGuest(prefix="mbot-", truth_path=tmp_path / "injector.jsonl") as lab_guest:
        asyncio.run(scenario(lab_guest))
    work = analyse_work(load_work(run_dir))
    assert work is not None and work.brownout is not None
    brownout = work.brownout
    truth_ms = (truth["end"] - truth["start"]) / 1e6
    assert brownout.lower_ms <= truth_ms <= brownout.upper_ms
    assert brownout.rate < 0.5
    # One machine, one monotonic clock: the dip starts where the throttle did,
    # within half a window and an interval (the documented edge).
    assert abs(brownout.start_guest_mono_ns - truth["start"]) <= 210e6


def test_measure_watch_connects_to_the_port_it_is_told(
    guest: GuestNamespace, tmp_path: Path
) -> None:
    """``measure watch --tcp-connect``: no agent needed, every attempt a row."""
    import subprocess

    services = start_guest_service(guest.name, "listen", str(REMOTE_DESKTOP_PORT))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "migration_blackout.harness.cli",
                "watch",
                "--target",
                guest.guest_address,
                "--tcp-connect",
                str(REMOTE_DESKTOP_PORT),
                "--tcp-connect",
                "3390",
                "--duration",
                "1",
                "--out",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop_guest_service(services)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = tmp_path.glob("*-watch-*")
    by_port = {p.port: p for p in analyse_connects(load_tcp_connect(run_dir))}
    assert set(by_port[REMOTE_DESKTOP_PORT].outcomes) == {"connected"}
    assert by_port[REMOTE_DESKTOP_PORT].attempts >= 15
    assert set(by_port[3390].outcomes) == {"refused"}

"""The guest agent's witnesses and the harness's probes of them, on loopback:
the agent as a separate process (``python -I``, ``--no-frames``), the probes
in this process, every byte over real sockets."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fixtures_netns import until

from migration_blackout.analysis.brownout import load_work
from migration_blackout.analysis.direction import load_udp_direction
from migration_blackout.analysis.tcp import analyse_connects, load_tcp_connect, load_tcp_stream
from migration_blackout.probes.guest_agent import (
    ANSWER_BODY,
    ANSWER_SIZE,
    STREAM_FRAME_HEAD,
    probe_datagram,
    stream_hello,
)
from migration_blackout.probes.guest_receiver import GuestReceiver, new_token
from migration_blackout.probes.sink import CsvSink
from migration_blackout.probes.tcp_connect import TcpConnectProbe
from migration_blackout.probes.tcp_stream import TcpStreamProbe
from migration_blackout.probes.udp_direction import UdpDirectionProbe
from migration_blackout.runformat import TCP_CONNECT

AGENT = Path(__file__).resolve().parent.parent / "probes" / "guest_agent.py"
TOKEN = new_token()

pytestmark = pytest.mark.slow


class RunningAgent:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    async def finish(self) -> dict[str, int]:
        """Stop the agent; its exit line's counters."""
        self.process.terminate()
        out, _ = await self.process.communicate()
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.decode())}


@asynccontextmanager
async def start_agent(
    heartbeat: tuple[str, int],
    *extra: str,
    prefix: tuple[str, ...] = (),
    witness_host: str = "127.0.0.1",
    witness_port: int = 0,
) -> AsyncIterator[RunningAgent]:
    """The agent as a process (inside a namespace with ``prefix``): heartbeats
    to ``heartbeat``, witnesses on ``witness_host``:``witness_port``."""
    process = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-I",
        str(AGENT),
        "--no-frames",
        "--heartbeat",
        f"{heartbeat[0]}:{heartbeat[1]}",
        "--witness-port",
        str(witness_port),
        "--witness-host",
        witness_host,
        *extra,
        env={**os.environ, "MB_AGENT_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(20):
            line = (await process.stderr.readline()).decode()
        match = re.search(rf"witnesses on {re.escape(witness_host)}:(\d+) ", line)
        assert match, line
        yield RunningAgent(process, int(match[1]))
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


@asynccontextmanager
async def receiving(run_dir: Path) -> AsyncIterator[GuestReceiver]:
    stop = asyncio.Event()
    receiver = GuestReceiver(run_dir, token=TOKEN)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(receiver.run(stop))
        await receiver.ready.wait()
        yield receiver
        stop.set()


def answer(sock: socket.socket) -> tuple[int, ...]:
    data = sock.recv(ANSWER_SIZE + 1)
    assert len(data) == ANSWER_SIZE
    return ANSWER_BODY.unpack(data[: ANSWER_BODY.size])


def test_the_agent_answers_only_signed_probes_and_counts_what_it_received(
    tmp_path: Path,
) -> None:
    """The answer carries the probes of the session received so far (a count)
    and the highest number seen, whatever was skipped or reordered."""

    async def scenario() -> tuple[list[tuple[int, ...]], tuple[int, ...], dict[str, int]]:
        async with receiving(tmp_path) as receiver, start_agent(receiver.address) as running:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.connect(("127.0.0.1", running.port))
                udp.settimeout(5)
                udp.send(probe_datagram(b"another token", 7, 0, 1))  # refused
                udp.send(b"MBUP" + bytes(60))  # refused
                answers = []
                for seq in (0, 5, 3, 4, 9):  # 1, 2, 6-8 "lost on the way in"
                    udp.send(probe_datagram(TOKEN.encode(), 7, seq, 1000 + seq))
                    answers.append(await asyncio.to_thread(answer, udp))
                udp.send(probe_datagram(TOKEN.encode(), 8, 100, 1))  # another session
                other = await asyncio.to_thread(answer, udp)
            return answers, other, await running.finish()

    answers, other, counts = asyncio.run(scenario())
    # (session, seq, received so far, highest seq, start of the unbroken run) of each answer
    assert [(a[5], a[6], a[9], a[10], a[11]) for a in answers] == [
        (7, 0, 1, 0, 0),
        (7, 5, 2, 5, 5),
        (7, 3, 3, 5, 3),
        (7, 4, 4, 5, 3),
        (7, 9, 5, 9, 9),
    ]
    stamps = [a[7] for a in answers]
    assert stamps == sorted(stamps)
    assert other[5:7] == (8, 100) and other[9] == 1
    assert counts["probes_answered"] == 6 and counts["probes_refused"] == 2


def test_a_stream_must_say_hello_with_the_token(tmp_path: Path) -> None:
    async def refused(hello: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(hello)
        data = await reader.read()  # the agent closes without a word
        writer.close()
        return data

    async def scenario() -> dict[str, int]:
        nonlocal port
        async with receiving(tmp_path) as receiver, start_agent(receiver.address) as running:
            port = running.port
            assert await refused(stream_hello(b"wrong", 1, 10_000, 5)) == b""
            assert await refused(struct.pack(">IB", 1 << 30, ord("H"))) == b""
            assert await refused(STREAM_FRAME_HEAD.pack(2, ord("D")) + b"x") == b""
            return await running.finish()

    port = 0
    counts = asyncio.run(scenario())
    assert counts["streams_accepted"] == 0 and counts["streams_refused"] == 1


def test_stream_and_direction_probes_record_every_frame_with_both_clocks(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "raw").mkdir(parents=True)

    async def scenario() -> dict[str, int]:
        async with receiving(run_dir) as receiver, start_agent(receiver.address) as running:
            stream = TcpStreamProbe.create(
                run_dir, target="127.0.0.1", port=running.port, token=TOKEN, interval_s=0.01
            )
            direction = UdpDirectionProbe.create(
                run_dir, target="127.0.0.1", port=running.port, token=TOKEN, interval_s=0.01
            )
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(stream.run(stop))
                tasks.create_task(direction.run(stop))
                await until(
                    lambda: stream.stats().echoed >= 30 and direction.stats().answered >= 30,
                    timeout_s=20,
                    what="30 frames each way",
                )
                stop.set()
            stream.sink.close()
            direction.sink.close()
            return await running.finish()

    counts = asyncio.run(scenario())
    assert counts["streams_accepted"] == 1 and counts["ticks_sent"] >= 30
    _, rows = load_tcp_stream(run_dir)
    assert rows["kind"].iloc[0] == "connected"
    assert rows["kind"].iloc[-1] == "closed" and rows["detail"].iloc[-1] == "stopped"
    inbound = rows[rows["kind"] == "in"]
    delivered = inbound.dropna(subset=["guest_mono_ns"])
    # Every data frame is reported once, with the guest's stamp after the send
    # (one machine: one monotonic clock) and the report's arrival after that.
    assert delivered["seq"].is_unique and len(delivered) >= 30
    assert (delivered["guest_mono_ns"] >= delivered["send_mono_ns"]).all()
    assert (delivered["recv_mono_ns"] >= delivered["guest_mono_ns"]).all()
    ticks = rows[rows["kind"] == "out"]
    assert list(ticks["seq"]) == list(range(len(ticks)))
    assert (ticks["recv_mono_ns"] >= ticks["guest_mono_ns"]).all()
    _, answers = load_udp_direction(run_dir)
    replies = answers[answers["outcome"] == "reply"]
    assert len(replies) >= 30
    # The agent's count grows by one per probe it received, whatever was lost.
    received = replies.sort_values("seq")["received"].to_numpy()
    assert (received[1:] > received[:-1]).all() and received[-1] == counts["probes_answered"]
    assert (replies["guest_recv_mono_ns"] >= replies["send_mono_ns"]).all()
    assert (replies["recv_mono_ns"] >= replies["guest_recv_mono_ns"]).all()
    # Heartbeats are version 2: every one after the first reports the work unit
    # done after the one before, timed from that one's slot (so past its lateness).
    work = load_work(run_dir).sort_values("seq")
    assert len(work) >= 10 and list(work["seq"]) == list(range(1, len(work) + 1))
    assert (work["work_ns"].to_numpy()[1:] >= work["late_ns"].to_numpy()[:-1]).all()


def test_heartbeat_version_1_still_goes_to_an_older_harness(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            receiving(tmp_path) as receiver,
            start_agent(receiver.address, "--heartbeat-version", "1") as running,
        ):
            await receiver.wait_until(lambda stats: stats.heartbeats >= 10)
            await running.finish()

    asyncio.run(scenario())
    assert load_work(tmp_path).empty
    assert "bad_version" not in (tmp_path / "raw" / "guest_rejects.jsonl").read_text()


def test_connects_are_connected_refused_or_timed_out(tmp_path: Path) -> None:
    """A listener that accepts, a closed port, and a listener whose backlog is
    full (the kernel drops further SYNs: the connect times out)."""
    with (
        socket.create_server(("127.0.0.1", 0)) as open_port,
        socket.create_server(("127.0.0.1", 0), backlog=0) as full,
        socket.socket() as closed,
    ):
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        fillers = []
        for _ in range(4):  # until the accept queue is full and a connect times out
            try:
                fillers.append(socket.create_connection(full.getsockname(), timeout=0.3))
            except TimeoutError:
                break
        else:
            pytest.fail("the listener's queue never filled")
        ports = [open_port.getsockname()[1], closed_port, full.getsockname()[1]]
        sink = CsvSink(
            tmp_path / TCP_CONNECT.path, probe=TCP_CONNECT.probe, columns=TCP_CONNECT.columns
        )
        probe = TcpConnectProbe(
            targets=["127.0.0.1"], ports=ports, sink=sink, interval_s=0.05, timeout_s=0.2
        )

        async def scenario() -> None:
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(probe.run(stop))
                await until(
                    lambda: all(s.attempts >= 5 for s in probe.stats().values()),
                    timeout_s=20,
                    what="five attempts per port",
                )
                stop.set()

        asyncio.run(scenario())
        sink.close()
        for filler in fillers:
            filler.close()
    by_port = {p.port: p for p in analyse_connects(load_tcp_connect(tmp_path))}
    assert set(by_port[ports[0]].outcomes) == {"connected"}
    assert by_port[ports[0]].connect_ms_median is not None
    assert set(by_port[ports[1]].outcomes) == {"refused"}
    assert set(by_port[ports[2]].outcomes) <= {"timeout", "connected"}
    assert by_port[ports[2]].outcomes.get("timeout", 0) >= 3
    # A port that never connects is one outage, open at both ends.
    (outage,) = by_port[ports[1]].outages
    assert outage.open_start and outage.open_end and outage.upper_ms is None

"""The guest agent as a separate process, on a real X screen (Xvfb), against a real receiver.

The agent runs exactly as inside a guest: its own file, ``python -I``, only
the standard library and Pillow. Its screen shows a clock that changes every
50 ms (tests/test_guest_display.py), so consecutive captures differ.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_guest_display import needs_xvfb

from migration_blackout.analysis.guest import (
    HEARTBEAT_SOURCE,
    analyse_stream,
    load_frames,
    load_heartbeats,
)
from migration_blackout.lab.desktop import ScreenClock, XvfbDisplay
from migration_blackout.probes.guest_agent import HEARTBEAT_V2_BODY, HEARTBEAT_V2_SIZE
from migration_blackout.probes.guest_receiver import GuestReceiver, new_token

AGENT = Path(__file__).resolve().parent.parent / "probes" / "guest_agent.py"
TOKEN = new_token()
DEADLINE_S = 60
FRAME_INTERVAL_S = 0.2

pytestmark = [needs_xvfb, pytest.mark.slow]


@pytest.fixture(scope="module")
def screen() -> Iterator[str]:
    """An X display showing a ticking clock; its name (``:N``)."""
    with XvfbDisplay(1024, 768) as xvfb, ScreenClock(xvfb.display, period_s=0.05):
        yield xvfb.display


class Agent:
    """The agent subprocess; stderr (``--verbose``) is collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.stderr_closed = False
        self._changed = asyncio.Event()

    async def pump_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()
            self._changed = asyncio.Event()
        self.stderr_closed = True
        self._changed.set()

    async def wait_for_line(self, pattern: str) -> re.Match[str]:
        """The first stderr line matching ``pattern``, once the agent has written it."""
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match := re.search(pattern, line):
                    return match
            seen = len(self.lines)
            if self.stderr_closed:
                raise AssertionError(f"agent ended without {pattern!r}: {self.lines[-20:]}")
            await self._changed.wait()

    def captured(self) -> int:
        """Captures logged so far."""
        return sum(1 for line in self.lines if re.search(r"seq=\d+ captured", line))

    async def finish(self) -> dict[str, int]:
        """SIGTERM, wait for the exit, and the counts of its final line."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        out = (await self.process.stdout.read()).decode()
        assert await self.process.wait() == 0, self.lines[-20:]
        return parse_counts(out)


def parse_counts(out: str) -> dict[str, int]:
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("guest-agent: "), out
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", lines[0])}


def agent_command(display: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-I",
        "-W",
        "error",
        str(AGENT),
        "--display",
        display,
        "--verbose",
        *args,
    ]


def agent_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["MB_AGENT_TOKEN"] = TOKEN
    return env


@asynccontextmanager
async def running_agent(display: str, *args: str) -> AsyncIterator[Agent]:
    process = await asyncio.create_subprocess_exec(
        *agent_command(display, *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent_env(),
    )
    agent = Agent(process)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(agent.pump_stderr())
            try:
                yield agent
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def receiving(run_dir: Path, port: int = 0, **options: Any) -> AsyncIterator[GuestReceiver]:
    receiver = GuestReceiver(run_dir, token=TOKEN, port=port, **options)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(receiver.run(stop))
        await receiver.ready.wait()
        try:
            yield receiver
        finally:
            stop.set()


def run_queue_wait_ns(pid: int) -> int:
    """Nanoseconds the threads of ``pid`` have spent runnable but waiting for a CPU
    (the second field of /proc/<pid>/task/<tid>/schedstat), summed."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total


def stored_seqs(run_dir: Path) -> list[int]:
    """Sequence numbers of the stored frames, in arrival order."""
    frames = load_frames(run_dir)
    return [int(s) for s in frames.sort_values("recv_mono_ns")["seq"]]


def assert_frames_differ(paths: list[Path]) -> None:
    pixels = []
    for path in paths:
        with Image.open(path) as image:
            pixels.append(image.convert("RGB").tobytes())
    assert all(a != b for a, b in itertools.pairwise(pixels)), "two captures in a row are equal"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the file itself ---------------------------------------------------------


def test_the_agent_runs_on_its_own(tmp_path: Path) -> None:
    alone = tmp_path / "guest_agent.py"
    shutil.copy(AGENT, alone)
    help_text = subprocess.run(
        [sys.executable, "-I", str(alone), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--url",
        "--folder",
        "--token",
        "--interval",
        "--start-seq",
        "--format",
        "--queue-max",
        "--heartbeat",
        "--heartbeat-hz",
        "--duration",
        "--display",
        "X-MB-Guest-UTC-NS",
        "HMAC-SHA256",
        "frames_dropped=",
    ):
        assert option in help_text
    usage = subprocess.run(
        [sys.executable, "-I", str(alone), "--folder", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MB_AGENT_TOKEN")},
    )
    # No display: a clear message and exit code 2, no traceback.
    assert usage.returncode == 2
    assert "cannot capture the screen" in usage.stderr and "Traceback" not in usage.stderr
    no_token = subprocess.run(
        [sys.executable, "-I", str(alone), "--url", "http://127.0.0.1:9/"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MB_AGENT_TOKEN"},
    )
    assert no_token.returncode == 2 and "token" in no_token.stderr


def test_the_agent_is_python_3_9_with_the_standard_library_and_pillow() -> None:
    source = AGENT.read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # no match, no 3.10+ syntax
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"PIL"}
    assert "from __future__ import annotations" in source  # X | Y only in annotations
    # Names that do not exist on 3.9.
    for newer in ("datetime.UTC", "zip(strict", "slots=True", "kw_only=", "TaskGroup", "tomllib"):
        assert newer not in source


# -- delivery ----------------------------------------------------------------


def test_folder_delivery_numbers_and_stamps_every_capture(screen: str, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    started = time.time_ns()
    result = subprocess.run(
        [
            *agent_command(
                screen,
                "--folder",
                str(share),
                "--interval",
                str(FRAME_INTERVAL_S),
                "--duration",
                "1.5",
                "--start-seq",
                "795",
            )
        ],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=DEADLINE_S,
    )
    assert result.returncode == 0, result.stderr
    counts = parse_counts(result.stdout)
    captured = counts["frames_captured"]
    assert 7 <= captured <= 9  # 1.5 s at 0.2 s: 0, 0.2, ..., 1.4 (+ one slot of slack)
    assert counts["frames_sent"] == captured and counts["frames_dropped"] == 0
    assert counts["heartbeats_sent"] == 0  # no heartbeat destination with --folder
    seqs = list(range(795, 795 + captured))
    assert sorted(p.name for p in share.iterdir()) == sorted(
        [f"seq_{s:06d}.png" for s in seqs] + [f"seq_{s:06d}.json" for s in seqs]
    )  # and no temporary files left behind
    sidecars = [json.loads((share / f"seq_{s:06d}.json").read_text()) for s in seqs]
    assert [s["seq"] for s in sidecars] == seqs
    assert all(s["schema_version"] == 1 and s["format"] == "png" for s in sidecars)
    assert sidecars[0]["file"] == "seq_000795.png"
    assert len({s["agent_id"] for s in sidecars}) == 1
    assert started <= sidecars[0]["guest_utc_ns"] <= time.time_ns()
    steps = [b["guest_mono_ns"] - a["guest_mono_ns"] for a, b in itertools.pairwise(sidecars)]
    assert all(0.15e9 < step < 0.3e9 for step in steps), steps
    assert all(s["capture_ms"] > 0 and s["interval_ns"] == 200_000_000 for s in sidecars)
    with Image.open(share / "seq_000795.png") as image:
        assert image.size == (1024, 768)
    assert_frames_differ([share / f"seq_{s:06d}.png" for s in seqs])


def test_http_delivery_to_the_receiver(screen: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> dict[str, int]:
        async with (
            asyncio.timeout(DEADLINE_S),
            receiving(run_dir) as receiver,
            running_agent(
                screen,
                "--url",
                receiver.url,
                "--interval",
                str(FRAME_INTERVAL_S),
                "--format",
                "jpeg",
            ) as agent,
        ):
            await receiver.contact.wait()
            await receiver.wait_until(lambda s: s.frames_stored >= 6 and s.heartbeats >= 100)
            return await agent.finish()

    counts = asyncio.run(scenario())
    seqs = stored_seqs(run_dir)
    assert seqs == list(range(counts["frames_captured"]))
    assert counts["frames_sent"] == counts["frames_captured"]
    frames = load_frames(run_dir)
    assert set(frames["format"]) == {"jpeg"}
    assert_frames_differ([run_dir / f for f in frames.sort_values("seq")["file"]])
    heartbeats = load_heartbeats(run_dir)
    assert len(heartbeats) == counts["heartbeats_sent"]  # loopback loses nothing
    assert list(heartbeats["seq"]) == list(range(len(heartbeats)))
    assert set(heartbeats["interval_ns"]) == {10_000_000}
    assert heartbeats["agent_id"].nunique() == 1
    # Same machine, same monotonic clock: arrival (from the kernel's stamp) follows the send.
    delay_ms = (heartbeats["recv_mono_ns"] - heartbeats["guest_mono_ns"]) / 1e6
    assert delay_ms.min() > -1 and delay_ms.median() < 20
    assert frames["agent_id"].iloc[0] == heartbeats["agent_id"].iloc[0]


def test_frames_the_receiver_refuses_are_counted_not_retried(screen: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> tuple[dict[str, int], int]:
        # Every capture is larger than the limit: 413, answered before the body is read.
        async with (
            asyncio.timeout(DEADLINE_S),
            receiving(run_dir, max_frame_bytes=2000) as receiver,
            running_agent(
                screen, "--url", receiver.url, "--interval", str(FRAME_INTERVAL_S)
            ) as agent,
        ):
            await receiver.wait_until(lambda s: s.rejects["too_large"] >= 3)
            counts = await agent.finish()
            return counts, receiver.stats.rejects["too_large"]

    counts, refused = asyncio.run(scenario())
    assert counts["frames_sent"] == 0
    assert counts["frames_rejected"] == counts["frames_captured"] == refused
    assert counts["frames_unsent"] == 0 and counts["frames_dropped"] == 0


# -- outages and freezes -----------------------------------------------------


def test_frames_queue_while_the_receiver_is_missing(screen: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()

    async def scenario() -> dict[str, int]:
        async with (
            asyncio.timeout(DEADLINE_S),
            running_agent(
                screen,
                "--url",
                f"http://127.0.0.1:{port}/",
                "--interval",
                str(FRAME_INTERVAL_S),
                "--retry-max",
                "0.2",
            ) as agent,
        ):
            await agent.wait_for_line(r"seq=5 captured")
            await agent.wait_for_line(r"delivery failing")
            async with receiving(run_dir, port=port) as receiver:
                await receiver.wait_until(lambda s: s.frames_stored >= 10)
                return await agent.finish()

    counts = asyncio.run(scenario())
    assert counts["frames_dropped"] == 0
    assert counts["frames_sent"] == counts["frames_captured"]
    # None lost, and in order.
    assert stored_seqs(run_dir) == list(range(counts["frames_captured"]))
    stream = analyse_stream(load_frames(run_dir), source="guest_frames")
    # The capture schedule never waited for the network...
    assert stream.execution_gap is not None
    assert stream.execution_gap.gap_ms < FRAME_INTERVAL_S * 1000 * 1.75
    # ...while the first frame waited for the receiver for more than five intervals (the
    # agent runs on this machine, so its monotonic clock is the receiver's).
    first = load_frames(run_dir).sort_values("seq").iloc[0]
    assert first["recv_mono_ns"] - first["guest_mono_ns"] > 5 * FRAME_INTERVAL_S * 1e9


def test_the_oldest_frames_are_dropped_beyond_the_queue_bound(screen: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()

    async def scenario() -> dict[str, int]:
        async with (
            asyncio.timeout(DEADLINE_S),
            running_agent(
                screen,
                "--url",
                f"http://127.0.0.1:{port}/",
                "--interval",
                str(FRAME_INTERVAL_S),
                "--retry-max",
                "0.2",
                "--queue-max",
                "3",
            ) as agent,
        ):
            await agent.wait_for_line(r"seq=9 captured")
            async with receiving(run_dir, port=port) as receiver:
                await receiver.wait_until(lambda s: s.frames_stored >= 6)
                return await agent.finish()

    counts = asyncio.run(scenario())
    captured = counts["frames_captured"]
    seqs = stored_seqs(run_dir)
    assert seqs == sorted(seqs)  # in order
    assert counts["frames_sent"] == len(seqs)
    dropped = sorted(set(range(captured)) - set(seqs))
    assert (
        counts["frames_dropped"] == len(dropped) >= 6
    )  # 10 captured while away, 3 (+1 in flight) kept
    assert max(dropped) < 10  # only frames from the outage; everything after arrived
    assert counts["frames_unsent"] == 0


class BlackholeProxy:
    """A TCP relay that can swallow everything, as a network that drops packets does.

    A connection that lost data while the hole was open stays dead (nothing
    more is relayed on it): the agent must time out and reconnect.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.blackhole = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dead = [False]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while chunk := await source.read(65536):
                    if self.blackhole:
                        dead[0] = True
                    if not dead[0]:
                        sink.write(chunk)
                        await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(pump(reader, up_writer))
                tasks.create_task(pump(up_reader, writer))
        finally:
            writer.close()
            up_writer.close()
            self._writers -= {writer, up_writer}


def test_frames_survive_a_network_that_drops_everything(screen: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hole: dict[str, int] = {}

    async def scenario() -> dict[str, int]:
        async with asyncio.timeout(DEADLINE_S), receiving(run_dir) as receiver:
            host, port = receiver.address
            async with (
                BlackholeProxy(port) as proxy,
                running_agent(
                    screen,
                    "--url",
                    f"http://127.0.0.1:{proxy.port}/",
                    "--heartbeat",
                    f"{host}:{port}",
                    "--interval",
                    str(FRAME_INTERVAL_S),
                    "--http-timeout",
                    "0.5",
                    "--retry-max",
                    "0.2",
                ) as agent,
            ):
                await receiver.wait_until(lambda s: s.frames_stored >= 3)
                proxy.blackhole = True
                hole["start"] = time.monotonic_ns()
                await agent.wait_for_line(r"delivery failing")
                # Captures go on while uploads hang for their timeout.
                first = agent.captured()
                await agent.wait_for_line(rf"seq={first + 8} captured")
                proxy.blackhole = False
                hole["end"] = time.monotonic_ns()
                await agent.wait_for_line(r"delivery works again")
                captured = agent.captured()
                await receiver.wait_until(lambda s: s.frames_stored >= captured)
                return await agent.finish()

    counts = asyncio.run(scenario())
    assert counts["frames_dropped"] == 0 and counts["frames_sent"] == counts["frames_captured"]
    assert stored_seqs(run_dir) == list(range(counts["frames_captured"]))
    frames = analyse_stream(load_frames(run_dir), source="guest_frames")
    assert frames.execution_gap is not None
    assert frames.execution_gap.gap_ms < FRAME_INTERVAL_S * 1000 * 1.75
    assert frames.delivery_gap is not None
    hole_ms = (hole["end"] - hole["start"]) / 1e6
    assert frames.delivery_gap.gap_ms >= hole_ms - FRAME_INTERVAL_S * 1000
    # Heartbeats went around the hole: the guest never stopped.
    heartbeat = analyse_stream(load_heartbeats(run_dir), source=HEARTBEAT_SOURCE)
    assert heartbeat.missing == 0
    assert heartbeat.execution_gap is not None and heartbeat.execution_gap.gap_ms < 100


def test_a_frozen_agent_shows_the_freeze_in_its_heartbeats(screen: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    truth: dict[str, Any] = {}

    async def scenario() -> dict[str, int]:
        async with (
            asyncio.timeout(DEADLINE_S),
            receiving(run_dir) as receiver,
            running_agent(
                screen, "--url", receiver.url, "--interval", str(FRAME_INTERVAL_S)
            ) as agent,
        ):
            await receiver.contact.wait()
            await receiver.wait_until(lambda s: s.heartbeats >= 100 and s.frames_stored >= 3)
            pid = agent.process.pid
            before_stop = time.monotonic_ns()
            os.kill(pid, signal.SIGSTOP)
            after_stop = time.monotonic_ns()
            await asyncio.sleep(1.5)  # the freeze being measured, not a wait for a condition
            waited_before = run_queue_wait_ns(pid)
            before_cont = time.monotonic_ns()
            os.kill(pid, signal.SIGCONT)
            after_cont = time.monotonic_ns()
            truth["ms"] = ((before_cont + after_cont) - (before_stop + after_stop)) / 2e6
            truth["uncertainty_ms"] = (
                (after_stop - before_stop) + (after_cont - before_cont)
            ) / 2e6
            beats, stored = receiver.stats.heartbeats, receiver.stats.frames_stored
            await receiver.wait_until(
                lambda s: s.heartbeats >= beats + 50 and s.frames_stored >= stored + 3
            )
            truth["run_queue_wait_ms"] = (run_queue_wait_ns(pid) - waited_before) / 1e6
            return await agent.finish()

    counts = asyncio.run(scenario())
    stream = analyse_stream(load_heartbeats(run_dir), source=HEARTBEAT_SOURCE)
    gap = stream.execution_gap
    assert gap is not None
    # Scheduling of the resumed threads: 3 ms on a quiet machine; on a busy one the
    # thawed agent waits for a CPU, and the kernel counts that wait (schedstat), so
    # the time its threads spent runnable but not running since the resume is allowed.
    tolerance_ms = 3.0 + truth["uncertainty_ms"] + truth["run_queue_wait_ms"]
    # The gap is within one heartbeat interval of the true freeze, and its bounds hold it.
    assert truth["ms"] - tolerance_ms <= gap.gap_ms <= truth["ms"] + gap.interval_ms + tolerance_ms
    assert gap.lower_ms - tolerance_ms <= truth["ms"] <= gap.upper_ms + tolerance_ms
    assert gap.interval_ms == 10
    # Frozen, not lost: no heartbeat is missing.
    assert stream.missing == 0
    assert stream.delivery_gap is not None and stream.delivery_gap.missing_between == 0
    # No capture during the freeze, and no number skipped for it.
    seqs = stored_seqs(run_dir)
    assert seqs == list(range(counts["frames_captured"]))
    frames = analyse_stream(load_frames(run_dir), source="guest_frames")
    assert frames.missing == 0
    assert frames.execution_gap is not None
    assert truth["ms"] - tolerance_ms <= frames.execution_gap.gap_ms
    assert frames.execution_gap.gap_ms <= truth["ms"] + FRAME_INTERVAL_S * 1000 + tolerance_ms


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_frozen_agent_with_witnesses_beats_at_once_on_resuming(tmp_path: Path) -> None:
    # With witnesses the heartbeat waits in select(), which a stopped process
    # restarts with the time that was left when it stopped: the first heartbeat
    # after a freeze (the lab's SIGSTOP, its brownout throttle) came up to an
    # interval late. At 10 Hz that is up to 100 ms; sent at once, it is ~0.1 ms.
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(DEADLINE_S)
    agent = subprocess.Popen(
        [
            sys.executable, "-I", str(AGENT), "--no-frames",
            "--heartbeat", f"127.0.0.1:{receiver.getsockname()[1]}", "--heartbeat-hz", "10",
            "--witness-port", "0", "--witness-host", "127.0.0.1",
        ],
        env={**os.environ, "MB_AGENT_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    late_ms = []
    try:
        receiver.recv(HEARTBEAT_V2_SIZE)  # running
        for _ in range(7):
            os.kill(agent.pid, signal.SIGSTOP)
            deadline = time.monotonic() + DEADLINE_S
            while _process_state(agent.pid) != "T":
                assert time.monotonic() < deadline, "the agent never stopped"
            time.sleep(0.15)  # the freeze being measured: a slot passes while stopped
            receiver.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    receiver.recv(HEARTBEAT_V2_SIZE)  # what was sent before the stop
            receiver.settimeout(DEADLINE_S)
            continued = time.monotonic_ns()
            os.kill(agent.pid, signal.SIGCONT)
            first = receiver.recv(HEARTBEAT_V2_SIZE)
            late_ms.append((HEARTBEAT_V2_BODY.unpack_from(first)[7] - continued) / 1e6)
    finally:
        agent.send_signal(signal.SIGCONT)
        agent.terminate()
        agent.communicate(timeout=DEADLINE_S)
        receiver.close()
    # The median: a busy machine may hold a thawed process off a CPU once or twice.
    assert statistics.median(late_ms) < 20, late_ms

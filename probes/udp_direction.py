"""The direction probe: UDP probes the guest agent answers, so every lost probe
is known as lost on the way in or on the way out.

Every ``interval_s`` the harness sends the agent (``--witness-port``) a
probe carrying a session number, a sequence number and an HMAC keyed by the
run token (``probes/guest_agent.py``, version 1). The agent answers each probe
it receives with its own receive stamps, the number of probes of this
session it has received so far, the highest sequence number it has seen and
where the unbroken run of consecutive numbers it last received began: counts,
not a window, so a blackout of any length is accounted for. When probes a
and b are answered and the n probes between them are not, the answer to b
says how many of those n reached the guest (their answers were lost on the
way out), the others were lost on the way in, and from which probe on the
guest received every probe again.

Rows (``raw/udp_direction.csv``; columns ``UDP_DIRECTION.columns``), one per
attempt, written when it resolves (rows are not in send order; sort by
``seq``):

``reply``      the agent's answer arrived within ``timeout_s``
``timeout``    no answer within ``timeout_s``
``error``      the kernel refused the send (``detail``: errno name), or an
               ICMP error came back for the socket
``unresolved`` the run stopped before the attempt's deadline

plus ``late`` rows for answers to attempts already written as ``timeout``
and ``duplicate`` rows for further answers (the network duplicated a probe or
an answer); the attempt's own row stands.

Clocks: ``send_*`` read immediately before ``send``; ``recv_*`` the kernel's
receive stamp (SO_TIMESTAMPNS, CLOCK_REALTIME) moved to the monotonic clock
by a clock pair read as the socket is drained; ``guest_recv_*`` the agent's
clocks when it read the probe (another machine's clocks: compare them only
with each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import random
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.runformat import UDP_DIRECTION

from .clock import clock_pair
from .guest_agent import (
    ANSWER_BODY,
    ANSWER_MAGIC,
    ANSWER_SIZE,
    WITNESS_DEFAULT_PORT,
    WITNESS_VERSION,
    probe_datagram,
)
from .schedule import send_on_schedule
from .sink import CsvSink, with_new_csv

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_DRAIN_BATCH = 256


def default_timeout_s(interval_s: float) -> float:
    """As the ICMP probe's: long enough that a slow answer is not counted lost."""
    return max(1.0, 3 * interval_s)


@dataclass
class _Attempt:
    seq: int
    send_mono_ns: int
    send_utc_ns: int
    deadline_ns: int
    answered: bool = False


@dataclass(frozen=True)
class DirectionStats:
    sent: int
    answered: int
    lost: int
    current_loss_streak: int


class UdpDirectionProbe:
    """Probe the agent at ``target``:``port`` every ``interval_s``; one row per
    attempt into ``sink`` (columns ``UDP_DIRECTION.columns``). Same shape as
    every probe: ``ready``, ``run(stop)``; ``stats()`` for progress lines."""

    def __init__(
        self,
        *,
        target: str,
        token: str,
        sink: CsvSink,
        port: int = WITNESS_DEFAULT_PORT,
        interval_s: float = 0.01,
        timeout_s: float | None = None,
        session: int | None = None,
    ) -> None:
        if not interval_s >= 0.0005:
            raise ValueError(f"interval_s={interval_s!r}: at least 0.5 ms")
        if tuple(sink.columns) != UDP_DIRECTION.columns:
            raise ValueError("the sink's columns must be UDP_DIRECTION.columns")
        self.target = target
        self.port = port
        self.interval_s = float(interval_s)
        self.timeout_s = default_timeout_s(interval_s) if timeout_s is None else float(timeout_s)
        self.session = random.getrandbits(64) if session is None else session
        self.sink = sink
        self._key = token.encode("ascii")
        self.ready = asyncio.Event()
        self._outstanding: dict[int, _Attempt] = {}
        self._deadlines: deque[_Attempt] = deque()
        self._recent: dict[int, _Attempt] = {}  # resolved, for late / duplicate answers
        self._recent_order: deque[int] = deque()
        self._sock: socket.socket | None = None
        self._drained: asyncio.Event | None = None  # set when the last answer due came
        self._sent = 0
        self._answered = 0
        self._lost = 0
        self._streak = 0

    @classmethod
    def create(
        cls, run_dir: Path, *, extra_meta: Mapping[str, Any] | None = None, **settings: Any
    ) -> UdpDirectionProbe:
        """A probe writing a new ``raw/udp_direction.csv`` in ``run_dir``."""
        interval_s = float(settings.get("interval_s", 0.01))
        timeout_s = settings.get("timeout_s")
        timeout_s = default_timeout_s(interval_s) if timeout_s is None else float(timeout_s)
        session = random.getrandbits(64)
        meta = {
            "target": settings["target"],
            "port": int(settings.get("port", WITNESS_DEFAULT_PORT)),
            "interval_s": interval_s,
            "timeout_s": timeout_s,
            "session": f"{session:016x}",
            "witness_version": WITNESS_VERSION,
            "send_stamp": "clocks read immediately before send()",
            "recv_stamp": "kernel SO_TIMESTAMPNS (CLOCK_REALTIME), monotonic via a clock pair",
            **(extra_meta or {}),
        }
        return with_new_csv(
            Path(run_dir) / UDP_DIRECTION.path,
            lambda sink: cls(sink=sink, session=session, **{**settings, "timeout_s": timeout_s}),
            probe=UDP_DIRECTION.probe,
            columns=UDP_DIRECTION.columns,
            meta=meta,
        )

    def stats(self) -> DirectionStats:
        return DirectionStats(self._sent, self._answered, self._lost, self._streak)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set, then wait for the answers still due (up
        to ``timeout_s``) and write every remaining row."""
        loop = asyncio.get_running_loop()
        family, _, _, _, address = socket.getaddrinfo(
            self.target, self.port, type=socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock = sock
        reading = False
        try:
            sock.setblocking(False)
            if _SO_TIMESTAMPNS is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.connect(address)
            loop.add_reader(sock.fileno(), self._drain)
            reading = True
            interval_ns = max(1, round(self.interval_s * 1e9))

            def send(k: int, _due_ns: int) -> None:
                self._send(k)
                self._expire(time.monotonic_ns())
                if not self.ready.is_set():
                    self.ready.set()
                self.sink.flush()

            await send_on_schedule(interval_ns, stop, send)
            if self._outstanding:
                self._drained = asyncio.Event()
                wait_s = (self._deadlines[-1].deadline_ns - time.monotonic_ns()) / 1e9
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait_s)):
                        await self._drained.wait()
            self._expire(time.monotonic_ns())
        finally:
            if reading:
                loop.remove_reader(sock.fileno())
            for attempt in list(self._outstanding.values()):
                self._write(attempt, "unresolved")
            self._outstanding.clear()
            sock.close()
            self.sink.flush()

    # -- sending and timing out ------------------------------------------------

    def _send(self, seq: int) -> None:
        assert self._sock is not None
        pair = clock_pair()
        datagram = probe_datagram(self._key, self.session, seq, pair.mono_ns)
        attempt = _Attempt(seq, pair.mono_ns, pair.utc_ns, pair.mono_ns + int(self.timeout_s * 1e9))
        self._sent += 1
        try:
            self._sock.send(datagram)
        except OSError as error:
            self._write(attempt, "error", detail=errno.errorcode.get(error.errno or 0, str(error)))
            self._lost += 1
            self._streak += 1
            return
        self._outstanding[seq] = attempt
        self._deadlines.append(attempt)

    def _expire(self, now_ns: int) -> None:
        while self._deadlines and self._deadlines[0].deadline_ns <= now_ns:
            attempt = self._deadlines.popleft()
            if self._outstanding.pop(attempt.seq, None) is not None:
                self._write(attempt, "timeout")
                self._remember(attempt)
                self._lost += 1
                self._streak += 1

    def _remember(self, attempt: _Attempt) -> None:
        self._recent[attempt.seq] = attempt
        self._recent_order.append(attempt.seq)
        limit = max(1024, int(4 * self.timeout_s / self.interval_s))
        while len(self._recent_order) > limit:
            self._recent.pop(self._recent_order.popleft(), None)

    # -- answers -----------------------------------------------------------------

    def _drain(self) -> None:
        assert self._sock is not None
        received = []
        for _ in range(_DRAIN_BATCH):
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(ANSWER_SIZE + 1, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # ECONNREFUSED: an ICMP port unreachable for a probe (nothing
                # listens there); the attempt times out and says so.
                continue
            kernel_utc_ns = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack_from("@qq", payload)
                    kernel_utc_ns = seconds * 1_000_000_000 + nanos
            received.append((data, kernel_utc_ns))
        if not received:
            return
        now = clock_pair()
        for data, kernel_utc_ns in received:
            utc_ns = now.utc_ns if kernel_utc_ns is None else kernel_utc_ns
            self._answer(data, utc_ns - now.offset_ns, utc_ns)
        self.sink.flush()

    def _answer(self, data: bytes, recv_mono_ns: int, recv_utc_ns: int) -> None:
        if len(data) != ANSWER_SIZE or data[:4] != ANSWER_MAGIC or data[4] != WITNESS_VERSION:
            return
        body, mac = data[: ANSWER_BODY.size], data[ANSWER_BODY.size :]
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            return
        fields = ANSWER_BODY.unpack(body)
        agent_id, session, seq, guest_mono, guest_utc, received, highest, run_start = fields[4:]
        if session != self.session:
            return
        answer = {
            "recv_mono_ns": recv_mono_ns,
            "recv_utc_ns": recv_utc_ns,
            "guest_recv_mono_ns": guest_mono,
            "guest_recv_utc_ns": guest_utc,
            "received": received,
            "highest_seq": highest,
            "run_start_seq": run_start,
            "agent_id": f"{agent_id:016x}",
        }
        attempt = self._outstanding.pop(seq, None)
        if attempt is not None:
            attempt.answered = True
            self._write(attempt, "reply", **answer)
            self._remember(attempt)
            self._answered += 1
            self._streak = 0
            if not self._outstanding and self._drained is not None:
                self._drained.set()
            return
        earlier = self._recent.get(seq)
        if earlier is not None:
            self._write(earlier, "duplicate" if earlier.answered else "late", **answer)

    def _write(self, attempt: _Attempt, outcome: str, **answer: Any) -> None:
        recv = answer.get("recv_mono_ns")
        self.sink.write_row(
            (
                attempt.seq,
                outcome,
                attempt.send_mono_ns,
                attempt.send_utc_ns,
                recv,
                answer.get("recv_utc_ns"),
                None if recv is None else recv - attempt.send_mono_ns,
                answer.get("guest_recv_mono_ns"),
                answer.get("guest_recv_utc_ns"),
                answer.get("received"),
                answer.get("highest_seq"),
                answer.get("run_start_seq"),
                answer.get("agent_id"),
                answer.get("detail"),
            )
        )

"""The harness end of the guest agent: numbered screenshots over HTTP, heartbeats over UDP.

``probes/guest_agent.py`` runs inside the guest; this receiver runs in the
harness's asyncio loop like every other probe: ``ready`` is set once it
listens, ``run(stop)`` serves until ``stop`` is set and then closes its sockets
and flushes its files. It listens on one address and port number, TCP for
``POST /frames`` and UDP for heartbeats, and writes (docs/run-format.md):

* ``frames/seq_000795.png`` (or ``.jpg``): each accepted capture, named from
  its sequence number only;
* ``raw/guest_frames.jsonl``: one record per accepted capture, the guest's
  stamps beside the harness clocks at arrival;
* ``raw/guest_heartbeat.csv``: one row per authenticated heartbeat, stamped
  with the kernel's receive time where the OS gives one;
* ``raw/guest_rejects.jsonl``: refused requests and datagrams, sampled at a
  bounded rate so a flood cannot fill the disk, with exact totals at the end.

Everything from the guest is untrusted: the run token is checked in constant
time (HTTP bearer token; HMAC-SHA256 of each datagram), the body size is
capped before and while reading, an image must decode with Pillow within a
pixel limit checked from its header before decoding, and nothing the client
sends becomes part of a path except the validated integer sequence number.

Nothing the guest sends may slow another witness: images are decoded in a
child process of their own, one at a time, each within a time limit, with a
bounded queue (``probes.image_check``); a malformed request is a one-line,
rate-limited entry in ``raw/guest_rejects.jsonl``, never a traceback; a full
disk is a refusal (507) that the same sequence number may retry once there
is room again; and once ``run`` returned nothing more is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import socket
import struct
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from migration_blackout.runformat import FRAMES, FRAMES_DIR, HEARTBEAT, REJECTS

from .clock import ClockPair, clock_pair
from .guest_agent import (
    DEFAULT_MAX_FRAME_BYTES,
    HEARTBEAT_BODY,
    HEARTBEAT_MAGIC,
    HEARTBEAT_SIZE,
    HEARTBEAT_V2_BODY,
    HEARTBEAT_V2_SIZE,
    HEARTBEAT_V2_VERSION,
    HEARTBEAT_VERSION,
    bind_tcp_and_udp,
)
from .image_check import FrameRefused, ImageChecker
from .sink import CsvSink, JsonlSink

# 8K UHD is 33 Mpixel; Pillow's own bomb warning starts at 89 Mpixel, so an
# image that passes this check never triggers it.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_SEQ_DIGITS = 9  # seq < 10**9
_SEQ_RE = re.compile(rf"[0-9]{{1,{MAX_SEQ_DIGITS}}}")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_AGENT_ID_RE = re.compile(r"[0-9a-f]{16}")
# Heartbeat sequence numbers travel as u64; the record keeps signed 64-bit integers.
MAX_HEARTBEAT_SEQ = 2**63 - 1
# The image decoder's budget (probes/image_check.py): per image, and images waiting.
DEFAULT_DECODE_TIME_LIMIT_S = 2.0
DEFAULT_DECODE_QUEUE_LIMIT = 4
# Linux: SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) gives each datagram's kernel arrival time.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
# When the request being handled arrived (set by the middleware, read by the handler).
_ARRIVAL: ContextVar[ClockPair] = ContextVar("guest_frame_arrival")
_UDP_BATCH = 256  # datagrams read per readiness callback, so a flood cannot starve the loop


def new_token() -> str:
    """A fresh run token (256 bits, URL-safe text): give it to the agent and the receiver."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``per_s`` on average, bursts of up to ``burst``."""

    per_s: float
    burst: int


class _Buckets:
    """Token buckets per key (the client's address), on the monotonic clock."""

    _MAX_KEYS = 4096

    def __init__(self, limit: RateLimit) -> None:
        self._limit = limit
        self._state: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now_ns: int) -> bool:
        tokens, last_ns = self._state.get(key, (float(self._limit.burst), now_ns))
        tokens = min(
            float(self._limit.burst), tokens + (now_ns - last_ns) / 1e9 * self._limit.per_s
        )
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._state) >= self._MAX_KEYS and key not in self._state:
            self._state.clear()  # many addresses: forget them all rather than grow
        self._state[key] = (tokens, now_ns)
        return allowed


@dataclass
class GuestReceiverStats:
    """Counts so far; ``rejects`` by reason (the names in guest_rejects.jsonl)."""

    frames_stored: int = 0
    frame_bytes: int = 0
    uploads_in_progress: int = 0
    heartbeats: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    rejects_logged: int = 0
    write_errors: int = 0  # records that could not be written (a full disk)

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())


@dataclass(frozen=True)
class _StoredImage:
    image_format: str
    width: int
    height: int
    file: str


class _RejectsFromServerLog(logging.Handler):
    """aiohttp's log of a request it could not handle (a malformed request
    line or header, a handler that failed) as a rate-limited reject entry."""

    def __init__(self, receiver: GuestReceiver) -> None:
        super().__init__(logging.DEBUG)
        self._receiver = receiver

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is None or record.exc_info[1] is None:
            return  # aiohttp's notes on clients going away: nothing refused
        error = record.exc_info[1]
        malformed = isinstance(error, HttpProcessingError)
        reason = "malformed_request" if malformed else "server_error"
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        with contextlib.suppress(Exception):  # a log handler must never raise
            self._receiver._reject(
                "http",
                reason,
                self._receiver._clock(),
                str(remote or ""),
                status=400 if malformed else 500,
                detail=f"{type(error).__name__}: {error}"[:300],
            )


class GuestReceiver:
    """Receives the guest agent's frames (HTTP) and heartbeats (UDP) into a run folder.

    ``port=0`` picks an ephemeral port (the same number for TCP and UDP);
    ``address`` and ``url`` tell it once ``ready`` is set. ``contact`` is set
    once the first frame and the first heartbeat have arrived, for a caller
    that waits for the agent with a deadline::

        async with asyncio.timeout(30):
            await receiver.contact.wait()
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        request_rate: RateLimit = RateLimit(per_s=200.0, burst=400),
        unauthorized_rate: RateLimit = RateLimit(per_s=20.0, burst=50),
        reject_log_rate: RateLimit = RateLimit(per_s=2.0, burst=50),
        shutdown_timeout_s: float = 5.0,
        decode_time_limit_s: float = DEFAULT_DECODE_TIME_LIMIT_S,
        decode_queue_limit: int = DEFAULT_DECODE_QUEUE_LIMIT,
        clock: Callable[[], ClockPair] = clock_pair,
    ) -> None:
        """``decode_time_limit_s`` and ``decode_queue_limit``: the budget of
        the child process that decodes images (``probes.image_check``)."""
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError("the token must be non-empty printable ASCII without spaces")
        self.run_dir = Path(run_dir)
        self._token = token.encode("ascii")
        self._bearer = b"Bearer " + self._token
        self._host = host
        self._port = port
        self.max_frame_bytes = max_frame_bytes
        self.max_pixels = max_pixels
        # Requests with the token and without it are limited apart: a flood
        # without the token cannot starve the agent.
        self._authorized_buckets = _Buckets(request_rate)
        self._unauthorized_buckets = _Buckets(unauthorized_rate)
        self._reject_log_bucket = _Buckets(reject_log_rate)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._clock = clock
        self.ready = asyncio.Event()
        self.first_frame = asyncio.Event()
        self.first_heartbeat = asyncio.Event()
        self.contact = asyncio.Event()
        self.stats = GuestReceiverStats()
        self._progress = asyncio.Event()  # replaced by a fresh one at every change
        self._address: tuple[str, int] | None = None
        self._seqs: set[int] = set()  # stored or being stored
        self._suppressed = 0
        self._kernel_stamps = False
        self._frames: JsonlSink | None = None
        self._heartbeats: CsvSink | None = None
        self._rejects: JsonlSink | None = None
        self._checker = ImageChecker(
            max_pixels=max_pixels,
            time_limit_s=decode_time_limit_s,
            queue_limit=decode_queue_limit,
        )
        self._accepting = False  # False once stopping: nothing is stored or written after
        # aiohttp's own errors (a malformed request line, a handler that
        # failed) land here as rejects instead of tracebacks on stderr.
        self._server_log = logging.Logger(f"guest-receiver-{id(self):x}", logging.DEBUG)
        self._server_log.addHandler(_RejectsFromServerLog(self))

    @property
    def image_checker(self) -> ImageChecker:
        """The child process that decodes images, and its queue."""
        return self._checker

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the same port number serves TCP and UDP."""
        if self._address is None:
            raise RuntimeError("the receiver is not listening yet: wait for ready")
        return self._address

    @property
    def url(self) -> str:
        """The agent's ``--url``."""
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    async def wait_until(self, predicate: Callable[[GuestReceiverStats], bool]) -> None:
        """Return once ``predicate(stats)`` holds; wrap in ``asyncio.timeout`` for a deadline."""
        while not predicate(self.stats):
            await self._progress.wait()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        tcp, udp = bind_tcp_and_udp(self._host, self._port, backlog=128)
        runner: web.AppRunner | None = None
        reading_udp = False
        try:
            host, port = tcp.getsockname()[:2]
            self._address = (host, port)
            if _SO_TIMESTAMPNS is not None:
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                    self._kernel_stamps = True
            self._open_files(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
            (self.run_dir / FRAMES_DIR).mkdir(exist_ok=True)
            await self._checker.start()
            app = web.Application(middlewares=[self._guard], logger=self._server_log)
            app.router.add_post("/frames", self._post_frame)
            runner = web.AppRunner(
                app,
                access_log=None,
                logger=self._server_log,
                shutdown_timeout=self._shutdown_timeout_s,
                auto_decompress=False,  # a gzip body is not an image: no inflating on our side
                lingering_time=1.0,
            )
            await runner.setup()
            site = web.SockSite(runner, tcp)
            await site.start()
            loop.add_reader(udp.fileno(), self._drain_udp, udp)
            reading_udp = True
            self._accepting = True
            self.ready.set()
            await stop.wait()
        finally:
            self._accepting = False
            self._checker.close()  # a decode in progress is refused at once
            if reading_udp:
                loop.remove_reader(udp.fileno())
            udp.close()
            if runner is not None:
                await runner.cleanup()  # waits for requests in progress, closes the socket
            tcp.close()
            self._close_files()

    # -- files ---------------------------------------------------------------

    def _open_files(self, listen: str) -> None:
        meta = {"listen": listen}
        self._frames = JsonlSink(
            self.run_dir / FRAMES.path,
            probe=FRAMES.probe,
            meta={
                **meta,
                "max_frame_bytes": self.max_frame_bytes,
                "max_pixels": self.max_pixels,
                "frames_dir": FRAMES_DIR,
            },
        )
        self._heartbeats = CsvSink(
            self.run_dir / HEARTBEAT.path,
            probe=HEARTBEAT.probe,
            columns=HEARTBEAT.columns,
            meta={
                **meta,
                "heartbeat_version": HEARTBEAT_V2_VERSION,
                "recv_stamp": "kernel" if self._kernel_stamps else "event_loop",
            },
        )
        self._rejects = JsonlSink(self.run_dir / REJECTS.path, probe=REJECTS.probe, meta=meta)

    def _close_files(self) -> None:
        if self._rejects is not None:
            with contextlib.suppress(OSError):  # a full disk: the totals are lost, not the run
                self._rejects.write(
                    {
                        "totals": True,
                        "by_reason": dict(sorted(self.stats.rejects.items())),
                        "logged": self.stats.rejects_logged,
                        "frames_stored": self.stats.frames_stored,
                        "heartbeats": self.stats.heartbeats,
                        "write_errors": self.stats.write_errors,
                    }
                )
        for sink in (self._frames, self._heartbeats, self._rejects):
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.close()

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _note_first(self, event: asyncio.Event) -> None:
        if not event.is_set():
            event.set()
            if self.first_frame.is_set() and self.first_heartbeat.is_set():
                self.contact.set()

    def _reject(
        self, channel: str, reason: str, at: ClockPair, from_addr: str, **details: Any
    ) -> None:
        """Count a refusal; log it unless refusals are coming faster than the log rate."""
        self.stats.rejects[reason] += 1
        self._notify_progress()
        if not self._reject_log_bucket.allow("log", at.mono_ns):
            self._suppressed += 1
            return
        record: dict[str, Any] = {
            "channel": channel,
            "reason": reason,
            "recv_mono_ns": at.mono_ns,
            "recv_utc_ns": at.utc_ns,
            "from_addr": from_addr,
            **details,
            "suppressed_before": self._suppressed,
        }
        self._suppressed = 0
        assert self._rejects is not None
        try:
            self._rejects.write(record)
        except OSError:
            self.stats.write_errors += 1  # the refusal stands and is counted
            return
        self.stats.rejects_logged += 1

    # -- HTTP ----------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._bearer)

    def _refuse(
        self, request: web.Request, at: ClockPair, status: int, reason: str, detail: str = ""
    ) -> web.Response:
        self._reject(
            "http",
            reason,
            at,
            request.remote or "",
            status=status,
            method=request.method[:16],
            path=request.raw_path[:200],
            seq_header=request.headers.get("X-MB-Seq", "")[:40] or None,
            detail=detail[:300] or None,
        )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        response = web.Response(status=status, text=f"{reason}\n", headers=headers)
        if not request.content.is_eof():
            response.force_close()  # do not read an unwanted body
        return response

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        at = self._clock()
        _ARRIVAL.set(at)
        authorized = self._authorized(request)
        buckets = self._authorized_buckets if authorized else self._unauthorized_buckets
        if not buckets.allow(request.remote or "", at.mono_ns):
            return self._refuse(request, at, 429, "rate_limited")
        if not authorized:
            has_header = "Authorization" in request.headers
            return self._refuse(
                request, at, 401, "unauthorized", "wrong token" if has_header else "no token"
            )
        try:
            return await handler(request)
        except web.HTTPException as error:  # the router's 404 and 405
            if error.status < 400:
                raise
            reason = {404: "not_found", 405: "method_not_allowed"}.get(error.status, "http_error")
            return self._refuse(request, at, error.status, reason)

    def _frame_headers(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """The guest's stamps from the request headers, validated; ``FrameRefused`` if malformed."""

        def integer(name: str, required: bool) -> int | None:
            text = headers.get(name)
            if text is None:
                if required:
                    raise FrameRefused(400, "bad_header", f"{name} missing")
                return None
            if not _INT_RE.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
                raise FrameRefused(400, "bad_header", f"{name} is not an integer")
            return int(text)

        capture_ms: float | None = None
        if (text := headers.get("X-MB-Capture-MS")) is not None:
            try:
                capture_ms = float(text)
            except ValueError:
                capture_ms = math.nan
            if not (math.isfinite(capture_ms) and 0 <= capture_ms < 1e7) or len(text) > 32:
                raise FrameRefused(400, "bad_header", "X-MB-Capture-MS is not a duration in ms")
        agent_id = headers.get("X-MB-Agent-ID")
        if agent_id is not None and not _AGENT_ID_RE.fullmatch(agent_id):
            raise FrameRefused(400, "bad_header", "X-MB-Agent-ID is not 16 hex digits")
        return {
            "guest_utc_ns": integer("X-MB-Guest-UTC-NS", True),
            "guest_mono_ns": integer("X-MB-Guest-Mono-NS", True),
            "capture_ms": capture_ms,
            "interval_ns": integer("X-MB-Interval-NS", False),
            "agent_id": agent_id,
            "guest_send_mono_ns": integer("X-MB-Guest-Send-Mono-NS", False),
        }

    async def _read_body(self, request: web.Request) -> bytes:
        body = bytearray()
        try:
            while chunk := await request.content.readany():
                body += chunk
                if len(body) > self.max_frame_bytes:
                    raise FrameRefused(413, "too_large", f"body > {self.max_frame_bytes} bytes")
        except FrameRefused:
            raise
        except Exception as error:  # the client went away mid-body
            raise FrameRefused(400, "incomplete_body", f"{type(error).__name__}: {error}") from None
        return bytes(body)

    def _store(self, seq: int, data: bytes, image_format: str) -> str:
        """Write the checked image under its seq name (a temporary name, then
        renamed); on any failure nothing is left behind."""
        name = f"seq_{seq:06d}{'.png' if image_format == 'png' else '.jpg'}"
        folder = self.run_dir / FRAMES_DIR
        tmp = folder / f".{name}.part"
        try:
            with open(tmp, "xb") as handle:
                handle.write(data)
            os.replace(tmp, folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return f"{FRAMES_DIR}/{name}"

    async def _post_frame(self, request: web.Request) -> web.StreamResponse:
        at = _ARRIVAL.get()
        seq_text = request.headers.get("X-MB-Seq", "")
        if not _SEQ_RE.fullmatch(seq_text):
            return self._refuse(
                request, at, 400, "bad_seq", f"X-MB-Seq must be 0 to {10**MAX_SEQ_DIGITS - 1}"
            )
        seq = int(seq_text)
        try:
            stamps = self._frame_headers(request.headers)
        except FrameRefused as refusal:
            return self._refuse(request, at, refusal.status, refusal.reason, refusal.detail)
        if request.content_length is not None and request.content_length > self.max_frame_bytes:
            return self._refuse(
                request,
                at,
                413,
                "too_large",
                f"Content-Length {request.content_length} > {self.max_frame_bytes}",
            )
        if seq in self._seqs:
            return self._refuse(request, at, 409, "duplicate_seq", f"seq {seq} already stored")
        self._seqs.add(seq)
        self.stats.uploads_in_progress += 1
        self._notify_progress()
        stored = False
        try:
            data = await self._read_body(request)
            checked = await self._checker.check(data)
            if not self._accepting:
                raise FrameRefused(503, "shutting_down", "the receiver is closing")
            done = self._clock()
            file = self._store(seq, data, checked.image_format)
            assert self._frames is not None
            try:
                self._frames.write(
                    {
                        "seq": seq,
                        "file": file,
                        "format": checked.image_format,
                        "width": checked.width,
                        "height": checked.height,
                        "bytes": len(data),
                        **stamps,
                        "recv_mono_ns": at.mono_ns,
                        "recv_utc_ns": at.utc_ns,
                        "stored_mono_ns": done.mono_ns,
                        "from_addr": request.remote or "",
                    }
                )
            except BaseException:
                with contextlib.suppress(OSError):
                    (self.run_dir / file).unlink()  # a frame without its record is no frame
                raise
            stored = True
        except FrameRefused as refusal:
            return self._refuse(request, at, refusal.status, refusal.reason, refusal.detail)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.stats.write_errors += 1
            # The same seq may come again once there is room: it is not stored.
            return self._refuse(request, at, 507, "storage_full", os.strerror(error.errno))
        finally:
            if not stored:
                self._seqs.discard(seq)
            self.stats.uploads_in_progress -= 1
            self._notify_progress()
        self.stats.frames_stored += 1
        self.stats.frame_bytes += len(data)
        self._note_first(self.first_frame)
        self._notify_progress()
        return web.json_response({"seq": seq, "file": file}, status=201)

    # -- UDP -----------------------------------------------------------------

    def _drain_udp(self, sock: socket.socket) -> None:
        """Read what is queued (up to a batch), validate, record; called by the loop."""
        if not self._accepting:
            return
        received: list[tuple[bytes, int, Any, int | None]] = []
        for _ in range(_UDP_BATCH):
            try:
                data, ancdata, flags, addr = sock.recvmsg(HEARTBEAT_V2_SIZE + 1, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # e.g. an ICMP error queued on the socket: not a datagram
            kernel_utc_ns = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    fmt = "@qq" if len(payload) >= 16 else "@ii"
                    seconds, nanos = struct.unpack_from(fmt, payload)
                    kernel_utc_ns = seconds * 1_000_000_000 + nanos
            received.append((data, flags, addr, kernel_utc_ns))
        if not received:
            return
        now = self._clock()
        assert self._heartbeats is not None
        accepted = 0
        for data, flags, addr, kernel_utc_ns in received:
            if kernel_utc_ns is not None:
                at = ClockPair(mono_ns=kernel_utc_ns - now.offset_ns, utc_ns=kernel_utc_ns)
            else:
                at = now
            from_addr = str(addr[0]) if addr else ""
            reason = self._heartbeat_problem(data, flags)
            if reason is not None:
                self._reject("udp", reason, at, from_addr, size=len(data))
                continue
            _, _, _, _, agent_id, seq, utc_ns, mono_ns, interval_us = HEARTBEAT_BODY.unpack_from(
                data
            )
            if seq > MAX_HEARTBEAT_SEQ:
                # Authenticated, but not a number the record (signed 64-bit) can hold.
                self._reject("udp", "bad_seq", at, from_addr, size=len(data))
                continue
            late_ns = work_ns = None
            if data[4] == HEARTBEAT_V2_VERSION:
                late_ns, work_ns = HEARTBEAT_V2_BODY.unpack_from(data)[-2:]
            try:
                self._heartbeats.write_row(
                    (
                        f"{agent_id:016x}",
                        seq,
                        utc_ns,
                        mono_ns,
                        interval_us,
                        at.mono_ns,
                        at.utc_ns,
                        from_addr,
                        late_ns,
                        work_ns or None,
                    )
                )
            except OSError:
                self.stats.write_errors += 1
                continue
            accepted += 1
        try:
            self._heartbeats.flush()
        except OSError:
            self.stats.write_errors += 1
        if accepted:
            self.stats.heartbeats += accepted
            self._note_first(self.first_heartbeat)
            self._notify_progress()

    def _heartbeat_problem(self, data: bytes, flags: int) -> str | None:
        if len(data) not in (HEARTBEAT_SIZE, HEARTBEAT_V2_SIZE) or flags & socket.MSG_TRUNC:
            return "bad_size"
        if data[:4] != HEARTBEAT_MAGIC:
            return "bad_magic"
        sizes = {HEARTBEAT_VERSION: HEARTBEAT_SIZE, HEARTBEAT_V2_VERSION: HEARTBEAT_V2_SIZE}
        if data[4] not in sizes:
            return "bad_version"
        if len(data) != sizes[data[4]]:
            return "bad_size"
        body, mac = data[:-32], data[-32:]
        if not hmac.compare_digest(mac, hmac.new(self._token, body, hashlib.sha256).digest()):
            return "bad_mac"
        return None

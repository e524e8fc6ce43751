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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
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
from PIL import Image

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
from .sink import CsvSink, JsonlSink

FRAMES_FILE = "raw/guest_frames.jsonl"
HEARTBEAT_FILE = "raw/guest_heartbeat.csv"
REJECTS_FILE = "raw/guest_rejects.jsonl"
FRAMES_DIR = "frames"

HEARTBEAT_COLUMNS = (
    "agent_id",
    "seq",
    "guest_utc_ns",
    "guest_mono_ns",
    "interval_us",
    "recv_mono_ns",
    "recv_utc_ns",
    "from_addr",
    "late_ns",
    "work_ns",
)

# 8K UHD is 33 Mpixel; Pillow's own bomb warning starts at 89 Mpixel, so an
# image that passes this check never triggers it.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_SEQ_DIGITS = 9  # seq < 10**9
_SEQ_RE = re.compile(rf"[0-9]{{1,{MAX_SEQ_DIGITS}}}")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_AGENT_ID_RE = re.compile(r"[0-9a-f]{16}")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
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

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())


class FrameRefused(Exception):
    """A frame upload refused: the HTTP ``status`` and the ``reason`` logged in guest_rejects."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _StoredImage:
    image_format: str
    width: int
    height: int
    file: str


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature, then the IHDR chunk: length (13), "IHDR", width, height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOF segment, without decoding anything."""
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any SOF
            return None
        pos += 2 + length
    return None


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """``("png" | "jpeg", width, height)`` of a complete, decodable image; else ``FrameRefused``.

    The pixel count is checked from the header before Pillow decodes anything
    (decompression bombs); then the image is verified (PNG chunk CRCs) and
    fully decoded, so a truncated or corrupt file is refused.
    """
    if data.startswith(_PNG_MAGIC):
        image_format, size = "png", _png_size(data)
    elif data.startswith(_JPEG_MAGIC):
        image_format, size = "jpeg", _jpeg_size(data)
    else:
        raise FrameRefused(415, "not_an_image", "neither PNG nor JPEG")
    if size is None:
        raise FrameRefused(400, "bad_image", "no image size in the header")
    width, height = size
    if width == 0 or height == 0:
        raise FrameRefused(400, "bad_image", f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise FrameRefused(413, "too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
    pil_format = image_format.upper()
    try:
        if image_format == "png":
            with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
                image.verify()
        with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
            if image.size != (width, height):
                raise FrameRefused(400, "bad_image", f"size {image.size} != header {size}")
            image.load()
    except FrameRefused:
        raise
    except Exception as error:  # any decoder failure on untrusted input is a refusal
        raise FrameRefused(400, "bad_image", f"{type(error).__name__}: {error}"[:300]) from None
    return image_format, width, height


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
        clock: Callable[[], ClockPair] = clock_pair,
    ) -> None:
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
            app = web.Application(middlewares=[self._guard])
            app.router.add_post("/frames", self._post_frame)
            runner = web.AppRunner(
                app,
                access_log=None,
                shutdown_timeout=self._shutdown_timeout_s,
                auto_decompress=False,  # a gzip body is not an image: no inflating on our side
                lingering_time=1.0,
            )
            await runner.setup()
            site = web.SockSite(runner, tcp)
            await site.start()
            loop.add_reader(udp.fileno(), self._drain_udp, udp)
            reading_udp = True
            self.ready.set()
            await stop.wait()
        finally:
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
            self.run_dir / FRAMES_FILE,
            probe="guest_frames",
            meta={
                **meta,
                "max_frame_bytes": self.max_frame_bytes,
                "max_pixels": self.max_pixels,
                "frames_dir": FRAMES_DIR,
            },
        )
        self._heartbeats = CsvSink(
            self.run_dir / HEARTBEAT_FILE,
            probe="guest_heartbeat",
            columns=HEARTBEAT_COLUMNS,
            meta={
                **meta,
                "heartbeat_version": HEARTBEAT_V2_VERSION,
                "recv_stamp": "kernel" if self._kernel_stamps else "event_loop",
            },
        )
        self._rejects = JsonlSink(self.run_dir / REJECTS_FILE, probe="guest_rejects", meta=meta)

    def _close_files(self) -> None:
        if self._rejects is not None:
            self._rejects.write(
                {
                    "totals": True,
                    "by_reason": dict(sorted(self.stats.rejects.items())),
                    "logged": self.stats.rejects_logged,
                    "frames_stored": self.stats.frames_stored,
                    "heartbeats": self.stats.heartbeats,
                }
            )
        for sink in (self._frames, self._heartbeats, self._rejects):
            if sink is not None:
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
        self._rejects.write(record)
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

    def _check_and_store(self, seq: int, data: bytes) -> _StoredImage:
        """Runs in a worker thread: decode the image, then write it under its seq name."""
        image_format, width, height = inspect_image(data, self.max_pixels)
        name = f"seq_{seq:06d}{'.png' if image_format == 'png' else '.jpg'}"
        folder = self.run_dir / FRAMES_DIR
        tmp = folder / f".{name}.part"
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, folder / name)
        return _StoredImage(image_format, width, height, f"{FRAMES_DIR}/{name}")

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
        try:
            data = await self._read_body(request)
            stored = await asyncio.to_thread(self._check_and_store, seq, data)
        except FrameRefused as refusal:
            self._seqs.discard(seq)
            return self._refuse(request, at, refusal.status, refusal.reason, refusal.detail)
        except BaseException:
            self._seqs.discard(seq)
            raise
        finally:
            self.stats.uploads_in_progress -= 1
            self._notify_progress()
        done = self._clock()
        assert self._frames is not None
        self._frames.write(
            {
                "seq": seq,
                "file": stored.file,
                "format": stored.image_format,
                "width": stored.width,
                "height": stored.height,
                "bytes": len(data),
                **stamps,
                "recv_mono_ns": at.mono_ns,
                "recv_utc_ns": at.utc_ns,
                "stored_mono_ns": done.mono_ns,
                "from_addr": request.remote or "",
            }
        )
        self.stats.frames_stored += 1
        self.stats.frame_bytes += len(data)
        self._note_first(self.first_frame)
        self._notify_progress()
        return web.json_response({"seq": seq, "file": stored.file}, status=201)

    # -- UDP -----------------------------------------------------------------

    def _drain_udp(self, sock: socket.socket) -> None:
        """Read what is queued (up to a batch), validate, record; called by the loop."""
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
            late_ns = work_ns = None
            if data[4] == HEARTBEAT_V2_VERSION:
                late_ns, work_ns = HEARTBEAT_V2_BODY.unpack_from(data)[-2:]
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
            accepted += 1
        self._heartbeats.flush()
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

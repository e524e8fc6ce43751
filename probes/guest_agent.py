#!/usr/bin/env python3
"""migration-blackout guest agent: numbered screenshots and a heartbeat from inside the guest.

This file runs on its own inside the VM being migrated: copy it there and run
``python guest_agent.py --help``. It needs Python >= 3.9 and Pillow, nothing
else; it works on Windows guests and on Linux guests with an X11 display.

It does what the write-up's in-guest job did (capture the desktop once a
second, number each capture, copy it to a file server) with the stamps that
make the captures measurable:

* every ``--interval`` seconds, on a drift-free schedule of the monotonic
  clock, it grabs the screen, gives the capture the next sequence number and
  stamps it with the guest's wall clock (UTC ns) and monotonic clock (ns) at
  the start of the grab;
* it delivers the encoded capture by HTTP POST to the harness's receiver, or
  writes it to a folder (an SMB share, as in the write-up) as
  ``seq_000795.png`` plus a ``seq_000795.json`` sidecar, each written under a
  temporary name and renamed, the sidecar last;
* deliveries that fail (the network is down during the migration) wait in a
  bounded queue and are sent in order when delivery works again; a sender
  thread does the network I/O, so the capture schedule never waits for it;
* alongside, a UDP heartbeat (default 100 per second) carries a sequence
  number and both guest clocks, authenticated by an HMAC-SHA256 keyed with the
  run token. Heartbeats are never queued or resent: the gaps are the data.
  After each heartbeat the agent does a fixed unit of CPU and memory work and
  the next heartbeat says how long it took: the guest's rate of work, which
  drops while pre-copy slows the guest (the brownout);
* with ``--witness-port`` it answers the harness's witnesses no peer has: a
  UDP direction probe (each answer carries the agent's receive stamp and how
  many probes it has received, so a lost probe is known as lost on the way in
  or on the way out) and a long-lived TCP stream (the agent stamps every
  message it receives and sends its own every interval: the stall an
  application feels, per direction).

A frozen guest (a paused VM, or SIGSTOP in the lab) captures and sends
nothing; when it runs again it captures at once and continues on its
schedule without catching up, so sequence numbers have no holes from a
freeze, only a long step in the guest's clocks.

The wire formats are documented in docs/guest-agent.md of migration-blackout
(and in ``--help``); ``probes/guest_receiver.py`` is the other end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import hashlib
import hmac
import http.client
import io
import json
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AGENT_VERSION = "1.1"

# Heartbeat datagram, version 1, big-endian (76 bytes):
#   magic "MBHB" | version u8 | flags u8 (0) | reserved u16 (0) | agent_id u64 |
#   seq u64 | guest_utc_ns i64 | guest_mono_ns i64 | interval_us u32 |
#   HMAC-SHA256(token, the 44 bytes before it)
# Version 2 (agent 1.1, 84 bytes) appends two fields before the HMAC:
#   late_ns u32 (how late this heartbeat went out after its slot) |
#   work_ns u32 (from the previous heartbeat's slot to the end of the work unit
#   done after it; 0: none) | HMAC-SHA256(token, the 52 bytes before it)
# Both saturate at 2**32 - 1 ns (4.29 s). Version history:
#   1 (agent 1.0): first version.
#   2 (agent 1.1): late_ns and work_ns (the guest's rate of work).
HEARTBEAT_MAGIC = b"MBHB"
HEARTBEAT_VERSION = 1
HEARTBEAT_BODY = struct.Struct(">4sBBHQQqqI")
HEARTBEAT_MAC_BYTES = 32
HEARTBEAT_SIZE = HEARTBEAT_BODY.size + HEARTBEAT_MAC_BYTES
HEARTBEAT_V2_VERSION = 2
HEARTBEAT_V2_BODY = struct.Struct(">4sBBHQQqqIII")
HEARTBEAT_V2_SIZE = HEARTBEAT_V2_BODY.size + HEARTBEAT_MAC_BYTES
_U32_MAX = 2**32 - 1

# The fixed unit of work behind the work rate: one byte written into each
# 4 KiB page of a 256 KiB buffer (memory: each write dirties a page, which is
# what a hypervisor tracks during pre-copy), then SHA-256 over 16 KiB of it
# (CPU). About 10-20 us on a current CPU: at 100 heartbeats a second, 0.2 % of
# a core.
WORK_BUFFER_BYTES = 256 * 1024
WORK_PAGE_BYTES = 4096
WORK_HASH_BYTES = 16 * 1024

# Witnesses (--witness-port): the direction probe over UDP and the TCP stream,
# on one port number. Version 1 of both, big-endian (docs/guest-agent.md):
#   direction probe, harness -> agent (64 bytes): "MBUP" | version u8 (1) |
#     flags u8 (0) | reserved u16 | session u64 | seq u64 | send_mono_ns i64 |
#     HMAC-SHA256(token, the 32 bytes before it)
#   answer, agent -> harness (104 bytes): "MBUA" | version u8 (1) | flags u8 (0) |
#     reserved u16 | agent_id u64 | session u64 | seq u64 | guest_recv_mono_ns i64 |
#     guest_recv_utc_ns i64 | received u64 (probes of this session received so
#     far, this one included) | highest_seq u64 | run_start u64 (the first seq
#     of the unbroken run of consecutive seqs received that ends with this
#     one) | HMAC-SHA256(token, the 72 bytes before it)
#   TCP stream frames: length u32 (of what follows) | type u8 | payload
#     "H" hello, harness -> agent: "MBTS" | version u8 (1) | reserved 3 bytes |
#       session u64 | interval_us u32 | nonce u64 | HMAC-SHA256(token, the 28 bytes before it)
#     "W" welcome, agent -> harness: version u8 (1) | reserved 3 bytes | agent_id u64 |
#       guest_mono_ns i64 | guest_utc_ns i64 |
#       HMAC-SHA256(token, the hello's nonce u64 + the 28 bytes before it)
#     "D" data, harness -> agent: seq u64 | send_mono_ns i64 | send_utc_ns i64
#     "T" tick, agent -> harness, every interval: seq u64 | guest_mono_ns i64 |
#       guest_utc_ns i64 | count u32 | count x (data seq u64 | guest_recv_mono_ns i64)
#       (the data frames received since the previous tick, with their receive stamps)
WITNESS_DEFAULT_PORT = 47601
WITNESS_VERSION = 1
PROBE_MAGIC = b"MBUP"
PROBE_BODY = struct.Struct(">4sBBHQQq")
PROBE_SIZE = PROBE_BODY.size + HEARTBEAT_MAC_BYTES
ANSWER_MAGIC = b"MBUA"
ANSWER_BODY = struct.Struct(">4sBBHQQQqqQQQ")
ANSWER_SIZE = ANSWER_BODY.size + HEARTBEAT_MAC_BYTES
STREAM_MAGIC = b"MBTS"
STREAM_FRAME_HEAD = struct.Struct(">IB")
STREAM_HELLO = struct.Struct(">4sB3xQIQ")
STREAM_WELCOME = struct.Struct(">B3xQqq")
STREAM_DATA = struct.Struct(">Qqq")
STREAM_TICK = struct.Struct(">QqqI")
STREAM_ECHO = struct.Struct(">Qq")
STREAM_SEQ = struct.Struct(">Q")
_DATA, _TICK = ord("D"), ord("T")
_DATA_LENGTH = 1 + STREAM_DATA.size  # a data frame's length field
_NEVER = 2**63 - 1  # a due time that never comes (monotonic ns)
STREAM_MAX_FRAME = 1 << 20

# Sidecar JSON of folder delivery; history:
#   1 (agent 1.0): first version.
SIDECAR_SCHEMA_VERSION = 1

DEFAULT_QUEUE_MAX = 600
DEFAULT_QUEUE_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024

if sys.platform == "win32":
    # time.monotonic() ticks in ~15.6 ms steps on Windows; QueryPerformanceCounter
    # is system-wide, monotonic and sub-microsecond.
    guest_mono_ns: Callable[[], int] = time.perf_counter_ns
else:
    guest_mono_ns = time.monotonic_ns


_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class Mac:
    """HMAC-SHA256 under one key (RFC 2104) with the key's padded blocks hashed
    once: each message then costs two hash copies, where ``hmac.digest`` sets
    the key up anew every time (1.6 against 0.65 us a message on a 2-vCPU VM,
    hot; the agent signs hundreds a second, mostly cold)."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_IPAD))
        self._outer = hashlib.sha256(block.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _sign(key: bytes | Mac, body: bytes) -> bytes:
    return key.digest(body) if isinstance(key, Mac) else hmac.digest(key, body, "sha256")


def heartbeat_datagram(
    key: bytes | Mac,
    agent_id: int,
    seq: int,
    utc_ns: int,
    mono_ns: int,
    interval_us: int,
    *,
    late_ns: int | None = None,
    work_ns: int | None = None,
) -> bytes:
    """One heartbeat datagram, HMAC included: version 1, or version 2 when
    ``late_ns`` is given (``work_ns`` 0 or None: no work unit reported)."""
    if late_ns is None:
        body = HEARTBEAT_BODY.pack(
            HEARTBEAT_MAGIC, HEARTBEAT_VERSION, 0, 0, agent_id, seq, utc_ns, mono_ns, interval_us
        )
    else:
        body = HEARTBEAT_V2_BODY.pack(
            HEARTBEAT_MAGIC,
            HEARTBEAT_V2_VERSION,
            0,
            0,
            agent_id,
            seq,
            utc_ns,
            mono_ns,
            interval_us,
            min(max(late_ns, 0), _U32_MAX),
            min(max(work_ns or 0, 0), _U32_MAX),
        )
    return body + _sign(key, body)


class WorkUnit:
    """The fixed unit of CPU and memory work whose duration is the guest's rate
    of work (``WORK_BUFFER_BYTES`` and friends)."""

    def __init__(self) -> None:
        self._buffer = bytearray(WORK_BUFFER_BYTES)
        self._view = memoryview(self._buffer)[:WORK_HASH_BYTES]
        pages = WORK_BUFFER_BYTES // WORK_PAGE_BYTES
        self._page_bytes = [bytes((byte,)) * pages for byte in range(256)]
        self._round = 0
        # Copied, not made anew: a new hash object looks its algorithm up
        # again (OpenSSL 3), which is not the work being measured.
        self._sha256 = hashlib.sha256()

    def run(self) -> None:
        self._round = (self._round + 1) & 0xFF
        self._buffer[::WORK_PAGE_BYTES] = self._page_bytes[self._round]
        digest = self._sha256.copy()
        digest.update(self._view)
        digest.digest()


def probe_datagram(key: bytes, session: int, seq: int, send_mono_ns: int) -> bytes:
    """One direction probe (harness -> agent), HMAC included."""
    body = PROBE_BODY.pack(PROBE_MAGIC, WITNESS_VERSION, 0, 0, session, seq, send_mono_ns)
    return body + hmac.digest(key, body, "sha256")


def answer_datagram(
    key: bytes | Mac,
    agent_id: int,
    session: int,
    seq: int,
    recv_mono_ns: int,
    recv_utc_ns: int,
    received: int,
    highest_seq: int,
    run_start: int,
) -> bytes:
    """The agent's answer to a direction probe, HMAC included."""
    body = ANSWER_BODY.pack(
        ANSWER_MAGIC,
        WITNESS_VERSION,
        0,
        0,
        agent_id,
        session,
        seq,
        recv_mono_ns,
        recv_utc_ns,
        received,
        highest_seq,
        run_start,
    )
    return body + _sign(key, body)


def stream_frame(kind: bytes, payload: bytes) -> bytes:
    """One TCP stream frame: length, type, payload."""
    return STREAM_FRAME_HEAD.pack(len(payload) + 1, kind[0]) + payload


def stream_hello(key: bytes, session: int, interval_us: int, nonce: int) -> bytes:
    body = STREAM_HELLO.pack(STREAM_MAGIC, WITNESS_VERSION, session, interval_us, nonce)
    return stream_frame(b"H", body + hmac.digest(key, body, "sha256"))


def welcome_mac(key: bytes, nonce: int, body: bytes) -> bytes:
    return hmac.digest(key, struct.pack(">Q", nonce) + body, "sha256")


@dataclass(frozen=True)
class Frame:
    """One capture, encoded, with the guest's stamps taken when the grab started."""

    seq: int
    utc_ns: int
    mono_ns: int
    capture_ms: float
    data: bytes
    image_format: str  # "png" or "jpeg"

    @property
    def extension(self) -> str:
        return ".png" if self.image_format == "png" else ".jpg"

    @property
    def content_type(self) -> str:
        return "image/png" if self.image_format == "png" else "image/jpeg"


class Counters:
    """What the agent did; printed as one line on exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames_captured = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.frames_rejected = 0
        self.capture_errors = 0
        self.heartbeats_sent = 0
        self.heartbeat_errors = 0
        self.probes_answered = 0
        self.probes_refused = 0
        self.streams_accepted = 0
        self.streams_refused = 0
        self.ticks_sent = 0

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class Log:
    """Progress lines on stderr with ``--verbose``; warnings always."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        with self._lock:
            sys.stderr.write(f"guest-agent: {text}\n")
            sys.stderr.flush()

    def info(self, text: str) -> None:
        if self.verbose:
            self._write(text)

    def warn(self, text: str) -> None:
        self._write(text)


class FrameQueue:
    """Frames waiting for delivery, oldest first, bounded by count and bytes.

    When a new frame does not fit, the oldest waiting frames are dropped (and
    counted). A frame being sent is outside the queue; if sending fails it goes
    back to the front, and is dropped if the queue filled up meanwhile.
    """

    def __init__(self, max_frames: int, max_bytes: int, counters: Counters, log: Log) -> None:
        self._frames: collections.deque[Frame] = collections.deque()
        self._bytes = 0
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._counters = counters
        self._log = log
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def _fits(self, extra_bytes: int) -> bool:
        return (
            len(self._frames) + 1 <= self._max_frames
            and self._bytes + extra_bytes <= self._max_bytes
        )

    def put(self, frame: Frame) -> None:
        with self._cond:
            while self._frames and not self._fits(len(frame.data)):
                old = self._frames.popleft()
                self._bytes -= len(old.data)
                self._counters.add("frames_dropped")
                self._log.info(f"seq={old.seq} dropped: queue full")
            if not self._fits(len(frame.data)):
                self._counters.add("frames_dropped")
                self._log.info(f"seq={frame.seq} dropped: larger than the queue")
                return
            self._frames.append(frame)
            self._bytes += len(frame.data)
            self._cond.notify_all()

    def give_back(self, frame: Frame) -> None:
        with self._cond:
            if self._fits(len(frame.data)):
                self._frames.appendleft(frame)
                self._bytes += len(frame.data)
            else:
                self._counters.add("frames_dropped")
                self._log.info(f"seq={frame.seq} dropped: queue full")

    def take(self, timeout_s: float) -> Frame | None:
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout_s)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._bytes -= len(frame.data)
            return frame

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


SENT = "sent"
REJECTED = "rejected"
RETRY = "retry"


class HttpDelivery:
    """POST /frames to the receiver over one kept-alive HTTP connection."""

    def __init__(
        self, url: str, token: str, timeout_s: float, agent_id: int, interval_ns: int
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must look like http://HOST:PORT/, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path.rstrip("/") + "/frames"
        self._token = token
        self._timeout_s = timeout_s
        self._agent_id = agent_id
        self._interval_ns = interval_ns
        self._conn: http.client.HTTPConnection | None = None
        self.last_error = ""

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def deliver(self, frame: Frame) -> str:
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": frame.content_type,
            "X-MB-Seq": str(frame.seq),
            "X-MB-Guest-UTC-NS": str(frame.utc_ns),
            "X-MB-Guest-Mono-NS": str(frame.mono_ns),
            "X-MB-Capture-MS": f"{frame.capture_ms:.3f}",
            "X-MB-Interval-NS": str(self._interval_ns),
            "X-MB-Agent-ID": f"{self._agent_id:016x}",
            "X-MB-Guest-Send-Mono-NS": str(guest_mono_ns()),
        }
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self._timeout_s)
        try:
            # The receiver may have answered (401, 413) and stopped reading the
            # body: read its answer rather than retrying for ever.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._conn.request("POST", self.path, body=frame.data, headers=headers)
            response = self._conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            self.last_error = f"{type(error).__name__}: {error}"
            self._close()
            return RETRY
        if response.will_close:
            self._close()
        status = response.status
        if 200 <= status < 300 or status == 409:  # 409: the receiver has this seq already
            return SENT
        self.last_error = f"HTTP {status} {response.reason}"
        if status in (408, 429) or status >= 500:
            return RETRY
        return REJECTED

    def close(self) -> None:
        self._close()


def _write_atomically(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, "." + name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


class FolderDelivery:
    """``seq_000795.png`` and its ``seq_000795.json`` sidecar (written last) in a folder."""

    def __init__(self, folder: str, agent_id: int, interval_ns: int) -> None:
        self.folder = folder
        self._agent_id = agent_id
        self._interval_ns = interval_ns
        self.last_error = ""

    def deliver(self, frame: Frame) -> str:
        name = f"seq_{frame.seq:06d}"
        image_path = os.path.join(self.folder, name + frame.extension)
        sidecar_path = os.path.join(self.folder, name + ".json")
        sidecar = {
            "schema_version": SIDECAR_SCHEMA_VERSION,
            "seq": frame.seq,
            "file": name + frame.extension,
            "format": frame.image_format,
            "guest_utc_ns": frame.utc_ns,
            "guest_mono_ns": frame.mono_ns,
            "capture_ms": round(frame.capture_ms, 3),
            "interval_ns": self._interval_ns,
            "agent_id": f"{self._agent_id:016x}",
            "written_mono_ns": guest_mono_ns(),
        }
        try:
            if os.path.exists(sidecar_path):
                self.last_error = f"{sidecar_path} exists; not overwritten"
                return REJECTED
            _write_atomically(image_path, frame.data)
            _write_atomically(sidecar_path, (json.dumps(sidecar) + "\n").encode("utf-8"))
        except OSError as error:
            self.last_error = f"{type(error).__name__}: {error}"
            return RETRY
        return SENT

    def close(self) -> None:
        pass


class Sender(threading.Thread):
    """Delivers queued frames in order; retries the oldest with backoff."""

    def __init__(
        self,
        delivery: HttpDelivery | FolderDelivery,
        queue: FrameQueue,
        counters: Counters,
        log: Log,
        retry_max_s: float,
    ) -> None:
        super().__init__(name="frame-sender", daemon=True)
        self._delivery = delivery
        self._queue = queue
        self._counters = counters
        self._log = log
        self._retry_max_s = retry_max_s
        self.draining = threading.Event()  # capture ended: stop when the queue is empty
        self.abandon = threading.Event()  # stop now
        self.unsent = 0

    def run(self) -> None:
        backoff_s = 0.05
        failing = False
        while not self.abandon.is_set():
            frame = self._queue.take(timeout_s=0.2)
            if frame is None:
                if self.draining.is_set():
                    break
                continue
            outcome = self._delivery.deliver(frame)
            if outcome == SENT:
                self._counters.add("frames_sent")
                self._log.info(f"seq={frame.seq} sent")
                if failing:
                    self._log.info("delivery works again")
                failing = False
                backoff_s = 0.05
            elif outcome == REJECTED:
                self._counters.add("frames_rejected")
                self._log.warn(f"seq={frame.seq} rejected: {self._delivery.last_error}")
            else:
                self._queue.give_back(frame)
                if not failing:
                    self._log.info(f"delivery failing, queueing: {self._delivery.last_error}")
                failing = True
                self.abandon.wait(backoff_s)
                backoff_s = min(self._retry_max_s, backoff_s * 2)
        self.unsent = len(self._queue)
        self._delivery.close()


class Heartbeat:
    """UDP heartbeats on a drift-free grid of the monotonic clock (multiples of
    the interval); missed slots are skipped, not caught up. Run by an
    ``AgentLoop``, which calls ``beat()`` once ``due_ns`` has passed."""

    def __init__(
        self,
        address: tuple[Any, ...],
        family: int,
        key: bytes,
        agent_id: int,
        hz: float,
        counters: Counters,
        log: Log,
        version: int = HEARTBEAT_V2_VERSION,
    ) -> None:
        self._address = address
        self._mac = Mac(key)
        self._agent_id = agent_id
        self._interval_ns = round(1e9 / hz)
        self._interval_us = self._interval_ns // 1000
        # Version 2 reports the work unit done after every heartbeat.
        self._work = WorkUnit() if version >= HEARTBEAT_V2_VERSION else None
        self._counters = counters
        self._log = log
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        # Multiples of the interval, as the witnesses' ticks and the harness's
        # probes: with equal intervals one wake-up serves them all.
        self.due_ns = self._next_slot(guest_mono_ns())
        self._seq = 0
        self._errors_logged = 0
        self._work_ns = 0
        self._notice: threading.Event | None = None

    def _next_slot(self, now: int) -> int:
        return (now // self._interval_ns + 1) * self._interval_ns

    def wait_for_next(self, timeout_s: float) -> None:
        """Return after the next heartbeat went out (or ``timeout_s``).

        A screen grab holds the GIL for milliseconds (longer when the display
        is busy); grabbing just after a heartbeat keeps it out of the
        heartbeat's way. This matters most on resuming from a freeze, when
        both are overdue at once: the heartbeat goes first.
        """
        notice = threading.Event()
        self._notice = notice
        notice.wait(timeout_s)

    def beat(self) -> None:
        """Send the heartbeat of the slot that passed, then do the work unit."""
        slot = self.due_ns
        mono = guest_mono_ns()
        utc = time.time_ns()
        datagram = heartbeat_datagram(
            self._mac,
            self._agent_id,
            self._seq,
            utc,
            mono,
            self._interval_us,
            late_ns=None if self._work is None else mono - slot,
            work_ns=self._work_ns,
        )
        try:
            self._sock.sendto(datagram, self._address)
            self._counters.heartbeats_sent += 1  # only the loop's thread writes it
        except OSError as error:
            self._counters.heartbeat_errors += 1
            if self._errors_logged < 5:
                self._errors_logged += 1
                self._log.info(f"heartbeat seq={self._seq} not sent: {error}")
        self._seq += 1
        notice, self._notice = self._notice, None
        if notice is not None:
            notice.set()
        if self._work is not None:
            # Counted from the slot: a guest slowed by a busy or throttled CPU
            # is late to start the unit as well as slow to finish it, and
            # both are what an application feels.
            self._work.run()
            self._work_ns = guest_mono_ns() - slot
        self.due_ns = self._next_slot(guest_mono_ns())

    def close(self) -> None:
        self._sock.close()


class _Stream:
    """One TCP stream connection of the witness server."""

    def __init__(self, sock: socket.socket, accepted_ns: int) -> None:
        self.sock = sock
        self.accepted_ns = accepted_ns
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.welcomed = False
        self.interval_ns = 0
        self.next_slot = 0
        self.seq = 0
        self.echoes: list[tuple[int, int]] = []
        self.writing = False


class WitnessServer:
    """The agent's side of the harness's witnesses, on one port number: the
    direction probe's answers (UDP) and the TCP stream (the agent stamps every
    data frame it receives and sends a tick every interval the harness asked
    for, on a drift-free grid whose missed slots are skipped). Run by an
    ``AgentLoop``: it registers its sockets with the loop's selector.

    Everything arriving is untrusted: probes and stream hellos must carry the
    run token's HMAC; at most ``MAX_STREAMS`` streams at a time; a stream
    that does not say hello within ``HELLO_TIMEOUT_S``, sends a frame larger
    than ``STREAM_MAX_FRAME`` or lets ``MAX_OUTBOX`` bytes pile up unsent is
    closed.
    """

    MAX_STREAMS = 4
    HELLO_TIMEOUT_S = 5.0
    MAX_OUTBOX = 4 * 1024 * 1024
    MAX_SESSIONS = 64
    UDP_BATCH = 64

    def __init__(
        self, host: str, port: int, key: bytes, agent_id: int, counters: Counters, log: Log
    ) -> None:
        self._key = key
        self._mac = Mac(key)
        self._agent_id = agent_id
        self._counters = counters
        self._log = log
        self._tcp, self._udp = bind_tcp_and_udp(host, port)
        self.address = self._tcp.getsockname()[:2]
        self._sessions: collections.OrderedDict[int, list[int]] = collections.OrderedDict()
        self._streams: dict[socket.socket, _Stream] = {}
        self._received = bytearray(65536)
        self._loop: AgentLoop | None = None
        self.due_ns = _NEVER  # when tick() has something to do, on the monotonic clock

    def attach(self, loop: AgentLoop) -> None:
        """Hand the sockets to the loop that runs this server."""
        self._loop = loop
        loop.watch(self._udp, self._answer_probes)
        loop.watch(self._tcp, self._accept)

    def _reschedule(self) -> None:
        """``due_ns``: when a tick (or a hello's deadline) is due next."""
        due = _NEVER
        for stream in self._streams.values():
            if stream.welcomed:
                due = min(due, stream.next_slot)
            else:
                due = min(due, stream.accepted_ns + round(self.HELLO_TIMEOUT_S * 1e9) + 1)
        self.due_ns = due

    def close(self) -> None:
        for stream in list(self._streams.values()):
            self._close(stream)
        self._tcp.close()
        self._udp.close()

    # -- the direction probe ---------------------------------------------------

    def _answer_probes(self) -> None:
        counters = self._counters  # only the loop's thread writes these counts
        for _ in range(self.UDP_BATCH):
            try:
                data, address = self._udp.recvfrom(PROBE_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket
            mono = guest_mono_ns()
            utc = time.time_ns()
            if len(data) != PROBE_SIZE or data[:4] != PROBE_MAGIC or data[4] != WITNESS_VERSION:
                counters.probes_refused += 1
                continue
            body, mac = data[: PROBE_BODY.size], data[PROBE_BODY.size :]
            if not hmac.compare_digest(mac, self._mac.digest(body)):
                counters.probes_refused += 1
                continue
            _, _, _, _, session, seq, _ = PROBE_BODY.unpack(body)
            # received, highest seq, last seq, start of the run of consecutive seqs
            counts = self._sessions.get(session)
            if counts is None:
                if len(self._sessions) >= self.MAX_SESSIONS:
                    self._sessions.popitem(last=False)
                counts = self._sessions[session] = [0, seq, seq, seq]
            elif seq != counts[2] + 1:
                counts[3] = seq  # a hole (or reordering): a new run starts here
            counts[0] += 1
            counts[1] = max(counts[1], seq)
            counts[2] = seq
            answer = answer_datagram(
                self._mac, self._agent_id, session, seq, mono, utc, counts[0], counts[1], counts[3]
            )
            try:
                self._udp.sendto(answer, address)
                counters.probes_answered += 1
            except OSError:
                pass  # the network is down: the answer is lost, as the harness will see

    # -- the TCP stream ----------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, _ = self._tcp.accept()
        except OSError:
            return
        if len(self._streams) >= self.MAX_STREAMS:
            self._counters.streams_refused += 1
            sock.close()
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = _Stream(sock, guest_mono_ns())
        self._streams[sock] = stream
        assert self._loop is not None
        self._loop.watch(sock, lambda: self._receive(stream))
        self._reschedule()

    def _close(self, stream: _Stream) -> None:
        if self._streams.pop(stream.sock, None) is not None:
            if self._loop is not None:
                self._loop.unwatch(stream.sock)
            stream.sock.close()
            self._reschedule()

    def _receive(self, stream: _Stream) -> None:
        if stream.sock not in self._streams:
            return
        try:
            size = stream.sock.recv_into(self._received)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(stream)
            return
        stamp = guest_mono_ns()
        if not size:
            self._close(stream)
            return
        stream.inbox += memoryview(self._received)[:size]
        while len(stream.inbox) >= STREAM_FRAME_HEAD.size:
            length, kind = STREAM_FRAME_HEAD.unpack_from(stream.inbox)
            if not 1 <= length <= STREAM_MAX_FRAME:
                self._close(stream)
                return
            end = 4 + length
            if len(stream.inbox) < end:
                break
            if kind == _DATA and stream.welcomed and length == _DATA_LENGTH:
                # The common case, without copying the payload out.
                stream.echoes.append((STREAM_SEQ.unpack_from(stream.inbox, 5)[0], stamp))
                del stream.inbox[:end]
                continue
            payload = bytes(stream.inbox[STREAM_FRAME_HEAD.size : end])
            del stream.inbox[:end]
            if not self._frame(stream, kind, payload, stamp):
                self._close(stream)
                return

    def _frame(self, stream: _Stream, kind: int, payload: bytes, stamp: int) -> bool:
        """Handle one frame other than data; False closes the stream."""
        if kind != ord("H") or stream.welcomed or len(payload) != STREAM_HELLO.size + 32:
            return False
        body, mac = payload[: STREAM_HELLO.size], payload[STREAM_HELLO.size :]
        if not hmac.compare_digest(mac, self._mac.digest(body)):
            self._counters.streams_refused += 1
            return False
        magic, version, _session, interval_us, nonce = STREAM_HELLO.unpack(body)
        if magic != STREAM_MAGIC or version != WITNESS_VERSION or not interval_us:
            return False
        welcome = STREAM_WELCOME.pack(WITNESS_VERSION, self._agent_id, stamp, time.time_ns())
        self._send(stream, stream_frame(b"W", welcome + welcome_mac(self._key, nonce, welcome)))
        stream.welcomed = True
        stream.interval_ns = max(1_000_000, interval_us * 1000)
        # The grid: multiples of the interval on the guest's clock (the harness
        # sends on multiples of its own; where the clocks agree, one wake-up serves both).
        stream.next_slot = (stamp // stream.interval_ns + 1) * stream.interval_ns
        self._reschedule()
        self._counters.streams_accepted += 1
        self._log.info(f"stream {stream.sock.getpeername()} every {interval_us} us")
        return True

    def tick(self, now: int) -> None:
        """Send the ticks that are due and close streams that never said hello."""
        for stream in list(self._streams.values()):
            if not stream.welcomed:
                if now - stream.accepted_ns > self.HELLO_TIMEOUT_S * 1e9:
                    self._close(stream)
                continue
            if now < stream.next_slot:
                continue
            echoes, stream.echoes = stream.echoes, []
            stream.outbox += STREAM_FRAME_HEAD.pack(
                STREAM_TICK.size + STREAM_ECHO.size * len(echoes) + 1, _TICK
            )
            stream.outbox += STREAM_TICK.pack(
                stream.seq, guest_mono_ns(), time.time_ns(), len(echoes)
            )
            for echo in echoes:
                stream.outbox += STREAM_ECHO.pack(*echo)
            self._flush(stream)
            self._counters.ticks_sent += 1
            stream.seq += 1
            interval = stream.interval_ns
            stream.next_slot = (guest_mono_ns() // interval + 1) * interval
        self._reschedule()

    def _send(self, stream: _Stream, frame: bytes) -> None:
        stream.outbox += frame
        self._flush(stream)

    def _flush(self, stream: _Stream) -> None:
        if stream.sock not in self._streams:
            return
        try:
            sent = stream.sock.send(stream.outbox) if stream.outbox else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(stream)
            return
        del stream.outbox[:sent]
        if len(stream.outbox) > self.MAX_OUTBOX:
            self._log.warn("a stream's unsent data passed its limit: closed")
            self._close(stream)
            return
        wants_write = bool(stream.outbox)
        if wants_write != stream.writing and self._loop is not None:
            on_writable = (lambda: self._flush(stream)) if wants_write else None
            self._loop.watch_writable(stream.sock, on_writable)
            stream.writing = wants_write


class AgentLoop(threading.Thread):
    """One thread: the heartbeat and the witnesses.

    Every wake-up of a thread costs the guest far more CPU than the work it
    then does (tens of microseconds on a VM, with cold caches), so the
    heartbeat's slots, the stream's ticks and the harness's probes share one
    grid (multiples of the interval on the monotonic clock) and one wake-up
    serves all that is due. In each wake-up the heartbeat goes first (its
    timing is the witness of the guest running), then what arrived, then the
    ticks. It waits in ``select.select`` (microsecond timeouts; epoll rounds
    up to whole milliseconds), or, with no socket to watch (the heartbeat
    alone), in ``time.sleep``. On Windows select rounds to the 15.6 ms timer
    tick, so there the heartbeat gets a loop of its own (``agent_loops``).
    """

    IDLE_WAIT_NS = 200_000_000  # a stop is seen within this when nothing is due

    def __init__(
        self,
        stop: threading.Event,
        *,
        heartbeat: Heartbeat | None = None,
        witnesses: WitnessServer | None = None,
    ) -> None:
        super().__init__(name="agent-loop", daemon=True)
        self._stop_event = stop
        self._heartbeat = heartbeat
        self._witnesses = witnesses
        self._on_readable: dict[int, Callable[[], None]] = {}
        self._on_writable: dict[int, Callable[[], None]] = {}
        self._readable: list[int] = []
        self._writable: list[int] = []
        if witnesses is not None:
            witnesses.attach(self)

    def watch(self, sock: socket.socket, on_readable: Callable[[], None]) -> None:
        self._on_readable[sock.fileno()] = on_readable
        self._readable = list(self._on_readable)

    def watch_writable(self, sock: socket.socket, on_writable: Callable[[], None] | None) -> None:
        """Call ``on_writable`` while ``sock`` can take more (None: stop)."""
        if on_writable is None:
            self._on_writable.pop(sock.fileno(), None)
        else:
            self._on_writable[sock.fileno()] = on_writable
        self._writable = list(self._on_writable)

    def unwatch(self, sock: socket.socket) -> None:
        self._on_readable.pop(sock.fileno(), None)
        self._on_writable.pop(sock.fileno(), None)
        self._readable = list(self._on_readable)
        self._writable = list(self._on_writable)

    def run(self) -> None:
        heartbeat, witnesses = self._heartbeat, self._witnesses
        readable: list[int] = []
        writable: list[int] = []
        if self._readable and _CONTINUE_SIGNAL is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {_CONTINUE_SIGNAL})
        try:
            while not self._stop_event.is_set():
                now = guest_mono_ns()
                due = now + self.IDLE_WAIT_NS
                if heartbeat is not None and heartbeat.due_ns < due:
                    due = heartbeat.due_ns
                if witnesses is not None and witnesses.due_ns < due:
                    due = witnesses.due_ns
                wait_s = (due - now) / 1e9 if due > now else 0.0
                if self._readable:
                    readable, writable, _ = select.select(
                        self._readable, self._writable, (), wait_s
                    )
                else:
                    # time.sleep, not Event.wait: a wake-up costs half the CPU
                    # (measured: 55 against 100 us on a 2-vCPU VM).
                    time.sleep(wait_s)
                if heartbeat is not None and guest_mono_ns() >= heartbeat.due_ns:
                    heartbeat.beat()
                for fd in writable:
                    if (on_writable := self._on_writable.get(fd)) is not None:
                        on_writable()
                for fd in readable:
                    if (on_readable := self._on_readable.get(fd)) is not None:
                        on_readable()
                if witnesses is not None and (now := guest_mono_ns()) >= witnesses.due_ns:
                    witnesses.tick(now)
        finally:
            if witnesses is not None:
                witnesses.close()
            if heartbeat is not None:
                heartbeat.close()


# A stopped process (SIGSTOP: the lab's freeze and its brownout throttle) that
# is continued restarts a select() with the time that was left when it stopped,
# so the first heartbeat after a freeze would come up to an interval late.
# With a handler for SIGCONT, delivered only to the loop's thread, the select
# returns EINTR instead and Python waits again for what is left to the
# deadline (PEP 475): nothing, after a freeze. (time.sleep waits for an
# absolute deadline and needs none of this.)
_CONTINUE_SIGNAL = getattr(signal, "SIGCONT", None)
if not hasattr(signal, "pthread_sigmask"):
    _CONTINUE_SIGNAL = None


def _continue_wakes_the_loop() -> None:
    """Before any thread starts: a no-op SIGCONT handler, SIGCONT blocked in
    every thread but the loop's (``AgentLoop.run`` unblocks it)."""
    if _CONTINUE_SIGNAL is not None:
        signal.signal(_CONTINUE_SIGNAL, lambda signum, frame: None)
        signal.pthread_sigmask(signal.SIG_BLOCK, {_CONTINUE_SIGNAL})


def agent_loops(
    stop: threading.Event, heartbeat: Heartbeat | None, witnesses: WitnessServer | None
) -> list[AgentLoop]:
    """The threads that run the heartbeat and the witnesses: one, except on
    Windows, where select() would round the heartbeat's waits to 15.6 ms."""
    if heartbeat is not None and witnesses is not None and sys.platform == "win32":
        return [AgentLoop(stop, heartbeat=heartbeat), AgentLoop(stop, witnesses=witnesses)]
    if heartbeat is None and witnesses is None:
        return []
    return [AgentLoop(stop, heartbeat=heartbeat, witnesses=witnesses)]


def bind_tcp_and_udp(host: str, port: int, backlog: int = 8) -> tuple[socket.socket, socket.socket]:
    """A listening TCP socket and a UDP socket bound to the same address and
    port number, both non-blocking (port 0: an ephemeral port free for both)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    attempts = 20 if port == 0 else 1
    for attempt in range(attempts):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if sys.platform != "win32":
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(sockaddr)
            try:
                udp.bind((sockaddr[0], tcp.getsockname()[1], *sockaddr[2:]))
            except OSError as error:
                # An ephemeral TCP port whose UDP twin is taken: try another.
                if error.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    tcp.close()
                    udp.close()
                    continue
                raise
            tcp.listen(backlog)
            tcp.setblocking(False)
            udp.setblocking(False)
            return tcp, udp
        except BaseException:
            tcp.close()
            udp.close()
            raise
    raise OSError(errno.EADDRINUSE, "no port free for both TCP and UDP")  # pragma: no cover


def grab_screen(display: str | None, all_screens: bool) -> Any:
    from PIL import ImageGrab

    if sys.platform == "win32":
        return ImageGrab.grab(all_screens=all_screens)
    if sys.platform == "darwin":
        return ImageGrab.grab()
    return ImageGrab.grab(xdisplay=display)


def encode(image: Any, image_format: str, png_level: int, jpeg_quality: int) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, "PNG", compress_level=png_level)
    else:
        image.convert("RGB").save(buffer, "JPEG", quality=jpeg_quality)
    return buffer.getvalue()


class Capturer:
    """Grabs, stamps and encodes one frame."""

    def __init__(self, args: argparse.Namespace, display: str | None) -> None:
        self._args = args
        self._display = display

    def capture(self, seq: int) -> Frame:
        args = self._args
        mono = guest_mono_ns()
        utc = time.time_ns()
        image = grab_screen(self._display, args.all_screens)
        capture_ms = (guest_mono_ns() - mono) / 1e6
        image_format = args.format
        data = encode(image, image_format, args.png_level, args.jpeg_quality)
        if len(data) > args.max_frame_bytes and image_format == "png":
            image_format = "jpeg"
            data = encode(image, image_format, args.png_level, args.jpeg_quality)
        return Frame(seq, utc, mono, capture_ms, data, image_format)


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


HELP_EPILOG = """\
delivery by HTTP (--url, the default way):
  POST <url>/frames, body = the image (PNG or JPEG), headers:
    Authorization: Bearer <token>
    X-MB-Seq                 capture number (0, 1, 2, ...; from --start-seq)
    X-MB-Guest-UTC-NS        guest wall clock at the start of the grab, ns since 1970 UTC
    X-MB-Guest-Mono-NS       guest monotonic clock at the start of the grab, ns
    X-MB-Capture-MS          how long the grab took, ms
    X-MB-Interval-NS         the capture interval, ns
    X-MB-Agent-ID            16 hex digits, new for every start of the agent
    X-MB-Guest-Send-Mono-NS  guest monotonic clock when this upload started
  2xx or 409 (already there) counts as sent; 408, 429, 5xx and network errors
  are retried (the frame stays first in the queue); other answers (401, 413,
  415, 400) count as rejected and the agent moves on.

delivery to a folder (--folder, e.g. an SMB share):
  seq_000795.png (or .jpg) then seq_000795.json with the same stamps
  (schema_version, seq, file, format, guest_utc_ns, guest_mono_ns, capture_ms,
  interval_ns, agent_id, written_mono_ns). Each is written as .NAME.tmp and
  renamed, the sidecar last: a reader that waits for the .json never sees a
  half-written image. Existing sidecars are never overwritten.

heartbeat (UDP, --heartbeat, default the --url host and port):
  76-byte datagrams, big-endian: "MBHB", version 1 (u8), flags 0 (u8),
  reserved 0 (u16), agent id (u64), seq (u64, from 0), guest UTC ns (i64),
  guest monotonic ns (i64), interval us (u32), then HMAC-SHA256 of those 44
  bytes keyed with the token. The token itself never travels in UDP.

heartbeat version 2 (the default; --heartbeat-version 1 for a harness older
  than agent 1.1): 84 bytes, version 2, the same 44 bytes, then late_ns (u32:
  how late this heartbeat went out after its slot) and work_ns (u32: from the
  previous heartbeat's slot to the end of the fixed work unit done after it),
  then the HMAC of those 52 bytes.

witnesses (--witness-port, UDP and TCP on one port number; the harness's
direction probe and TCP stream, docs/guest-agent.md):
  UDP probe "MBUP" v1 (64 bytes, HMAC'd) -> answer "MBUA" v1 (104 bytes,
  HMAC'd) with the agent's receive stamps, the probes of that session
  received so far, the highest probe number seen and the first number of the
  unbroken run of consecutive numbers this probe ends. TCP: frames length u32 | type u8 |
  payload; the harness says hello ("H", HMAC'd), the agent answers "W", then
  the harness sends data frames ("D") and the agent, every interval the
  hello asked for, a tick ("T") listing the data frames received since the
  previous tick with their receive stamps.

clocks: the monotonic clock is CLOCK_MONOTONIC on Linux and
QueryPerformanceCounter on Windows; UTC is time.time_ns().

on exit (--duration passed, Ctrl-C, SIGTERM) the agent stops capturing, keeps
sending queued frames for up to --drain seconds and prints one line:
  guest-agent: frames_captured=N frames_sent=N frames_dropped=N
  frames_rejected=N frames_unsent=N capture_errors=N heartbeats_sent=N
  heartbeat_errors=N probes_answered=N probes_refused=N streams_accepted=N
  streams_refused=N ticks_sent=N
exit code 0; 2 for a usage error or when the first screen grab fails.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guest_agent.py",
        description=(
            "Inside the VM being migrated: capture the screen every --interval seconds, "
            "number and stamp each capture, deliver it to the harness (HTTP or a folder), "
            "and send a UDP heartbeat, so the harness can see when the guest stopped "
            "running and when its network stopped delivering."
        ),
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--url", help="the harness receiver, http://HOST:PORT/ (frames go to <url>/frames)"
    )
    where.add_argument(
        "--folder", help="write seq_NNNNNN.png + .json here instead of HTTP (e.g. an SMB share)"
    )
    parser.add_argument(
        "--token",
        help="the run token (default: $MB_AGENT_TOKEN); it shows in process lists, "
        "so prefer the variable or --token-file",
    )
    parser.add_argument("--token-file", help="read the run token from this file")
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        help="seconds between captures (default 1)",
    )
    parser.add_argument(
        "--start-seq", type=_non_negative_int, default=0, help="first capture number (default 0)"
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        help="stop after this many seconds (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--format", choices=("png", "jpeg"), default="png", help="image format (default png)"
    )
    parser.add_argument(
        "--png-level",
        type=int,
        choices=range(10),
        default=1,
        metavar="0-9",
        help="PNG compression level (default 1: fast)",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=80, help="JPEG quality 1-95 (default 80)"
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=_non_negative_int,
        default=DEFAULT_MAX_FRAME_BYTES,
        help="a PNG larger than this is sent as JPEG instead (default 8 MiB, "
        "the receiver's default limit)",
    )
    parser.add_argument(
        "--display",
        "--xdisplay",
        dest="display",
        help="Linux: the X display to capture (default $DISPLAY)",
    )
    parser.add_argument("--all-screens", action="store_true", help="Windows: capture all monitors")
    parser.add_argument(
        "--queue-max",
        type=_non_negative_int,
        default=DEFAULT_QUEUE_MAX,
        help=f"frames kept while delivery fails; the oldest are dropped first "
        f"(default {DEFAULT_QUEUE_MAX})",
    )
    parser.add_argument(
        "--queue-max-bytes",
        type=_non_negative_int,
        default=DEFAULT_QUEUE_MAX_BYTES,
        help="bytes kept while delivery fails (default 512 MiB)",
    )
    parser.add_argument(
        "--http-timeout",
        type=_positive_float,
        default=2.0,
        help="seconds for connecting and for each read or write of an upload (default 2)",
    )
    parser.add_argument(
        "--retry-max",
        type=_positive_float,
        default=1.0,
        help="longest pause between delivery retries, seconds (default 1)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="on exit, seconds to keep delivering queued frames (default 10)",
    )
    parser.add_argument(
        "--heartbeat",
        metavar="HOST:PORT",
        help="UDP heartbeat destination (default: the --url host and port; none with --folder)",
    )
    parser.add_argument(
        "--heartbeat-hz",
        type=float,
        default=100.0,
        help="heartbeats per second (default 100; 0 disables)",
    )
    parser.add_argument(
        "--heartbeat-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="heartbeat format (default 2: with the work unit's timing; 1 for an older harness)",
    )
    parser.add_argument(
        "--witness-port",
        type=_non_negative_int,
        metavar="PORT",
        help="answer the harness's direction probe (UDP) and TCP stream on this port "
        f"({WITNESS_DEFAULT_PORT} is the harness's default; 0: any free port; "
        "open it in the guest's firewall)",
    )
    parser.add_argument(
        "--witness-host",
        default="0.0.0.0",
        help="address the witnesses listen on (default 0.0.0.0, every IPv4 address)",
    )
    parser.add_argument(
        "--no-frames",
        action="store_true",
        help="capture nothing: heartbeat and witnesses only (a guest without a display)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per event on stderr")
    parser.add_argument("--version", action="version", version=f"guest_agent {AGENT_VERSION}")
    return parser


def read_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return args.token or os.environ.get("MB_AGENT_TOKEN") or None


def _stop_on_signals(stop: threading.Event, abandon: Callable[[], None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        # Event.set() takes a lock that the interrupted main thread may hold
        # (it waits on the same event): set it from another thread. A second
        # signal also gives up sending what is still queued.
        target = abandon if stop.is_set() else stop.set
        threading.Thread(target=target, daemon=True).start()

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.url and not args.folder and not args.no_frames:
        parser.error("say where frames go: --url http://HOST:PORT/ or --folder PATH")
    if args.heartbeat_hz < 0:
        parser.error("--heartbeat-hz must be >= 0")
    if args.queue_max < 1:
        parser.error("--queue-max must be >= 1 (the frame being delivered waits there)")
    try:
        token = read_token(args)
    except OSError as error:
        parser.error(f"cannot read --token-file: {error}")
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        parser.error("the token must be printable ASCII without spaces")

    log = Log(args.verbose)
    counters = Counters()
    agent_id = secrets.randbits(64)
    interval_ns = round(args.interval * 1e9)
    display = args.display or os.environ.get("DISPLAY")

    delivery: HttpDelivery | FolderDelivery | None = None
    heartbeat_target: tuple[str, int] | None = None
    if args.url:
        if not token:
            parser.error("--url needs the run token: --token, --token-file or $MB_AGENT_TOKEN")
        try:
            delivery = HttpDelivery(args.url, token, args.http_timeout, agent_id, interval_ns)
        except ValueError as error:
            parser.error(str(error))
        heartbeat_target = (delivery.host, delivery.port)
    elif args.folder:
        if not os.path.isdir(args.folder):
            parser.error(f"--folder {args.folder!r} is not a folder")
        delivery = FolderDelivery(args.folder, agent_id, interval_ns)
    if args.heartbeat:
        try:
            heartbeat_target = parse_host_port(args.heartbeat)
        except ValueError as error:
            parser.error(f"--heartbeat: {error}")
    heartbeat_address: tuple[Any, ...] | None = None
    heartbeat_family = socket.AF_INET
    if args.heartbeat_hz > 0 and heartbeat_target is not None:
        if not token:
            parser.error("the heartbeat needs the run token (or --heartbeat-hz 0)")
        try:
            info = socket.getaddrinfo(*heartbeat_target, type=socket.SOCK_DGRAM)[0]
        except OSError as error:
            parser.error(f"cannot resolve the heartbeat destination {heartbeat_target}: {error}")
        heartbeat_family, heartbeat_address = info[0], info[4]

    if args.witness_port is not None and not token:
        parser.error("the witnesses need the run token")
    capturer = Capturer(args, display)
    first: Frame | None = None
    if not args.no_frames:
        try:
            first = capturer.capture(args.start_seq)
        except Exception as error:
            sys.stderr.write(
                f"guest-agent: cannot capture the screen (display {display!r}): "
                f"{type(error).__name__}: {error}\n"
            )
            return 2

    stop = threading.Event()
    witnesses: WitnessServer | None = None
    if args.witness_port is not None:
        try:
            witnesses = WitnessServer(
                args.witness_host,
                args.witness_port,
                token.encode("ascii") if token else b"",
                agent_id,
                counters,
                log,
            )
        except OSError as error:
            parser.error(f"--witness-port {args.witness_port}: {error}")
    queue = FrameQueue(args.queue_max, args.queue_max_bytes, counters, log)
    sender = None if delivery is None else Sender(delivery, queue, counters, log, args.retry_max)
    _stop_on_signals(stop, sender.abandon.set if sender is not None else stop.set)
    _continue_wakes_the_loop()
    if sender is not None:
        sender.start()
    heartbeat: Heartbeat | None = None
    if heartbeat_address is not None:
        heartbeat = Heartbeat(
            heartbeat_address,
            heartbeat_family,
            token.encode("ascii") if token else b"",
            agent_id,
            args.heartbeat_hz,
            counters,
            log,
            version=args.heartbeat_version,
        )
    loops = agent_loops(stop, heartbeat, witnesses)
    for loop in loops:
        loop.start()
    if witnesses is not None:
        host, port = witnesses.address
        # Always said: the harness (and the user) need the port when it was 0.
        sys.stderr.write(f"guest-agent: witnesses on {host}:{port} (UDP and TCP)\n")
        sys.stderr.flush()
    log.info(
        f"agent {agent_id:016x}: capturing every {args.interval} s to "
        f"{args.url or args.folder or 'nowhere (--no-frames)'}; "
        f"heartbeat {heartbeat_address or 'off'}"
    )
    if first is None or sender is None:
        stop.wait(args.duration)
        stop.set()
        for loop in loops:
            loop.join()
        _print_counts(counters, 0)
        return 0

    start = first.mono_ns
    end = start + int(args.duration * 1e9) if args.duration else None
    seq = args.start_seq
    frame: Frame | None = first
    while True:
        if frame is not None:
            counters.add("frames_captured")
            queue.put(frame)
            log.info(f"seq={frame.seq} captured in {frame.capture_ms:.1f} ms")
            seq += 1
        now = guest_mono_ns()
        # The next slot on the grid after now: a guest that was frozen for
        # several intervals captures once on waking, then keeps to the grid.
        next_slot = start + ((now - start) // interval_ns + 1) * interval_ns
        if end is not None and next_slot >= end:
            wait_ns = max(0, end - now)
            stop.wait(wait_ns / 1e9)
            break
        while not stop.is_set() and guest_mono_ns() < next_slot:
            stop.wait(max(0, next_slot - guest_mono_ns()) / 1e9)
        if stop.is_set():
            break
        if heartbeat is not None:
            heartbeat.wait_for_next(timeout_s=min(0.1, 2 / args.heartbeat_hz))
        try:
            frame = capturer.capture(seq)
        except Exception as error:
            frame = None
            counters.add("capture_errors")
            log.warn(f"seq={seq} not captured: {type(error).__name__}: {error}")

    stop.set()
    for loop in loops:
        loop.join()
    sender.draining.set()
    queue.wake()
    sender.join(timeout=max(0.0, args.drain))
    sender.abandon.set()
    queue.wake()
    sender.join()
    _print_counts(counters, sender.unsent)
    return 0


def _print_counts(counters: Counters, unsent: int) -> None:
    print(
        f"guest-agent: frames_captured={counters.frames_captured} "
        f"frames_sent={counters.frames_sent} frames_dropped={counters.frames_dropped} "
        f"frames_rejected={counters.frames_rejected} frames_unsent={unsent} "
        f"capture_errors={counters.capture_errors} "
        f"heartbeats_sent={counters.heartbeats_sent} "
        f"heartbeat_errors={counters.heartbeat_errors} "
        f"probes_answered={counters.probes_answered} probes_refused={counters.probes_refused} "
        f"streams_accepted={counters.streams_accepted} "
        f"streams_refused={counters.streams_refused} ticks_sent={counters.ticks_sent}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

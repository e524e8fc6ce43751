"""ICMP echo prober: every attempt is one row, timed to the microsecond.

How it works
------------
* **Sockets.** One socket per address family. As root (or with CAP_NET_RAW) a
  raw ICMP socket; otherwise an unprivileged ``SOCK_DGRAM`` ICMP ("ping")
  socket where ``net.ipv4.ping_group_range`` includes our group. With
  ``privileged=None`` the raw socket is preferred. If neither can be opened,
  ``IcmpPermissionError`` says how to fix it.
* **Sending.** A periodic ``timerfd`` on CLOCK_MONOTONIC with an absolute
  start ``t0`` (attempt ``n`` is due at ``t0 + n * interval``; the kernel keeps
  the period, so the schedule never drifts) wakes the event loop through
  ``loop.add_reader``. Each expiry sends one echo request to every target with
  a plain ``sendto`` of a pre-built packet in which only checksum, sequence
  and the 64-bit attempt counter change. If the loop was late, the missed
  attempts go out back to back on the next wake-up, so the number of attempts
  always matches the schedule and their send stamps show the lateness.
* **Receiving.** One ``add_reader`` callback per socket drains it with
  ``recvmsg`` and takes each packet's arrival time from the kernel
  (``SO_TIMESTAMPNS``, CLOCK_REALTIME), converted to the monotonic domain with
  a bracketed clock pair (re-read every 50 ms). At intervals below 2 ms the
  same drain runs at the start of each timer tick instead of on its own
  wake-up: a wake-up of the event loop costs ~50 us of CPU on a VM, and the
  kernel stamps do not depend on when the socket is read (rows then lag by at
  most one interval). Replies are dispatched here by
  (identifier, sequence); on an unprivileged socket, where the kernel rewrites
  the identifier, by (source address, sequence). ICMP errors (destination
  unreachable, time exceeded, parameter problem, packet too big) are matched
  to the attempt through the original header they quote (raw socket) or the
  socket error queue (``IP_RECVERR``, unprivileged socket).
* **Matching.** Each target has its own identifier (random base + index). The
  payload carries the 64-bit attempt number ``n`` and a per-run cookie, so
  other processes' pings, our own requests seen on a raw socket (loopback),
  and replies that arrive after the 16-bit sequence wrapped are never
  confused. A raw socket additionally filters ICMP types in the kernel.

The bytes on the wire (requests built, answers parsed) are
``probes/icmp_wire.py``; the timer is ``probes/timerfd.py``. This module owns
the sockets, the schedule and the table of attempts.

Why the hot path bypasses icmplib's ``send()`` / ``receive()``
---------------------------------------------------------------
Measured on this project's machines (shared notes "icmp-probing"):
``AsyncSocket.receive(request)`` silently discards packets that match another
request, so concurrent waiters steal each other's replies; ``receive(None)``
returns our own looped-back requests parsed at the wrong offset and a reply
with ``source=None``; its timestamps are ``time.time()`` after the event loop
dispatched, 0.1-0.9 ms late; ``send()`` costs ~23 us (getaddrinfo and two
setsockopt per call) against ~7 us for a plain ``sendto``, ``receive()``
~40 us per reply against ~2 us for a plain ``recvmsg``. Through ``receive()``
10 kHz to one target lost 30 %; with this design 20 kHz runs without loss
(bench/bench_icmp.py). icmplib is still used where it helps: resolving and validating target
names, opening the sockets (its ``SocketPermissionError`` tells a permission
problem from other failures) and the human-readable texts of ICMP error codes.

Clocks and units
----------------
All stamps are integers in nanoseconds: ``*_mono_ns`` on
``time.monotonic_ns()`` (CLOCK_MONOTONIC), ``*_utc_ns`` since the Unix epoch.
``send_*`` is read immediately *before* ``sendto`` is called (so a reply can
never appear to precede its request); ``recv_*`` is the kernel's arrival
stamp. ``rtt_ns = recv_mono_ns - send_mono_ns``.

Rows (run format v1, ``raw/icmp.csv``; columns ``runformat.ICMP.columns``)
-------------------------------------------------------------------------
One row per attempt, written when it resolves (so rows are not in send order;
sort by ``target, n``):

``reply``        echo reply received within ``timeout_s``
``timeout``      no answer within ``timeout_s`` of the send
``unreachable``  ICMP destination unreachable (v4 type 3, v6 type 1) for it
``error``        another ICMP error (time exceeded, ...) or a local ``sendto``
                 failure (``detail`` holds the errno text; no ``recv_*``)
``unresolved``   the probe was cancelled before the attempt's deadline

plus extra rows that never replace the attempt's own row:

``duplicate``    another answer to an attempt already answered
``late``         an answer to an attempt already written as ``timeout``

``timeout_s`` defaults to ``max(1.0, 3 * interval_s)`` (at most 30000
intervals, so only above 30 kHz is it shorter than 1 s): long enough that a
reply delayed by a busy host is not miscounted as lost, short enough that the
bounded table of outstanding attempts stays small. A late reply is still
written (``late``), so the analysis can decide.

Rows go to the sink after every drained batch and timer tick; the sink is
flushed at most every 10 ms (a flush is a write syscall, ~5 % CPU at 20 kHz
if done per batch) and a pending flush is always scheduled, so a crash loses
at most the rows of the last 10 ms.

Scheduling: the schedule cannot be better than the process's access to a
CPU. On a busy machine (or a VM whose vCPU the hypervisor steals) sends can be
several ms late; their stamps say so. ``realtime_priority`` (SCHED_FIFO)
removes the contention from other processes, not hypervisor steal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icmplib
from icmplib.exceptions import ICMPLibError, SocketPermissionError

from migration_blackout.probes.icmp_wire import (
    ERRORS_V4,
    ERRORS_V6,
    ID_SEQ,
    MIN_PAYLOAD,
    PAYLOAD_TAG,
    REPLY_FIELDS,
    SEND_FIELDS,
    SO_TIMESTAMPNS,
    TIMESPEC,
    Answer,
    echo_checksum,
    echo_request,
    icmp_error_text,
    kernel_stamp_ns,
    ones_sum,
    parse_ping_reply,
    parse_queued_error,
    parse_raw_v4,
    parse_raw_v6,
    raw_socket_filter,
)
from migration_blackout.probes.sink import CsvSink
from migration_blackout.probes.timerfd import PeriodicTimer
from migration_blackout.runformat import (
    DUPLICATE,
    ERROR,
    ICMP,
    LATE,
    REPLY,
    TIMEOUT,
    UNREACHABLE,
    UNRESOLVED,
)

# Linux constants the socket module does not export.
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_SOL_IP = 0
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMP6_FILTER = 1

_SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
_RECV_BUFFER_BYTES = 2048
_ANC_BUFFER_BYTES = 512
_FLUSH_PERIOD_NS = 10_000_000  # a crash loses at most the rows of the last 10 ms
_MAX_PACKETS_PER_DRAIN = 512  # then yield to the loop so sends stay on time
_MAX_SENDS_PER_TICK = 4096  # packets; a longer stall is caught up over several ticks
_OFFSET_REFRESH_NS = 50_000_000  # see IcmpProbe._utc_minus_mono
_OFFSET_MAX_BRACKET_NS = 20_000
# At intervals below this the receive drain runs on the timer tick (before the
# sends) rather than on its own wake-up: every wake-up of the event loop costs
# ~50 us of CPU on a VM, so this halves the CPU at 1-20 kHz. Kernel timestamps
# make the stamps independent of when the socket is read; rows and counters
# lag by at most one interval. After the last send the reader is registered.
_COALESCE_BELOW_S = 0.002
_HISTORY_S = 30.0  # how far back a late or duplicate answer can still be matched
_MAX_OUTSTANDING = 30000  # timeout_s / interval_s; the attempt table holds 65536

# Per-slot states of the attempt table.
_FREE, _PENDING, _S_REPLY, _S_TIMEOUT, _S_UNREACHABLE, _S_ERROR, _S_UNRESOLVED = range(7)
_STATE_OF = {
    REPLY: _S_REPLY,
    TIMEOUT: _S_TIMEOUT,
    UNREACHABLE: _S_UNREACHABLE,
    ERROR: _S_ERROR,
    UNRESOLVED: _S_UNRESOLVED,
}

_TIMESPEC_UNPACK = TIMESPEC.unpack_from


class IcmpPermissionError(PermissionError):
    """Neither a raw nor an unprivileged ICMP socket may be opened."""


@dataclass(frozen=True)
class IcmpTargetStats:
    """Live counters of one target (a snapshot; the rows are the record).

    A loss streak is a run of consecutive attempts (by attempt number) that
    were lost (timeout, unreachable, error). ``current_loss_streak`` is the
    run at the newest end of the attempts resolved so far, 0 once a later
    attempt was answered; ``longest_loss_streak`` is the longest run so far.
    Timeouts resolve ``timeout_s`` after their send, so a streak grows for
    that long after the loss itself.
    """

    target: str
    sent: int
    replies: int
    timeouts: int
    unreachable: int
    errors: int
    late: int
    duplicates: int
    outstanding: int
    current_loss_streak: int
    longest_loss_streak: int
    last_rtt_ns: int | None


# --------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------


def _ping_group_range() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range", encoding="ascii") as handle:
            return " ".join(handle.read().split())
    except OSError:
        return "unknown"


def _permission_message(privileged: bool | None, failures: Sequence[str]) -> str:
    python = os.path.realpath(sys.executable)
    fixes = (
        "  * run as root (e.g. with sudo); or\n"
        f"  * give the interpreter CAP_NET_RAW: sudo setcap cap_net_raw+ep {python}; or\n"
        "  * allow unprivileged ICMP sockets for all groups: sudo sysctl -w "
        'net.ipv4.ping_group_range="0 2147483647" '
        f"(now {_ping_group_range()!r}; add it to /etc/sysctl.d/ to keep it) "
        "and use privileged=False or auto"
    )
    if privileged is True:
        what = "a raw ICMP socket (privileged=True) needs root or CAP_NET_RAW"
    elif privileged is False:
        what = (
            "an unprivileged ICMP socket (privileged=False) needs net.ipv4.ping_group_range "
            f"to include this process's group (gid {os.getegid()})"
        )
    else:
        what = "neither a raw nor an unprivileged ICMP socket may be opened"
    return (
        f"ICMP probing is not permitted: {what} (uid {os.geteuid()}, gid {os.getegid()}; "
        f"{'; '.join(failures)}). To enable it:\n{fixes}"
    )


def _open_icmp_socket(family: int, privileged: bool) -> socket.socket:
    """Open one ICMP socket through icmplib (for its permission diagnosis) and take it over."""
    cls = icmplib.ICMPv4Socket if family == socket.AF_INET else icmplib.ICMPv6Socket
    wrapper = cls(privileged=privileged)
    sock: socket.socket = wrapper.sock
    # Take the descriptor over: the wrapper's socket object is left detached,
    # so the wrapper closing it later (its __del__) is harmless.
    return socket.socket(fileno=sock.detach())


def _try_open(family: int, privileged: bool) -> str | None:
    """None if the socket can be opened, else why not."""
    try:
        _open_icmp_socket(family, privileged).close()
    except SocketPermissionError:
        kind = "raw" if privileged else "unprivileged"
        return f"{kind} socket: permission denied"
    except ICMPLibError as exc:
        kind = "raw" if privileged else "unprivileged"
        return f"{kind} socket: {exc}"
    return None


def resolve_privileged(
    privileged: bool | None, families: Iterable[int] = (socket.AF_INET,)
) -> bool:
    """Decide the socket kind: True = raw, False = unprivileged datagram.

    ``None`` prefers raw and falls back to unprivileged. Raises
    ``IcmpPermissionError`` (with how to fix it) if the requested kind cannot
    be opened.
    """
    families = tuple(families) or (socket.AF_INET,)
    candidates = (True, False) if privileged is None else (privileged,)
    failures: list[str] = []
    for candidate in candidates:
        problems = [p for f in families if (p := _try_open(f, candidate)) is not None]
        if not problems:
            return candidate
        failures.extend(problems)
    raise IcmpPermissionError(_permission_message(privileged, failures))


def default_timeout_s(interval_s: float) -> float:
    """``max(1 s, 3 intervals)``, capped at 30000 intervals (0.6 s at 50 kHz)."""
    return min(max(1.0, 3.0 * interval_s), _MAX_OUTSTANDING * interval_s)


def _resolve_targets(targets: Sequence[str]) -> list[tuple[str, str, int]]:
    """[(name as given, canonical address, family)]; names resolved with icmplib."""
    resolved: list[tuple[str, str, int]] = []
    for name in targets:
        if icmplib.is_ipv6_address(name) or icmplib.is_ipv4_address(name):
            address = name
        else:
            address = icmplib.resolve(name)[0]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if "%" in address:
            raise ValueError(f"target {name!r}: scoped (link-local) addresses are not supported")
        try:
            canonical = socket.inet_ntop(family, socket.inet_pton(family, address))
        except OSError as exc:
            raise ValueError(f"target {name!r}: {address!r} is not a valid IP address") from exc
        resolved.append((name, canonical, family))
    addresses = [address for _, address, _ in resolved]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"targets resolve to duplicate addresses: {addresses}")
    return resolved


def _errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"sendto: {name} {exc.strerror or exc}"


# --------------------------------------------------------------------------
# Per-target state
# --------------------------------------------------------------------------


class _Target:
    """One target: its packet, counters and the table of recent attempts.

    The table is a ring indexed by ``n & mask``; a slot holds attempt ``n``
    (``ring_n``), its send stamps and its state. It is big enough to hold every
    attempt that can still be outstanding several times over, and up to
    ``_HISTORY_S`` of history (at most 65536 attempts, one sequence cycle).
    """

    __slots__ = (
        "address",
        "base_sum",
        "checksummed",
        "duplicates",
        "errors",
        "family",
        "ident",
        "index",
        "label",
        "last_lost_n",
        "last_reply_n",
        "last_rtt_ns",
        "late",
        "longest_streak",
        "mask",
        "next_n",
        "outstanding",
        "packet",
        "replies",
        "ring_mono",
        "ring_n",
        "ring_state",
        "ring_utc",
        "sendto",
        "sockaddr",
        "streak",
        "timeouts",
        "unreachable",
    )

    def __init__(
        self,
        index: int,
        label: str,
        address: str,
        family: int,
        ident: int,
        size: int,
        cookie: int,
        ring_size: int,
    ) -> None:
        self.index = index
        self.label = label
        self.address = address
        self.family = family
        self.ident = ident
        self.sockaddr: tuple[Any, ...] = (
            (address, 0) if family == socket.AF_INET else (address, 0, 0, 0)
        )
        self.packet = echo_request(family, ident, size, cookie)
        # Both set when the probe opens its sockets. Only a raw IPv4 socket
        # sends our checksum: the kernel fills it in for ICMPv6 and ping sockets.
        self.sendto: Any = None
        self.checksummed = False
        # One's-complement sum of everything but sequence and n, which vary.
        self.base_sum = ones_sum(bytes(self.packet))
        self.mask = ring_size - 1
        self.ring_n = [-1] * ring_size
        self.ring_state = [_FREE] * ring_size
        self.ring_mono = [0] * ring_size
        self.ring_utc = [0] * ring_size
        self.next_n = 0
        self.outstanding = 0
        self.replies = self.timeouts = self.unreachable = self.errors = 0
        self.late = self.duplicates = 0
        self.streak = self.longest_streak = 0
        self.last_lost_n = self.last_reply_n = -1
        self.last_rtt_ns: int | None = None

    def stats(self) -> IcmpTargetStats:
        return IcmpTargetStats(
            target=self.label,
            sent=self.next_n,
            replies=self.replies,
            timeouts=self.timeouts,
            unreachable=self.unreachable,
            errors=self.errors,
            late=self.late,
            duplicates=self.duplicates,
            outstanding=self.outstanding,
            current_loss_streak=self.streak if self.last_lost_n > self.last_reply_n else 0,
            longest_loss_streak=self.longest_streak,
            last_rtt_ns=self.last_rtt_ns,
        )


class _Endpoint:
    """One socket (one address family) and how to read it."""

    __slots__ = ("by_address", "by_ident", "family", "ident", "privileged", "sock")

    def __init__(self, family: int, privileged: bool, sock: socket.socket) -> None:
        self.family = family
        self.privileged = privileged
        self.sock = sock
        self.ident: int | None = None  # kernel identifier of an unprivileged socket
        self.by_ident: dict[int, _Target] = {}
        self.by_address: dict[str, _Target] = {}


# --------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------


class IcmpProbe:
    """Ping ``targets`` every ``interval_s`` seconds and write one row per attempt.

    Args:
        targets: IPv4/IPv6 addresses or host names (resolved once, here).
        interval_s: seconds between attempts to each target (>= 20 us).
        sink: where rows go (columns ``runformat.ICMP.columns``); flushed, not closed.
        timeout_s: seconds after its send at which an unanswered attempt is a
            ``timeout``; default ``default_timeout_s(interval_s)``. At most
            30000 intervals (ValueError otherwise), so the 16-bit sequence
            cannot wrap onto an outstanding attempt.
        privileged: True = raw socket, False = unprivileged ICMP socket, None =
            raw if permitted else unprivileged. Checked here: raises
            ``IcmpPermissionError`` if not permitted.
        size: ICMP payload bytes (like ``ping -s``), >= 12.
        identifier_base: identifier of the first target (the i-th gets
            ``base + i``); random by default.
        realtime_priority: if set, ``run()`` switches the thread running the
            event loop to SCHED_FIFO at this priority (1-99) and restores it
            on exit. On a busy machine this keeps the send schedule within
            ~0.1 ms instead of several ms; everything else on that loop runs
            real-time too. Needs root or CAP_SYS_NICE (else PermissionError).

    ``ready`` is set once the sockets are open and the first requests are out.
    ``meta`` is what belongs in the sink's header line (``IcmpProbe.create``
    builds the sink with it).
    """

    def __init__(
        self,
        *,
        targets: Sequence[str],
        interval_s: float,
        sink: CsvSink,
        timeout_s: float | None = None,
        privileged: bool | None = None,
        size: int = 56,
        identifier_base: int | None = None,
        realtime_priority: int | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one target is needed")
        if not interval_s >= 20e-6:
            raise ValueError(f"interval_s={interval_s!r}: must be at least 20 us")
        if timeout_s is None:
            timeout_s = default_timeout_s(interval_s)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive")
        if timeout_s / interval_s > _MAX_OUTSTANDING:
            raise ValueError(
                f"timeout_s={timeout_s} is {timeout_s / interval_s:.0f} intervals; keep it at most "
                f"{_MAX_OUTSTANDING} intervals so a wrapped 16-bit sequence cannot meet an "
                "outstanding attempt"
            )
        if not MIN_PAYLOAD <= size <= 65000:
            raise ValueError(f"size={size}: payload must be {MIN_PAYLOAD}..65000 bytes")
        if tuple(sink.columns) != ICMP.columns:
            raise ValueError("the sink's columns must be runformat.ICMP.columns")
        resolved = _resolve_targets(targets)
        families = sorted({family for _, _, family in resolved})
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.size = size
        if realtime_priority is not None and not 1 <= realtime_priority <= 99:
            raise ValueError(f"realtime_priority={realtime_priority}: must be 1..99")
        self.realtime_priority = realtime_priority
        self.sink = sink
        self.privileged = resolve_privileged(privileged, families)
        base = random.randrange(0x10000) if identifier_base is None else identifier_base & 0xFFFF
        self._identifier_base = base
        self._interval_ns = max(1, round(interval_s * 1e9))
        self._timeout_ns = round(timeout_s * 1e9)
        self._cookie = random.getrandbits(32)
        outstanding = int(timeout_s / interval_s) + 2
        history = max(outstanding * 2, int(_HISTORY_S / interval_s), 1024)
        ring_size = 1 << (min(history, 65536) - 1).bit_length()
        self._targets = [
            _Target(i, address, address, family, (base + i) & 0xFFFF, size, self._cookie, ring_size)
            for i, (_name, address, family) in enumerate(resolved)
        ]
        self._names = {address: name for name, address, _ in resolved if name != address}
        self._families = families
        self.ready = asyncio.Event()
        self._endpoints: dict[int, _Endpoint] = {}
        self._timer: PeriodicTimer | None = None
        self._deadlines: deque[tuple[int, _Target, int]] = deque()
        self._rows: list[tuple[Any, ...]] = []
        self._dirty = False
        self._last_flush_ns = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._outstanding = 0
        self._offset_ns = 0
        self._offset_read_ns = 0
        # Below this interval the tick drains the sockets before it sends
        # instead of a wake-up per reply (see _COALESCE_BELOW_S).
        self._coalesce = interval_s < _COALESCE_BELOW_S
        self._sending = False
        self._owed = 0  # schedule slots not yet sent (the loop was late)
        self._drained: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._stop_waiter: asyncio.Task[Any] | None = None
        self._ran = False

    # -- construction with a matching sink -------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        targets: Sequence[str],
        interval_s: float,
        timeout_s: float | None = None,
        privileged: bool | None = None,
        size: int = 56,
        identifier_base: int | None = None,
        realtime_priority: int | None = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> IcmpProbe:
        """A probe plus a new ``CsvSink`` at ``path`` (e.g. ``run/raw/icmp.csv``)
        whose header carries ``meta``. The caller closes ``probe.sink``."""
        families = sorted({family for _, _, family in _resolve_targets(targets)})
        mode = resolve_privileged(privileged, families)
        base = random.randrange(0x10000) if identifier_base is None else identifier_base
        timeout = default_timeout_s(interval_s) if timeout_s is None else timeout_s
        meta = cls.describe(
            targets=targets,
            interval_s=interval_s,
            timeout_s=timeout,
            privileged=mode,
            size=size,
            identifier_base=base,
        )
        meta.update(extra_meta or {})
        sink = CsvSink(Path(path), probe=ICMP.probe, columns=ICMP.columns, meta=meta)
        try:
            return cls(
                targets=targets,
                interval_s=interval_s,
                sink=sink,
                timeout_s=timeout,
                privileged=mode,
                size=size,
                identifier_base=base,
                realtime_priority=realtime_priority,
            )
        except BaseException:
            sink.close()
            raise

    @staticmethod
    def describe(
        *,
        targets: Sequence[str],
        interval_s: float,
        timeout_s: float,
        privileged: bool,
        size: int,
        identifier_base: int,
    ) -> dict[str, Any]:
        """The sink header fields for these settings (same as ``probe.meta``)."""
        resolved = _resolve_targets(targets)
        return {
            "interval_s": float(interval_s),
            "timeout_s": float(timeout_s),
            "targets": [address for _, address, _ in resolved],
            "target_names": {a: n for n, a, _ in resolved if n != a},
            "privileged": privileged,
            "socket": "raw" if privileged else "unprivileged datagram",
            "identifiers": {
                address: (
                    (identifier_base + i) & 0xFFFF if privileged else identifier_base & 0xFFFF
                )
                for i, (_, address, _) in enumerate(resolved)
            },
            "size": size,
            "send_stamp": "clocks read immediately before sendto()",
            "recv_stamp": "kernel SO_TIMESTAMPNS (CLOCK_REALTIME), monotonic via a clock pair",
        }

    @property
    def meta(self) -> dict[str, Any]:
        return self.describe(
            targets=[self._names.get(t.address, t.address) for t in self._targets],
            interval_s=self.interval_s,
            timeout_s=self.timeout_s,
            privileged=self.privileged,
            size=self.size,
            identifier_base=self._identifier_base,
        )

    # -- live counters -------------------------------------------------------

    def stats(self) -> dict[str, IcmpTargetStats]:
        """A snapshot of every target's counters, keyed by target address."""
        return {t.address: t.stats() for t in self._targets}

    @property
    def identifiers(self) -> dict[str, int]:
        """The identifier on the wire per target (kernel-chosen if unprivileged)."""
        return {t.address: self._wire_ident(t) for t in self._targets}

    def _wire_ident(self, target: _Target) -> int:
        if self.privileged:
            return target.ident
        endpoint = self._endpoints.get(target.family)
        if endpoint is not None and endpoint.ident is not None:
            return endpoint.ident
        return self._identifier_base

    # -- run -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set, then collect outstanding answers (up to
        ``timeout_s``), write every remaining row and flush. Sockets are closed
        on the way out whatever happens; on cancellation every outstanding
        attempt is written as ``timeout`` (deadline passed) or ``unresolved``."""
        if self._ran:
            raise RuntimeError("an IcmpProbe runs once; make a new one")
        self._ran = True
        loop = asyncio.get_running_loop()
        with self._realtime():
            await self._run(loop, stop)

    @contextlib.contextmanager
    def _realtime(self) -> Iterator[None]:
        if self.realtime_priority is None:
            yield
            return
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
        except PermissionError as exc:
            raise PermissionError(
                f"realtime_priority={self.realtime_priority} needs root or CAP_SYS_NICE "
                "(or an RLIMIT_RTPRIO of at least that); pass realtime_priority=None to run "
                "without it"
            ) from exc
        try:
            yield
        finally:
            os.sched_setscheduler(0, policy, param)

    async def _run(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        try:
            self._open(loop)
            async with asyncio.TaskGroup() as group:
                # A failure inside a loop callback cancels this waiter so run() wakes.
                self._stop_waiter = group.create_task(stop.wait(), name="icmp-stop")
                first_ns = time.monotonic_ns()
                self._sending = True
                self._send_all(1)
                self._flush_rows()
                assert self._timer is not None
                self._timer.arm(first_ns + self._interval_ns, self._interval_ns)
                loop.add_reader(self._timer.fd, self._guard, self._on_tick)
                self.ready.set()
            self._raise_failure()
            self._stop_sending(loop)
            await self._collect_outstanding()
            self._raise_failure()
        finally:
            try:
                self._stop_sending(loop)
                self._close_readers(loop)
                self._resolve_all_remaining()
                self._flush_rows(force=True)
            finally:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._close()

    async def _collect_outstanding(self) -> None:
        if not self._deadlines:
            return
        self._drained = asyncio.Event()
        if not self._outstanding:
            return
        last_deadline_ns = self._deadlines[-1][0]
        wait_s = max(0.0, (last_deadline_ns - time.monotonic_ns()) / 1e9)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._drained.wait()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    # -- sockets ---------------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = PeriodicTimer()
        for family in self._families:
            try:
                sock = _open_icmp_socket(family, self.privileged)
            except SocketPermissionError as exc:
                raise IcmpPermissionError(_permission_message(self.privileged, [str(exc)])) from exc
            endpoint = _Endpoint(family, self.privileged, sock)
            self._endpoints[family] = endpoint
            self._configure(endpoint)
            for target in self._targets:
                if target.family == family:
                    endpoint.by_ident[target.ident] = target
                    endpoint.by_address[target.address] = target
                    target.sendto = sock.sendto
                    target.checksummed = family == socket.AF_INET and self.privileged
            if not self._coalesce:
                loop.add_reader(sock.fileno(), self._guard, self._on_readable, endpoint)

    def _configure(self, endpoint: _Endpoint) -> None:
        sock = endpoint.sock
        sock.setblocking(False)
        for force, plain in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER_BYTES)
            except OSError:  # not root: capped by net.core.[rw]mem_max
                sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        v6 = endpoint.family == socket.AF_INET6
        if endpoint.privileged:
            level, option = (
                (socket.IPPROTO_ICMPV6, _ICMP6_FILTER) if v6 else (_SOL_RAW, _ICMP_FILTER)
            )
            sock.setsockopt(level, option, raw_socket_filter(endpoint.family))
        else:
            # ICMP errors for a ping socket only arrive through the error queue.
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(_SOL_IP, _IP_RECVERR, 1)
            # The kernel replaces our identifier by the socket's "port"; ask for ours.
            any_address = "::" if v6 else "0.0.0.0"
            try:
                sock.bind((any_address, self._identifier_base))
            except OSError:
                sock.bind((any_address, 0))
            endpoint.ident = sock.getsockname()[1]

    def _stop_sending(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sending = False
        if self._timer is not None and self._timer.fd >= 0:
            loop.remove_reader(self._timer.fd)
            self._timer.disarm()
        if self._coalesce:
            # From now on nothing drains the sockets on a tick: wake on arrival.
            self._coalesce = False
            for endpoint in self._endpoints.values():
                if endpoint.sock.fileno() >= 0 and self._failure is None:
                    loop.add_reader(
                        endpoint.sock.fileno(), self._guard, self._on_readable, endpoint
                    )

    def _close_readers(self, loop: asyncio.AbstractEventLoop) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.sock.fileno() >= 0:
                loop.remove_reader(endpoint.sock.fileno())

    def _close(self) -> None:
        for endpoint in self._endpoints.values():
            endpoint.sock.close()
        if self._timer is not None:
            self._timer.close()

    def _guard(self, callback: Any, *args: Any) -> None:
        """Run a loop callback; on an exception stop probing and wake ``run()``."""
        try:
            callback(*args)
        except Exception as exc:  # e.g. the sink's disk is full
            if self._failure is None:
                self._failure = exc
            self._sending = False
            loop = asyncio.get_running_loop()
            self._stop_sending(loop)
            self._close_readers(loop)
            if self._stop_waiter is not None:
                self._stop_waiter.cancel()
            if self._drained is not None:
                self._drained.set()

    # -- sending ---------------------------------------------------------------

    def _on_tick(self) -> None:
        assert self._timer is not None
        due = self._timer.expirations()
        if self._coalesce:
            for endpoint in self._endpoints.values():
                self._on_readable(endpoint)
        if self._sending:
            # Attempts missed while the loop was late go out now, back to back,
            # so the count of attempts always matches the schedule; a very long
            # stall is worked off over several ticks so receiving keeps up.
            self._owed += due
            rounds = min(self._owed, max(1, _MAX_SENDS_PER_TICK // len(self._targets)))
            if rounds:
                self._owed -= rounds
                self._send_all(rounds)
        self._expire(time.monotonic_ns())
        self._flush_rows()

    def _send_all(self, rounds: int) -> None:
        mono = time.monotonic_ns
        utc = time.time_ns
        pack_into = SEND_FIELDS.pack_into
        deadlines_append = self._deadlines.append
        timeout_ns = self._timeout_ns
        targets = self._targets
        for _ in range(rounds):
            for target in targets:
                n = target.next_n
                target.next_n = n + 1
                seq = n & 0xFFFF
                checksum = echo_checksum(target.base_sum, seq, n) if target.checksummed else 0
                packet = target.packet
                pack_into(packet, 2, checksum, target.ident, seq, n)
                slot = n & target.mask
                if target.ring_state[slot] == _PENDING:
                    # Only after a huge catch-up burst: resolve the old attempt first.
                    self._resolve(target, slot, TIMEOUT, None, None, None, None, None, "")
                target.ring_n[slot] = n
                target.ring_state[slot] = _PENDING
                target.outstanding += 1
                self._outstanding += 1
                send_mono = mono()
                send_utc = utc()
                target.ring_mono[slot] = send_mono
                target.ring_utc[slot] = send_utc
                try:
                    target.sendto(packet, target.sockaddr)
                except OSError as exc:
                    self._resolve(
                        target, slot, ERROR, None, None, None, None, None, _errno_text(exc)
                    )
                    continue
                deadlines_append((send_mono + timeout_ns, target, n))

    def _expire(self, now_ns: int) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now_ns:
            _, target, n = deadlines.popleft()
            slot = n & target.mask
            if target.ring_n[slot] == n and target.ring_state[slot] == _PENDING:
                self._resolve(target, slot, TIMEOUT, None, None, None, None, None, "")

    def _resolve_all_remaining(self) -> None:
        now = time.monotonic_ns()
        self._expire(now)
        while self._deadlines:
            _, target, n = self._deadlines.popleft()
            slot = n & target.mask
            if target.ring_n[slot] == n and target.ring_state[slot] == _PENDING:
                self._resolve(target, slot, UNRESOLVED, None, None, None, None, None, "")

    # -- receiving -------------------------------------------------------------

    def _on_readable(self, endpoint: _Endpoint) -> None:
        sock = endpoint.sock
        offset = self._utc_minus_mono()
        handled = 0
        if not endpoint.privileged:
            handled += self._drain_error_queue(endpoint, offset)
        recvmsg = sock.recvmsg
        parse = parse_raw_v4 if endpoint.family == socket.AF_INET else parse_raw_v6
        on_packet = self._on_packet
        fast_v4 = endpoint.privileged and endpoint.family == socket.AF_INET
        by_ident = endpoint.by_ident
        cookie = self._cookie
        rows_append = self._rows.append
        reply_fields = REPLY_FIELDS.unpack_from
        while handled < _MAX_PACKETS_PER_DRAIN:
            try:
                data, ancdata, _flags, source = recvmsg(_RECV_BUFFER_BYTES, _ANC_BUFFER_BYTES)
            except BlockingIOError:
                break
            except OSError:
                # A ping socket reports a queued ICMP error once more as the
                # pending socket error; the error queue already has the details.
                handled += 1
                continue
            handled += 1
            if ancdata and ancdata[0][1] == SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC_UNPACK(ancdata[0][2])
                recv_utc = seconds * 1_000_000_000 + nanoseconds
            else:
                recv_utc = kernel_stamp_ns(ancdata) or time.time_ns()
            recv_mono = recv_utc - offset
            if fast_v4:
                ihl = (data[0] & 0x0F) << 2
                if len(data) >= ihl + 20 and data[ihl] == 0:
                    ident, seq, n, tag = reply_fields(data, ihl + 4)
                    target = by_ident.get(ident)
                    if target is not None and tag == cookie:
                        slot = n & target.mask
                        if target.ring_n[slot] == n and target.ring_state[slot] == _PENDING:
                            # The common case, inlined (same as _resolve): an on-time reply.
                            target.ring_state[slot] = _S_REPLY
                            target.outstanding -= 1
                            self._outstanding -= 1
                            target.replies += 1
                            if n > target.last_reply_n:
                                target.last_reply_n = n
                            send_mono = target.ring_mono[slot]
                            rtt = recv_mono - send_mono
                            target.last_rtt_ns = rtt
                            rows_append(
                                (
                                    target.label,
                                    n,
                                    seq,
                                    target.ident,
                                    REPLY,
                                    send_mono,
                                    target.ring_utc[slot],
                                    recv_mono,
                                    recv_utc,
                                    rtt,
                                    0,
                                    data[ihl + 1],
                                    source[0],
                                    None,
                                )
                            )
                            continue
                on_packet(endpoint, parse(data), data, source[0], recv_utc, recv_mono)
            elif endpoint.privileged:
                on_packet(endpoint, parse(data), data, source[0], recv_utc, recv_mono)
            else:
                self._on_ping_reply(endpoint, data, source[0], recv_utc, recv_mono)
        if self._drained is not None and not self._outstanding:
            self._drained.set()
        self._flush_rows()

    def _utc_minus_mono(self) -> int:
        """CLOCK_REALTIME minus CLOCK_MONOTONIC in ns, to move kernel stamps into
        the monotonic domain.

        The difference only changes when the wall clock is stepped, so it is
        re-read every ``_OFFSET_REFRESH_NS``: the narrowest of three bracketed
        readings (as ``probes.clock.clock_pair``), kept only if the bracket is
        under ``_OFFSET_MAX_BRACKET_NS`` - a reading interrupted by preemption
        would shift every stamp of the batch by up to the interruption.
        """
        now = time.monotonic_ns()
        if now - self._offset_read_ns < _OFFSET_REFRESH_NS:
            return self._offset_ns
        best_width = best_offset = 0
        for attempt in range(3):
            before = time.monotonic_ns()
            utc = time.time_ns()
            after = time.monotonic_ns()
            if attempt == 0 or after - before < best_width:
                best_width = after - before
                best_offset = utc - ((before + after) >> 1)
        if best_width <= _OFFSET_MAX_BRACKET_NS or self._offset_read_ns == 0:
            self._offset_ns = best_offset
            self._offset_read_ns = now
        return self._offset_ns

    def _on_packet(
        self,
        endpoint: _Endpoint,
        answer: Answer | None,
        data: bytes,
        source: str,
        utc: int,
        mono: int,
    ) -> None:
        """Hand a parsed packet from a raw socket to its attempt (by our identifier)."""
        if answer is None:
            return
        target = endpoint.by_ident.get(answer.ident)
        if target is None or (answer.quoted_to is not None and answer.quoted_to != target.address):
            return
        self._on_answer(
            target,
            answer.seq,
            data,
            answer.payload_at,
            answer.outcome,
            utc,
            mono,
            answer.icmp_type,
            answer.icmp_code,
            source,
        )

    def _on_ping_reply(
        self, endpoint: _Endpoint, data: bytes, source: str, utc: int, mono: int
    ) -> None:
        """A reply on a ping socket: the kernel chose the identifier, so match by address."""
        answer = parse_ping_reply(data, endpoint.family)
        target = endpoint.by_address.get(source.split("%")[0])
        if answer is None or target is None:
            return
        self._on_answer(
            target,
            answer.seq,
            data,
            answer.payload_at,
            REPLY,
            utc,
            mono,
            answer.icmp_type,
            answer.icmp_code,
            source,
        )

    def _drain_error_queue(self, endpoint: _Endpoint, offset: int) -> int:
        handled = 0
        sock = endpoint.sock
        errors = ERRORS_V6 if endpoint.family == socket.AF_INET6 else ERRORS_V4
        level = socket.IPPROTO_IPV6 if endpoint.family == socket.AF_INET6 else _SOL_IP
        kind = _IPV6_RECVERR if endpoint.family == socket.AF_INET6 else _IP_RECVERR
        while handled < _MAX_PACKETS_PER_DRAIN:
            try:
                data, ancdata, _flags, destination = sock.recvmsg(
                    _RECV_BUFFER_BYTES, _ANC_BUFFER_BYTES, socket.MSG_ERRQUEUE
                )
            except (BlockingIOError, InterruptedError):
                break
            handled += 1
            recv_utc = kernel_stamp_ns(ancdata) or time.time_ns()
            extended = next((v for lv, k, v in ancdata if lv == level and k == kind), None)
            if extended is None or len(data) < 8:
                continue
            queued = parse_queued_error(extended, endpoint.family)
            # Data is our own request as sent (kernel identifier); destination is where it went.
            target = endpoint.by_address.get(destination[0].split("%")[0]) if destination else None
            if target is None:
                continue
            _ident, seq = ID_SEQ.unpack_from(data, 4)
            if queued.local:
                detail = (
                    f"local error: {errno.errorcode.get(queued.errno, queued.errno)} "
                    f"{os.strerror(queued.errno)}"
                )
                self._on_answer(
                    target,
                    seq,
                    data,
                    8,
                    ERROR,
                    recv_utc,
                    recv_utc - offset,
                    None,
                    None,
                    None,
                    detail,
                )
                continue
            outcome = errors.get(queued.icmp_type)
            if outcome is None:
                continue
            self._on_answer(
                target,
                seq,
                data,
                8,
                outcome,
                recv_utc,
                recv_utc - offset,
                queued.icmp_type,
                queued.icmp_code,
                queued.offender,
            )
        return handled

    # -- matching answers to attempts ---------------------------------------------

    def _on_answer(
        self,
        target: _Target,
        seq: int,
        data: bytes,
        payload_at: int,
        outcome: str,
        recv_utc: int,
        recv_mono: int,
        icmp_type: int | None,
        icmp_code: int | None,
        source: str | None,
        detail: str = "",
    ) -> None:
        last = target.next_n - 1
        if len(data) >= payload_at + PAYLOAD_TAG.size:
            n, cookie = PAYLOAD_TAG.unpack_from(data, payload_at)
            if cookie != self._cookie or n > last or (n & 0xFFFF) != seq:
                return  # not one of ours (another process, an earlier run)
        else:
            # The quoted request was cut short: the most recent attempt with this sequence.
            n = last - ((last - seq) & 0xFFFF)
            if n < 0:
                return
        if not detail and outcome != REPLY and icmp_type is not None and icmp_code is not None:
            detail = icmp_error_text(target.family, icmp_type, icmp_code)
        slot = n & target.mask
        if target.ring_n[slot] != n:
            # Older than the table: the attempt's own row was written long ago.
            target.late += 1
            self._rows.append(
                (
                    target.label,
                    n,
                    seq,
                    self._wire_ident(target),
                    LATE,
                    None,
                    None,
                    recv_mono,
                    recv_utc,
                    None,
                    icmp_type,
                    icmp_code,
                    source,
                    detail or "attempt older than the kept history",
                )
            )
            return
        state = target.ring_state[slot]
        if state == _PENDING:
            self._resolve(
                target, slot, outcome, recv_mono, recv_utc, icmp_type, icmp_code, source, detail
            )
            return
        if state in (_S_TIMEOUT, _S_UNRESOLVED):
            extra = LATE
            target.late += 1
        else:
            extra = DUPLICATE
            target.duplicates += 1
        send_mono = target.ring_mono[slot]
        self._rows.append(
            (
                target.label,
                n,
                seq,
                self._wire_ident(target),
                extra,
                send_mono,
                target.ring_utc[slot],
                recv_mono,
                recv_utc,
                recv_mono - send_mono,
                icmp_type,
                icmp_code,
                source,
                detail or None,
            )
        )

    def _resolve(
        self,
        target: _Target,
        slot: int,
        outcome: str,
        recv_mono: int | None,
        recv_utc: int | None,
        icmp_type: int | None,
        icmp_code: int | None,
        source: str | None,
        detail: str,
    ) -> None:
        """Write the attempt's own row and update the counters."""
        target.ring_state[slot] = _STATE_OF[outcome]
        target.outstanding -= 1
        self._outstanding -= 1
        send_mono = target.ring_mono[slot]
        n = target.ring_n[slot]
        rtt = None
        if outcome == REPLY:
            target.replies += 1
            rtt = recv_mono - send_mono if recv_mono is not None else None
            target.last_rtt_ns = rtt
            if n > target.last_reply_n:
                target.last_reply_n = n
        elif outcome != UNRESOLVED:
            if outcome == TIMEOUT:
                target.timeouts += 1
            elif outcome == UNREACHABLE:
                target.unreachable += 1
            else:
                target.errors += 1
            if recv_mono is not None:
                rtt = recv_mono - send_mono
            target.streak = target.streak + 1 if n == target.last_lost_n + 1 else 1
            target.last_lost_n = n
            if target.streak > target.longest_streak:
                target.longest_streak = target.streak
        self._rows.append(
            (
                target.label,
                n,
                n & 0xFFFF,
                self._wire_ident(target),
                outcome,
                send_mono,
                target.ring_utc[slot],
                recv_mono,
                recv_utc,
                rtt,
                icmp_type,
                icmp_code,
                source,
                detail or None,
            )
        )

    def _flush_rows(self, *, force: bool = False) -> None:
        """Hand rows to the sink and flush it, at most every ``_FLUSH_PERIOD_NS``
        (a flush is a write syscall: at 20 kHz, flushing every batch costs ~5 %
        CPU). A flush that is due later is scheduled, so no row waits longer."""
        if self._rows:
            rows, self._rows = self._rows, []
            self.sink.write_rows(rows)
            self._dirty = True
        if not self._dirty:
            return
        now = time.monotonic_ns()
        wait_ns = self._last_flush_ns + _FLUSH_PERIOD_NS - now
        if force or wait_ns <= 0:
            self.sink.flush()
            self._dirty = False
            self._last_flush_ns = now
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(wait_ns / 1e9, self._guard, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self._flush_rows()

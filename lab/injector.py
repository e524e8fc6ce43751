"""Blackout injector: a helper process inside a guest namespace that makes the
guest stop answering pings for a precisely timed window.

The guest "goes dark" when the injector writes ``1`` to
``/proc/sys/net/ipv4/icmp_echo_ignore_all`` (and, if asked, to
``/proc/sys/net/ipv6/icmp/echo_ignore_all``) and comes back with ``0``. Every
write is bracketed by CLOCK_MONOTONIC and CLOCK_REALTIME readings taken
immediately before and after it; a write takes 20-60 us. CLOCK_MONOTONIC is
system-wide (network namespaces do not virtualise it), so the stamps are
directly comparable with the prober's ``time.monotonic_ns()``.

The timing of a dark period is done here, inside the helper process (which
asks for SCHED_FIFO and sleeps with ``clock_nanosleep`` then busy-waits the
last ~0.2 ms), so the caller's event loop cannot stretch a blackout.

Two halves live in this file and it deliberately imports only the standard
library:

* the helper (``main()``), started as ``ip netns exec <ns> python -I
  lab/injector.py`` and driven over its stdin/stdout with one JSON object per
  line;
* ``BlackoutInjector``, the controller used by the harness and the tests
  (``GuestNamespace.start_injector()`` in ``lab/netns.py`` builds one).

Protocol (one JSON object per line each way): the helper first prints
``{"op": "hello", "pid": ..., "sched_fifo": bool, "families": [...]}``; then
for each request ``{"op": "dark"|"light"|"blackout"|"schedule"|"quit", ...}``
it prints one response, ``{"ok": true, ...}`` or ``{"ok": false, "error":
"..."}``. On end of input the helper restores ``0`` (guest answering) and
exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ECHO_IGNORE_PATHS = {
    4: "/proc/sys/net/ipv4/icmp_echo_ignore_all",
    6: "/proc/sys/net/ipv6/icmp/echo_ignore_all",
}

# The guest's link filter (``GuestNamespace.create_link_filter``): an nftables
# ``netdev`` table on the guest's side of the veth with one chain per
# direction, each empty (everything passes) or holding one ``drop`` rule.
# Ingress and egress hooks drop silently, as a dead network path does: the
# guest's sends succeed and go nowhere, its TCP connects time out.
LINK_TABLE = "mb_guest"
LINK_DIRECTIONS = ("inbound", "outbound")  # to the guest (ingress), from it (egress)

# Below this much remaining time the helper spins instead of sleeping: a
# SCHED_FIFO thread wakes from clock_nanosleep within ~50 us, a normal one
# within ~50 us of timer slack plus scheduling latency.
_SPIN_NS_FIFO = 200_000
_SPIN_NS_NORMAL = 1_000_000
_FIFO_PRIORITY = 50


@dataclass(frozen=True)
class WriteStamp:
    """Clocks read immediately before and after one write to the sysctl(s).

    All values are nanoseconds: ``*_mono_ns`` on CLOCK_MONOTONIC (system-wide,
    same domain as ``time.monotonic_ns()``), ``*_utc_ns`` since the Unix epoch.
    """

    state: str  # "dark" or "light"
    before_mono_ns: int
    after_mono_ns: int
    before_utc_ns: int
    after_utc_ns: int

    @property
    def mono_ns(self) -> int:
        """Best estimate of when the write took effect: the bracket's midpoint."""
        return (self.before_mono_ns + self.after_mono_ns) // 2

    @property
    def utc_ns(self) -> int:
        return (self.before_utc_ns + self.after_utc_ns) // 2

    @property
    def width_ns(self) -> int:
        """How long the write took: the uncertainty of ``mono_ns``."""
        return self.after_mono_ns - self.before_mono_ns


@dataclass(frozen=True)
class LinkStamp:
    """Clocks read around one change of the guest's link filter (one nftables
    transaction, a few ms: a coarser edge than a sysctl write).

    ``state`` is ``dark`` (the directions drop everything) or ``light``
    (they pass everything); ``directions`` is a subset of
    :data:`LINK_DIRECTIONS`. Nanoseconds, clocks as in :class:`WriteStamp`.
    """

    state: str
    directions: tuple[str, ...]
    before_mono_ns: int
    after_mono_ns: int
    before_utc_ns: int
    after_utc_ns: int

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> LinkStamp:
        return cls(**{**record, "directions": tuple(record["directions"])})


def link_filter_ruleset(device: str) -> str:
    """The nftables table of the guest's link filter on ``device``: both
    directions pass until the injector darkens them."""
    return (
        f"table netdev {LINK_TABLE} {{\n"
        f'  chain inbound {{ type filter hook ingress device "{device}" priority 0; '
        "policy accept; }\n"
        f'  chain outbound {{ type filter hook egress device "{device}" priority 0; '
        "policy accept; }\n"
        "}\n"
    )


@dataclass(frozen=True)
class InjectedBlackout:
    """The truth about one injected blackout, as measured inside the guest.

    ``start_*`` / ``end_*`` are the midpoints of the brackets around the
    ``dark`` and ``light`` writes (ns; mono = CLOCK_MONOTONIC, utc = since the
    epoch). The true edges lie within ``dark_write_ns`` / ``light_write_ns``
    of them. ``requested_s`` is what the caller asked for; ``duration_ns`` is
    what happened.
    """

    start_mono_ns: int
    end_mono_ns: int
    start_utc_ns: int
    end_utc_ns: int
    requested_s: float
    dark_write_ns: int
    light_write_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_mono_ns - self.start_mono_ns

    @property
    def duration_s(self) -> float:
        return self.duration_ns / 1e9

    @property
    def uncertainty_ns(self) -> int:
        """Half of each write bracket, summed: the duration is known to within this."""
        return (self.dark_write_ns + self.light_write_ns + 1) // 2

    @classmethod
    def from_stamps(
        cls, dark: WriteStamp, light: WriteStamp, requested_s: float
    ) -> InjectedBlackout:
        return cls(
            start_mono_ns=dark.mono_ns,
            end_mono_ns=light.mono_ns,
            start_utc_ns=dark.utc_ns,
            end_utc_ns=light.utc_ns,
            requested_s=requested_s,
            dark_write_ns=dark.width_ns,
            light_write_ns=light.width_ns,
        )

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = asdict(self)
        record["duration_ns"] = self.duration_ns
        return record


ClockPairDict = dict[str, int]  # {"mono_ns": ..., "utc_ns": ...}


class InjectorError(RuntimeError):
    """The injector helper failed, refused a request, or did not answer in time."""


# --------------------------------------------------------------------------
# The helper process (runs inside the namespace)
# --------------------------------------------------------------------------


class _Helper:
    def __init__(self, families: Sequence[int]) -> None:
        self.families = tuple(families)
        self.sched_fifo = _try_sched_fifo()
        self.spin_ns = _SPIN_NS_FIFO if self.sched_fifo else _SPIN_NS_NORMAL
        self._fds = [os.open(ECHO_IGNORE_PATHS[f], os.O_WRONLY) for f in self.families]
        self._nft = shutil.which("nft") or "/usr/sbin/nft"
        self._throttling: tuple[threading.Event, threading.Thread] | None = None
        self.write(b"0")

    def write(self, value: bytes) -> WriteStamp:
        mono = time.monotonic_ns
        utc = time.time_ns
        before_mono = mono()
        before_utc = utc()
        for fd in self._fds:
            os.pwrite(fd, value, 0)
        after_utc = utc()
        after_mono = mono()
        return WriteStamp(
            "dark" if value == b"1" else "light", before_mono, after_mono, before_utc, after_utc
        )

    def link(self, state: str, directions: Sequence[str]) -> LinkStamp:
        """Darken or light ``directions`` of the link filter in one nftables
        transaction (flush, then drop when darkening: idempotent)."""
        unknown = set(directions) - set(LINK_DIRECTIONS)
        if unknown or state not in ("dark", "light") or not directions:
            raise ValueError(f"link {state} {list(directions)}: unknown state or direction")
        lines = []
        for direction in directions:
            lines.append(f"flush chain netdev {LINK_TABLE} {direction}")
            if state == "dark":
                lines.append(f"add rule netdev {LINK_TABLE} {direction} drop")
        before_mono, before_utc = time.monotonic_ns(), time.time_ns()
        proc = subprocess.run(
            [self._nft, "-f", "-"],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
        )
        after_utc, after_mono = time.time_ns(), time.monotonic_ns()
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed: {proc.stderr.strip()}")
        return LinkStamp(state, tuple(directions), before_mono, after_mono, before_utc, after_utc)

    def sleep_until(self, deadline_mono_ns: int) -> None:
        while True:
            remaining = deadline_mono_ns - time.monotonic_ns()
            if remaining <= 0:
                return
            if remaining > self.spin_ns:
                time.sleep((remaining - self.spin_ns) / 1e9)

    def blackout(self, duration_s: float) -> InjectedBlackout:
        dark = self.write(b"1")
        # Aim the midpoint of the light write at start + duration.
        self.sleep_until(dark.mono_ns + round(duration_s * 1e9) - dark.width_ns // 2)
        light = self.write(b"0")
        return InjectedBlackout.from_stamps(dark, light, duration_s)

    def schedule(self, items: Sequence[Sequence[float]]) -> list[InjectedBlackout]:
        records = []
        mark = time.monotonic_ns()
        for delay_s, duration_s in items:
            self.sleep_until(mark + round(delay_s * 1e9))
            record = self.blackout(duration_s)
            records.append(record)
            mark = record.end_mono_ns
        return records

    def throttle(self, pids: Sequence[int], share: float, period_s: float) -> dict[str, int]:
        """Let ``pids`` run ``share`` of every ``period_s`` (SIGCONT, then
        SIGSTOP for the rest), from a thread of this helper, until
        ``unthrottle``; the clocks when it began."""
        self.unthrottle()
        stop = threading.Event()
        targets = [int(pid) for pid in pids]
        running_s, stopped_s = share * period_s, (1 - share) * period_s

        def signal_all(signum: int) -> None:
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        def cycle() -> None:
            try:
                while not stop.wait(running_s):
                    signal_all(signal.SIGSTOP)
                    time.sleep(stopped_s)
                    signal_all(signal.SIGCONT)
            finally:
                signal_all(signal.SIGCONT)

        began = {"mono_ns": time.monotonic_ns(), "utc_ns": time.time_ns()}
        self._throttling = (stop, threading.Thread(target=cycle, daemon=True))
        self._throttling[1].start()
        return began

    def unthrottle(self) -> dict[str, int]:
        """End a throttle (every process continued); the clocks after it ended."""
        if self._throttling is not None:
            stop, thread = self._throttling
            stop.set()
            thread.join()
            self._throttling = None
        return {"mono_ns": time.monotonic_ns(), "utc_ns": time.time_ns()}

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        link = tuple(request.get("link", ()))
        if op == "throttle":
            return {
                "ok": True,
                "stamp": self.throttle(
                    request["pids"], float(request["share"]), float(request["period_s"])
                ),
            }
        if op == "unthrottle":
            return {"ok": True, "stamp": self.unthrottle()}
        if op == "dark":
            self.unthrottle()  # the freeze's SIGSTOP must not be undone by a cycle
            stamp = self.write(b"1")
            # Stopping the guest's processes right after its network, from
            # this process, puts both edges of a pause within microseconds.
            stopped = 0
            for pid in request.get("stop_pids", ()):
                try:
                    os.kill(int(pid), signal.SIGSTOP)
                    stopped += 1
                except ProcessLookupError:
                    pass
            stopped_by = time.monotonic_ns()
            # The link filter last: ICMP echo (the sysctl) and the guest's
            # processes are already dark; it adds whatever the kernel would
            # still answer or forward (TCP handshakes, other ICMP).
            link_stamp = None if not link else asdict(self.link("dark", link))
            return {
                "ok": True,
                "stamp": asdict(stamp),
                "stopped": stopped,
                "stopped_by_mono_ns": stopped_by,
                "link": link_stamp,
            }
        if op == "light":
            # The link filter first, so that the ICMP echo edge stays the
            # precise sysctl write.
            link_stamp = None if not link else asdict(self.link("light", link))
            return {"ok": True, "stamp": asdict(self.write(b"0")), "link": link_stamp}
        if op == "link":
            return {"ok": True, "link": asdict(self.link(str(request.get("state")), link))}
        if op == "blackout":
            return {"ok": True, "blackouts": [asdict(self.blackout(float(request["duration_s"])))]}
        if op == "schedule":
            return {"ok": True, "blackouts": [asdict(b) for b in self.schedule(request["items"])]}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def close(self) -> None:
        self.unthrottle()
        self.write(b"0")
        for fd in self._fds:
            os.close(fd)


def _try_sched_fifo() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_FIFO_PRIORITY))
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------
# The unreachable responder (a second helper mode, also inside the namespace)
# --------------------------------------------------------------------------

_ETH_P_ALL = 0x0003
_ETH_P_IP = 0x0800
_PACKET_OUTGOING = 4
_SOL_RAW = 255
_ICMP_FILTER = 1
_QUOTE_BYTES = 548  # like Linux: an ICMP error is at most 576 bytes


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def respond_unreachable(interface: str, code: int = 1) -> int:
    """Answer every IPv4 echo request the guest forwards out of ``interface`` with
    ICMP destination unreachable (type 3, ``code``; 1 = host unreachable).

    The kernel would do this itself for an ``unreachable`` route, but limits
    those errors (``ip_error``) to a burst of 5 and then 1 per second with the
    root-namespace-only ``net.ipv4.route.error_cost``; this helper has no
    limit. ``interface`` is a dead-end device the unreachable prefix is routed
    to, so it sees exactly those requests (as outgoing packets).
    """
    import socket

    # Only ETH_P_ALL sockets see outgoing packets; filter for IPv4 below.
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
    capture.bind((interface, _ETH_P_ALL))
    sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sender.setsockopt(_SOL_RAW, _ICMP_FILTER, (0xFFFFFFFF).to_bytes(4, sys.byteorder))
    sys.stdout.write(json.dumps({"op": "hello", "pid": os.getpid(), "interface": interface}) + "\n")
    sys.stdout.flush()
    while True:
        ready, _, _ = select.select([capture, sys.stdin], [], [])
        if sys.stdin in ready and not sys.stdin.readline():
            return 0  # the controller closed the pipe
        if capture not in ready:
            continue
        packet, address = capture.recvfrom(65535)
        if address[1] != _ETH_P_IP or address[2] != _PACKET_OUTGOING or len(packet) < 28:
            continue
        ihl = (packet[0] & 0x0F) * 4
        if packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_ICMP or packet[ihl] != 8:
            continue
        quoted = packet[:_QUOTE_BYTES]
        message = bytearray(b"\x03" + bytes([code]) + bytes(6) + quoted)
        message[2:4] = _checksum(bytes(message)).to_bytes(2, "big")
        source = socket.inet_ntoa(packet[12:16])
        with contextlib.suppress(OSError):
            sender.sendto(bytes(message), (source, 0))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the helpers: ``injector.py [--families 4,6]`` or
    ``injector.py --respond-unreachable IFNAME``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--respond-unreachable":
        return respond_unreachable(args[1])
    families = [4]
    if len(args) == 2 and args[0] == "--families":
        families = [int(f) for f in args[1].split(",")]
    helper = _Helper(families)
    out = sys.stdout
    hello = {
        "op": "hello",
        "pid": os.getpid(),
        "sched_fifo": helper.sched_fifo,
        "families": families,
        "netns_inode": os.stat("/proc/self/ns/net").st_ino,
    }
    out.write(json.dumps(hello) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            if request.get("op") == "quit":
                break
            try:
                response = helper.handle(request)
            except Exception as exc:  # report, keep serving
                response = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(response) + "\n")
            out.flush()
    finally:
        helper.close()
    return 0


# --------------------------------------------------------------------------
# The controller (runs in the caller's process)
# --------------------------------------------------------------------------


class BlackoutInjector:
    """Controls one injector helper running inside network namespace ``namespace``.

    Blocking methods (``dark``, ``light``, ``blackout``, ``run_schedule``) are
    thread-safe; the ``*_async`` variants run them in a worker thread so an
    event loop (and the probes on it) keeps running during a blackout.

    If ``truth_path`` is given, every injected blackout and every manual
    dark/light write is appended there as one JSON line (``probes.sink``
    format, probe ``"blackout-injector"``), flushed at once.
    """

    def __init__(
        self,
        namespace: str,
        *,
        families: Sequence[int] = (4,),
        truth_path: Path | None = None,
        python: str = sys.executable,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.families = tuple(families)
        self._lock = threading.Lock()
        self._truth: Any = None
        self.last_link: LinkStamp | None = None  # the latest change of the link filter
        argv = [
            "ip",
            "netns",
            "exec",
            namespace,
            python,
            "-I",
            str(Path(__file__).resolve()),
            "--families",
            ",".join(str(f) for f in self.families),
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        try:
            hello = self._read_response(start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.pid: int = int(hello["pid"])
        self.sched_fifo: bool = bool(hello["sched_fifo"])
        if truth_path is not None:
            # Imported here so the helper half of this file stays stdlib-only.
            from migration_blackout.probes.sink import JsonlSink

            self._truth = JsonlSink(
                truth_path,
                probe="blackout-injector",
                meta={
                    "namespace": namespace,
                    "families": list(self.families),
                    "sched_fifo": self.sched_fifo,
                    "edges": "midpoint of the bracket around each sysctl write",
                },
            )

    # -- plumbing -----------------------------------------------------------

    def _read_response(self, timeout_s: float) -> dict[str, Any]:
        stdout = self._proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout_s)
        if not ready:
            raise InjectorError(
                f"injector in namespace {self.namespace!r} did not answer within {timeout_s} s"
            )
        line = stdout.readline()
        if not line:
            self._proc.wait(timeout=5)
            stderr = self._proc.stderr.read() if self._proc.stderr else ""
            raise InjectorError(
                f"injector in namespace {self.namespace!r} exited "
                f"(code {self._proc.returncode}): {stderr.strip()}"
            )
        response: dict[str, Any] = json.loads(line)
        if not response.get("ok", True):
            raise InjectorError(f"injector refused the request: {response.get('error')}")
        return response

    def _request(self, request: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            stdin = self._proc.stdin
            if stdin is None or stdin.closed or self._proc.poll() is not None:
                raise InjectorError(f"injector in namespace {self.namespace!r} is not running")
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            return self._read_response(timeout_s)

    def _record(self, kind: str, record: Mapping[str, Any]) -> None:
        if self._truth is not None:
            self._truth.write({"kind": kind, **record})

    # -- commands -----------------------------------------------------------

    def dark(self, *, stop_pids: Sequence[int] = (), link: Sequence[str] = ()) -> WriteStamp:
        """Make the guest ignore echo requests from now on; then, from inside the
        helper, SIGSTOP ``stop_pids`` (the guest's processes) at once, then darken
        the ``link`` directions of its link filter (all its traffic)."""
        response = self._request(
            {"op": "dark", "stop_pids": [int(p) for p in stop_pids], "link": list(link)}, 5.0
        )
        stamp = WriteStamp(**response["stamp"])
        self._record("write", asdict(stamp))
        self._record_link(response.get("link"))
        return stamp

    def light(self, *, link: Sequence[str] = ()) -> WriteStamp:
        """Light the ``link`` directions of the link filter, then make the guest
        answer echo requests again (the returned stamp: the echo edge)."""
        response = self._request({"op": "light", "link": list(link)}, 5.0)
        stamp = WriteStamp(**response["stamp"])
        self._record_link(response.get("link"))
        self._record("write", asdict(stamp))
        return stamp

    def link(self, state: str, directions: Sequence[str] = LINK_DIRECTIONS) -> LinkStamp:
        """Darken (``state="dark"``) or light ``directions`` of the guest's link
        filter alone, leaving echo and the guest's processes as they are."""
        response = self._request({"op": "link", "state": state, "link": list(directions)}, 5.0)
        stamp = LinkStamp.from_json(response["link"])
        self._record_link(asdict(stamp))
        return stamp

    def throttle(self, pids: Sequence[int], share: float, period_s: float) -> ClockPairDict:
        """Let ``pids`` run only ``share`` of every ``period_s`` from now on
        (SIGSTOP / SIGCONT from inside the helper) until ``unthrottle``; the
        clocks when it began (``mono_ns``, ``utc_ns``)."""
        request = {"op": "throttle", "pids": list(pids), "share": share, "period_s": period_s}
        stamp: ClockPairDict = self._request(request, 5.0)["stamp"]
        self._record("throttle", {**stamp, "share": share, "period_s": period_s})
        return stamp

    def unthrottle(self) -> ClockPairDict:
        """End the throttle (every process continued); the clocks after it."""
        stamp: ClockPairDict = self._request({"op": "unthrottle"}, 5.0)["stamp"]
        self._record("unthrottle", dict(stamp))
        return stamp

    def _record_link(self, record: Mapping[str, Any] | None) -> None:
        if record is not None:
            self.last_link = LinkStamp.from_json(record)
            self._record("link", record)

    def blackout(self, duration_s: float) -> InjectedBlackout:
        """Go dark now for ``duration_s`` seconds (timed inside the namespace); blocks."""
        response = self._request({"op": "blackout", "duration_s": duration_s}, duration_s + 5.0)
        (record,) = self._records(response)
        return record

    def run_schedule(self, schedule: Sequence[tuple[float, float]]) -> list[InjectedBlackout]:
        """Inject ``[(delay_s, duration_s), ...]``; blocks until the last one ends.

        Each delay counts from the end of the previous blackout (the first from
        when the helper receives the request).
        """
        items = [[float(delay), float(duration)] for delay, duration in schedule]
        total_s = sum(delay + duration for delay, duration in items)
        response = self._request({"op": "schedule", "items": items}, total_s + 5.0)
        return self._records(response)

    def _records(self, response: Mapping[str, Any]) -> list[InjectedBlackout]:
        records = [InjectedBlackout(**item) for item in response["blackouts"]]
        for record in records:
            self._record("blackout", record.to_json())
        return records

    async def blackout_async(self, duration_s: float) -> InjectedBlackout:
        return await asyncio.to_thread(self.blackout, duration_s)

    async def run_schedule_async(
        self, schedule: Sequence[tuple[float, float]]
    ) -> list[InjectedBlackout]:
        return await asyncio.to_thread(self.run_schedule, schedule)

    # -- lifetime -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the helper (it restores ``0`` first). Idempotent."""
        proc = self._proc
        if proc.poll() is None:
            try:
                if proc.stdin is not None and not proc.stdin.closed:
                    proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if self._truth is not None:
            self._truth.close()

    def __enter__(self) -> BlackoutInjector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())

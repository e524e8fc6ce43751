"""The lab's guest ``HVSW10Home``: a network namespace that really goes dark.

:class:`NetnsGuest` implements the Hyper-V model's ``GuestControl`` on a
:class:`lab.netns.GuestNamespace`:

* ``freeze``: the injector inside the namespace makes the guest ignore echo
  requests (replies time out, never "unreachable", as with a paused VM), then
  every process running inside the guest's network namespace (whoever started
  it: the lab, or the harness starting the in-guest agent) is stopped with
  SIGSTOP, so an in-guest agent sees a true execution gap; only the
  injector, the lab's own hand inside the namespace, keeps running; then the
  guest's link filter (nftables ingress and egress drop on its veth) darkens
  all its traffic, inbound and outbound;
* ``thaw``: those processes continue (SIGCONT); the network stays dark: what
  the guest sends in the network-reconvergence window is dropped silently,
  as on a real network that has not yet learnt where the VM went;
* ``network_restored``: the link filter passes traffic again, then echo
  requests are answered again; ``link_restored`` lights one direction of the
  link filter before the other (inbound and outbound reconverging apart);
* ``brownout_start`` / ``brownout_end``: during pre-copy the guest's dirtying
  workload (``lab/services.py dirty``) runs and the guest is throttled as
  QEMU's auto-converge throttles a guest that dirties memory faster than it
  can be copied: the injector lets the guest's processes run only
  ``cpu_share`` of every 13 ms (SIGSTOP / SIGCONT), so the agent's rate of
  work drops, as in a guest slowed by pre-copy.

The guest also runs its services from the start: a TCP listener on 3389
(Remote Desktop on a Windows guest) for the harness's TCP connect probe.

Each returns the moment it took effect: for the network edges the midpoint of
the clock readings around the sysctl write inside the namespace (the echo
edge, to microseconds; the link filter's own edges, a few ms wide, go to the
injector's truth file as ``link`` records), for the process edges the
midpoint around the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

from migration_blackout.probes.clock import ClockPair, clock_pair

from .injector import LINK_DIRECTIONS, BlackoutInjector, LinkStamp, WriteStamp
from .netns import GuestNamespace

LAB_PREFIX = "mbl-"
REMOTE_DESKTOP_PORT = 3389
SERVICES = Path(__file__).resolve().with_name("services.py")
DIRTY_MIB = 32
# The throttle's period: not a divisor or multiple of the agent's 10 ms
# heartbeat, so every heartbeat meets the throttle at another phase.
THROTTLE_PERIOD_S = 0.013


def start_guest_service(namespace: str, *args: str) -> subprocess.Popen[str]:
    """``lab/services.py ARGS`` inside the namespace, once it said hello."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-I", str(SERVICES), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready else ""
    if '"hello"' not in line:
        stop_guest_service(proc)
        raise RuntimeError(f"lab/services.py {' '.join(args)} did not start in {namespace}")
    json.loads(line)
    return proc


def stop_guest_service(proc: subprocess.Popen[str] | None) -> None:
    """Stop a process ``start_guest_service`` started (continued first if frozen)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)  # a frozen guest's process must run to end
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def namespace_pids(name: str) -> list[int]:
    """The processes whose network namespace is the named one (``ip netns``)."""
    try:
        target = os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == target:
                pids.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def _pair(stamp: WriteStamp) -> ClockPair:
    return ClockPair(mono_ns=stamp.mono_ns, utc_ns=stamp.utc_ns)


class NetnsGuest:
    """A guest in its own network namespace, frozen and thawed for real."""

    def __init__(self, *, prefix: str = LAB_PREFIX, truth_path: Path | None = None) -> None:
        self.namespace = GuestNamespace(prefix=prefix, ipv6=False)
        self._truth_path = truth_path
        self._injector: BlackoutInjector | None = None
        self._lock = threading.Lock()
        self._stopped: list[int] = []
        self.frozen = False
        self._services: subprocess.Popen[str] | None = None
        self._dirtier: subprocess.Popen[str] | None = None
        self._dark: set[str] = set()  # link directions dark now

    @property
    def address(self) -> str:
        return self.namespace.guest_address

    @property
    def host_address(self) -> str:
        """The harness side of the guest's link (where the guest sends to)."""
        return self.namespace.host_address

    def create(self) -> NetnsGuest:
        self.namespace.create()
        try:
            self.namespace.create_link_filter()
            self._injector = self.namespace.start_injector(truth_path=self._truth_path)
            self._services = start_guest_service(
                self.namespace.name, "listen", str(REMOTE_DESKTOP_PORT)
            )
            # The dirtying workload waits for pre-copy (a line "go").
            self._dirtier = start_guest_service(
                self.namespace.name, "dirty", "--mib", str(DIRTY_MIB)
            )
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Continue whatever the guest froze, end what still runs inside (the
        guest goes away: an agent left by a harness that died must not
        outlive it), then remove the namespace. Idempotent."""
        if self.frozen:
            self._continue_all()
        for proc in (self._dirtier, self._services):
            stop_guest_service(proc)
        self._dirtier = self._services = None
        spared = {os.getpid()} | ({self._injector.pid} if self._injector is not None else set())
        for pid in namespace_pids(self.namespace.name):
            if pid not in spared:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._injector = None
        self.namespace.destroy()

    def __enter__(self) -> NetnsGuest:
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    @property
    def last_link(self) -> LinkStamp | None:
        """The latest change of the guest's link filter (both clocks around it)."""
        return None if self._injector is None else self._injector.last_link

    def link_edge(self) -> tuple[int, int] | None:
        link = self.last_link
        return None if link is None else (link.before_mono_ns, link.after_mono_ns)

    def guest_pids(self) -> list[int]:
        """Every process in the guest's network namespace but the injector."""
        spared = {os.getpid()}
        if self._injector is not None:
            spared.add(self._injector.pid)
        return [pid for pid in namespace_pids(self.namespace.name) if pid not in spared]

    def _continue_all(self) -> ClockPair:
        """SIGCONT what ``freeze`` stopped; the midpoint of the signalling."""
        with self._lock:
            before = clock_pair()
            for pid in self._stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            after = clock_pair()
            self.frozen = False
            self._stopped = []
        return ClockPair(
            mono_ns=(before.mono_ns + after.mono_ns) // 2,
            utc_ns=(before.utc_ns + after.utc_ns) // 2,
        )

    # -- GuestControl ---------------------------------------------------------

    def _require_injector(self) -> BlackoutInjector:
        if self._injector is None:
            raise RuntimeError("the guest namespace is not running")
        return self._injector

    async def freeze(self) -> ClockPair:
        injector = self._require_injector()
        with self._lock:
            self._stopped = self.guest_pids()
            self.frozen = True
            pids = list(self._stopped)
        stamp = await asyncio.to_thread(lambda: injector.dark(stop_pids=pids, link=LINK_DIRECTIONS))
        self._dark = set(LINK_DIRECTIONS)
        return _pair(stamp)

    async def thaw(self) -> ClockPair:
        return self._continue_all()

    async def network_restored(self) -> ClockPair:
        injector = self._require_injector()
        dark = [d for d in LINK_DIRECTIONS if d in self._dark] or list(LINK_DIRECTIONS)
        self._dark.clear()
        return _pair(await asyncio.to_thread(lambda: injector.light(link=dark)))

    async def link_restored(self, direction: str) -> ClockPair:
        """Light one direction of the link filter (echo stays unanswered: a
        ping needs both); the midpoint of the clock readings around it."""
        injector = self._require_injector()
        stamp = await asyncio.to_thread(lambda: injector.link("light", (direction,)))
        self._dark.discard(direction)
        return ClockPair(
            mono_ns=(stamp.before_mono_ns + stamp.after_mono_ns) // 2,
            utc_ns=(stamp.before_utc_ns + stamp.after_utc_ns) // 2,
        )

    async def brownout_start(self, cpu_share: float) -> ClockPair | None:
        """Start the guest's dirtying workload and throttle the guest to
        ``cpu_share`` of every period; the moment the throttle began."""
        injector = self._require_injector()
        return await asyncio.to_thread(self._brownout_start, injector, cpu_share)

    def _brownout_start(self, injector: BlackoutInjector, cpu_share: float) -> ClockPair:
        stamp = injector.throttle(self.guest_pids(), cpu_share, THROTTLE_PERIOD_S)
        self._tell_dirtier("go")
        return ClockPair(mono_ns=stamp["mono_ns"], utc_ns=stamp["utc_ns"])

    async def brownout_end(self) -> ClockPair | None:
        """Stop the workload and the throttle; when every process ran freely again."""
        injector = self._require_injector()
        return await asyncio.to_thread(self._brownout_end, injector)

    def _brownout_end(self, injector: BlackoutInjector) -> ClockPair:
        self._tell_dirtier("stop")
        stamp = injector.unthrottle()
        return ClockPair(mono_ns=stamp["mono_ns"], utc_ns=stamp["utc_ns"])

    def _tell_dirtier(self, line: str) -> None:
        dirtier = self._dirtier
        if dirtier is not None and dirtier.stdin is not None:
            dirtier.stdin.write(line + "\n")
            dirtier.stdin.flush()

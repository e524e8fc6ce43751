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
  requests are answered again.

Each returns the moment it took effect: for the network edges the midpoint of
the clock readings around the sysctl write inside the namespace (the echo
edge, to microseconds; the link filter's own edges, a few ms wide, go to the
injector's truth file as ``link`` records), for the process edges the
midpoint around the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path

from migration_blackout.probes.clock import ClockPair, clock_pair

from .injector import LINK_DIRECTIONS, BlackoutInjector, LinkStamp, WriteStamp
from .netns import GuestNamespace

LAB_PREFIX = "mbl-"


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
        except BaseException:
            self.namespace.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Continue whatever the guest froze, end what still runs inside (the
        guest goes away: an agent left by a harness that died must not
        outlive it), then remove the namespace. Idempotent."""
        if self.frozen:
            self._continue_all()
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
        return _pair(stamp)

    async def thaw(self) -> ClockPair:
        return self._continue_all()

    async def network_restored(self) -> ClockPair:
        injector = self._require_injector()
        return _pair(await asyncio.to_thread(lambda: injector.light(link=LINK_DIRECTIONS)))

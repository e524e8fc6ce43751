"""A guest in a network namespace: the stand-in for the VM being migrated.

``GuestNamespace`` creates ``ip netns`` namespace ``<prefix><X>-<pid>`` and a
veth pair ``<prefix><X>h`` (root side) / ``<prefix><X>g`` (guest side), where
``X`` (0-255) is a per-instance index chosen under a lock file so parallel
instances never share names or subnets, and ``pid`` is the creator's process
id so ``cleanup_stale()`` can tell leftovers of a crashed creator from
namespaces in use. Addresses come from the benchmarking ranges (RFC 2544
198.18.0.0/15, RFC 5180 2001:2::/48):

============================  =====================================================
``host_address``              198.18.X.1/24 on the root side
``guest_address``             198.18.X.2/24 on the guest side
``extra_guest_addresses(k)``  198.19.X.1 .. 198.19.X.k (k <= 126), on the guest's
                              ``lo``, routed from the root via the guest
``unreachable_address()``     198.19.X.129: routed to the guest, which forwards
                              198.19.X.128/25 into a dead-end device where a helper
                              answers every echo with a real ICMP type 3 code 1
                              (host unreachable) from 198.18.X.2 (see below)
``*6`` variants               2001:2:0:X::1 / ::2 (link), 2001:2:0:2XX::/64 (extra,
                              XX = X in hex), 2001:2:0:1XX::/64 (unreachable: an
                              ``unreachable`` route in the guest, ICMPv6 type 1
                              code 0 from the kernel)
============================  =====================================================

Why a helper answers for IPv4: the kernel's own errors for an ``unreachable``
route in the forwarding path (``ip_error``) are rate limited to a burst of 5
and then 1 per second per source, by ``net.ipv4.route.error_cost`` /
``error_burst``, which exist only in the root namespace. The IPv6 equivalent
honours the per-namespace ``net.ipv6.icmp.ratelimit`` (set to 0 here).

Neighbour entries are permanent on both sides (fixed MACs), so no ARP or ND
traffic disturbs a measurement, and inside the guest ICMP rate limiting is off
(``icmp_ratelimit=0``) so every request gets its error message.

``start_injector()`` starts a ``lab.injector.BlackoutInjector`` helper inside
the namespace. Everything here needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import select
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

from migration_blackout.lab.injector import BlackoutInjector, link_filter_ruleset

DEFAULT_PREFIX = "mbo-"
IFNAMSIZ = 16  # including the terminating NUL: names of at most 15 characters

_LOCK_PATHS = (Path("/run/lock/migration-blackout-netns.lock"),)
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21
_MAX_EXTRA = 126
_UNREACHABLE_IF = "unreach0"  # lives only inside the guest namespace


class NetnsError(RuntimeError):
    """An ``ip`` command failed while setting up or tearing down a namespace."""


class NetnsPermissionError(NetnsError, PermissionError):
    """The process may not create network namespaces (needs root)."""


def _lock_path() -> Path:
    for path in _LOCK_PATHS:
        if path.parent.is_dir():
            return path
    return Path(tempfile.gettempdir()) / "migration-blackout-netns.lock"


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    with open(_lock_path(), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_netns_privileges() -> None:
    """Raise ``NetnsPermissionError`` unless this process can create namespaces."""
    caps = _effective_capabilities()
    if caps & (1 << _CAP_NET_ADMIN) and caps & (1 << _CAP_SYS_ADMIN):
        return
    raise NetnsPermissionError(
        "creating a guest network namespace needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); "
        f"this process runs as uid {os.geteuid()} without them. Run the command with sudo, "
        "or skip the tests marked 'root'."
    )


def _ip(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *args]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        if "Operation not permitted" in message or "Permission denied" in message:
            raise NetnsPermissionError(
                f"`{' '.join(argv)}` was refused ({message}): network namespaces need root"
            )
        detail = f"\n{stdin}" if stdin else ""
        raise NetnsError(f"`{' '.join(argv)}` failed: {message}{detail}")
    return proc


def _ip_batch(commands: Sequence[str], *, netns: str | None = None) -> None:
    prefix = ("-n", netns) if netns else ()
    _ip(*prefix, "-batch", "-", stdin="\n".join(commands) + "\n")


def _namespaces() -> list[str]:
    proc = _ip("netns", "list", check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    proc = _ip("-o", "link", "show", check=False)
    names = []
    for line in proc.stdout.splitlines():
        # "7: mbo-3h@if6: <BROADCAST,..."
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


OWNER_POLL_S = 0.5


async def watch_owner(owner_pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once ``owner_pid`` is gone (a pidfd where the kernel has them):
    a lab daemon started for one process (a run, a test session) ends with it."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(owner_pid)
    except ProcessLookupError:
        stop.set()
        return
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        loop.add_reader(pidfd, stop.set)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return
    while not stop.is_set():
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass
        await asyncio.sleep(OWNER_POLL_S)  # a periodic check: no pidfd to wait on


def process_runs(pid: int) -> bool:
    """``pid`` exists and is not a zombie. A zombie holds no namespace, socket or
    file any more, and in a container whose first process is slow to reap (or
    never reaps) a killed daemon stays one: it is gone for every purpose here."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    fields = text[text.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] != "Z"


def _name_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}(\d+)-(\d+)$")


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces and veths named ``<prefix>...`` whose creator process is gone.

    Returns the names removed. Namespaces of live creators are left alone, so
    this is safe while other test runs use the same prefix.
    """
    removed: list[str] = []
    pattern = _name_pattern(prefix)
    live_indexes: set[int] = set()
    for name in _namespaces():
        match = pattern.match(name)
        if not match:
            continue
        index, pid = int(match[1]), int(match[2])
        if process_runs(pid):
            live_indexes.add(index)
            continue
        _ip("link", "del", f"{prefix}{index}h", check=False)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    veth = re.compile(rf"^{re.escape(prefix)}(\d+)[hg]$")
    for link in _links():
        match = veth.match(link)
        if match and int(match[1]) not in live_indexes:
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def _teardown(name: str, host_if: str) -> None:
    _ip("link", "del", host_if, check=False)
    _ip("netns", "del", name, check=False)


def _indexes_in_use() -> set[int]:
    used: set[int] = set()
    any_prefix = re.compile(r"^.*?(\d+)-(\d+)$")
    for name in _namespaces():
        match = any_prefix.match(name)
        if match:
            used.add(int(match[1]))
    link_net = ipaddress.ip_network("198.18.0.0/16")
    routed_net = ipaddress.ip_network("198.19.0.0/16")
    for line in _ip("-4", "-o", "addr", "show", check=False).stdout.splitlines():
        for word in line.split():
            if "/" in word:
                with contextlib.suppress(ValueError):
                    address = ipaddress.ip_interface(word).ip
                    if address in link_net:
                        used.add(address.packed[2])
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            net = ipaddress.ip_network(line.split()[0], strict=False)
            if net.network_address in routed_net or net.network_address in link_net:
                used.add(net.network_address.packed[2])
    return used


def _ipv6_available() -> bool:
    try:
        return Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").read_text().strip() == "0"
    except OSError:
        return False


class GuestNamespace:
    """A guest address behind a veth pair in its own network namespace.

    Use as a context manager (``with GuestNamespace() as guest:``) or call
    ``create()`` / ``destroy()``. ``destroy()`` is idempotent and also stops
    injectors started from this object.
    """

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, ipv6: bool = True) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,9}", prefix):
            raise ValueError(f"prefix {prefix!r}: use 1-10 characters [a-z0-9-] starting a-z")
        self.prefix = prefix
        self.want_ipv6 = ipv6
        self.index: int | None = None
        self.name = ""
        self.host_if = ""
        self.guest_if = ""
        self.ipv6 = False
        self._extra_count = 0
        self._finalizer: weakref.finalize | None = None
        self._injectors: list[BlackoutInjector] = []
        self._responder: subprocess.Popen[str] | None = None

    # -- addresses ------------------------------------------------------------

    def _x(self) -> int:
        if self.index is None:
            raise NetnsError("the namespace has not been created")
        return self.index

    @property
    def host_address(self) -> str:
        return f"198.18.{self._x()}.1"

    @property
    def guest_address(self) -> str:
        return f"198.18.{self._x()}.2"

    @property
    def host_address6(self) -> str | None:
        return f"2001:2:0:{self._x():x}::1" if self.ipv6 else None

    @property
    def guest_address6(self) -> str | None:
        return f"2001:2:0:{self._x():x}::2" if self.ipv6 else None

    # -- lifetime -------------------------------------------------------------

    def create(self) -> GuestNamespace:
        if self.index is not None:
            return self
        require_netns_privileges()
        with _allocation_lock():
            cleanup_stale(self.prefix)
            free = sorted(set(range(256)) - _indexes_in_use())
            if not free:
                raise NetnsError("all 256 guest subnets 198.18.X.0/24 are in use")
            index = random.choice(free)
            self.index = index
            self.name = f"{self.prefix}{index}-{os.getpid()}"
            self.host_if = f"{self.prefix}{index}h"
            self.guest_if = f"{self.prefix}{index}g"
            if len(self.host_if) >= IFNAMSIZ:
                raise ValueError(f"interface name {self.host_if!r} is longer than 15 characters")
            try:
                self._build(index)
            except BaseException:
                self.destroy()
                raise
        # A safety net if the owner forgets destroy(): runs when this object is
        # collected or the interpreter exits (cleanup_stale() covers crashes).
        self._finalizer = weakref.finalize(self, _teardown, self.name, self.host_if)
        return self

    def _build(self, x: int) -> None:
        self.ipv6 = self.want_ipv6 and _ipv6_available()
        host_mac = f"02:6d:62:{x:02x}:00:01"
        guest_mac = f"02:6d:62:{x:02x}:00:02"
        _ip("netns", "add", self.name)
        root = [
            f"link add {self.host_if} address {host_mac} type veth "
            f"peer name {self.guest_if} address {guest_mac} netns {self.name}",
            f"addr add {self.host_address}/24 dev {self.host_if}",
            f"link set {self.host_if} up",
            f"neigh replace {self.guest_address} lladdr {guest_mac} dev {self.host_if} "
            "nud permanent",
            f"route add 198.19.{x}.0/25 via {self.guest_address} dev {self.host_if}",
            f"route add 198.19.{x}.128/25 via {self.guest_address} dev {self.host_if}",
        ]
        guest = [
            "link set lo up",
            f"addr add {self.guest_address}/24 dev {self.guest_if}",
            f"link set {self.guest_if} up",
            f"neigh replace {self.host_address} lladdr {host_mac} dev {self.guest_if} "
            "nud permanent",
            # A veth pair that only exists in the guest: what is routed out of
            # it goes nowhere (the peer sees another host's MAC and drops it)
            # but passes the responder's capture.
            f"link add {_UNREACHABLE_IF} type veth peer name {_UNREACHABLE_IF}p",
            f"link set {_UNREACHABLE_IF} arp off",
            f"link set {_UNREACHABLE_IF} up",
            f"link set {_UNREACHABLE_IF}p up",
            f"route add 198.19.{x}.128/25 dev {_UNREACHABLE_IF}",
        ]
        sysctls = {
            "net/ipv4/icmp_echo_ignore_all": "0",
            "net/ipv4/icmp_ratelimit": "0",
            "net/ipv4/icmp_msgs_per_sec": "1000000",
            "net/ipv4/icmp_msgs_burst": "1000000",
            "net/ipv4/ip_forward": "1",
        }
        if self.ipv6:
            h6, g6 = self.host_address6, self.guest_address6
            root += [
                f"addr add {h6}/64 dev {self.host_if} nodad",
                f"neigh replace {g6} lladdr {guest_mac} dev {self.host_if} nud permanent",
                f"route add 2001:2:0:{0x200 | x:x}::/64 via {g6} dev {self.host_if}",
                f"route add 2001:2:0:{0x100 | x:x}::/64 via {g6} dev {self.host_if}",
            ]
            guest += [
                f"addr add {g6}/64 dev {self.guest_if} nodad",
                f"neigh replace {h6} lladdr {host_mac} dev {self.guest_if} nud permanent",
                f"route add unreachable 2001:2:0:{0x100 | x:x}::/64",
            ]
            sysctls |= {
                "net/ipv6/icmp/echo_ignore_all": "0",
                "net/ipv6/icmp/ratelimit": "0",
                "net/ipv6/conf/all/forwarding": "1",
            }
        # The root-side link must exist before routes via it; -batch runs in order.
        _ip_batch(root)
        self.set_sysctls(sysctls)
        _ip_batch(guest, netns=self.name)

    def destroy(self) -> None:
        """Remove the namespace and the veth pair. Idempotent; never raises for "already gone"."""
        for injector in self._injectors:
            injector.close()
        self._injectors.clear()
        self._stop_responder()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self.index is None:
            return
        _ip("link", "del", self.host_if, check=False)
        if self.name in _namespaces():
            _ip("netns", "del", self.name)
        self.index = None
        self._extra_count = 0

    def __enter__(self) -> GuestNamespace:
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- inside the namespace -------------------------------------------------

    def exec_argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed so it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and capture its output."""
        proc = subprocess.run(self.exec_argv(*argv), capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise NetnsError(f"`{' '.join(argv)}` in {self.name} failed: {proc.stderr.strip()}")
        return proc

    def set_sysctls(self, values: dict[str, str]) -> None:
        """Write ``/proc/sys/<key>`` (``net/ipv4/...`` form) inside the namespace."""
        script = 'while [ $# -gt 0 ]; do printf "%s\\n" "$2" > "/proc/sys/$1"; shift 2; done'
        args = [item for key, value in values.items() for item in (key.replace(".", "/"), value)]
        self.run("sh", "-ec", script, "sh", *args)

    def read_sysctl(self, key: str) -> str:
        return self.run("cat", f"/proc/sys/{key.replace('.', '/')}").stdout.strip()

    def extra_guest_addresses(self, count: int) -> list[str]:
        """``count`` more IPv4 addresses that the guest answers (198.19.X.1 ..)."""
        x = self._x()
        if not 0 <= count <= _MAX_EXTRA:
            raise ValueError(f"count must be 0..{_MAX_EXTRA}")
        if count > self._extra_count:
            _ip_batch(
                [
                    f"addr add 198.19.{x}.{k}/32 dev lo"
                    for k in range(self._extra_count + 1, count + 1)
                ],
                netns=self.name,
            )
            self._extra_count = count
        return [f"198.19.{x}.{k}" for k in range(1, count + 1)]

    def unreachable_address(self) -> str:
        """An address whose echo requests come back as ICMP type 3 code 1 (host
        unreachable) from ``guest_address``. Starts the responder helper."""
        x = self._x()
        if self._responder is None or self._responder.poll() is not None:
            self._start_responder()
        return f"198.19.{x}.129"

    def _start_responder(self, timeout_s: float = 10.0) -> None:
        script = str(Path(__file__).with_name("injector.py").resolve())
        argv = self.exec_argv(
            sys.executable, "-I", script, "--respond-unreachable", _UNREACHABLE_IF
        )
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._responder = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""
        if '"hello"' not in line:
            self._stop_responder()
            raise NetnsError(f"the unreachable responder in {self.name} did not start: {line!r}")

    def _stop_responder(self) -> None:
        proc, self._responder = self._responder, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the helper exits on end of input
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def unreachable_address6(self) -> str | None:
        """As ``unreachable_address()`` for IPv6 (ICMPv6 type 1 code 0 from ``guest_address6``)."""
        return f"2001:2:0:{0x100 | self._x():x}::1" if self.ipv6 else None

    def create_link_filter(self) -> None:
        """Install the guest's link filter (``lab.injector.LINK_TABLE``): an
        nftables ``netdev`` table on the guest's veth whose ``inbound``
        (ingress) and ``outbound`` (egress) chains an injector darkens and
        lights. Loopback inside the guest is untouched. Needs ``nft``."""
        proc = subprocess.run(
            self.exec_argv("nft", "-f", "-"),
            input=link_filter_ruleset(self.guest_if),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise NetnsError(
                f"installing the link filter in {self.name} failed (is nftables installed?): "
                f"{proc.stderr.strip()}"
            )

    def start_injector(
        self, *, truth_path: Path | None = None, families: Sequence[int] = (4,)
    ) -> BlackoutInjector:
        """Start a blackout injector helper inside this namespace (stopped by ``destroy()``)."""
        if self.ipv6 is False and 6 in families:
            raise ValueError("IPv6 is not configured in this namespace")
        injector = BlackoutInjector(self.name, families=families, truth_path=truth_path)
        self._injectors.append(injector)
        return injector

"""The QEMU lab's network: a namespace with a bridge, one tap per QEMU, a veth to the root.

::

    root namespace                       namespace mbq-X-<pid>
    --------------                       ---------------------------------------------
    mbq-Xh 198.18.X.1/24  <--veth-->  mbq-Xg --+
    (harness side: probes,                      |-- br0 (STP off, no netfilter)
     heartbeat receiver)          tap-a -------+    QEMU side a: guest 198.18.X.2
                                  tap-b -------+    QEMU side b
                                  lo 127.0.0.1: migration streams, QEMU to QEMU

Both QEMU processes run inside the namespace; the guest's NIC is a tap on the
bridge, so after a migration the bridge has to learn the guest's MAC on the
other tap (QEMU's RARP announce after RESUME does it; see docs/qemu.md).

Names follow ``lab/netns.py`` so its ``cleanup_stale`` removes what a crashed
lab left behind: namespace ``<prefix>X-<pid of the creator>``, veth
``<prefix>Xh`` / ``<prefix>Xg``; the taps and the bridge live inside the
namespace and go with it. ``X`` is allocated under the same lock and from the
same pool as ``GuestNamespace`` (198.18.X.0/24), so the two labs never collide.
Neighbour entries are permanent on both ends (fixed MACs): no ARP during a
measurement.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time

# Shared with GuestNamespace on purpose: one allocation lock and one view of which
# 198.18.X.0/24 subnets are taken, whichever lab takes them.
from migration_blackout.lab.netns import (
    IFNAMSIZ,
    NetnsError,
    _allocation_lock,
    _indexes_in_use,
    _ip,
    _ip_batch,
    _namespaces,
    cleanup_stale,
    process_runs,
    require_netns_privileges,
)

DEFAULT_PREFIX = "mbq-"
BRIDGE = "br0"
SIDES = ("a", "b")


def tap_name(side: str) -> str:
    return f"tap-{side}"


def _kill_namespace_processes(namespace: str, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process inside ``namespace`` (our QEMUs) and wait until they are gone."""
    proc = _ip("netns", "pids", namespace, check=False)
    pids = [int(word) for word in proc.stdout.split() if word.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(process_runs(pid) for pid in pids) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    return pids


def cleanup_stale_labs(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove QEMU-lab namespaces whose creator is gone: first the processes inside
    (QEMUs that outlived a crashed lab), then namespace and veth. Returns what went."""
    removed: list[str] = []
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-(\d+)$")
    for name in _namespaces():
        match = pattern.match(name)
        if match and not process_runs(int(match[2])):
            removed += [f"process {pid} in {name}" for pid in _kill_namespace_processes(name)]
    return removed + cleanup_stale(prefix)


class LabNetwork:
    """The namespace, bridge, taps and veth of one QEMU lab. ``destroy()`` is idempotent."""

    def __init__(self, *, prefix: str = DEFAULT_PREFIX) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,9}", prefix):
            raise ValueError(f"prefix {prefix!r}: use 1-10 characters [a-z0-9-] starting a-z")
        self.prefix = prefix
        self.index: int | None = None
        self.namespace = ""
        self.host_if = ""
        self.bridge_if = ""

    def _x(self) -> int:
        if self.index is None:
            raise NetnsError("the lab network has not been created")
        return self.index

    @property
    def harness_address(self) -> str:
        """The root-namespace end: where probes start and heartbeats arrive."""
        return f"198.18.{self._x()}.1"

    @property
    def guest_address(self) -> str:
        return f"198.18.{self._x()}.2"

    @property
    def prefix_len(self) -> int:
        return 24

    @property
    def harness_mac(self) -> str:
        return f"02:6d:71:{self._x():02x}:00:01"

    @property
    def guest_mac(self) -> str:
        return f"02:6d:71:{self._x():02x}:00:02"

    def create(self) -> LabNetwork:
        if self.index is not None:
            return self
        require_netns_privileges()
        with _allocation_lock():
            cleanup_stale_labs(self.prefix)
            free = sorted(set(range(256)) - _indexes_in_use())
            if not free:
                raise NetnsError("all 256 subnets 198.18.X.0/24 are in use")
            x = random.choice(free)
            self.index = x
            self.namespace = f"{self.prefix}{x}-{os.getpid()}"
            self.host_if = f"{self.prefix}{x}h"
            self.bridge_if = f"{self.prefix}{x}g"
            if len(self.host_if) >= IFNAMSIZ:
                raise ValueError(f"interface name {self.host_if!r} is longer than 15 characters")
            try:
                self._build(x)
            except BaseException:
                self.destroy()
                raise
        return self

    def _build(self, x: int) -> None:
        _ip("netns", "add", self.namespace)
        _ip_batch(
            [
                f"link add {self.host_if} address {self.harness_mac} type veth "
                f"peer name {self.bridge_if} address 02:6d:71:{x:02x}:00:03 "
                f"netns {self.namespace}",
                f"addr add {self.harness_address}/{self.prefix_len} dev {self.host_if}",
                f"link set {self.host_if} up",
                f"neigh replace {self.guest_address} lladdr {self.guest_mac} "
                f"dev {self.host_if} nud permanent",
            ]
        )
        inside = [
            "link set lo up",
            # STP off: a new port forwards at once (no listening/learning delay).
            f"link add {BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            f"link set {BRIDGE} up",
            f"link set {self.bridge_if} master {BRIDGE}",
            f"link set {self.bridge_if} up",
        ]
        for side in SIDES:
            inside += [
                f"tuntap add {tap_name(side)} mode tap",
                f"link set {tap_name(side)} master {BRIDGE}",
                f"link set {tap_name(side)} up",
            ]
        _ip_batch(inside, netns=self.namespace)
        # Bridged frames must not pass through iptables (the keys exist only
        # where br_netfilter is loaded; they are per namespace).
        script = (
            "for key in bridge-nf-call-iptables bridge-nf-call-ip6tables bridge-nf-call-arptables;"
            ' do f=/proc/sys/net/bridge/$key; [ -e "$f" ] && echo 0 > "$f"; done; true'
        )
        self.run("sh", "-c", script)

    def destroy(self) -> None:
        """Kill what runs inside, remove the namespace (taps, bridge) and the veth. Idempotent."""
        if self.index is None:
            return
        if self.namespace in _namespaces():
            _kill_namespace_processes(self.namespace)
        _ip("link", "del", self.host_if, check=False)
        if self.namespace in _namespaces():
            _ip("netns", "del", self.namespace, check=False)
        self.index = None

    def exec_argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed so it runs inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.exec_argv(*argv), capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise NetnsError(f"`{' '.join(argv)}` in {self.namespace} failed: {proc.stderr}")
        return proc

    def bridge_port_of(self, mac: str) -> str | None:
        """The bridge port (tap) the bridge currently sends ``mac`` to, if it learned one."""
        fdb = subprocess.run(
            ["bridge", "-n", self.namespace, "fdb", "show", "br", BRIDGE],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in fdb.stdout.splitlines():
            words = line.split()
            if words and words[0].lower() == mac.lower() and "dev" in words:
                return words[words.index("dev") + 1]
        return None

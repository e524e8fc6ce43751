"""Talking to the QEMU lab guest's ``mb-guestd`` (lab/qemu/guest/mb-guestd.c).

``mb-guestd`` sends the heartbeats (guest agent wire format v2, with the
work unit's timing, read by ``probes.guest_receiver``), answers the
harness's witnesses on port 47601 (the direction probe and the TCP stream)
and runs the memory dirtier; this is its control
channel: one UDP request, one answer. A request is
``MBCT1 <nonce> <command>`` plus the HMAC-SHA256 of that text keyed with the
lab token; the nonce (the harness's wall clock in ns) must grow, so a
captured request cannot be replayed. Unauthenticated requests get no answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
from dataclasses import dataclass

DEFAULT_CONTROL_PORT = 7100


class GuestControlError(RuntimeError):
    """The guest did not answer, or refused the request."""


@dataclass(frozen=True)
class GuestStatus:
    """What ``mb-guestd`` reports. ``mono_ns``: the guest's CLOCK_MONOTONIC."""

    agent_id: str
    heartbeats_sent: int
    heartbeat_errors: int
    dirty_mib: int
    dirty_rate_mib_s: int
    pages_written: int
    mono_ns: int


class GuestControl:
    """Requests to the guest's control port over UDP (from the root namespace)."""

    def __init__(self, address: str, token: str, *, port: int = DEFAULT_CONTROL_PORT) -> None:
        self.address = address
        self.port = port
        self._key = token.encode("ascii")
        self._last_nonce = 0

    def _nonce(self) -> int:
        self._last_nonce = max(time.time_ns(), self._last_nonce + 1)
        return self._last_nonce

    async def request(self, command: str, *, timeout_s: float = 2.0, attempts: int = 3) -> str:
        """Send ``command``; the answer's text after ``ok <nonce>``. Retries lost datagrams."""
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((self.address, self.port))
            last_error = "no answer"
            for _ in range(attempts):
                nonce = self._nonce()
                text = f"MBCT1 {nonce} {command}".encode("ascii")
                await loop.sock_sendall(
                    sock, text + hmac.new(self._key, text, hashlib.sha256).digest()
                )
                try:
                    async with asyncio.timeout(timeout_s / attempts):
                        while True:
                            answer = (await loop.sock_recv(sock, 1024)).decode("ascii", "replace")
                            words = answer.split(" ", 2)
                            if len(words) >= 2 and words[1] == str(nonce):
                                break
                except TimeoutError:
                    continue
                except ConnectionRefusedError:  # ICMP port unreachable: mb-guestd not up yet
                    last_error = "port unreachable"
                    await asyncio.sleep(timeout_s / attempts)
                    continue
                if words[0] != "ok":
                    raise GuestControlError(f"guest refused {command!r}: {answer}")
                return words[2] if len(words) > 2 else ""
        raise GuestControlError(
            f"guest {self.address}:{self.port} did not answer {command!r} ({last_error})"
        )

    async def status(self, *, timeout_s: float = 2.0) -> GuestStatus:
        fields = dict(
            item.split("=", 1)
            for item in (await self.request("status", timeout_s=timeout_s)).split()
        )
        return GuestStatus(
            agent_id=fields["agent_id"],
            heartbeats_sent=int(fields["heartbeats_sent"]),
            heartbeat_errors=int(fields["heartbeat_errors"]),
            dirty_mib=int(fields["dirty_mib"]),
            dirty_rate_mib_s=int(fields["dirty_rate"]),
            pages_written=int(fields["pages_written"]),
            mono_ns=int(fields["mono_ns"]),
        )

    async def set_dirtier(
        self, mib: int, rate_mib_s: int = 0, *, wait_running_s: float | None = 10.0
    ) -> GuestStatus:
        """Dirty ``mib`` MiB round and round at ``rate_mib_s`` MiB/s (0: as fast as it
        goes); ``mib=0`` stops and frees the buffer. Idempotent.

        A new buffer is populated before writing starts (~0.5 s for 64 MiB under
        TCG); unless ``wait_running_s`` is None this waits, up to that deadline,
        until pages are being written, so a migration started next meets a
        dirtying guest. Returns the status at that point.
        """
        if mib < 0 or rate_mib_s < 0:
            raise ValueError("mib and rate_mib_s must be >= 0")
        await self.request(f"dirty {mib} {rate_mib_s}")
        first = await self.status()
        if mib == 0 or wait_running_s is None:
            return first
        deadline = time.monotonic() + wait_running_s
        while True:
            status = await self.status()
            if status.pages_written > first.pages_written:
                return status
            if time.monotonic() > deadline:
                raise GuestControlError(f"the dirtier wrote nothing within {wait_running_s} s")
            await asyncio.sleep(0.05)

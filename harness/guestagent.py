"""The in-guest agent from the harness's side: its receiver, and in a lab
the guest desktop that runs it. Used by ``measure run`` and ``measure watch``.

The receiver listens where the guest can reach it; the token authenticates
the agent. For a real guest the harness announces the exact command to start
the agent (token included: it is shown on the console, never written to the
run folder); a lab hands over a ``desktop`` factory instead, which starts the
agent inside its guest (the emulated lab: with a virtual X display and a
clock, in the guest's network namespace, so they freeze with the VM).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from migration_blackout.probes.guest_receiver import GuestReceiver, new_token
from migration_blackout.runformat import FRAMES, HEARTBEAT, REJECTS

from .runwriter import RunWriter

RECEIVER_READY_DEADLINE_S = 15.0


class ProbesNotReadyError(Exception):
    """A probe (or the guest agent) did not become ready within its deadline."""


class GuestDesktop(Protocol):
    """The agent running inside a lab's guest; ``start`` and ``stop`` block."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class GuestDesktopFactory(Protocol):
    """How a lab starts the agent in its guest, sending to ``receiver_url``
    (answering the witnesses on ``witness_port`` when it is set)."""

    def __call__(
        self,
        *,
        receiver_url: str,
        token: str,
        log_path: Path,
        interval_s: float,
        heartbeat_hz: float,
        witness_port: int | None,
    ) -> GuestDesktop: ...


# Heartbeats of the running guest, in seconds, before the migration may begin.
BASELINE_S = 0.5


@dataclass(frozen=True)
class GuestAgentSetup:
    """The in-guest agent: where its receiver listens and who starts the agent.

    With ``desktop`` a lab starts the agent in its guest (the emulated lab:
    Xvfb, a clock and the agent in the guest's namespace); with ``in_guest``
    the guest runs its own heartbeat sender already (the QEMU lab's guest,
    with ``token``: heartbeats only, no frames); otherwise the user starts the
    agent in the guest with the command the progress callback announces.
    """

    listen_host: str
    listen_port: int = 0
    contact_deadline_s: float = 60.0
    interval_s: float = 1.0
    heartbeat_hz: float = 100.0
    desktop: GuestDesktopFactory | None = None
    advertise_host: str | None = None  # the address the guest should send to
    in_guest: bool = False
    token: str | None = None  # a token the guest already has (else a new one)
    frames: bool = True  # wait for frames as well as heartbeats
    witness_port: int | None = None  # the agent answers the witnesses on this port


def address_towards(target: str) -> str | None:
    """This machine's address on the route to ``target`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


class GuestAgentSession:
    """The receiver of the in-guest agent's frames and heartbeats, and (in the
    lab) the guest desktop that runs the agent."""

    def __init__(
        self,
        run: RunWriter,
        setup: GuestAgentSetup,
        *,
        record: Callable[..., None],
        announce: Callable[[str], None],
    ) -> None:
        self.run = run
        self.setup = setup
        self.record = record
        self.announce = announce
        self.token = setup.token or new_token()
        self.receiver = GuestReceiver(
            run.path, token=self.token, host=setup.listen_host, port=setup.listen_port
        )
        self.desktop: GuestDesktop | None = None
        for raw_file in (FRAMES, HEARTBEAT, REJECTS):
            run.register_probe(raw_file.probe, raw_file.path)

    def agent_url(self) -> str:
        host, port = self.receiver.address
        host = self.setup.advertise_host or host
        return f"http://{host}:{port}/"

    async def start_and_wait(self) -> None:
        async with asyncio.timeout(RECEIVER_READY_DEADLINE_S):
            await self.receiver.ready.wait()
        url = self.agent_url()
        self.record("guest_agent_listening", url=url)
        if self.setup.in_guest:
            self.announce("waiting for the guest's heartbeat")
        elif self.setup.desktop is not None:
            self.desktop = self.setup.desktop(
                receiver_url=url,
                token=self.token,
                log_path=self.run.raw / "guest_agent_output.txt",
                interval_s=self.setup.interval_s,
                heartbeat_hz=self.setup.heartbeat_hz,
                witness_port=self.setup.witness_port,
            )
            await asyncio.to_thread(self.desktop.start)
            self.announce("the lab started the agent inside the guest")
        else:
            self.announce(
                "start the agent in the guest: "
                f"MB_AGENT_TOKEN={self.token} python guest_agent.py --url {url} "
                f"--interval {self.setup.interval_s:g}"
                + (
                    ""
                    if self.setup.witness_port is None
                    else f" --witness-port {self.setup.witness_port}"
                )
            )
        try:
            async with asyncio.timeout(self.setup.contact_deadline_s):
                if self.setup.frames:
                    await self.receiver.contact.wait()
                else:
                    await self.receiver.first_heartbeat.wait()
                # The brownout is the guest's pace against its own: the agent's
                # start-up (its first capture, the witnesses connecting) is no
                # baseline, and a migration begun within it blurs the brownout's
                # start (analysis/brownout.py's window sees half a window ahead).
                baseline = self.receiver.stats.heartbeats + round(
                    BASELINE_S * self.setup.heartbeat_hz
                )
                await self.receiver.wait_until(lambda stats: stats.heartbeats >= baseline)
        except TimeoutError:
            raise ProbesNotReadyError(
                f"no {'frame and ' if self.setup.frames else ''}heartbeat from the guest within "
                f"{self.setup.contact_deadline_s:g} s (receiver {url})"
            ) from None
        self.record("guest_agent_contact")

    async def stop(self) -> None:
        if self.desktop is not None:
            await asyncio.to_thread(self.desktop.stop)
            self.desktop = None

"""The lab's guest (lab/guest.py) goes dark for all its traffic, not only ICMP echo:
while it is frozen and through the network-reconvergence window after it
thaws, UDP to and from it is dropped silently (the guest's sends succeed and
go nowhere, as on a real network); once the network is restored it flows again.

Real sockets in a real network namespace: a UDP beacon and echo server runs
inside the guest, the test talks to it from the root namespace.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures_netns import wait_until

from migration_blackout.lab.guest import NetnsGuest
from migration_blackout.lab.injector import LINK_DIRECTIONS

pytestmark = pytest.mark.root

PORT = 47911
BEACON_INTERVAL_S = 0.005

# Inside the guest: send a beacon (seq, CLOCK_MONOTONIC ns) every 5 ms to the
# harness side of the link, and echo every datagram it receives, prefixed "E".
GUEST_PROGRAM = """
import socket, struct, sys, time
target = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.setblocking(False)
print("ready", flush=True)
seq = 0
while True:
    s.sendto(b"B" + struct.pack("!qq", seq, time.monotonic_ns()), target)
    seq += 1
    deadline = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(64)
        except BlockingIOError:
            time.sleep(0.0005)
            continue
        s.sendto(b"E" + data, peer)
"""


class Harness:
    """The root-namespace side: receives beacons and echoes, sends probes."""

    def __init__(self, address: str, guest: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, PORT))
        self.sock.setblocking(False)
        self.guest = (guest, PORT)
        self.beacons: list[tuple[int, int, int]] = []  # (seq, guest send ns, recv ns)
        self.echoes: list[tuple[int, int]] = []  # (probe send ns, recv ns)
        self._probe = 0

    def probe(self) -> None:
        self.sock.sendto(struct.pack("!q", time.monotonic_ns()), self.guest)

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                return
            now = time.monotonic_ns()
            if data[:1] == b"B":
                seq, sent = struct.unpack("!qq", data[1:17])
                self.beacons.append((seq, sent, now))
            elif data[:1] == b"E":
                (sent,) = struct.unpack("!q", data[1:9])
                self.echoes.append((sent, now))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def lab_guest() -> Iterator[NetnsGuest]:
    with NetnsGuest(prefix="mbtg-") as guest:
        yield guest


def test_the_link_filter_darkens_udp_both_ways_until_the_network_is_restored(
    lab_guest: NetnsGuest,
) -> None:
    harness = Harness(lab_guest.host_address, lab_guest.address)
    program = subprocess.Popen(
        lab_guest.namespace.exec_argv(
            sys.executable,
            "-c",
            GUEST_PROGRAM,
            lab_guest.host_address,
            str(PORT),
            str(BEACON_INTERVAL_S),
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert program.stdout is not None and program.stdout.readline().strip() == "ready"

        def pump_until(condition: Callable[[], object], what: str) -> None:
            def step() -> bool:
                harness.probe()
                time.sleep(0.002)  # the probe schedule, not a wait for a condition
                harness.drain()
                return bool(condition())

            wait_until(step, timeout_s=10, what=what)

        pump_until(lambda: harness.beacons and harness.echoes, "beacons and echoes")
        frozen = asyncio.run(lab_guest.freeze())
        thawed = asyncio.run(lab_guest.thaw())
        # Reconvergence: the guest runs again (its beacons are sent) but its
        # link stays dark for 0.3 s. Keep probing through it.
        reconvergence_end = time.monotonic() + 0.3
        pump_until(lambda: time.monotonic() > reconvergence_end, "the reconvergence window")
        restored = asyncio.run(lab_guest.network_restored())
        pump_until(
            lambda: (
                any(sent > restored.mono_ns for _, sent, _ in harness.beacons)
                and any(sent > restored.mono_ns for sent, _ in harness.echoes)
            ),
            "beacons and echoes after the restore",
        )
    finally:
        program.kill()
        program.wait()
        if program.stdout is not None:
            program.stdout.close()
        harness.close()

    link = lab_guest.last_link
    assert link is not None and link.state == "light"
    assert set(link.directions) == set(LINK_DIRECTIONS)
    # Outbound: the guest sent beacons while thawed and dark (their numbers
    # run on), none of them arrived; the first to arrive again was sent after
    # the link filter was lit.
    sent_while_dark = [
        (seq, sent) for seq, sent, _ in harness.beacons if frozen.mono_ns < sent < restored.mono_ns
    ]
    assert all(sent >= link.before_mono_ns for _, sent in sent_while_dark), sent_while_dark[:3]
    seqs = [seq for seq, _, _ in harness.beacons]
    after = [seq for seq, sent, _ in harness.beacons if sent >= link.before_mono_ns]
    before = [seq for seq, sent, _ in harness.beacons if sent <= frozen.mono_ns]
    # About 0.3 s / 5 ms = 60 beacons were sent into the dark and lost.
    assert min(after) - max(before) > 30, (max(before), min(after))
    assert seqs == sorted(seqs)
    # Inbound: probes sent while the link was dark got no echo, although the
    # guest ran through most of that time.
    echoed_in_dark = [
        sent for sent, _ in harness.echoes if thawed.mono_ns < sent < link.before_mono_ns
    ]
    assert echoed_in_dark == []
    assert any(sent < frozen.mono_ns for sent, _ in harness.echoes)


def test_the_injector_records_the_link_edges(tmp_path: Path) -> None:
    truth = tmp_path / "injector.jsonl"
    with NetnsGuest(prefix="mbtg-", truth_path=truth) as guest:
        asyncio.run(guest.freeze())
        asyncio.run(guest.thaw())
        asyncio.run(guest.network_restored())
    records = [json.loads(line) for line in truth.read_text().splitlines()[1:]]
    kinds = [(r["kind"], r["state"]) for r in records]
    # Freeze: the echo sysctl first (the precise edge), then the link filter;
    # restore: the link filter first, then the echo sysctl.
    assert kinds == [("write", "dark"), ("link", "dark"), ("link", "light"), ("write", "light")]
    for record in records:
        if record["kind"] == "link":
            assert record["directions"] == list(LINK_DIRECTIONS)
            assert 0 < record["after_mono_ns"] - record["before_mono_ns"] < 1_000_000_000

"""The guest namespace and the blackout injector (lab/netns.py, lab/injector.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_netns import TEST_PREFIX, wait_until

from migration_blackout.lab.injector import BlackoutInjector
from migration_blackout.lab.netns import (
    IFNAMSIZ,
    GuestNamespace,
    NetnsPermissionError,
    cleanup_stale,
)

pytestmark = pytest.mark.root

MS = 1_000_000


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def link_exists(name: str) -> bool:
    result = subprocess.run(["ip", "link", "show", name], capture_output=True, check=False)
    return result.returncode == 0


def test_create_and_destroy_is_idempotent() -> None:
    guest = GuestNamespace(prefix=TEST_PREFIX)
    with guest:
        assert guest.name in namespaces()
        assert link_exists(guest.host_if)
        assert len(guest.host_if) < IFNAMSIZ and len(guest.guest_if) < IFNAMSIZ
        assert guest.name.startswith(TEST_PREFIX) and guest.name.endswith(f"-{os.getpid()}")
        assert guest.host_address.startswith("198.18.") and guest.guest_address.endswith(".2")
        addresses = guest.run("ip", "-4", "-o", "addr", "show", "dev", guest.guest_if).stdout
        assert f"{guest.guest_address}/24" in addresses
        assert guest.read_sysctl("net.ipv4.icmp_echo_ignore_all") == "0"
        assert guest.create() is guest  # creating again is a no-op
        name, host_if = guest.name, guest.host_if
    assert name not in namespaces() and not link_exists(host_if)
    guest.destroy()  # again: nothing left, no error


def test_parallel_instances_do_not_clash() -> None:
    with GuestNamespace(prefix=TEST_PREFIX) as one, GuestNamespace(prefix=TEST_PREFIX) as two:
        assert one.index != two.index
        assert one.name != two.name and one.host_if != two.host_if
        assert one.guest_address != two.guest_address


def zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] == "Z"


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_cleanup_removes_leftovers_of_a_crashed_creator(reaped: bool) -> None:
    # A killed creator nobody has reaped yet (a container's first process may be slow to
    # reap, or never reap) is a zombie: os.kill(pid, 0) still succeeds, yet it is gone.
    prefix = "mbox-"
    code = (
        "import os, sys\n"
        "from migration_blackout.lab.netns import GuestNamespace\n"
        f"guest = GuestNamespace(prefix={prefix!r}).create()\n"
        "print(guest.name, guest.host_if, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    creator = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert creator.stdout is not None
        name, host_if = creator.stdout.readline().split()
        assert name in namespaces()
        assert cleanup_stale(prefix) == []  # the creator is alive: hands off
        creator.send_signal(signal.SIGKILL)
        if reaped:
            creator.wait()
        else:
            wait_until(lambda: zombie(creator.pid), timeout_s=10, what="the creator to die")
            os.kill(creator.pid, 0)  # the number is still taken
            assert name in namespaces() and link_exists(host_if)  # left behind by the crash
            assert name in cleanup_stale(prefix)
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
        for stream in (creator.stdin, creator.stdout):
            if stream is not None:
                stream.close()
    if reaped:
        assert name in namespaces() and link_exists(host_if)  # left behind by the crash
        assert name in cleanup_stale(prefix)
    assert name not in namespaces() and not link_exists(host_if)


def test_clear_error_without_privileges() -> None:
    code = (
        "from migration_blackout.lab.netns import GuestNamespace, NetnsPermissionError\n"
        "try:\n"
        "    GuestNamespace(prefix='mboy-').create()\n"
        "except NetnsPermissionError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(3)\n"
    )
    drop = "--bounding-set=-net_admin,-sys_admin"
    argv = ["setpriv", drop, "--inh-caps=-net_admin,-sys_admin", sys.executable, "-c", code]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "needs root" in result.stdout and "CAP_NET_ADMIN" in result.stdout
    assert issubclass(NetnsPermissionError, PermissionError)


def test_injector_dark_and_light(guest: GuestNamespace, injector: BlackoutInjector) -> None:
    before = time.monotonic_ns()
    dark = injector.dark()
    assert guest.read_sysctl("net.ipv4.icmp_echo_ignore_all") == "1"
    light = injector.light()
    after = time.monotonic_ns()
    assert guest.read_sysctl("net.ipv4.icmp_echo_ignore_all") == "0"
    # CLOCK_MONOTONIC is the same clock inside the namespace.
    assert before <= dark.before_mono_ns <= dark.after_mono_ns <= light.before_mono_ns <= after
    assert 0 <= dark.width_ns < 5 * MS and dark.before_utc_ns <= dark.after_utc_ns


def test_injector_times_blackouts_inside_the_namespace(
    guest: GuestNamespace, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    with guest.start_injector(truth_path=truth) as injector:
        single = injector.blackout(0.05)
        schedule = injector.run_schedule([(0.02, 0.03), (0.01, 0.015)])
        assert guest.read_sysctl("net.ipv4.icmp_echo_ignore_all") == "0"
    assert abs(single.duration_ns - 50 * MS) < MS // 2
    assert single.requested_s == 0.05
    first, second = schedule
    assert (
        abs(first.duration_ns - 30 * MS) < MS // 2 and abs(second.duration_ns - 15 * MS) < MS // 2
    )
    assert second.start_mono_ns - first.end_mono_ns >= 10 * MS - MS // 10
    assert first.start_utc_ns < first.end_utc_ns < second.start_utc_ns
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    assert lines[0]["header"] is True and lines[0]["probe"] == "blackout-injector"
    recorded = [line for line in lines[1:] if line["kind"] == "blackout"]
    assert [r["start_mono_ns"] for r in recorded] == [
        b.start_mono_ns for b in (single, first, second)
    ]
    assert recorded[0]["duration_ns"] == single.duration_ns


def test_injector_stops_with_the_namespace(tmp_path: Path) -> None:
    with GuestNamespace(prefix=TEST_PREFIX) as guest:
        injector = guest.start_injector()
        injector.dark()
        name = guest.name
    assert not injector.running
    wait_until(lambda: name not in namespaces(), timeout_s=5, what="the namespace to go")

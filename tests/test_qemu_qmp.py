"""The QEMU lab's pieces that need no guest: setup.sh, the QMP client against a real
QEMU (``-machine none``, up in milliseconds), the guest's heartbeat program against
the real ``GuestReceiver``, and the RAM-dump comparison.

Marked ``root`` and ``slow``: setup.sh installs packages on a fresh machine (about
30 s; about 0.1 s once done) and the QMP tests start QEMU.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migration_blackout.harness.qemu.migration import PAGE_BYTES, compare_dumps
from migration_blackout.harness.qemu.qmp import (
    QmpClient,
    QmpCommandError,
    QmpConnectionError,
    QmpTimeoutError,
    RunState,
)
from migration_blackout.lab.qemu.artefacts import SETUP_SCRIPT, QemuArtefacts, ensure_artefacts
from migration_blackout.probes.guest_receiver import GuestReceiver, new_token
from migration_blackout.runformat import HEARTBEAT

pytestmark = [pytest.mark.root, pytest.mark.slow]

GUESTD_SOURCE = Path(__file__).resolve().parents[1] / "lab" / "qemu" / "guest" / "mb-guestd.c"


@pytest.fixture(scope="module")
def artefacts() -> QemuArtefacts:
    """What setup.sh built (it runs here if something is missing)."""
    begin = time.monotonic()
    built = ensure_artefacts()
    print(f"ensure_artefacts: {time.monotonic() - begin:.1f} s")
    return built


def test_setup_is_idempotent_and_fast_when_done(artefacts: QemuArtefacts) -> None:
    begin = time.monotonic()
    proc = subprocess.run(["sh", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - begin
    assert proc.returncode == 0, proc.stderr
    assert "installing" not in proc.stdout and "building" not in proc.stdout, proc.stdout
    assert elapsed < 5.0, f"a setup.sh with nothing to do took {elapsed:.1f} s"
    assert artefacts.qemu_major >= 8
    assert artefacts.kernel.stat().st_size > 1_000_000
    assert artefacts.initramfs.stat().st_size > 100_000


# -- QMP against a real QEMU ---------------------------------------------------------


@pytest.fixture
def bare_qemu(artefacts: QemuArtefacts, tmp_path: Path) -> Iterator[Path]:
    """A QEMU with no machine at all: a QMP monitor and nothing else. Yields its socket."""
    socket_path = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [
            str(artefacts.qemu_binary),
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-chardev",
            f"socket,id=qmp0,path={socket_path},server=on,wait=off",
            "-mon",
            "chardev=qmp0,mode=control",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "QEMU made no monitor socket within 10 s"
            time.sleep(0.005)
        yield socket_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_qmp_commands_errors_and_events(bare_qemu: Path) -> None:
    async def scenario() -> None:
        async with await QmpClient.connect(bare_qemu) as qmp:
            assert qmp.qemu_version[0] >= 8
            status = await qmp.query_status()
            assert isinstance(status, RunState)
            # Concurrent commands are matched to their answers by id.
            names, version = await asyncio.gather(
                qmp.execute("query-commands"), qmp.execute("query-version")
            )
            assert any(entry["name"] == "migrate" for entry in names)
            assert version["qemu"]["major"] == qmp.qemu_version[0]
            with pytest.raises(QmpCommandError) as refused:
                await qmp.execute("no-such-command")
            assert refused.value.error_class == "CommandNotFound"
            with pytest.raises(QmpCommandError):
                await qmp.migrate_set_parameters({"downtime-limit": -5})

            # STOP / RESUME carry QEMU's timestamp: between our send and our receipt.
            before = time.time_ns()
            await qmp.stop()
            _, stop = await qmp.wait_event("STOP", timeout_s=5)
            await qmp.cont()
            index, resume = await qmp.wait_event("RESUME", timeout_s=5)
            after = time.time_ns()
            assert before - 1_000 <= stop.qemu_utc_ns <= resume.qemu_utc_ns <= after + 1_000
            # On the harness's monotonic clock QEMU's stamp precedes our receipt.
            assert stop.qemu_mono_ns <= stop.recv.mono_ns + 1_000
            with pytest.raises(QmpTimeoutError):
                await qmp.wait_event("RESUME", since=index + 1, timeout_s=0.05)

            # quit: the connection closes; what was pending fails, and so does what comes.
            waiter = asyncio.ensure_future(qmp.wait_event("SHUTDOWN_NEVER", timeout_s=10))
            await qmp.quit()
            with pytest.raises(QmpConnectionError):
                await waiter
            with pytest.raises(QmpConnectionError):
                await qmp.query_status()

    asyncio.run(scenario())


def test_qmp_connect_refused_is_typed(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(QmpConnectionError):
            await QmpClient.connect(tmp_path / "nothing-here.sock", timeout_s=1)

    asyncio.run(scenario())


# -- the guest's heartbeat program, run on the host ------------------------------------


def _build_guestd(tmp_path: Path) -> Path:
    binary = tmp_path / "mb-guestd"
    subprocess.run(
        ["gcc", "-O2", "-pthread", "-Wall", "-Werror", "-o", str(binary), str(GUESTD_SOURCE)],
        check=True,
        capture_output=True,
    )
    return binary


def test_guestd_hmac_matches_python(tmp_path: Path) -> None:
    binary = _build_guestd(tmp_path)
    for key, message in [(b"abc", b""), (b"k" * 100, bytes(range(256)) * 3), (b"t" * 43, b"x")]:
        out = subprocess.run(
            [str(binary), "--selftest", key.decode(), message.hex()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert out == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_guestd_heartbeats_are_accepted_by_the_receiver(tmp_path: Path) -> None:
    """The heartbeat the QEMU guest sends is the guest agent's wire format v1: the
    project's receiver takes it unchanged, at the nominal rate, in sequence."""
    binary = _build_guestd(tmp_path)
    token = new_token()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    run_dir = tmp_path / "run"

    async def scenario() -> None:
        receiver = GuestReceiver(run_dir, token=token, host="127.0.0.1", port=0)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(receiver.run(stop))
            await receiver.ready.wait()
            host, port = receiver.address
            guestd = await asyncio.create_subprocess_exec(
                str(binary),
                "--heartbeat",
                f"{host}:{port}",
                "--token-file",
                str(token_file),
                "--hz",
                "100",
                "--control-port",
                "0",
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                async with asyncio.timeout(10):
                    await receiver.wait_until(lambda stats: stats.heartbeats >= 50)
            finally:
                guestd.kill()
                await guestd.wait()
                stop.set()
        assert receiver.stats.rejected == 0, receiver.stats.rejects

    asyncio.run(scenario())
    with open(run_dir / HEARTBEAT.path, newline="") as handle:
        next(handle)
        rows = list(csv.DictReader(handle))
    seqs = [int(row["seq"]) for row in rows]
    assert seqs[:50] == list(range(50))
    assert {row["interval_us"] for row in rows} == {"10000"}
    assert len({row["agent_id"] for row in rows}) == 1
    monos = [int(row["guest_mono_ns"]) for row in rows[:50]]
    steps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(monos)]
    assert 9.0 < sorted(steps_ms)[len(steps_ms) // 2] < 11.0


# -- RAM dump comparison --------------------------------------------------------------


def test_compare_dumps_counts_differing_pages(tmp_path: Path) -> None:
    data = bytearray(os.urandom(PAGE_BYTES * 2048))
    a = tmp_path / "a.bin"
    b = tmp_path / "b.bin"
    a.write_bytes(data)
    b.write_bytes(data)
    assert compare_dumps(a, b) == (len(data), 0, ())
    for page in (3, 1500, 1501):
        data[page * PAGE_BYTES + 17] ^= 0xFF
    b.write_bytes(data)
    compared, differing, offsets = compare_dumps(a, b)
    assert (compared, differing) == (len(data), 3)
    assert offsets == (3 * PAGE_BYTES, 1500 * PAGE_BYTES, 1501 * PAGE_BYTES)

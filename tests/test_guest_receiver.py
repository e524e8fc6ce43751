"""The guest receiver against hostile and broken clients, on real loopback sockets.

Requests are written byte for byte (asyncio streams), so a test can send what
no well-behaved client library would: paths in the seq header, lying
Content-Lengths, bodies that stop half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fixtures_netns import until
from PIL import Image

from migration_blackout.probes.guest_agent import HEARTBEAT_BODY, heartbeat_datagram
from migration_blackout.probes.guest_receiver import GuestReceiver, RateLimit, new_token
from migration_blackout.runformat import FRAMES, HEARTBEAT, REJECTS

TOKEN = new_token()
DEADLINE_S = 20


def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (0, 128, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buffer, "JPEG")
    return buffer.getvalue()


def frame_headers(seq: str | int, token: str | None = TOKEN) -> dict[str, str]:
    headers = {
        "X-MB-Seq": str(seq),
        "X-MB-Guest-UTC-NS": "1795000000000000000",
        "X-MB-Guest-Mono-NS": "5000000000",
        "X-MB-Capture-MS": "7.25",
        "X-MB-Interval-NS": "1000000000",
        "X-MB-Agent-ID": "00000000000000aa",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def http(
    port: int,
    *,
    method: str = "POST",
    path: str = "/frames",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    content_length: int | None = None,
    chunked: bool = False,
) -> int:
    """Send one request on a new connection; the response's status code (0: the
    connection closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: guest-receiver"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(
                f"Content-Length: {len(body) if content_length is None else content_length}"
            )
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if chunked:
            for start in range(0, len(body), 65536):
                piece = body[start : start + 65536]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(body)
        # The receiver may answer and close before it has taken the whole body.
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1]) if status_line else 0
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@asynccontextmanager
async def receiving(run_dir: Path, **options: Any) -> AsyncIterator[GuestReceiver]:
    """A receiver serving on an ephemeral loopback port for the block, then closed."""
    receiver = GuestReceiver(run_dir, token=TOKEN, **options)
    stop = asyncio.Event()
    async with asyncio.timeout(DEADLINE_S), asyncio.TaskGroup() as tasks:
        tasks.create_task(receiver.run(stop))
        await receiver.ready.wait()
        try:
            yield receiver
        finally:
            stop.set()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_a_valid_frame_is_stored_under_its_seq_and_recorded(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            host, port = receiver.address
            assert host == "127.0.0.1" and port > 0
            assert receiver.url == f"http://127.0.0.1:{port}/"
            assert await http(port, headers=frame_headers(795), body=png()) == 201
            assert await http(port, headers=frame_headers("0796"), body=jpeg()) == 201
            assert receiver.first_frame.is_set() and not receiver.contact.is_set()

    asyncio.run(scenario())
    records = read_jsonl(run_dir / FRAMES.path)
    assert records[0]["header"] is True and records[0]["schema_version"] == 1
    first, second = records[1], records[2]
    assert first["seq"] == 795 and first["file"] == "frames/seq_000795.png"
    assert (first["width"], first["height"], first["format"]) == (64, 48, "png")
    assert first["guest_utc_ns"] == 1795000000000000000 and first["guest_mono_ns"] == 5000000000
    assert first["capture_ms"] == 7.25 and first["interval_ns"] == 1000000000
    assert first["agent_id"] == "00000000000000aa"
    assert first["recv_mono_ns"] <= first["stored_mono_ns"]
    assert second["seq"] == 796 and second["file"] == "frames/seq_000796.jpg"
    assert (run_dir / "frames" / "seq_000795.png").read_bytes() == png()
    assert tree(run_dir) == {
        "frames",
        "frames/seq_000795.png",
        "frames/seq_000796.jpg",
        "raw",
        "raw/guest_frames.jsonl",
        "raw/guest_heartbeat.csv",
        "raw/guest_rejects.jsonl",
    }


def test_bad_requests_get_their_status_and_nothing_lands_outside_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    small_limit = 100_000
    big_png = png(400, 400)
    noise = Image.frombytes("RGB", (300, 300), bytes(range(256)) * 1055)
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=0)
    too_big = buffer.getvalue()
    assert len(too_big) > small_limit
    truncated = png()[:-30]
    no_token = frame_headers(1, token=None)
    expected: list[tuple[str, int]] = []

    async def scenario() -> None:
        async with receiving(run_dir, max_frame_bytes=small_limit, max_pixels=100_000) as receiver:
            port = receiver.address[1]

            async def check(reason: str, status: int, **request: Any) -> None:
                assert await http(port, **request) == status, reason
                expected.append((reason, status))

            await check("unauthorized", 401, headers=no_token, body=png())
            await check("unauthorized", 401, headers=frame_headers(1, "x" * 43), body=png())
            await check("unauthorized", 401, headers=frame_headers(1, TOKEN + "x"), body=png())
            await check("too_large", 413, headers=frame_headers(2), body=too_big)
            await check("too_large", 413, headers=frame_headers(2), body=too_big, chunked=True)
            await check("too_many_pixels", 413, headers=frame_headers(2), body=big_png)
            await check("not_an_image", 415, headers=frame_headers(3), body=b"GIF89a" + b"\0" * 50)
            await check("not_an_image", 415, headers=frame_headers(3), body=b"")
            await check("bad_image", 400, headers=frame_headers(3), body=truncated)
            await check("bad_image", 400, headers=frame_headers(3), body=png()[:40])
            for seq in (
                "../../etc/x",
                "1/2",
                "-1",
                "1e3",
                "",
                "0x10",
                "+1",
                "1 2",
                "1000000000",
                "1.0",
            ):
                await check("bad_seq", 400, headers=frame_headers(seq), body=png())
            bad_stamp = {**frame_headers(4), "X-MB-Guest-UTC-NS": "soon"}
            await check("bad_header", 400, headers=bad_stamp, body=png())
            missing_stamp = frame_headers(4)
            del missing_stamp["X-MB-Guest-Mono-NS"]
            await check("bad_header", 400, headers=missing_stamp, body=png())
            await check(
                "not_found", 404, path="/frames/../../x", headers=frame_headers(5), body=png()
            )
            await check("not_found", 404, path="/", headers=frame_headers(5), body=png())
            await check("method_not_allowed", 405, method="GET", headers=frame_headers(5))
            await check(
                "method_not_allowed", 405, method="PUT", headers=frame_headers(5), body=png()
            )
            # The receiver still serves, and a refused seq is free to be sent properly.
            assert await http(port, headers=frame_headers(3), body=png()) == 201
            await check("duplicate_seq", 409, headers=frame_headers(3), body=png(colour=(0, 0, 0)))
            assert receiver.stats.frames_stored == 1

    asyncio.run(scenario())
    assert tree(tmp_path) == {
        "run",
        "run/frames",
        "run/frames/seq_000003.png",
        "run/raw",
        "run/raw/guest_frames.jsonl",
        "run/raw/guest_heartbeat.csv",
        "run/raw/guest_rejects.jsonl",
    }
    assert not Path("/etc/x").exists()
    rejects = read_jsonl(run_dir / REJECTS.path)
    logged = [(r["reason"], r["status"]) for r in rejects[1:-1]]
    assert logged == expected
    assert all(r["channel"] == "http" and r["from_addr"] == "127.0.0.1" for r in rejects[1:-1])
    assert rejects[2]["detail"] == "wrong token"
    assert any(r["seq_header"] == "../../etc/x" for r in rejects[1:-1])
    totals = rejects[-1]
    assert totals["totals"] is True
    assert sum(totals["by_reason"].values()) == len(expected)


def test_a_flood_is_rate_limited_and_its_log_stays_small(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    statuses: list[int] = []

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            port = receiver.address[1]
            body = png()
            # 500 requests with a wrong token, 25 at a time.
            for start in range(0, 500, 25):
                batch = [
                    http(port, headers=frame_headers(start + i, "wrong-token"), body=body)
                    for i in range(25)
                ]
                statuses.extend(await asyncio.gather(*batch))
            # The agent, with the token, is not starved by the flood.
            assert await http(port, headers=frame_headers(7), body=body) == 201

    asyncio.run(scenario())
    assert len(statuses) == 500
    assert set(statuses) == {401, 429}
    assert statuses.count(401) >= 50  # the burst allowance of unauthorised requests
    assert statuses.count(429) >= 300
    rejects = read_jsonl(run_dir / REJECTS.path)
    assert len(rejects) < 80  # header + at most the log's burst and refill + totals
    assert rejects[-1]["by_reason"] == {
        "unauthorized": statuses.count(401),
        "rate_limited": statuses.count(429),
    }
    assert sum(r.get("suppressed_before", 0) for r in rejects[1:-1]) <= 500


def test_requests_with_the_token_are_limited_too(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> list[int]:
        async with receiving(run_dir, request_rate=RateLimit(per_s=1.0, burst=5)) as receiver:
            port = receiver.address[1]
            return [await http(port, headers=frame_headers(n), body=png()) for n in range(8)]

    statuses = asyncio.run(scenario())
    assert statuses == [201] * 5 + [429] * 3


def test_a_client_that_stops_mid_body_does_not_hurt(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            port = receiver.address[1]
            body = png()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            head = "".join(f"{k}: {v}\r\n" for k, v in frame_headers(9).items())
            request = (
                f"POST /frames HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(request.encode() + body[:20])
            await writer.drain()
            await receiver.wait_until(lambda stats: stats.uploads_in_progress == 1)
            # While it is in progress, nobody else can take its seq.
            assert await http(port, headers=frame_headers(9), body=body) == 409
            writer.close()
            await writer.wait_closed()
            await receiver.wait_until(lambda stats: stats.rejects["incomplete_body"] == 1)
            assert receiver.stats.uploads_in_progress == 0
            # The seq was not taken by the broken upload.
            assert await http(port, headers=frame_headers(9), body=body) == 201

    asyncio.run(scenario())


def signed(body: bytes, key: bytes = TOKEN.encode()) -> bytes:
    return body + hmac.new(key, body, hashlib.sha256).digest()


def test_heartbeats_are_authenticated_and_bad_datagrams_counted(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    good = heartbeat_datagram(
        TOKEN.encode(), 0xAA, 41, 1_795_000_000_000_000_000, 5_000_000_000, 10_000
    )
    version_2 = heartbeat_datagram(
        TOKEN.encode(),
        0xAA,
        42,
        1_795_000_000_010_000_000,
        5_010_000_000,
        10_000,
        late_ns=120_000,
        work_ns=345_000,
    )
    body = good[: HEARTBEAT_BODY.size]
    bad = {
        "bad_size": [
            b"",
            b"x",
            good + b"\0",
            good[:-1],
            b"\0" * 4096,
            signed(body[:4] + b"\x02" + body[5:]),  # a version 1 body that says version 2
        ],
        "bad_magic": [signed(b"MBHX" + body[4:])],
        "bad_version": [signed(body[:4] + b"\x03" + body[5:])],
        "bad_mac": [
            good[:-1] + bytes([good[-1] ^ 1]),
            signed(body, key=b"another token"),
            body[:-4] + struct.pack(">I", 20_000) + good[HEARTBEAT_BODY.size :],  # tampered
        ],
    }

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            host, port = receiver.address
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for datagrams in bad.values():
                    for datagram in datagrams:
                        udp.sendto(datagram, (host, port))
                udp.sendto(good, (host, port))
                udp.sendto(version_2, (host, port))
                total = sum(len(d) for d in bad.values())
                await receiver.wait_until(
                    lambda stats: stats.heartbeats == 2 and stats.rejected == total
                )
            assert receiver.first_heartbeat.is_set()
            assert {k: receiver.stats.rejects[k] for k in bad} == {
                k: len(v) for k, v in bad.items()
            }
            assert await http(port, headers=frame_headers(1), body=png()) == 201
            assert receiver.contact.is_set()

    asyncio.run(scenario())
    lines = (run_dir / HEARTBEAT.path).read_text().splitlines()
    header = json.loads(lines[0][2:])
    assert header["probe"] == "guest_heartbeat" and header["schema_version"] == 1
    assert header["recv_stamp"] == "kernel"  # Linux
    assert lines[1].split(",") == [
        "agent_id",
        "seq",
        "guest_utc_ns",
        "guest_mono_ns",
        "interval_us",
        "recv_mono_ns",
        "recv_utc_ns",
        "from_addr",
        "late_ns",
        "work_ns",
    ]
    assert len(lines) == 4
    row = lines[2].split(",")
    assert row[:5] == ["00000000000000aa", "41", "1795000000000000000", "5000000000", "10000"]
    assert row[7:] == ["127.0.0.1", "", ""]  # version 1: no work unit
    row = lines[3].split(",")
    assert row[:2] == ["00000000000000aa", "42"]
    assert row[7:] == ["127.0.0.1", "120000", "345000"]
    rejects = read_jsonl(run_dir / REJECTS.path)
    assert {r["reason"] for r in rejects[1:-1]} == set(bad)
    assert all(r["channel"] == "udp" for r in rejects[1:-1])


def test_tcp_and_udp_share_one_port_and_the_token_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token"):
        GuestReceiver(tmp_path, token="")
    with pytest.raises(ValueError, match="token"):
        GuestReceiver(tmp_path, token="has space")
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        receiver = GuestReceiver(run_dir, token=TOKEN)
        with pytest.raises(RuntimeError, match="not listening"):
            receiver.address  # noqa: B018
        async with receiving(run_dir) as receiver:
            port = receiver.address[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError):
                probe.bind(("127.0.0.1", port))

    asyncio.run(scenario())


# -- a hostile or unlucky guest -------------------------------------------------


def expensive_png(side: int = 5000) -> bytes:
    """Cheap to send (about 100 KB), expensive to decode: 25 Mpixel of RGBA,
    within the size and pixel caps."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (1, 2, 3, 4)).save(buffer, "PNG")
    return buffer.getvalue()


def test_heartbeats_are_recorded_while_an_expensive_image_decodes(tmp_path: Path) -> None:
    """The decoder is a child process: while it works on an image that is cheap
    to send and expensive to decode, the receiver's loop records heartbeats."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        async with receiving(run_dir, decode_time_limit_s=60) as receiver:
            host, port = receiver.address
            decoder = receiver.image_checker
            assert decoder.pid is not None and decoder.pid != os.getpid()
            upload = asyncio.ensure_future(
                http(port, headers=frame_headers(1), body=expensive_png(6000))
            )
            await until(lambda: decoder.waiting == 1, timeout_s=DEADLINE_S, what="the decode")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for seq in range(5):
                    datagram = heartbeat_datagram(TOKEN.encode(), 0xAB, seq, 1, 2, 10_000)
                    udp.sendto(datagram, (host, port))
                await receiver.wait_until(lambda stats: stats.heartbeats == 5)
            assert not upload.done()  # still decoding: it held nothing up
            assert await upload == 201

    asyncio.run(scenario())


def test_an_image_over_its_decode_budget_is_refused_and_the_decoder_replaced(
    tmp_path: Path,
) -> None:
    """A time limit per image: a late one is refused (decode_timeout), the child
    replaced, and the next frame accepted."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        async with receiving(run_dir, decode_time_limit_s=0.05) as receiver:
            port = receiver.address[1]
            decoder = receiver.image_checker
            first_child = decoder.pid
            assert await http(port, headers=frame_headers(1), body=expensive_png()) == 503
            assert receiver.stats.rejects["decode_timeout"] == 1
            assert await http(port, headers=frame_headers(1), body=png()) == 201
            assert decoder.pid != first_child and decoder.children_started == 2

    asyncio.run(scenario())
    frames = read_jsonl(run_dir / FRAMES.path)
    assert [f["seq"] for f in frames[1:]] == [1]
    assert not list(run_dir.rglob("*.part"))


def test_a_full_decode_queue_refuses_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bomb = expensive_png(3000)

    async def scenario() -> None:
        async with receiving(run_dir, decode_queue_limit=2, decode_time_limit_s=60) as receiver:
            port = receiver.address[1]
            decoder = receiver.image_checker
            slow = [
                asyncio.ensure_future(http(port, headers=frame_headers(seq), body=bomb))
                for seq in (1, 2)
            ]
            await until(lambda: decoder.waiting == 2, timeout_s=DEADLINE_S, what="two decodes")
            assert await http(port, headers=frame_headers(3), body=png()) == 503
            assert receiver.stats.rejects["decode_busy"] == 1
            assert sorted(await asyncio.gather(*slow)) == [201, 201]

    asyncio.run(scenario())


def test_nothing_is_written_once_the_receiver_stopped(tmp_path: Path) -> None:
    """A frame still decoding when the probes stop is refused, and once run()
    returned no handler is alive and the decoder is gone: nothing can land
    after the manifest is final."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        receiver = GuestReceiver(run_dir, token=TOKEN, decode_time_limit_s=30)
        stop = asyncio.Event()
        async with asyncio.timeout(DEADLINE_S), asyncio.TaskGroup() as tasks:
            serving = tasks.create_task(receiver.run(stop))
            await receiver.ready.wait()
            upload = tasks.create_task(
                http(receiver.address[1], headers=frame_headers(7), body=expensive_png())
            )
            await receiver.wait_until(lambda stats: stats.uploads_in_progress == 1)
            stop.set()
            await serving
            assert receiver.stats.uploads_in_progress == 0
            assert receiver.image_checker.pid is None
            # Refused, or cut off while its body was still being read.
            assert await upload in (503, 0)

    asyncio.run(scenario())
    assert not list((run_dir / "frames").iterdir())
    totals = read_jsonl(run_dir / REJECTS.path)[-1]
    assert totals["totals"] and totals["frames_stored"] == 0


def test_an_out_of_range_heartbeat_seq_is_refused(tmp_path: Path) -> None:
    """The wire allows any u64; the record keeps signed 64-bit integers."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            host, port = receiver.address
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for seq in (2**63 - 1, 2**63, 2**64 - 1):
                    udp.sendto(
                        heartbeat_datagram(TOKEN.encode(), 1, seq, 1, 2, 10_000), (host, port)
                    )
                await receiver.wait_until(lambda stats: stats.heartbeats + stats.rejected == 3)
            assert receiver.stats.heartbeats == 1
            assert receiver.stats.rejects["bad_seq"] == 2

    asyncio.run(scenario())
    rows = (run_dir / HEARTBEAT.path).read_text().splitlines()[2:]
    assert [row.split(",")[1] for row in rows] == [str(2**63 - 1)]


def test_malformed_requests_are_one_line_rejects_not_tracebacks(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"POST /frames HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /frames HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /frames HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
    ] * 40

    async def send(raw: bytes, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            port = receiver.address[1]
            for raw in garbage:
                await send(raw, port)
            await receiver.wait_until(lambda stats: stats.rejected >= len(garbage) - 40)
            assert await http(port, headers=frame_headers(1), body=png()) == 201

    asyncio.run(scenario())
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and captured.err == ""
    rejects = read_jsonl(run_dir / REJECTS.path)
    logged = [r for r in rejects[1:-1] if r["reason"] == "malformed_request"]
    assert logged and all(len(json.dumps(r)) < 1000 for r in logged)
    assert rejects[-1]["by_reason"]["malformed_request"] >= len(logged)


def test_a_full_disk_is_a_refusal_and_the_same_seq_is_taken_later(
    tmp_path: Path, full_disk: Any
) -> None:
    run_dir = full_disk.path / "run"
    run_dir.mkdir()

    async def scenario() -> None:
        async with receiving(run_dir) as receiver:
            port = receiver.address[1]
            full_disk.fill()
            assert await http(port, headers=frame_headers(5), body=png(300, 200)) == 507
            assert receiver.stats.rejects["storage_full"] == 1
            assert not list((run_dir / "frames").iterdir())
            full_disk.free()
            assert await http(port, headers=frame_headers(5), body=png(300, 200)) == 201

    asyncio.run(scenario())
    frames = read_jsonl(run_dir / FRAMES.path)
    assert [f["seq"] for f in frames[1:]] == [5]
    assert sorted(p.name for p in (run_dir / "frames").iterdir()) == ["seq_000005.png"]

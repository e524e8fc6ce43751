"""ICMP on the wire (probes/icmp_wire.py): the requests as RFC 792 / 4443 lay them
out, and the answers a raw or ping socket delivers, byte for byte.

The packets here are built by hand from the RFCs' layouts, not with the
module's own helpers, so a wrong offset in the parser cannot agree with
itself. The prober's sockets are tested on the wire in test_icmp_probe.py.
"""

from __future__ import annotations

import socket
import struct

import pytest

from migration_blackout.probes.icmp_wire import (
    PAYLOAD_TAG,
    SEND_FIELDS,
    echo_checksum,
    echo_request,
    ones_sum,
    parse_ping_reply,
    parse_queued_error,
    parse_raw_v4,
    parse_raw_v6,
    raw_socket_filter,
)
from migration_blackout.runformat import ERROR, REPLY, UNREACHABLE

COOKIE = 0xC0FFEE11
IDENT = 0x1234


def _checksum(data: bytes) -> int:
    """RFC 1071, computed from scratch."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_header(source: str, destination: str, payload_len: int, protocol: int = 1) -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, 5 words
        0,
        20 + payload_len,
        0,
        0,
        64,
        protocol,
        0,
        socket.inet_aton(source),
        socket.inet_aton(destination),
    )


def _request(n: int, seq: int) -> bytes:
    """Our echo request for attempt ``n``: type 8, code 0, then the attempt tag."""
    body = struct.pack("!HHQI", IDENT, seq, n, COOKIE) + b"abcdefgh"
    header = struct.pack("!BBH", 8, 0, 0)
    checksum = _checksum(header + body)
    return struct.pack("!BBH", 8, 0, checksum) + body


@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 2**40 + 7, 2**63 - 1])
def test_the_incremental_checksum_is_the_checksum_of_the_whole_request(n: int) -> None:
    packet = echo_request(socket.AF_INET, IDENT, 56, COOKIE)
    base = ones_sum(bytes(packet))
    seq = n & 0xFFFF
    SEND_FIELDS.pack_into(packet, 2, echo_checksum(base, seq, n), IDENT, seq, n)
    assert _checksum(bytes(packet)) == 0  # a correct checksum sums to all ones
    assert packet[0] == 8 and len(packet) == 8 + 56
    assert PAYLOAD_TAG.unpack_from(packet, 8) == (n, COOKIE)


def test_a_raw_ipv4_echo_reply() -> None:
    reply = bytearray(_request(70000, 70000 & 0xFFFF))
    reply[0] = 0  # echo reply
    data = _ipv4_header("198.18.0.2", "198.18.0.1", len(reply)) + bytes(reply)
    answer = parse_raw_v4(data)
    assert answer is not None
    assert (answer.ident, answer.seq, answer.outcome) == (IDENT, 70000 & 0xFFFF, REPLY)
    assert (answer.icmp_type, answer.icmp_code, answer.quoted_to) == (0, 0, None)
    assert PAYLOAD_TAG.unpack_from(data, answer.payload_at) == (70000, COOKIE)


@pytest.mark.parametrize(("icmp_type", "outcome"), [(3, UNREACHABLE), (11, ERROR), (12, ERROR)])
def test_a_raw_ipv4_error_quoting_our_request(icmp_type: int, outcome: str) -> None:
    request = _request(5, 5)
    quoted = _ipv4_header("198.18.0.1", "198.18.0.2", len(request)) + request[:20]
    error = struct.pack("!BBHI", icmp_type, 1, 0, 0) + quoted
    data = _ipv4_header("198.18.0.254", "198.18.0.1", len(error)) + error
    answer = parse_raw_v4(data)
    assert answer is not None
    assert (answer.ident, answer.seq, answer.outcome) == (IDENT, 5, outcome)
    assert (answer.icmp_type, answer.icmp_code) == (icmp_type, 1)
    assert answer.quoted_to == "198.18.0.2"
    assert PAYLOAD_TAG.unpack_from(data, answer.payload_at) == (5, COOKIE)


def test_raw_ipv4_packets_that_are_not_about_an_echo_request() -> None:
    request = _request(1, 1)
    # Our own request, looped back on a raw socket.
    assert parse_raw_v4(_ipv4_header("127.0.0.1", "127.0.0.1", len(request)) + request) is None
    # An unreachable that quotes a UDP datagram, not an echo request.
    udp = _ipv4_header("198.18.0.1", "198.18.0.2", 8, protocol=17) + bytes(8)
    error = struct.pack("!BBHI", 3, 3, 0, 0) + udp
    assert parse_raw_v4(_ipv4_header("198.18.0.2", "198.18.0.1", len(error)) + error) is None
    # Cut short before the ICMP header ends.
    assert parse_raw_v4(_ipv4_header("198.18.0.2", "198.18.0.1", 4) + bytes(4)) is None


def test_a_raw_ipv6_reply_and_an_error_quoting_our_request() -> None:
    request = bytearray(_request(9, 9))
    request[0] = 128
    reply = bytearray(request)
    reply[0] = 129
    answer = parse_raw_v6(bytes(reply))
    assert answer is not None
    assert (answer.ident, answer.seq, answer.outcome, answer.payload_at) == (IDENT, 9, REPLY, 8)

    destination = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    ipv6 = struct.pack("!IHBB16s16s", 6 << 28, len(request), 58, 64, bytes(16), destination)
    error = struct.pack("!BBHI", 1, 3, 0, 0) + ipv6 + bytes(request)
    answer = parse_raw_v6(error)
    assert answer is not None
    assert (answer.ident, answer.seq, answer.outcome) == (IDENT, 9, UNREACHABLE)
    assert answer.quoted_to == "2001:db8::2"
    assert PAYLOAD_TAG.unpack_from(error, answer.payload_at) == (9, COOKIE)


def test_a_ping_socket_reply_and_anything_else() -> None:
    reply = bytearray(_request(3, 3))
    reply[0] = 0
    answer = parse_ping_reply(bytes(reply), socket.AF_INET)
    assert answer is not None and (answer.seq, answer.outcome) == (3, REPLY)
    assert parse_ping_reply(_request(3, 3), socket.AF_INET) is None  # a request
    assert parse_ping_reply(bytes(reply), socket.AF_INET6) is None  # 0 is no ICMPv6 reply


def test_a_queued_error_from_the_ping_sockets_error_queue() -> None:
    # struct sock_extended_err, then SO_EE_OFFENDER (a sockaddr_in).
    icmp_error = struct.pack("@IBBBBII", 0, 2, 3, 1, 0, 0, 0)  # origin ICMP, type 3 code 1
    offender = struct.pack("!HH4s8x", socket.AF_INET, 0, socket.inet_aton("198.18.0.254"))
    queued = parse_queued_error(icmp_error + offender, socket.AF_INET)
    assert (queued.local, queued.icmp_type, queued.icmp_code) == (False, 3, 1)
    assert queued.offender == "198.18.0.254"
    local = struct.pack("@IBBBBII", 90, 1, 0, 0, 0, 0, 0)  # EMSGSIZE, origin local
    queued = parse_queued_error(local, socket.AF_INET)
    assert (queued.local, queued.errno, queued.offender) == (True, 90, None)


def test_the_raw_socket_filters_pass_replies_and_errors_only() -> None:
    (blocked,) = struct.unpack("@I", raw_socket_filter(socket.AF_INET))
    passed = {t for t in range(32) if not blocked >> t & 1}
    assert passed == {0, 3, 11, 12}
    words = struct.unpack("@8I", raw_socket_filter(socket.AF_INET6))
    passed6 = {t for t in range(256) if not words[t >> 5] >> (t & 31) & 1}
    assert passed6 == {1, 2, 3, 4, 129}

"""ICMP echo on the wire: the requests the prober sends and the answers it reads.

Bytes in, named values out; no sockets, no state. ``probes.icmp`` owns the
sockets and the attempt table and asks this module what a packet says.

* **Requests** (``echo_request``): the ICMP header (type, code, checksum,
  identifier, sequence) and a payload that starts with the 64-bit attempt
  number ``n`` and a 32-bit per-run cookie (``PAYLOAD_TAG``), so an answer is
  matched to its attempt even after the 16-bit sequence wrapped, and other
  processes' pings are never taken for ours. Only the sequence and ``n``
  change from one request to the next: ``echo_checksum`` updates the RFC 1071
  sum incrementally from the sum of the rest (``ones_sum``).
* **Answers on a raw socket** (``parse_raw_v4`` / ``parse_raw_v6``): an echo
  reply, or an ICMP error (destination unreachable, time exceeded, parameter
  problem, packet too big) that quotes the echo request it is about; an IPv4
  raw socket delivers the IP header too, an IPv6 one does not.
* **Answers on a ping socket** (``parse_ping_reply``): the kernel delivers
  echo replies from the ICMP header on and rewrites the identifier; errors
  come through the socket's error queue as ``sock_extended_err``
  (``parse_queued_error``).
* **Stamps**: the kernel's receive time from ``SO_TIMESTAMPNS`` ancillary data
  (``kernel_stamp_ns``).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import icmplib
from icmplib.exceptions import ICMPError

from migration_blackout.runformat import ERROR, REPLY, UNREACHABLE

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
# ICMP errors that quote an echo request and mean it did not get through.
ERRORS_V4 = {3: UNREACHABLE, 11: ERROR, 12: ERROR}
ERRORS_V6 = {1: UNREACHABLE, 2: ERROR, 3: ERROR, 4: ERROR}

# Linux constants the socket module does not export.
SO_TIMESTAMPNS = 35  # == SCM_TIMESTAMPNS (asm-generic; differs on parisc/sparc)
SO_EE_ORIGIN_LOCAL = 1  # sock_extended_err.ee_origin of a local error

MIN_PAYLOAD = 12  # 8 bytes attempt number + 4 bytes run cookie

HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
SEND_FIELDS = struct.Struct("!HHHQ")  # checksum, identifier, sequence, attempt n (offset 2)
ID_SEQ = struct.Struct("!HH")
REPLY_FIELDS = struct.Struct("!HHQI")  # identifier, sequence, attempt n, run cookie
PAYLOAD_TAG = struct.Struct("!QI")  # attempt n, run cookie
TIMESPEC = struct.Struct("@ll")
EXTENDED_ERR = struct.Struct("@IBBBBII")  # struct sock_extended_err

_IPV4_HEADER_BYTES = 20
_IPV6_HEADER_BYTES = 40
_ICMP_HEADER_BYTES = 8


def ones_sum(data: bytes) -> int:
    """The folded 16-bit one's-complement sum of ``data`` (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def echo_request(family: int, ident: int, size: int, cookie: int) -> bytearray:
    """An echo request with ``size`` payload bytes, sequence 0 and attempt 0, checksum 0.

    ``SEND_FIELDS.pack_into(packet, 2, checksum, ident, seq, n)`` makes it attempt ``n``.
    """
    header = HEADER.pack(ECHO_REQUEST[family], 0, 0, ident, 0)
    filler = bytes((0x20 + i % 64) for i in range(size - MIN_PAYLOAD))
    return bytearray(header + PAYLOAD_TAG.pack(0, cookie) + filler)


def echo_checksum(base_sum: int, seq: int, n: int) -> int:
    """The checksum of attempt ``n`` (sequence ``seq``), from ``base_sum``: the
    ``ones_sum`` of the request with sequence and attempt number zero."""
    total = base_sum + seq + (n >> 48) + ((n >> 32) & 0xFFFF) + ((n >> 16) & 0xFFFF) + (n & 0xFFFF)
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


@dataclass(frozen=True, slots=True)
class Answer:
    """What a packet says about one of our echo requests.

    ``payload_at``: offset in the packet of the request's payload (ours starts
    with ``PAYLOAD_TAG``; an error may quote it cut short). ``quoted_to``: for
    an ICMP error, the address the quoted request was sent to (None for a
    reply, or where the error does not carry it).
    """

    ident: int
    seq: int
    payload_at: int
    outcome: str  # REPLY, UNREACHABLE or ERROR
    icmp_type: int
    icmp_code: int
    quoted_to: str | None = None


def parse_raw_v4(data: bytes) -> Answer | None:
    """An IPv4 packet from a raw ICMP socket (IP header first), or None if it is
    not an echo reply nor an error about an echo request."""
    ihl = (data[0] & 0x0F) << 2
    if len(data) < ihl + _ICMP_HEADER_BYTES:
        return None
    icmp_type, icmp_code = data[ihl], data[ihl + 1]
    if icmp_type == ECHO_REPLY[socket.AF_INET]:
        ident, seq = ID_SEQ.unpack_from(data, ihl + 4)
        return Answer(ident, seq, ihl + _ICMP_HEADER_BYTES, REPLY, icmp_type, icmp_code)
    outcome = ERRORS_V4.get(icmp_type)
    inner = ihl + _ICMP_HEADER_BYTES  # the quoted IP header
    if (
        outcome is None
        or len(data) < inner + _IPV4_HEADER_BYTES
        or data[inner + 9] != socket.IPPROTO_ICMP
    ):
        return None
    quoted = inner + ((data[inner] & 0x0F) << 2)  # the quoted ICMP header
    if len(data) < quoted + _ICMP_HEADER_BYTES or data[quoted] != ECHO_REQUEST[socket.AF_INET]:
        return None
    ident, seq = ID_SEQ.unpack_from(data, quoted + 4)
    destination = socket.inet_ntop(socket.AF_INET, data[inner + 16 : inner + 20])
    return Answer(
        ident, seq, quoted + _ICMP_HEADER_BYTES, outcome, icmp_type, icmp_code, destination
    )


def parse_raw_v6(data: bytes) -> Answer | None:
    """An ICMPv6 message from a raw socket (no IP header), or None as for ``parse_raw_v4``."""
    if len(data) < _ICMP_HEADER_BYTES:
        return None
    icmp_type, icmp_code = data[0], data[1]
    if icmp_type == ECHO_REPLY[socket.AF_INET6]:
        ident, seq = ID_SEQ.unpack_from(data, 4)
        return Answer(ident, seq, _ICMP_HEADER_BYTES, REPLY, icmp_type, icmp_code)
    outcome = ERRORS_V6.get(icmp_type)
    # Quoted packet: the IPv6 header (next header 58) then our request.
    inner = _ICMP_HEADER_BYTES
    quoted = inner + _IPV6_HEADER_BYTES
    if (
        outcome is None
        or len(data) < quoted + _ICMP_HEADER_BYTES
        or data[inner + 6] != socket.IPPROTO_ICMPV6
        or data[quoted] != ECHO_REQUEST[socket.AF_INET6]
    ):
        return None
    ident, seq = ID_SEQ.unpack_from(data, quoted + 4)
    destination = socket.inet_ntop(socket.AF_INET6, data[inner + 24 : inner + 40])
    return Answer(
        ident, seq, quoted + _ICMP_HEADER_BYTES, outcome, icmp_type, icmp_code, destination
    )


def parse_ping_reply(data: bytes, family: int) -> Answer | None:
    """An echo reply from an unprivileged ping socket (ICMP header first; the
    identifier is the kernel's), or None for anything else."""
    if len(data) < _ICMP_HEADER_BYTES or data[0] != ECHO_REPLY[family]:
        return None
    ident, seq = ID_SEQ.unpack_from(data, 4)
    return Answer(ident, seq, _ICMP_HEADER_BYTES, REPLY, data[0], data[1])


def kernel_stamp_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive stamp (``SO_TIMESTAMPNS``, CLOCK_REALTIME ns), None without one."""
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = TIMESPEC.unpack_from(value)
            return int(seconds * 1_000_000_000 + nanoseconds)
    return None


@dataclass(frozen=True, slots=True)
class QueuedError:
    """A ``sock_extended_err`` from a ping socket's error queue (``IP_RECVERR``).

    ``local``: the kernel refused or failed the send itself (``errno``), else
    an ICMP error (``icmp_type``, ``icmp_code``) came from ``offender``.
    """

    errno: int
    local: bool
    icmp_type: int
    icmp_code: int
    offender: str | None


def parse_queued_error(extended: bytes, family: int) -> QueuedError:
    err_no, origin, icmp_type, code, _pad, _info, _data = EXTENDED_ERR.unpack_from(extended)
    return QueuedError(
        err_no, origin == SO_EE_ORIGIN_LOCAL, icmp_type, code, _offender(extended, family)
    )


def _offender(extended: bytes, family: int) -> str | None:
    """The address that sent the ICMP error (SO_EE_OFFENDER, after the struct)."""
    raw = extended[EXTENDED_ERR.size :]
    try:
        if family == socket.AF_INET and len(raw) >= 8:
            return socket.inet_ntop(socket.AF_INET, raw[4:8])
        if family == socket.AF_INET6 and len(raw) >= 24:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    except ValueError:
        return None
    return None


def raw_socket_filter(family: int) -> bytes:
    """The kernel filter for a raw socket (``ICMP_FILTER`` / ``ICMP6_FILTER``):
    echo replies and the errors above pass, every other ICMP type is dropped."""
    if family == socket.AF_INET6:
        # struct icmp6_filter: a set bit blocks that type.
        words = [0xFFFFFFFF] * 8
        for icmp_type in (ECHO_REPLY[socket.AF_INET6], *ERRORS_V6):
            words[icmp_type >> 5] &= ~(1 << (icmp_type & 31)) & 0xFFFFFFFF
        return struct.pack("@8I", *words)
    allowed = (1 << ECHO_REPLY[socket.AF_INET]) | sum(1 << t for t in ERRORS_V4)
    return struct.pack("@I", ~allowed & 0xFFFFFFFF)


_ERROR_TEXT: dict[tuple[int, int, int], str] = {}


def icmp_error_text(family: int, icmp_type: int, code: int) -> str:
    """icmplib's text for an ICMP error type/code (cached)."""
    key = (family, icmp_type, code)
    text = _ERROR_TEXT.get(key)
    if text is None:
        reply = icmplib.ICMPReply(
            None, 6 if family == socket.AF_INET6 else 4, 0, 0, icmp_type, code, 0, 0.0
        )
        try:
            reply.raise_for_status()
            text = f"ICMP type {icmp_type} code {code}"
        except ICMPError as exc:
            text = str(exc)
        _ERROR_TEXT[key] = text
    return text

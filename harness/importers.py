"""Ping logs written by other tools, turned into ICMP probe records (run format v1).

Pure functions: bytes or text lines in, frozen records out; nothing here reads
files, the clock or the environment (``harness.commands.import_ping_log``
does that and writes the run folder). docs/importers.md shows a sample of
every format and explains each decision; the short version:

``windows``
    Windows ``ping -n 1 <host>`` output captured by a PowerShell loop that
    prefixes each line (or the whole joined output of one ping) with a
    timestamp. The stamp is taken as the **send time** of that ping. English
    and Japanese messages. Local time: the caller passes the zone.
``iputils``
    Linux ``ping -D`` (optionally ``-O``). The ``[epoch]`` stamp of a reply is
    when ping printed it, so send = stamp - rtt. Missing ``icmp_seq`` numbers
    between logged ones are timeouts (ping prints nothing for them without
    ``-O``); ``icmp_seq`` wraps at 65536 and is unwrapped.
``fping``
    ``fping -D -l [-p ms]``. A reply's stamp is its receive time (send =
    stamp - rtt); a "timed out" stamp is when fping gave up, so its send time
    is interpolated from the replies around it by attempt index. fping's
    "ICMP Host Unreachable from R for ICMP Echo sent to T" warnings carry no
    stamp and no index: each is attached to one of T's timed-out attempts.

Attempts whose send time is not in the log (timeouts, ICMP errors, implicit
gaps) get it by linear interpolation by attempt index between the nearest
replies before and after (whose send times are known), or by extrapolation
with the median interval from the nearest one. No log has a monotonic clock:
``send_mono_ns``/``recv_mono_ns`` stay empty and the analysis orders attempts
by ``send_utc_ns``.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import re
import statistics
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from migration_blackout.runformat import (
    DUPLICATE,
    ERROR,
    LATE,
    REPLY,
    TIMEOUT,
    UNREACHABLE,
    UNRESOLVED,
)

FORMATS = ("windows", "iputils", "fping")

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
_SEQ_MOD = 1 << 16

#: How many unrecognised lines the manifest quotes (all are counted).
UNRECOGNISED_QUOTED = 5
_QUOTE_CHARS = 160


class ImportFormatError(ValueError):
    """A ping log cannot be imported: unreadable, empty, or not in the given format.

    Messages are one line and say what to do. Subclasses tell a missing file
    and a bad option from bad content.
    """


class PingLogFileError(ImportFormatError):
    """The ping log file does not exist, is a folder, or cannot be read."""


class ImportOptionError(ImportFormatError):
    """An import option (time zone, date, interval, format) is invalid."""


# -- records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingRecord:
    """One row of ``raw/icmp.csv`` (an attempt, or a duplicate/late extra row).

    Stamps are UTC nanoseconds since the Unix epoch. ``send_estimated``: the
    log does not give this attempt's send time, it was interpolated between
    the replies around it (module docstring); ``line`` is the 1-based log line
    the row came from (None for an implicit timeout).
    """

    target: str
    n: int
    seq: int
    outcome: str
    send_utc_ns: int
    recv_utc_ns: int | None
    rtt_ns: int | None
    icmp_type: int | None
    icmp_code: int | None
    from_addr: str | None
    detail: str | None
    send_estimated: bool
    line: int | None

    def csv_row(self) -> tuple[object, ...]:
        """The row in ``runformat.ICMP.columns`` order (None = empty field)."""
        return (
            self.target,
            self.n,
            self.seq,
            None,  # ident: no log shows it
            self.outcome,
            None,  # send_mono_ns: a log has no monotonic clock
            self.send_utc_ns,
            None,  # recv_mono_ns
            self.recv_utc_ns,
            self.rtt_ns,
            self.icmp_type,
            self.icmp_code,
            self.from_addr,
            self.detail,
        )


@dataclass(frozen=True)
class LogLine:
    """A line of the log that produced no record, with why."""

    line: int  # 1-based
    text: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"line": self.line, "text": _quote(self.text), "reason": self.reason}


class Records(Sequence[PingRecord]):
    """The records of an import, made as they are read: iterating streams them
    from the parsed attempts (memory does not grow with the rows), indexing
    or ``len`` builds the tuple once (for small logs and tests)."""

    def __init__(self, make: Callable[[], Iterator[PingRecord]]) -> None:
        self._make = make
        self._built: tuple[PingRecord, ...] | None = None

    def __iter__(self) -> Iterator[PingRecord]:
        return iter(self._built) if self._built is not None else self._make()

    def _tuple(self) -> tuple[PingRecord, ...]:
        if self._built is None:
            self._built = tuple(self._make())
        return self._built

    def __len__(self) -> int:
        return len(self._tuple())

    @overload
    def __getitem__(self, index: int) -> PingRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[PingRecord]: ...

    def __getitem__(self, index: int | slice) -> PingRecord | Sequence[PingRecord]:
        return self._tuple()[index]


@dataclass(frozen=True)
class PingLogImport:
    """What a ping log holds, ready to be written as ``raw/icmp.csv``.

    ``records`` are sorted by target, then ``n``; an attempt's own row comes
    before its duplicate/late rows. ``line_kinds`` counts every line of the
    log by kind (``result``, ``icmp_error``, ``banner``, ``blank``, ``notice``,
    ``unrecognised``), so the counts add up to ``line_count``.
    """

    format: str
    encoding: str
    records: Sequence[PingRecord]  # a Records: streamed when iterated
    targets: tuple[str, ...]
    interval_s: float | None
    interval_source: str
    line_count: int
    line_kinds: Mapping[str, int]
    unrecognised: tuple[LogLine, ...]
    local_time_used: bool
    date_source: str | None
    send_times: str
    notes: tuple[str, ...] = ()
    unmatched_icmp_errors: tuple[LogLine, ...] = ()

    def outcome_counts(self) -> dict[str, int]:
        counts = Counter(record.outcome for record in self.records)
        return {outcome: counts[outcome] for outcome in sorted(counts)}

    @property
    def attempts(self) -> int:
        return sum(1 for r in self.records if r.outcome not in (DUPLICATE, LATE))


# -- decoding ------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedLog:
    lines: Sequence[str]
    encoding: str


_LINE_BREAK = re.compile(r"\r*\n|\r")
# A ping log's lines are short (a Windows loop's joined output of one ping is
# a few hundred characters): one longer than this is not a ping log, and
# reading it whole (/dev/zero for one) would never end.
MAX_LINE_CHARS = 4096
_SNIFF_CHARS = 256  # enough of a line to tell the formats apart
_WIN_MAX_LINE_CHARS = 1024  # a stamp and the joined output of one ping fit in a few hundred
_DETECT_BYTES = 4096


def split_lines(text: str) -> list[str]:
    """Lines without their ends; CRLF, LF, CR and the CR CR LF of some Windows pipes."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def decode_log(data: bytes) -> DecodedLog:
    """Detect the encoding and split into lines (a log held in memory; a file
    is read in pieces by :class:`LogLines`)."""
    lines = LogLines(lambda: iter((data,)))
    return DecodedLog(tuple(lines), lines.encoding)


def _too_long(number: int) -> ImportFormatError:
    return ImportFormatError(
        f"line {number} is longer than {MAX_LINE_CHARS} characters: this is not a ping log"
    )


class LogLines(Sequence[str]):
    """The lines of a log read in pieces from ``chunks()`` (called again for
    each pass; the caller's file is never held whole).

    The encoding is detected once, over the whole log, before the first line
    is given out: a BOM decides (UTF-8, UTF-16 LE as Windows PowerShell 5's
    ``>`` writes, UTF-16 BE); without one, NUL bytes in every other position
    mean UTF-16 without a BOM; NUL bytes otherwise mean it is no text log;
    else strict UTF-8, then cp932 (Shift_JIS as Japanese Windows' console and
    ``Out-File -Encoding default`` write it). A line longer than
    ``MAX_LINE_CHARS`` ends the import: no ping log has one.
    """

    def __init__(self, chunks: Callable[[], Iterable[bytes]]) -> None:
        self._chunks = chunks
        self.codec, self.encoding = self._detect()
        self.line_count = 0
        for number, _ in enumerate(self._iterate(), 1):  # the whole log decodes, or it fails
            self.line_count = number

    def _detect(self) -> tuple[str, str]:
        head = b""
        for chunk in self._chunks():
            head += chunk
            if len(head) >= _DETECT_BYTES:
                break
        if not head:
            raise ImportFormatError("the file is empty (0 bytes)")
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig", "utf-8 (BOM)"
        if head.startswith(codecs.BOM_UTF16_LE):
            return "utf-16", "utf-16-le (BOM)"
        if head.startswith(codecs.BOM_UTF16_BE):
            return "utf-16", "utf-16-be (BOM)"
        sample = head[:_DETECT_BYTES]
        if len(sample) >= 4:
            odd_nuls = sample[1::2].count(0)
            even_nuls = sample[0::2].count(0)
            half = len(sample) // 2
            # ASCII text in UTF-16 has a NUL in every other byte; CJK text has few.
            if odd_nuls > 0.3 * half and odd_nuls > 4 * even_nuls:
                return "utf-16-le", "utf-16-le (no BOM)"
            if even_nuls > 0.3 * half and even_nuls > 4 * odd_nuls:
                return "utf-16-be", "utf-16-be (no BOM)"
        if 0 in sample:
            raise ImportFormatError("the file is not a text log: it holds NUL bytes")
        try:
            for _ in self._iterate("utf-8"):
                pass
        except UnicodeDecodeError as utf8_error:
            try:
                for _ in self._iterate("cp932"):
                    pass
            except UnicodeDecodeError:
                raise ImportFormatError(
                    f"cannot decode the file: not UTF-8 ({utf8_error.reason}), "
                    "not UTF-16 with a BOM and not cp932 (Shift_JIS); convert it to UTF-8"
                ) from None
            return "cp932", "cp932"
        return "utf-8", "utf-8"

    def _iterate(self, codec: str | None = None) -> Iterator[str]:
        name = codec or self.codec
        decoder = codecs.getincrementaldecoder(name)("strict")
        carry = ""
        number = 0
        first = True
        chunks = iter(self._chunks())
        while True:
            chunk = next(chunks, None)
            try:
                text = carry + decoder.decode(
                    chunk if chunk is not None else b"", final=chunk is None
                )
            except UnicodeDecodeError as error:
                if codec is not None:
                    raise
                raise ImportFormatError(
                    f"the file starts like {self.encoding} but is not valid {self.encoding} "
                    f"after line {number}"
                ) from error
            if first and text:
                text = text.lstrip("\ufeff")
                first = False
            pieces = _LINE_BREAK.split(text)
            carry = pieces.pop()
            if chunk is not None and carry == "" and text.endswith("\r") and pieces:
                carry = pieces.pop() + "\r"  # a CR whose LF is in the next piece
            for line in pieces:
                number += 1
                if len(line) > MAX_LINE_CHARS:
                    raise _too_long(number)
                yield line
            if len(carry) > MAX_LINE_CHARS:
                raise _too_long(number + 1)
            if chunk is None:
                break
        if carry:
            yield carry

    def __iter__(self) -> Iterator[str]:
        return self._iterate()

    def __len__(self) -> int:
        return self.line_count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return tuple(self)[index]  # not for large logs: iterate them


# -- options -------------------------------------------------------------------------

_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*(?P<sign>[+-])(?P<h>\d{1,2})(?::?(?P<m>\d{2}))?$", re.I)


def parse_timezone(text: str) -> tuple[tzinfo, str]:
    """A zone and its canonical name from ``+09:00``, ``+0900``, ``UTC`` or ``Asia/Tokyo``."""
    value = text.strip()
    if value.upper() in ("Z", "UTC", "GMT", "UTC+00:00"):
        return UTC, "+00:00"
    match = _OFFSET.match(value)
    if match:
        hours, minutes = int(match["h"]), int(match["m"] or 0)
        if hours > 14 or minutes > 59:
            raise ImportOptionError(
                f"time zone {text!r} is not a UTC offset between -14:00 and +14:00"
            )
        delta = timedelta(hours=hours, minutes=minutes)
        if match["sign"] == "-":
            delta = -delta
        name = f"{match['sign']}{hours:02d}:{minutes:02d}"
        return timezone(delta), name
    try:
        return ZoneInfo(value), value
    except (ZoneInfoNotFoundError, ValueError):
        raise ImportOptionError(
            f"time zone {text!r} is neither a UTC offset like +09:00 nor a zone name "
            "like Asia/Tokyo"
        ) from None


def parse_date(text: str) -> date:
    """``YYYY-MM-DD`` (or ``YYYY/MM/DD``) for logs that stamp only the time of day."""
    try:
        return date.fromisoformat(text.strip().replace("/", "-"))
    except ValueError:
        raise ImportOptionError(f"date {text!r} is not a date like 2016-01-23") from None


def utc_offset_name(zone: tzinfo, utc_ns: int) -> str:
    """``+09:00``: the zone's UTC offset at that instant."""
    moment = datetime.fromtimestamp(utc_ns // NS_PER_S, tz=UTC).astimezone(zone)
    offset = moment.utcoffset() or timedelta(0)
    minutes = offset // timedelta(minutes=1)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# -- shared helpers ------------------------------------------------------------------


def _quote(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def _ms_to_ns(text: str) -> int:
    """``"0.321"`` ms -> 321000 ns, exactly (no float)."""
    try:
        return int(Decimal(text) * NS_PER_MS)
    except InvalidOperation:
        raise ValueError(f"not a number of milliseconds: {text!r}") from None


# A stamp must fit the record's signed 64-bit nanoseconds (until the year 2262).
_MAX_STAMP_NS = 2**63 - 1


def _epoch_to_ns(seconds: str, fraction: str) -> int:
    stamp = int(seconds) * NS_PER_S + int((fraction + "000000000")[:9])
    if stamp > _MAX_STAMP_NS:
        raise ValueError(f"timestamp {seconds} s is out of range")
    return stamp


def _local_to_utc_ns(day: date, time_of_day_ns: int, zone: tzinfo) -> int:
    """Wall-clock ``day`` + ``time_of_day_ns`` in ``zone`` -> UTC ns (fold=0 in a DST overlap)."""
    seconds, fraction = divmod(time_of_day_ns, NS_PER_S)
    naive = datetime(day.year, day.month, day.day) + timedelta(seconds=seconds)
    offset = naive.replace(tzinfo=zone).utcoffset() or timedelta(0)
    epoch_s = (naive - datetime(1970, 1, 1)) // timedelta(seconds=1)
    return (epoch_s - offset // timedelta(seconds=1)) * NS_PER_S + fraction


class _Anchors:
    """``(attempt number, send time)`` of the attempts whose send time the log
    gives, sorted by number, in two arrays (16 bytes each: a log of millions
    of replies holds millions of these)."""

    def __init__(self, pairs: Iterable[tuple[int, int]] = (), *, in_order: bool = False) -> None:
        """``in_order``: the pairs come sorted already (not held to be sorted)."""
        self.ns = array("q")
        self.sends = array("q")
        for n, send in pairs if in_order else sorted(pairs):
            self.ns.append(n)
            self.sends.append(send)

    def __len__(self) -> int:
        return len(self.ns)

    def __bool__(self) -> bool:
        return len(self.ns) > 0

    def first_send(self) -> int:
        return self.sends[0]


def _median_interval_ns(anchors: _Anchors) -> int | None:
    """Median send spacing per attempt of the anchors (sorted by n)."""
    ns, sends = anchors.ns, anchors.sends
    spacings = array(
        "d",
        (
            (sends[i + 1] - sends[i]) / (ns[i + 1] - ns[i])
            for i in range(len(ns) - 1)
            if ns[i + 1] > ns[i]
        ),
    )
    if not spacings:
        return None
    return round(statistics.median(spacings))


def _interpolate(n: int, anchors: _Anchors, interval_ns: int) -> int:
    """Send time of attempt ``n`` from the anchors (sorted by n) around it."""
    ns, sends = anchors.ns, anchors.sends
    lo = bisect.bisect_left(ns, n)  # first anchor with index >= n
    if lo < len(ns) and ns[lo] == n:
        return sends[lo]
    if 0 < lo < len(ns):
        a_n, a_send, b_n, b_send = ns[lo - 1], sends[lo - 1], ns[lo], sends[lo]
        return a_send + (b_send - a_send) * (n - a_n) // (b_n - a_n)
    if lo > 0:
        return sends[lo - 1] + (n - ns[lo - 1]) * interval_ns
    if lo < len(ns):
        return sends[lo] - (ns[lo] - n) * interval_ns
    raise ImportFormatError("no line gives a time to place the attempts on")


@dataclass(slots=True)
class _Draft:
    """An attempt while its log is read; frozen into a PingRecord at the end.
    (Slots: a large log holds millions of these.)"""

    n: int
    outcome: str
    line: int | None
    send_ns: int | None = None  # known from the log (reply: stamp - rtt)
    fallback_send_ns: int | None = None  # rough guess from its own stamp, if nothing better
    recv_ns: int | None = None
    rtt_ns: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    from_addr: str | None = None
    detail: str | None = None
    extras: list[_Draft] | None = None  # duplicate / late answers, made when there is one
    annotated: bool = False

    def add_extra(self, extra: _Draft) -> None:
        if self.extras is None:
            self.extras = []
        self.extras.append(extra)


class _DraftTable(MutableMapping[int, _Draft]):
    """The attempts of one target, by attempt number: a dict of drafts for
    everything but plain replies, which are kept in arrays (about 45 bytes
    each instead of a few hundred). A plain reply read back for a change
    (``[n]``, ``get``) becomes a draft of its own; reading them all in order
    (``items()``) hands out short-lived drafts. Replies go to the arrays only
    in increasing attempt order (the usual one); any other goes to the dict.
    """

    _NONE = -(2**63)  # an absent stamp in the arrays

    def __init__(self) -> None:
        self._drafts: dict[int, _Draft] = {}
        self._ns = array("q")
        self._sends = array("q")
        self._recvs = array("q")
        self._rtts = array("q")
        self._lines = array("q")
        self._froms = array("l")
        self._gone = bytearray()  # 1: the row became a draft of its own
        self._addresses: list[str | None] = []
        self._address_index: dict[str | None, int] = {}
        self._rows = 0  # rows not gone

    @staticmethod
    def _plain(draft: _Draft) -> bool:
        return (
            draft.outcome == REPLY
            and draft.extras is None
            and draft.detail is None
            and not draft.annotated
            and draft.fallback_send_ns is None
            and draft.icmp_type == 0
            and draft.icmp_code == 0
            and draft.line is not None
        )

    def _row(self, n: int) -> int | None:
        i = bisect.bisect_left(self._ns, n)
        if i < len(self._ns) and self._ns[i] == n and not self._gone[i]:
            return i
        return None

    def _draft_of(self, i: int) -> _Draft:
        none = self._NONE
        send, recv, rtt = self._sends[i], self._recvs[i], self._rtts[i]
        return _Draft(
            n=self._ns[i],
            outcome=REPLY,
            line=self._lines[i],
            send_ns=None if send == none else send,
            recv_ns=None if recv == none else recv,
            rtt_ns=None if rtt == none else rtt,
            icmp_type=0,
            icmp_code=0,
            from_addr=self._addresses[self._froms[i]],
        )

    def __setitem__(self, n: int, draft: _Draft) -> None:
        # A plain reply after every row (n above the last: not a row already) is a row.
        in_order = not self._ns or n > self._ns[-1]
        if in_order and n not in self._drafts and self._plain(draft):
            none = self._NONE
            index = self._address_index.get(draft.from_addr)
            if index is None:
                index = self._address_index[draft.from_addr] = len(self._addresses)
                self._addresses.append(draft.from_addr)
            self._ns.append(n)
            self._sends.append(none if draft.send_ns is None else draft.send_ns)
            self._recvs.append(none if draft.recv_ns is None else draft.recv_ns)
            self._rtts.append(none if draft.rtt_ns is None else draft.rtt_ns)
            self._lines.append(draft.line if draft.line is not None else 0)
            self._froms.append(index)
            self._gone.append(0)
            self._rows += 1
            return
        i = self._row(n)
        if i is not None:
            self._gone[i] = 1
            self._rows -= 1
        self._drafts[n] = draft

    def __getitem__(self, n: int) -> _Draft:
        draft = self._drafts.get(n)
        if draft is not None:
            return draft
        i = self._row(n)
        if i is None:
            raise KeyError(n)
        draft = self._draft_of(i)  # to be changed: a draft of its own from now on
        self._gone[i] = 1
        self._rows -= 1
        self._drafts[n] = draft
        return draft

    def __delitem__(self, n: int) -> None:
        if n in self._drafts:
            del self._drafts[n]
            return
        i = self._row(n)
        if i is None:
            raise KeyError(n)
        self._gone[i] = 1
        self._rows -= 1

    def __contains__(self, n: object) -> bool:
        return n in self._drafts or (isinstance(n, int) and self._row(n) is not None)

    def __len__(self) -> int:
        return len(self._drafts) + self._rows

    def __iter__(self) -> Iterator[int]:
        for i, n in enumerate(self._ns):
            if not self._gone[i]:
                yield n
        yield from self._drafts

    def items_in_order(self) -> Iterator[tuple[int, _Draft]]:
        """Every attempt by increasing number, without turning rows into drafts."""
        rows = ((n, i) for i, n in enumerate(self._ns) if not self._gone[i])
        others = iter(sorted(self._drafts))
        row = next(rows, None)
        other = next(others, None)
        while row is not None or other is not None:
            if other is None or (row is not None and row[0] < other):
                assert row is not None
                yield row[0], self._draft_of(row[1])
                row = next(rows, None)
            else:
                yield other, self._drafts[other]
                other = next(others, None)

    def drafts_in_order(self) -> Iterator[tuple[int, _Draft]]:
        """The attempts held as drafts (everything but plain replies), by number."""
        for n in sorted(self._drafts):
            yield n, self._drafts[n]

    def values(self) -> Iterator[_Draft]:  # type: ignore[override]
        """Read-only: rows are handed out as copies (change one through ``[n]``)."""
        return (draft for _, draft in self.items_in_order())

    def items(self) -> Iterator[tuple[int, _Draft]]:  # type: ignore[override]
        """Read-only, by number: rows are handed out as copies."""
        return self.items_in_order()

    def anchors(self) -> _Anchors:
        """The attempts whose send time the log gives, as :class:`_Anchors`."""
        return _Anchors(
            ((n, d.send_ns) for n, d in self.items_in_order() if d.send_ns is not None),
            in_order=True,
        )


def _in_order(drafts: Mapping[int, _Draft]) -> Iterator[tuple[int, _Draft]]:
    """Every attempt by number (rows of a :class:`_DraftTable` as read-only copies)."""
    if isinstance(drafts, _DraftTable):
        return drafts.items_in_order()
    return iter(sorted(drafts.items()))


def _drafts_in_order(drafts: Mapping[int, _Draft]) -> Iterator[tuple[int, _Draft]]:
    """The attempts that are not plain replies (every one of a plain dict), by number."""
    if isinstance(drafts, _DraftTable):
        return drafts.drafts_in_order()
    return iter(sorted(drafts.items()))


@dataclass(frozen=True)
class _Annotation:
    """An ICMP error or send failure that names no attempt (fping warnings, ping: sendmsg)."""

    target: str
    after_n: int | None  # the highest attempt index of the target logged before it
    outcome: str
    icmp_type: int | None
    icmp_code: int | None
    from_addr: str | None
    line: LogLine


def _attach_annotations(
    drafts: Mapping[str, MutableMapping[int, _Draft]],
    annotations: Sequence[_Annotation],
    *,
    implicit: Mapping[str, range] | None = None,
) -> list[LogLine]:
    """Mark timed-out attempts with the ICMP errors that answered them.

    Each error goes to the first not yet marked timeout of its target after
    the last attempt logged before the error's line (an error that comes back
    within the timeout is printed before its attempt's "timed out"); if there
    is none, to the latest unmarked timeout before it. Attempts in
    ``implicit[target]`` without a draft are timeouts too (made here when an
    error is attached to one). Returns the errors no timeout was left for.
    """
    unmatched = []
    for note in annotations:
        attempts: MutableMapping[int, _Draft] = drafts.get(note.target, {})
        numbers = (implicit or {}).get(note.target, range(0))
        free = [
            n for n, d in _drafts_in_order(attempts) if d.outcome == TIMEOUT and not d.annotated
        ]
        after = note.after_n if note.after_n is not None else -1
        later = [n for n in free if n > after][:1] + _first_without(numbers, attempts, after + 1, 1)
        earlier = [n for n in free if n <= after][-1:] + _first_without(
            numbers, attempts, after, -1
        )
        if later:
            chosen = min(later)
        elif earlier:
            chosen = max(earlier)
        else:
            unmatched.append(note.line)
            continue
        draft = attempts.get(chosen)
        if draft is None:
            draft = attempts[chosen] = _Draft(n=chosen, outcome=TIMEOUT, line=None)
        draft.outcome = note.outcome
        draft.icmp_type = note.icmp_type
        draft.icmp_code = note.icmp_code
        draft.from_addr = note.from_addr
        draft.detail = f"{_quote(note.line.text)} (line {note.line.line}, attached to this timeout)"
        draft.annotated = True
    return unmatched


def _first_without(numbers: range, taken: Mapping[int, _Draft], start: int, step: int) -> list[int]:
    """The first number of ``numbers`` from ``start`` (going ``step``) with no draft."""
    n = start
    while numbers and numbers.start <= n < numbers.stop:
        if n not in taken:
            return [n]
        n += step
    return []


def _freeze(
    target: str,
    drafts: Mapping[int, _Draft],
    anchors: _Anchors,
    interval_ns: int,
    *,
    offset: int = 0,
    implicit: range | None = None,
) -> Iterator[PingRecord]:
    """PingRecords of one target in attempt order, sends filled in from the anchors.

    ``implicit``: every attempt number from the first to the last; those
    without a line are implicit timeouts, made one at a time here (a log
    whose summary counts millions of them never holds them all). ``offset``
    is subtracted from every attempt number (the first logged one becomes 0).
    """
    if not anchors:
        anchors = _fallback_anchors(drafts)
    for n, draft in _with_implicit(_in_order(drafts), implicit):
        estimated = draft.send_ns is None
        send = draft.send_ns if draft.send_ns is not None else _interpolate(n, anchors, interval_ns)
        # The wire's 16-bit icmp_seq (iputils' unwrapped numbers keep it modulo 65536).
        seq = n % _SEQ_MOD
        yield PingRecord(
            target=target,
            n=n - offset,
            seq=seq,
            outcome=draft.outcome,
            send_utc_ns=send,
            recv_utc_ns=draft.recv_ns,
            rtt_ns=draft.rtt_ns,
            icmp_type=draft.icmp_type,
            icmp_code=draft.icmp_code,
            from_addr=draft.from_addr,
            detail=draft.detail,
            send_estimated=estimated,
            line=draft.line,
        )
        for extra in draft.extras or ():
            rtt = extra.recv_ns - send if extra.recv_ns is not None else extra.rtt_ns
            yield PingRecord(
                target=target,
                n=n - offset,
                seq=seq,
                outcome=extra.outcome,
                send_utc_ns=send,
                recv_utc_ns=extra.recv_ns,
                rtt_ns=extra.rtt_ns if extra.rtt_ns is not None else rtt,
                icmp_type=extra.icmp_type,
                icmp_code=extra.icmp_code,
                from_addr=extra.from_addr,
                detail=extra.detail,
                send_estimated=estimated,
                line=extra.line,
            )


def _fallback_anchors(drafts: Mapping[int, _Draft]) -> _Anchors:
    """Rough send times (from an attempt's own stamp) when no reply gives one."""
    return _Anchors(
        (n, d.fallback_send_ns) for n, d in _in_order(drafts) if d.fallback_send_ns is not None
    )


def _with_implicit(
    drafts: Iterator[tuple[int, _Draft]], implicit: range | None
) -> Iterator[tuple[int, _Draft]]:
    """``drafts`` (in order) and, with ``implicit``, a timeout for every number
    of it that has no draft, made one at a time."""
    if implicit is None:
        yield from drafts
        return
    pending = next(drafts, None)
    for n in implicit:
        while pending is not None and pending[0] < n:
            pending = next(drafts, None)
        if pending is not None and pending[0] == n:
            yield pending
            continue
        yield (
            n,
            _Draft(
                n=n,
                outcome=TIMEOUT,
                line=None,
                detail=f"no line for icmp_seq={n % _SEQ_MOD}: implicit timeout",
            ),
        )


def _add_answer(drafts: MutableMapping[int, _Draft], answer: _Draft) -> None:
    """Record a reply; a second answer to an attempt becomes a late or duplicate row."""
    existing = drafts.get(answer.n)
    if existing is None:
        drafts[answer.n] = answer
        return
    answer.outcome = LATE if existing.outcome in (TIMEOUT, UNRESOLVED) else DUPLICATE
    if existing.send_ns is None and answer.send_ns is not None:
        # A late reply carries its rtt: the attempt's send time is known after all.
        existing.send_ns = answer.send_ns
    answer.send_ns = None
    existing.add_extra(answer)


class _Lines:
    """Counts every line by kind and keeps the first unrecognised ones (a log
    of nothing but garbage must not be held line by line) and their reasons."""

    KEPT = 100

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.unrecognised: list[LogLine] = []
        self.reasons: Counter[str] = Counter()

    def count(self, kind: str) -> None:
        self.kinds[kind] += 1

    def reject(self, number: int, text: str, reason: str) -> None:
        self.kinds["unrecognised"] += 1
        self.reasons[reason] += 1
        if len(self.unrecognised) < self.KEPT:
            self.unrecognised.append(LogLine(number, _quote(text), reason))

    def summary(self) -> dict[str, int]:
        kinds = ("result", "icmp_error", "banner", "blank", "notice", "unrecognised")
        return {kind: self.kinds[kind] for kind in kinds}


def _nothing_found(fmt: str, line_count: int, seen: _Lines, hint: str) -> ImportFormatError:
    first = seen.unrecognised[0] if seen.unrecognised else None
    detail = ""
    if first is not None:
        detail = f"; first unrecognised: line {first.line} {_quote(first.text)[:80]!r}"
    return ImportFormatError(
        f"no {fmt} ping result in its {line_count} lines "
        f"({seen.kinds['banner']} banner, {seen.kinds['blank']} blank, "
        f"{seen.kinds['unrecognised']} unrecognised{detail}){hint}"
    )


# -- windows -------------------------------------------------------------------------

# The loop's timestamp at the start of a line, optionally in [brackets], then a
# separator. Date forms: yyyy/MM/dd (ja-JP (Get-Date).ToString()), yyyy-MM-dd[T]
# (ISO 8601, Get-Date -Format o/s, with an optional offset), MM/dd/yyyy
# (PowerShell's "$(Get-Date)", invariant culture; en-US adds AM/PM; dd/MM/yyyy
# when a first field above 12 shows it), yyyy年M月d日 (ja-JP long date); or the
# time of day alone.
_WIN_STAMP = re.compile(
    r"""^\s*\[?\s*
    (?:
        (?P<y>\d{4})(?P<ds>[/-])(?P<mo>\d{1,2})(?P=ds)(?P<d>\d{1,2})(?:T|\s+)
      | (?P<ya>\d{1,2})/(?P<yb>\d{1,2})/(?P<yl>\d{4})\s+
      | (?P<jy>\d{4})年(?P<jmo>\d{1,2})月(?P<jd>\d{1,2})日\s*
    )?
    (?P<h>\d{1,2}):(?P<mi>\d{2}):(?P<s>\d{2})(?:[.,](?P<frac>\d{1,9}))?
    (?:\s*(?P<ampm>AM|PM))?
    (?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?
    \s*\]?
    (?=\s|$|[-|,;>])[\s\-|,;>]*
    """,
    re.X | re.I,
)
# Lines that give the date for stamps that carry only the time of day.
_WIN_TRANSCRIPT_START = re.compile(r"^\s*(?:Start|End) time:\s*(?P<stamp>\d{14})\s*$", re.I)
_WIN_JA_DATE = re.compile(r"^\s*(?P<y>\d{4})年(?P<mo>\d{1,2})月(?P<d>\d{1,2})日")
_WIN_DATE_ONLY = re.compile(r"^\s*(?P<y>\d{4})[/-](?P<mo>\d{1,2})[/-](?P<d>\d{1,2})\s*$")

_WIN_RESULT = re.compile(
    r"""
    (?P<reply>Reply\ from\ (?P<reply_addr>\S+?):\s+
        (?:bytes=\d+\s+(?:\(sent\ \d+\)\s+)?)?time\s*(?P<reply_op>[=<])\s*(?P<reply_ms>\d+)\s*ms)
  | (?P<reply_ja>(?P<reply_ja_addr>\S+?)\s*からの応答:\s*
        (?:バイト数\s*=\s*\d+\s+)?時間\s*(?P<reply_ja_op>[=<])\s*(?P<reply_ja_ms>\d+)\s*ms)
  | (?P<icmp>(?:Reply\ from\ (?P<icmp_addr>\S+?):\s+)?
        (?P<icmp_text>Destination\ (?:host|net|network|protocol|port)\ unreachable\.
          |TTL\ expired\ in\ transit\.|Destination\ specified\ is\ invalid\.))
  | (?P<icmp_ja>(?:(?P<icmp_ja_addr>\S+?)\s*からの応答:\s*)?
        (?P<icmp_ja_text>宛先(?:ホスト|ネットワーク|プロトコル|ポート)に到達できません。
          |転送中に\s*TTL\s*が期限切れになりました。|指定された宛先が無効です。))
  | (?P<timeout>Request\ timed\ out\.|要求がタイムアウトしました。)
  | (?P<failure>PING:\s*[^.。]*[.。](?:\s*(?:General\ failure\.|一般エラーです。))?
      | General\ failure\. | 一般エラーです。 | Hardware\ error\. | ハードウェア\s*エラーです。
      | Ping\ request\ could\ not\ find\ host\ \S+?\.(?:\ Please\ check\ the\ name[^.]*\.)?
      | ping\ 要求ではホスト\ \S+\ が見つかりませんでした。(?:[^。]*。)?)
    """,
    re.X | re.I,
)
# ICMP type/code of the Windows texts (code 1 = host unreachable, 0 = net, ...).
_WIN_ICMP = (
    (re.compile(r"host unreachable|ホストに到達", re.I), UNREACHABLE, 3, 1),
    (re.compile(r"net(?:work)? unreachable|ネットワークに到達", re.I), UNREACHABLE, 3, 0),
    (re.compile(r"protocol unreachable|プロトコルに到達", re.I), UNREACHABLE, 3, 2),
    (re.compile(r"port unreachable|ポートに到達", re.I), UNREACHABLE, 3, 3),
    (re.compile(r"TTL", re.I), ERROR, 11, 0),
)
_WIN_BANNER_TARGET = (
    re.compile(r"Pinging (?P<name>\S+?)(?: \[(?P<addr>[^\]]+)\])? with \d+ bytes of data", re.I),
    re.compile(r"(?P<name>[^\s\[]+)\s*(?:\[(?P<addr>[^\]]+)\])?\s*に ping を送信しています"),
    re.compile(r"Ping statistics for (?P<addr>\S+?):", re.I),
    re.compile(r"(?P<addr>\S+) の ping 統計:"),
)
_WIN_BANNER = re.compile(
    r"""Pinging\ .*\ with\ \d+\ bytes\ of\ data|に\ ping\ を送信しています
      |Ping\ statistics\ for|の\ ping\ 統計
      |Packets:\ Sent\ =|パケット数:\s*送信\ =
      |Approximate\ round\ trip\ times|ラウンド\ トリップの概算時間
      |Minimum\ =\ .*Maximum\ =|最小\ =\ .*最大\ =
      |^\s*(?:Control-C|\^C)\s*$""",
    re.X | re.I,
)
# PowerShell transcript header/footer lines and prompts (Start-Transcript).
_WIN_TRANSCRIPT = re.compile(
    r"""^\s*(?:\*{10,}|Windows\ PowerShell\ transcript\ (?:start|end)|(?:Start|End)\ time:
      |Username:|RunAs\ User:|Configuration\ Name:|Machine:|Host\ Application:|Process\ ID:
      |PS\w*Version:|PSEdition:|PSCompatibleVersions:|BuildVersion:|CLRVersion:
      |WSManStackVersion:|SerializationVersion:|Transcript\ started|PS\ [A-Za-z]:\\)""",
    re.X | re.I,
)


def _win_stamp(match: re.Match[str], day_first: bool) -> tuple[date | None, int, int | None]:
    """(date or None, time of day in ns, UTC ns if the stamp carries an offset)."""
    hour, minute, second = int(match["h"]), int(match["mi"]), int(match["s"])
    ampm = (match["ampm"] or "").upper()
    if ampm:
        if not 1 <= hour <= 12:
            raise ValueError("12-hour clock out of range")
        hour = hour % 12 + (12 if ampm == "PM" else 0)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("time of day out of range")
    fraction = int(((match["frac"] or "") + "000000000")[:9])
    tod = (hour * 3600 + minute * 60 + min(second, 59)) * NS_PER_S + fraction
    day: date | None = None
    if match["y"]:
        day = date(int(match["y"]), int(match["mo"]), int(match["d"]))
    elif match["yl"]:
        first, second_field = int(match["ya"]), int(match["yb"])
        month, mday = (second_field, first) if day_first else (first, second_field)
        day = date(int(match["yl"]), month, mday)
    elif match["jy"]:
        day = date(int(match["jy"]), int(match["jmo"]), int(match["jd"]))
    offset_text = match["tz"]
    if offset_text:
        if day is None:
            raise ValueError("an offset needs a date")
        offset_zone, _name = parse_timezone(offset_text)
        return day, tod, _local_to_utc_ns(day, tod, offset_zone)
    return day, tod, None


def parse_windows(
    lines: Sequence[str],
    *,
    zone: tzinfo,
    start_date: date | None = None,
    target: str | None = None,
    encoding: str = "text",
) -> PingLogImport:
    """Windows ``ping -n 1`` results stamped by a PowerShell loop (docs/importers.md).

    ``zone`` converts stamps without an offset; ``start_date`` dates
    time-of-day stamps until the log gives a date itself. The stamp is the
    send time of the ping whose result follows it on the line.
    """
    seen = _Lines()
    context_date = start_date
    context_source = "option --date" if start_date is not None else None
    time_only_sources: list[str] = []  # where the dates of time-of-day stamps came from
    last_tod: int | None = None
    addresses: Counter[str] = Counter()
    reply_addresses: Counter[str] = Counter()
    drafts: list[_Draft] = []
    local_used = False
    time_only_used = False
    # dd/MM/yyyy (en-GB and others) rather than MM/dd/yyyy when a first field exceeds 12.
    day_first = any(
        (m := _WIN_STAMP.match(line)) is not None and m["ya"] is not None and int(m["ya"]) > 12
        for line in lines
    )

    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip()
        if not text.strip():
            seen.count("blank")
            continue
        if len(text) > _WIN_MAX_LINE_CHARS:
            # The result patterns search the whole line: a long one costs its square.
            seen.reject(number, text, f"longer than {_WIN_MAX_LINE_CHARS} characters")
            continue
        stamp_match = _WIN_STAMP.match(text)
        send_ns: int | None = None
        rest = text
        if stamp_match:
            try:
                day, tod, utc_ns = _win_stamp(stamp_match, day_first)
            except ValueError as exc:
                seen.reject(number, text, f"bad timestamp: {exc}")
                continue
            rest = text[stamp_match.end() :]
            if day is not None:
                context_date = day
                context_source = f"the dated stamp on line {number}"
            else:
                if context_date is None:
                    raise ImportFormatError(
                        f"line {number} is stamped with the time of day only "
                        f"({stamp_match.group(0).strip()}) and no earlier line gives the date; "
                        "give it with --date YYYY-MM-DD"
                    )
                if last_tod is not None and tod < last_tod - 12 * 3600 * NS_PER_S:
                    context_date += timedelta(days=1)  # past midnight
                day = context_date
                time_only_used = True
                if context_source is not None and context_source not in time_only_sources:
                    time_only_sources.append(context_source)
            last_tod = tod
            if utc_ns is None:
                utc_ns = _local_to_utc_ns(day, tod, zone)
                local_used = True
            send_ns = utc_ns
        else:
            context = _win_context_date(text)
            if context is not None:
                context_date, last_tod = context
                context_source = f"line {number}"
                seen.count("banner")
                continue

        for pattern in _WIN_BANNER_TARGET:
            for found in pattern.finditer(rest):
                addresses[found["addr"] or found["name"]] += 1
        results = list(_WIN_RESULT.finditer(rest))
        if not results:
            if not rest.strip():
                seen.count("blank")
            elif _WIN_BANNER.search(rest) or _WIN_TRANSCRIPT.search(rest):
                seen.count("banner")
            else:
                seen.reject(number, text, "not a ping result")
            continue
        if send_ns is None:
            seen.reject(number, text, "ping result without a timestamp")
            continue
        seen.count("result")
        for result in results:
            draft = _win_draft(result, len(drafts), number, text)
            draft.send_ns = send_ns
            if draft.rtt_ns is not None:
                draft.recv_ns = send_ns + draft.rtt_ns
            if draft.outcome == REPLY and draft.from_addr:
                reply_addresses[draft.from_addr] += 1
            drafts.append(draft)

    if not drafts:
        stamped = seen.kinds["unrecognised"] and any(
            reason == "ping result without a timestamp" for reason in seen.reasons
        )
        hint = (
            "; its ping results carry no timestamp: the windows format needs the loop's "
            "timestamp before each result (docs/importers.md)"
            if stamped
            else _format_hint("windows", lines)
        )
        raise _nothing_found("windows", number, seen, hint)

    name = _single_target(target, addresses + reply_addresses, "windows")

    by_number = {draft.n: draft for draft in drafts}  # every one has its send time
    sent = _Anchors(((d.n, d.send_ns) for d in drafts if d.send_ns is not None), in_order=True)

    def frozen() -> Iterator[PingRecord]:
        return _freeze(name, by_number, sent, NS_PER_S)

    sends = sorted(d.send_ns for d in drafts if d.send_ns is not None)
    spacing = [b - a for a, b in itertools.pairwise(sends)]
    interval_ns = round(statistics.median(spacing)) if spacing else None
    notes = []
    if day_first:
        notes.append("dates with the year last read as dd/MM/yyyy (a first field is above 12)")
    if time_only_used:
        notes.append(
            "time-of-day stamps: a time more than 12 h earlier than the one before "
            "is taken as the next day"
        )
    return PingLogImport(
        format="windows",
        encoding=encoding,
        records=Records(frozen),
        targets=(name,),
        interval_s=None if interval_ns is None else interval_ns / NS_PER_S,
        interval_source="median spacing of the logged send times",
        line_count=number,
        line_kinds=seen.summary(),
        unrecognised=tuple(seen.unrecognised),
        local_time_used=local_used,
        date_source=(
            "; ".join(time_only_sources) if time_only_sources else "stamps" if drafts else None
        ),
        send_times=(
            "the loop's timestamp before each result is the send time; ping.exe starts "
            "a few ms to tens of ms after it, and a stamp without a fraction is truncated "
            "to the second"
        ),
        notes=tuple(notes),
    )


def _win_context_date(text: str) -> tuple[date, int | None] | None:
    """The date a non-result line gives (and its time of day in ns, if it has one)."""
    for pattern in (_WIN_TRANSCRIPT_START, _WIN_JA_DATE, _WIN_DATE_ONLY):
        match = pattern.match(text)
        if not match:
            continue
        try:
            if "stamp" in match.groupdict():
                stamp = match["stamp"]
                day = date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]))
                hour, minute, second = int(stamp[8:10]), int(stamp[10:12]), int(stamp[12:14])
                return day, (hour * 3600 + minute * 60 + second) * NS_PER_S
            return date(int(match["y"]), int(match["mo"]), int(match["d"])), None
        except ValueError:
            return None
    return None


def _win_draft(result: re.Match[str], n: int, number: int, text: str) -> _Draft:
    if result["reply"] or result["reply_ja"]:
        ja = bool(result["reply_ja"])
        op = result["reply_ja_op"] if ja else result["reply_op"]
        ms = int(result["reply_ja_ms"] if ja else result["reply_ms"])
        addr = result["reply_ja_addr"] if ja else result["reply_addr"]
        below_1ms = op == "<"
        return _Draft(
            n=n,
            outcome=REPLY,
            line=number,
            rtt_ns=0 if below_1ms else ms * NS_PER_MS,
            icmp_type=0,
            icmp_code=0,
            from_addr=addr,
            detail="rtt below 1 ms (Windows prints time<1ms)" if below_1ms else None,
        )
    if result["icmp"] or result["icmp_ja"]:
        ja = bool(result["icmp_ja"])
        message = result["icmp_ja_text"] if ja else result["icmp_text"]
        addr = result["icmp_ja_addr"] if ja else result["icmp_addr"]
        outcome, icmp_type, icmp_code = ERROR, None, None
        for pattern, kind, type_, code in _WIN_ICMP:
            if pattern.search(message):
                outcome, icmp_type, icmp_code = kind, type_, code
                break
        return _Draft(
            n=n,
            outcome=outcome,
            line=number,
            icmp_type=icmp_type,
            icmp_code=icmp_code,
            from_addr=addr,
            detail=_quote(text),
        )
    if result["timeout"]:
        return _Draft(n=n, outcome=TIMEOUT, line=number)
    return _Draft(n=n, outcome=ERROR, line=number, detail=_quote(text))


def _single_target(given: str | None, candidates: Counter[str], fmt: str) -> str:
    if given:
        return given
    names = [name for name in candidates if name]
    if len(names) == 1:
        return names[0]
    if not names:
        raise ImportFormatError(
            f"no line of this {fmt} log names the pinged address (no banner, no reply); "
            "give it with --target"
        )
    raise ImportFormatError(
        f"this {fmt} log names several addresses ({', '.join(sorted(names))}) and the "
        "format holds one target; give the pinged one with --target"
    )


# -- iputils -------------------------------------------------------------------------

_EPOCH_STAMP = re.compile(r"^\s*\[(?P<s>\d+)(?:\.(?P<f>\d+))?\]\s*")
_IPU_REPLY = re.compile(
    r"^(?P<bytes>\d+) bytes from (?P<from>.+?): icmp_[sr]eq=(?P<seq>\d+)"
    r"(?: ident=\d+)?(?: ttl=\d+)?(?: time[=<](?P<rtt>\d+(?:\.\d+)?) ?ms)?(?P<rest>.*)$"
)
_IPU_ERROR = re.compile(r"^From (?P<from>.+?):? icmp_[sr]eq=(?P<seq>\d+) (?P<what>.+)$")
_IPU_NO_ANSWER = re.compile(r"^no answer yet for icmp_seq=(?P<seq>\d+)")
_IPU_SEND_ERROR = re.compile(r"^ping: (?:sendmsg|sendto|local error)\b.*$", re.I)
_IPU_BANNER = re.compile(r"^PING (?P<name>\S+) \((?P<addr>[^)]+)\)")
_IPU_STATS = re.compile(
    r"^(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (?:packets )?received"
    r".*?(?:, time (?P<ms>\d+) ?ms)?\s*$"
)
_IPU_OTHER_BANNER = re.compile(
    r"^(?:--- .* ping statistics ---|rtt min/avg/max|round-trip|pipe \d+|\d+/\d+ packets, "
    r"|ipg/ewma|PING .* data bytes|\^C$)"
)
_NAME_AND_ADDR = re.compile(r"^(?P<name>\S+) \((?P<addr>[^)]+)\)$")
# iputils' texts of ICMP errors (ping4 pr_icmph, ping6 pr_icmph) -> type/code.
_IPU_ICMP4 = (
    ("Destination Net Unreachable", 3, 0),
    ("Destination Host Unreachable", 3, 1),
    ("Destination Protocol Unreachable", 3, 2),
    ("Destination Port Unreachable", 3, 3),
    ("Frag needed", 3, 4),
    ("Source Route Failed", 3, 5),
    ("Destination Net Unknown", 3, 6),
    ("Destination Host Unknown", 3, 7),
    ("Source Host Isolated", 3, 8),
    ("Destination Net Prohibited", 3, 9),
    ("Destination Host Prohibited", 3, 10),
    ("Packet filtered", 3, 13),
    ("Precedence Violation", 3, 14),
    ("Precedence Cutoff", 3, 15),
    ("Dest Unreachable", 3, None),
    ("Time to live exceeded", 11, 0),
    ("Frag reassembly time exceeded", 11, 1),
    ("Parameter problem", 12, None),
)
_IPU_ICMP6 = (
    ("No route", 1, 0),
    ("Administratively prohibited", 1, 1),
    ("Beyond scope", 1, 2),
    ("Address unreachable", 1, 3),
    ("Port unreachable", 1, 4),
    ("Destination unreachable", 1, None),
    ("Time exceeded", 3, None),
    ("Parameter problem", 4, None),
    ("Packet too big", 2, 0),
)
# ICMP messages that say nothing about an attempt being lost (the prober ignores them too).
_NOTICE = re.compile(r"Redirect|Source Quench", re.I)


def _ipu_icmp(what: str, from_addr: str) -> tuple[str, int | None, int | None]:
    table = _IPU_ICMP6 if ":" in from_addr else _IPU_ICMP4
    for text, icmp_type, code in table:
        if text.lower() in what.lower():
            unreachable = icmp_type == (1 if ":" in from_addr else 3)
            return (UNREACHABLE if unreachable else ERROR), icmp_type, code
    return ERROR, None, None


def _address(text: str) -> str:
    """``host (10.0.0.5)`` -> ``10.0.0.5``; ``10.0.0.5`` stays."""
    match = _NAME_AND_ADDR.match(text.strip())
    return match["addr"] if match else text.strip()


def _default_timeout_s(interval_s: float) -> float:
    """The prober's own default (probes.icmp.default_timeout_s): max(1 s, 3 intervals)."""
    return max(1.0, 3.0 * interval_s)


def parse_iputils(
    lines: Sequence[str],
    *,
    target: str | None = None,
    interval_s: float | None = None,
    encoding: str = "text",
) -> PingLogImport:
    """Linux iputils ``ping -D [-O]`` output (docs/importers.md)."""
    seen = _Lines()
    drafts = _DraftTable()
    annotations: list[_Annotation] = []
    frontier: int | None = None  # highest unwrapped icmp_seq so far
    banner_target: str | None = None
    banner_before_results = False
    reply_sources: Counter[str] = Counter()
    transmitted: int | None = None
    elapsed_ms: int | None = None

    def unwrap(seq: int) -> int:
        nonlocal frontier
        if frontier is None:
            frontier = seq
            return seq
        delta = (seq - frontier) % _SEQ_MOD
        if delta >= _SEQ_MOD // 2:
            delta -= _SEQ_MOD
        value = frontier + delta
        frontier = max(frontier, value)
        return value

    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            seen.count("blank")
            continue
        stamp_ns: int | None = None
        stamp = _EPOCH_STAMP.match(text)
        body = text
        if stamp:
            try:
                stamp_ns = _epoch_to_ns(stamp["s"], stamp["f"] or "")
            except ValueError as exc:
                seen.reject(number, text, f"bad timestamp: {exc}")
                continue
            body = text[stamp.end() :]
        if reply := _IPU_REPLY.match(body):
            seen.count("result")
            seq = int(reply["seq"])
            n = unwrap(seq)
            source = _address(reply["from"])
            rtt = _ms_to_ns(reply["rtt"]) if reply["rtt"] else None
            draft = _Draft(
                n=n,
                outcome=REPLY,
                line=number,
                recv_ns=stamp_ns,
                rtt_ns=rtt,
                icmp_type=0,
                icmp_code=0,
                from_addr=source,
            )
            if stamp_ns is not None and rtt is not None:
                draft.send_ns = stamp_ns - rtt
            if "DUP!" in reply["rest"] and n in drafts:
                draft.outcome = DUPLICATE
                drafts[n].add_extra(draft)
                continue
            reply_sources[source] += 1
            _add_answer(drafts, draft)
        elif error := _IPU_ERROR.match(body):
            source = _address(error["from"])
            if _NOTICE.search(error["what"]):
                seen.count("notice")
                continue
            seen.count("icmp_error")
            seq = int(error["seq"])
            n = unwrap(seq)
            outcome, icmp_type, code = _ipu_icmp(error["what"], source)
            draft = _Draft(
                n=n,
                outcome=outcome,
                line=number,
                recv_ns=stamp_ns,
                icmp_type=icmp_type,
                icmp_code=code,
                from_addr=source,
                detail=_quote(text),
                fallback_send_ns=stamp_ns,
            )
            _add_answer(drafts, draft)
        elif no_answer := _IPU_NO_ANSWER.match(body):
            seen.count("result")
            seq = int(no_answer["seq"])
            n = unwrap(seq)
            fallback = None
            if stamp_ns is not None:
                # Printed when the next echo goes out: one interval after this one's send.
                fallback = stamp_ns - round((interval_s or 1.0) * NS_PER_S)
            if n not in drafts:
                drafts[n] = _Draft(
                    n=n,
                    outcome=TIMEOUT,
                    line=number,
                    detail=_quote(text),
                    fallback_send_ns=fallback,
                )
        elif _IPU_SEND_ERROR.match(body):
            seen.count("icmp_error")
            annotations.append(
                _Annotation(
                    target="",
                    after_n=frontier,
                    outcome=ERROR,
                    icmp_type=None,
                    icmp_code=None,
                    from_addr=None,
                    line=LogLine(number, text, "send error"),
                )
            )
        elif banner := _IPU_BANNER.match(body):
            seen.count("banner")
            banner_target = banner["addr"]
            banner_before_results = banner_before_results or not drafts
        elif stats := _IPU_STATS.match(body):
            seen.count("banner")
            transmitted = int(stats["tx"])
            elapsed_ms = int(stats["ms"]) if stats["ms"] else None
        elif _IPU_OTHER_BANNER.match(body):
            seen.count("banner")
        else:
            seen.reject(number, text, "not an iputils ping line")

    if not drafts:
        raise _nothing_found("iputils", number, seen, _format_hint("iputils", lines))

    name = target or banner_target
    if name is None:
        name = _single_target(None, reply_sources, "iputils")

    # iputils numbers echoes from icmp_seq=1. A log with the banner whose first
    # result is icmp_seq=1 is whole: its summary's "N packets transmitted" then
    # says how many echoes went out after the last line, too. Echoes before the
    # first logged one are not imported (a trimmed log, or lost from the start:
    # an outage there has no reply before it and could not be bounded anyway).
    base = min(drafts)
    whole_log = banner_before_results and base == 1
    notes = []
    if banner_before_results and base > 1:
        notes.append(
            f"the first result is icmp_seq={base % _SEQ_MOD}: the {base - 1} echoes before it "
            "have no line and are not imported"
        )
    # Replies give exact sends; with them, the interval.
    anchors = drafts.anchors()
    detected_ns = _median_interval_ns(anchors)
    interval_source = "median spacing of the replies' send times (stamp - rtt) per icmp_seq"
    if interval_s is not None:
        interval_ns = round(interval_s * NS_PER_S)
        interval_source = "option (ping -i)"
    elif detected_ns is not None:
        interval_ns = detected_ns
    else:
        interval_ns = NS_PER_S
        interval_source = "ping's default 1 s (fewer than two replies to measure it)"

    last_n = max(drafts)
    if transmitted is not None and whole_log:
        claimed = transmitted
        if elapsed_ms is not None:
            # No more echoes can have gone out than the elapsed time allows at this
            # interval: a summary that claims more is not evidence of sends.
            fits = elapsed_ms * NS_PER_MS // max(1, interval_ns) + 1
            if transmitted > fits * 3 // 2 + 10:
                claimed = max(fits, last_n - base + 1)
                notes.append(
                    f"the summary says {transmitted} packets transmitted, but {elapsed_ms} ms "
                    f"at {interval_ns / NS_PER_MS:g} ms allow about {fits}: {claimed} imported"
                )
        last_n = max(last_n, base + claimed - 1)
    attempts = range(base, last_n + 1)
    implicit = len(attempts) - len(drafts)
    if implicit:
        notes.append(f"{implicit} implicit timeouts (icmp_seq numbers with no line)")

    unmatched = _attach_annotations(
        {name: drafts},
        [
            _Annotation(name, a.after_n, a.outcome, a.icmp_type, a.icmp_code, a.from_addr, a.line)
            for a in annotations
        ],
        implicit={name: attempts},
    )
    if not anchors and not _fallback_anchors(drafts):
        raise ImportFormatError(
            "no iputils line carries a [epoch] timestamp; run ping with -D (docs/importers.md)"
        )

    def frozen() -> Iterator[PingRecord]:
        records = _freeze(name, drafts, anchors, interval_ns, offset=base, implicit=attempts)
        if transmitted is None or not whole_log:
            return records
        return _resolve_tail(records, drafts, anchors, elapsed_ms, interval_ns, base, attempts)

    return PingLogImport(
        format="iputils",
        encoding=encoding,
        records=Records(frozen),
        targets=(name,),
        interval_s=interval_ns / NS_PER_S,
        interval_source=interval_source,
        line_count=number,
        line_kinds=seen.summary(),
        unrecognised=tuple(seen.unrecognised),
        local_time_used=False,
        date_source=None,
        send_times=(
            "reply: [stamp] - rtt (the stamp is when ping printed the reply, tens of us "
            "after the kernel received it); other attempts: interpolated by icmp_seq "
            "between the replies around them"
        ),
        notes=tuple(notes),
        unmatched_icmp_errors=tuple(unmatched),
    )


def _resolve_tail(
    records: Iterator[PingRecord],
    drafts: Mapping[int, _Draft],
    anchors: _Anchors,
    elapsed_ms: int | None,
    interval_ns: int,
    offset: int,
    attempts: range,
) -> Iterator[PingRecord]:
    """Implicit timeouts at the very end: unresolved if ping stopped before their deadline.

    ping's summary says how many echoes went out; those after the last logged
    line never got an answer while ping ran. One sent less than the prober's
    default timeout (max(1 s, 3 intervals)) before ping ended is ``unresolved``.
    """
    if not drafts:
        yield from records
        return
    points = anchors or _fallback_anchors(drafts)
    first_send = min(_interpolate(attempts.start, points, interval_ns), points.first_send())
    last_logged = max((n for n, d in _in_order(drafts) if d.line is not None), default=-1) - offset
    if elapsed_ms is not None:
        end = first_send + elapsed_ms * NS_PER_MS
    else:
        end = _interpolate(attempts.stop - 1, points, interval_ns) + interval_ns
    deadline_ns = round(_default_timeout_s(interval_ns / NS_PER_S) * NS_PER_S)
    for record in records:
        if (
            record.line is None
            and record.n > last_logged
            and record.send_utc_ns > end - deadline_ns
        ):
            record = replace(
                record,
                outcome=UNRESOLVED,
                detail=f"no line for icmp_seq={record.seq}: ping ended before its deadline",
            )
        yield record


# -- fping ---------------------------------------------------------------------------

_FPING_STAMP = re.compile(r"^\s*\[(?P<stamp>[^\]]+)\]\s*")
_FPING_REPLY = re.compile(
    r"^(?P<host>\S+)\s+: \[(?P<idx>\d+)\], (?P<bytes>\d+) bytes, (?P<rtt>\d+(?:\.\d+)?) ms"
    r"(?: \((?P<avg>[\d.]+|NaN) avg, (?P<pct>\d+)% (?:loss|return)\))?(?P<rest>.*)$"
)
_FPING_TIMEOUT = re.compile(r"^(?P<host>\S+)\s+: \[(?P<idx>\d+)\], timed out\b")
_FPING_DUP = re.compile(
    r"^(?P<host>\S+)\s+: duplicate for \[(?P<idx>\d+)\], (?P<bytes>\d+) bytes, "
    r"(?P<rtt>\d+(?:\.\d+)?) ms"
)
_FPING_ICMP = re.compile(
    r"^(?P<what>ICMP .+?) from (?P<from>\S+) for ICMP Echo sent to (?P<host>\S+)"
    r"(?: \((?P<addr>[^)]+)\))?\s*$"
)
_FPING_SEND_ERROR = re.compile(r"^(?P<host>\S+): error while sending ping: (?P<err>.+)$")
_FPING_BANNER = re.compile(
    "|".join(
        (
            r"^\[\d{2}:\d{2}:\d{2}\]$",  # -Q split time
            r"^\^C$",
            r"^\S+\s+: xmt/rcv/%(?:loss|return)",  # -Q / final per-target statistics
            r"^\S+ is (?:alive|unreachable)",
            r"^\s*\d+ (?:targets|alive|unreachable|unknown addresses"
            r"|timeouts \(waiting for response\)|ICMP Echos sent|ICMP Echo Replies received"
            r"|other ICMP received)\s*$",  # -s global statistics
            r"^\s*[\d.,]+ (?:ms|sec) \((?:min|avg|max) round trip time|elapsed real time\)\s*$",
        )
    )
)
_FPING_UNREACH_CODES = {
    "ICMP Network Unreachable": 0,
    "ICMP Host Unreachable": 1,
    "ICMP Protocol Unreachable": 2,
    "ICMP Port Unreachable": 3,
    "ICMP Unreachable (Fragmentation Needed)": 4,
    "ICMP Unreachable (Source Route Failed)": 5,
    "ICMP Unreachable (Destination Network Unknown)": 6,
    "ICMP Unreachable (Destination Host Unknown)": 7,
    "ICMP Unreachable (Source Host Isolated)": 8,
    "ICMP Unreachable (Communication with Network Prohibited)": 9,
    "ICMP Unreachable (Communication with Host Prohibited)": 10,
    "ICMP Unreachable (Network Unreachable For Type Of Service)": 11,
    "ICMP Unreachable (Host Unreachable For Type Of Service)": 12,
    "ICMP Unreachable (Communication Administratively Prohibited)": 13,
    "ICMP Unreachable (Host Precedence Violation)": 14,
    "ICMP Unreachable (Precedence cutoff in effect)": 15,
}
_FPING_OTHER_ICMP = {"ICMP Time Exceeded": 11, "ICMP Parameter Problem": 12}


def _fping_stamp(text: str, zone: tzinfo | None) -> tuple[int, bool]:
    """UTC ns of an fping ``-D`` stamp and whether it needed the local zone.

    Default ``[1700000000.12345]``; ``--timestamp-format`` iso
    (``2023-11-14T22:13:20+0100``), rfc3339 (``2023-11-14 22:13:20``, local) and
    ctime (``Tue Nov 14 22:13:20 2023``, local).
    """
    if match := re.fullmatch(r"(\d+)(?:\.(\d+))?", text):
        return _epoch_to_ns(match[1], match[2] or ""), False
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}", text):
        return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()) * NS_PER_S, False
    for layout in ("%Y-%m-%d %H:%M:%S", "%a %b %d %H:%M:%S %Y", "%c"):
        try:
            local = datetime.strptime(text, layout)
        except ValueError:
            continue
        if zone is None:
            raise ValueError("a local-time stamp needs the time zone")
        tod = (local.hour * 3600 + local.minute * 60 + local.second) * NS_PER_S
        return _local_to_utc_ns(local.date(), tod, zone), True
    raise ValueError(f"unknown fping timestamp {text!r}")


def parse_fping(
    lines: Sequence[str],
    *,
    zone: tzinfo | None = None,
    target: str | None = None,
    interval_s: float | None = None,
    encoding: str = "text",
) -> PingLogImport:
    """``fping -D -l [-p ms]`` output, one or several targets (docs/importers.md)."""
    seen = _Lines()
    drafts: dict[str, _DraftTable] = {}
    last_index: dict[str, int] = {}
    annotations: list[_Annotation] = []
    local_used = False
    other_targets: Counter[str] = Counter()

    def keep(host: str) -> bool:
        if target is None or host == target:
            return True
        other_targets[host] += 1
        return False

    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip()
        if not text.strip():
            seen.count("blank")
            continue
        stamp_ns: int | None = None
        body = text.strip()
        stamp = _FPING_STAMP.match(text)
        if stamp and not _FPING_BANNER.match(body):
            try:
                stamp_ns, local = _fping_stamp(stamp["stamp"].strip(), zone)
            except ValueError as exc:
                seen.reject(number, text, f"bad timestamp: {exc}")
                continue
            local_used = local_used or local
            body = text[stamp.end() :]
        if reply := _FPING_REPLY.match(body):
            seen.count("result")
            host = reply["host"]
            if not keep(host):
                continue
            n = int(reply["idx"])
            rtt = _ms_to_ns(reply["rtt"])
            draft = _Draft(
                n=n,
                outcome=REPLY,
                line=number,
                recv_ns=stamp_ns,
                rtt_ns=rtt,
                icmp_type=0,
                icmp_code=0,
                from_addr=host,
            )
            if stamp_ns is not None:
                draft.send_ns = stamp_ns - rtt
            _add_answer(drafts.setdefault(host, _DraftTable()), draft)
            last_index[host] = max(last_index.get(host, n), n)
        elif timeout := _FPING_TIMEOUT.match(body):
            seen.count("result")
            host = timeout["host"]
            if not keep(host):
                continue
            n = int(timeout["idx"])
            attempts = drafts.setdefault(host, _DraftTable())
            if n not in attempts:
                attempts[n] = _Draft(
                    n=n,
                    outcome=TIMEOUT,
                    line=number,
                    detail=_quote(text),
                    # Declared at send + timeout; fping -l's default timeout is the period.
                    fallback_send_ns=None
                    if stamp_ns is None
                    else stamp_ns - round(min(interval_s or 1.0, 2.0) * NS_PER_S),
                )
            last_index[host] = max(last_index.get(host, n), n)
        elif dup := _FPING_DUP.match(body):
            seen.count("result")
            host = dup["host"]
            if not keep(host):
                continue
            n = int(dup["idx"])
            extra = _Draft(
                n=n,
                outcome=DUPLICATE,
                line=number,
                recv_ns=stamp_ns,
                rtt_ns=_ms_to_ns(dup["rtt"]),
                icmp_type=0,
                icmp_code=0,
                from_addr=host,
            )
            attempts = drafts.setdefault(host, _DraftTable())
            if n in attempts:
                attempts[n].add_extra(extra)
            else:
                extra.outcome = REPLY
                if stamp_ns is not None and extra.rtt_ns is not None:
                    extra.send_ns = stamp_ns - extra.rtt_ns
                attempts[n] = extra
        elif icmp := _FPING_ICMP.match(body):
            what = icmp["what"]
            if _NOTICE.search(what):
                seen.count("notice")
                continue
            seen.count("icmp_error")
            host = icmp["host"]
            if not keep(host):
                continue
            icmp_type: int | None
            if what in _FPING_UNREACH_CODES or "Unreachable" in what:
                outcome, icmp_type, code = UNREACHABLE, 3, _FPING_UNREACH_CODES.get(what)
            else:
                outcome, icmp_type, code = ERROR, _FPING_OTHER_ICMP.get(what), None
            annotations.append(
                _Annotation(
                    target=host,
                    after_n=last_index.get(host),
                    outcome=outcome,
                    icmp_type=icmp_type,
                    icmp_code=code,
                    from_addr=icmp["from"],
                    line=LogLine(number, text, "ICMP error"),
                )
            )
        elif send_error := _FPING_SEND_ERROR.match(body):
            seen.count("icmp_error")
            host = send_error["host"]
            if not keep(host):
                continue
            annotations.append(
                _Annotation(
                    target=host,
                    after_n=last_index.get(host),
                    outcome=ERROR,
                    icmp_type=None,
                    icmp_code=None,
                    from_addr=None,
                    line=LogLine(number, text, "send error"),
                )
            )
        elif _FPING_BANNER.match(body):
            seen.count("banner")
        else:
            seen.reject(number, text, "not an fping -l line")

    if target is not None and not drafts and other_targets:
        raise ImportFormatError(
            f"no fping line is about --target {target}; the log has "
            f"{', '.join(sorted(other_targets))}"
        )
    if not drafts:
        raise _nothing_found("fping", number, seen, _format_hint("fping", lines))

    unmatched = _attach_annotations(drafts, annotations)
    anchors_of = {host: attempts.anchors() for host, attempts in drafts.items()}
    if not any(anchors_of.values()) and not any(
        _fallback_anchors(attempts) for attempts in drafts.values()
    ):
        raise ImportFormatError(
            "no fping line carries a [timestamp]; run fping with -D (docs/importers.md)"
        )
    spacings = [value for anchors in anchors_of.values() if (value := _median_interval_ns(anchors))]
    interval_source = "median spacing of the replies' send times (stamp - rtt) per index"
    if interval_s is not None:
        interval_ns = round(interval_s * NS_PER_S)
        interval_source = "option (fping -p)"
    elif spacings:
        interval_ns = round(statistics.median(spacings))
    else:
        interval_ns = NS_PER_S
        interval_source = "fping -l's default period 1 s (fewer than two replies to measure it)"

    def frozen() -> Iterator[PingRecord]:
        for host in drafts:
            yield from _freeze(host, drafts[host], anchors_of[host], interval_ns)

    notes = []
    if other_targets:
        notes.append(
            f"{sum(other_targets.values())} lines about other targets than --target "
            f"({', '.join(sorted(other_targets))}) were left out"
        )
    gaps = sum(max(attempts) - min(attempts) + 1 - len(attempts) for attempts in drafts.values())
    if gaps:
        notes.append(f"{gaps} fping attempt indexes have no line (not imported)")
    return PingLogImport(
        format="fping",
        encoding=encoding,
        records=Records(frozen),
        targets=tuple(drafts),
        interval_s=interval_ns / NS_PER_S,
        interval_source=interval_source,
        line_count=number,
        line_kinds=seen.summary(),
        unrecognised=tuple(seen.unrecognised),
        local_time_used=local_used,
        date_source=None,
        send_times=(
            "reply: [stamp] - rtt (the stamp is the receive time); timed out: interpolated "
            "by attempt index between the replies around it (its stamp is when fping gave "
            "up, send + timeout)"
        ),
        notes=tuple(notes),
        unmatched_icmp_errors=tuple(unmatched),
    )


# -- dispatch ------------------------------------------------------------------------

_SNIFF = {
    "windows": re.compile(
        r"Reply from|Request timed out|からの応答|要求がタイムアウト|に ping を送信|Pinging ", re.I
    ),
    "iputils": re.compile(r"bytes from .*icmp_[sr]eq=|^PING \S+ \(|no answer yet for icmp_seq"),
    "fping": re.compile(r"\S+\s+: \[\d+\], (?:\d+ bytes|timed out)|for ICMP Echo sent to"),
}


def _format_hint(fmt: str, lines: Iterable[str]) -> str:
    """``"; it looks like fping output: try --format fping"`` when another format matches."""
    hits: Counter[str] = Counter()
    for number, line in enumerate(lines):
        if number >= 2000:
            break
        head = line[:_SNIFF_CHARS]  # searching all of a long line costs its square
        for name, pattern in _SNIFF.items():
            if name != fmt and pattern.search(head):
                hits[name] += 1
    if not hits:
        return ""
    best = hits.most_common(1)[0][0]
    return f"; it looks like {best} output: try --format {best}"


def parse_ping_log(
    data: bytes | LogLines,
    *,
    fmt: str,
    zone: tzinfo | None = None,
    start_date: date | None = None,
    target: str | None = None,
    interval_s: float | None = None,
) -> PingLogImport:
    """Decode ``data`` (the log's bytes, or a :class:`LogLines` over a file
    read in pieces) and parse it as ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ImportOptionError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if interval_s is not None and not interval_s > 0:
        raise ImportOptionError(f"interval {interval_s} s is not positive")
    lines = data if isinstance(data, LogLines) else LogLines(lambda: iter((data,)))
    if not any(line.strip() for line in lines):
        raise ImportFormatError(f"the file holds no text ({len(lines)} blank lines)")
    if fmt == "windows":
        if zone is None:
            raise ImportOptionError("the windows format needs a time zone for its local stamps")
        return parse_windows(
            lines, zone=zone, start_date=start_date, target=target, encoding=lines.encoding
        )
    if fmt == "iputils":
        return parse_iputils(lines, target=target, interval_s=interval_s, encoding=lines.encoding)
    return parse_fping(
        lines, zone=zone, target=target, interval_s=interval_s, encoding=lines.encoding
    )

"""What every ping-log format shares: the errors, the records, decoding the
bytes into lines, the options (time zone, date), and the drafts a parser fills
and freezes into records (``harness.importers``)."""

from __future__ import annotations

import bisect
import codecs
import re
import statistics
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from migration_blackout.runformat import (
    DUPLICATE,
    LATE,
    REPLY,
    TIMEOUT,
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


# -- telling the formats apart ------------------------------------------------------

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

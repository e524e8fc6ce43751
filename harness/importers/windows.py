"""Windows ``ping`` results stamped by a PowerShell loop, or a transcript
(docs/importers.md)."""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import date, timedelta, tzinfo

from migration_blackout.runformat import (
    ERROR,
    REPLY,
    TIMEOUT,
    UNREACHABLE,
)

from .common import (
    _WIN_MAX_LINE_CHARS,
    NS_PER_MS,
    NS_PER_S,
    ImportFormatError,
    PingLogImport,
    PingRecord,
    Records,
    _Anchors,
    _Draft,
    _format_hint,
    _freeze,
    _Lines,
    _local_to_utc_ns,
    _nothing_found,
    _quote,
    parse_timezone,
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

"""Linux iputils ``ping -D [-O]`` output (docs/importers.md)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

from migration_blackout.runformat import (
    DUPLICATE,
    ERROR,
    REPLY,
    TIMEOUT,
    UNREACHABLE,
    UNRESOLVED,
)

from .common import (
    _SEQ_MOD,
    NS_PER_MS,
    NS_PER_S,
    ImportFormatError,
    LogLine,
    PingLogImport,
    PingRecord,
    Records,
    _add_answer,
    _Anchors,
    _Annotation,
    _attach_annotations,
    _Draft,
    _DraftTable,
    _epoch_to_ns,
    _fallback_anchors,
    _format_hint,
    _freeze,
    _in_order,
    _interpolate,
    _Lines,
    _median_interval_ns,
    _ms_to_ns,
    _nothing_found,
    _quote,
)
from .windows import (
    _single_target,
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

"""``fping -D -l`` output, one or several targets (docs/importers.md)."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, tzinfo

from migration_blackout.runformat import (
    DUPLICATE,
    ERROR,
    REPLY,
    TIMEOUT,
    UNREACHABLE,
)

from .common import (
    NS_PER_S,
    ImportFormatError,
    LogLine,
    PingLogImport,
    PingRecord,
    Records,
    _add_answer,
    _Annotation,
    _attach_annotations,
    _Draft,
    _DraftTable,
    _epoch_to_ns,
    _fallback_anchors,
    _format_hint,
    _freeze,
    _Lines,
    _local_to_utc_ns,
    _median_interval_ns,
    _ms_to_ns,
    _nothing_found,
    _quote,
)
from .iputils import (
    _NOTICE,
)

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

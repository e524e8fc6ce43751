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

One module per format (``windows``, ``iputils``, ``fping``) on what they all
share (``common``: the records, decoding, options, the drafts a parser fills);
this package detects the format and hands the public names on.
"""

from __future__ import annotations

from datetime import date, tzinfo

from .common import (
    FORMATS,
    UNRECOGNISED_QUOTED,
    DecodedLog,
    ImportFormatError,
    ImportOptionError,
    LogLine,
    LogLines,
    PingLogFileError,
    PingLogImport,
    PingRecord,
    Records,
    decode_log,
    parse_date,
    parse_timezone,
    split_lines,
    utc_offset_name,
)
from .fping import parse_fping
from .iputils import parse_iputils
from .windows import parse_windows


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


__all__ = [
    "FORMATS",
    "UNRECOGNISED_QUOTED",
    "DecodedLog",
    "ImportFormatError",
    "ImportOptionError",
    "LogLine",
    "LogLines",
    "PingLogFileError",
    "PingLogImport",
    "PingRecord",
    "Records",
    "decode_log",
    "parse_date",
    "parse_fping",
    "parse_iputils",
    "parse_ping_log",
    "parse_timezone",
    "parse_windows",
    "split_lines",
    "utc_offset_name",
]

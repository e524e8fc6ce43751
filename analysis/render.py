"""Plain-text rendering of a summary document for the terminal (returns text; never prints)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_BLACKOUT_MARK = ">>"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Columns padded to their widest cell; ``align`` has "l" or "r" per column."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _is_blackout(
    target: str, outage: Mapping[str, Any], blackout: Mapping[str, Any] | None
) -> bool:
    return (
        blackout is not None
        and blackout["source"] == f"icmp:{target}"
        and blackout["first_lost_n"] == outage["first_lost_n"]
    )


def _bounds_note(outage: Mapping[str, Any]) -> str:
    notes = []
    if outage["open_start"]:
        notes.append("open start")
    if outage["open_end"]:
        notes.append("open end")
    return ", ".join(notes)


def format_summary_table(summary: Mapping[str, Any], *, max_outages_per_target: int = 20) -> str:
    """A readable plain-text report of a summary document (``build_summary``'s dict).

    Per target: counts, achieved interval and jitter, and its outages with
    lower / upper / estimate bounds; the blackout's row is marked ``>>``.
    A target with more than ``max_outages_per_target`` outages shows only its
    longest ones (by lower bound) and says how many it left out.
    """
    lines = [f"run {summary['run_id']}  status {summary['status']}  ({summary['generated_by']})"]
    error = summary.get("error")
    if error:
        lines.append(f"error: {error['type']}: {error['message']}")
    lines.extend(f"warning: {warning}" for warning in summary.get("warnings", []))

    icmp: Mapping[str, Any] = summary.get("icmp") or {}
    blackout: Mapping[str, Any] | None = summary.get("blackout")
    if not icmp:
        lines.append("")
        lines.append("no ICMP records")
    else:
        rows = []
        for target, stats in icmp.items():
            interval = stats["interval_ms"]
            ratio = stats["achieved_rate_ratio"]
            rows.append(
                [
                    target,
                    str(stats["sent"]),
                    str(stats["replies"]),
                    str(stats["timeouts"]),
                    str(stats["unreachable"]),
                    str(stats["errors"]),
                    str(stats["unresolved"]),
                    str(stats["duplicates"]),
                    str(stats["late"]),
                    _number(interval["requested"]),
                    _number(interval["achieved_median"]),
                    _number(interval["jitter_p99"]),
                    "-" if ratio is None else f"{ratio:.3f}x",
                ]
            )
        lines.append("")
        lines.append("ICMP (intervals in ms)")
        headers = ["target", "sent", "replies", "timeouts", "unreachable", "errors"]
        headers += ["unresolved", "dup", "late", "requested", "median", "jitter p99", "rate"]
        lines.extend(text_table(headers, rows, align="l" + "r" * 12))

        outage_rows = []
        left_out: list[str] = []
        for target, stats in icmp.items():
            outages = list(stats["outages"])
            shown = outages
            if len(outages) > max_outages_per_target:
                longest = sorted(outages, key=lambda o: o["lower_ms"], reverse=True)
                keep = {id(o) for o in longest[:max_outages_per_target]}
                keep |= {id(o) for o in outages if _is_blackout(target, o, blackout)}
                shown = [o for o in outages if id(o) in keep]
            for outage in shown:
                mark = _BLACKOUT_MARK if _is_blackout(target, outage, blackout) else ""
                outage_rows.append(
                    [
                        mark,
                        target,
                        outage["start_utc"] or "-",
                        str(outage["lost"]),
                        str(outage["timeouts"]),
                        str(outage["unreachable"]),
                        str(outage["errors"]),
                        _number(outage["lower_ms"]),
                        _number(outage["upper_ms"]),
                        _number(outage["estimate_ms"]),
                        ", ".join(filter(None, ["BLACKOUT" if mark else "", _bounds_note(outage)])),
                    ]
                )
            if len(shown) < len(outages):
                left_out.append(
                    f"   {target}: {len(outages) - len(shown)} shorter outages not shown"
                )
        lines.append("")
        if outage_rows:
            lines.append("Outages (ms)")
            headers = ["", "target", "start (UTC)", "lost", "timeouts", "unreachable", "errors"]
            headers += ["lower", "upper", "estimate", ""]
            lines.extend(text_table(headers, outage_rows, align="lll" + "r" * 7 + "l"))
            lines.extend(left_out)
        else:
            lines.append("no outages")

    lines.append("")
    if blackout is None:
        lines.append("Blackout: none found")
    else:
        lines.append(
            f"Blackout ({blackout['source']}): lower {_number(blackout['lower_ms'])} ms, "
            f"upper {_number(blackout['upper_ms'])} ms, "
            f"estimate {_number(blackout['estimate_ms'])} ms"
        )
        lines.append(
            f"  {blackout['lost']} lost ({blackout['timeouts']} timeouts, "
            f"{blackout['unreachable']} unreachable, {blackout['errors']} errors) "
            f"sent {blackout['start_utc']} .. {blackout['end_utc']}"
            + (f"  [{_bounds_note(blackout)}]" if _bounds_note(blackout) else "")
        )
        lines.append(
            f"  outside it on that target: {blackout['timeouts_outside']} timeouts, "
            f"{blackout['unreachable_outside']} unreachable, {blackout['errors_outside']} errors"
        )
    lines.extend(_witnesses(summary))
    lines.extend(_applications(summary))
    return "\n".join(lines) + "\n"


def _witnesses(summary: Mapping[str, Any]) -> list[str]:
    """The blackout as every other witness saw it: the hosts, Hyper-V itself,
    the in-guest agent, and (in the lab) the truth."""
    rows: list[list[str]] = []
    blackout = summary.get("blackout")
    if blackout:
        rows.append(
            [
                "network (ICMP)",
                _number(blackout.get("lower_ms")),
                _number(blackout.get("upper_ms")),
                blackout.get("source", ""),
            ]
        )
    hyperv = summary.get("hyperv") or {}
    window = hyperv.get("host_blackout")
    if window:
        rows.append(
            [
                "hypervisor (host polls: Paused -> Running)",
                _number(window["lower_ms"]),
                _number(window["upper_ms"]),
                window.get("source", ""),
            ]
        )
    reported = hyperv.get("reported")
    if reported and reported.get("blackout_s") is not None:
        value = reported["blackout_s"] * 1000
        half = reported.get("resolution_s", 0.1) * 500
        rows.append(
            [
                "hypervisor (as Hyper-V reports it)",
                _number(value - half, 0),
                _number(value + half, 0),
                reported.get("source", ""),
            ]
        )
    qemu = summary.get("qemu") or {}
    if qemu.get("stop_to_resume_ms") is not None:
        value = qemu["stop_to_resume_ms"]
        rows.append(
            ["hypervisor (QEMU STOP -> RESUME)", _number(value), _number(value), "qemu-events"]
        )
    if qemu.get("downtime_ms") is not None:
        rows.append(
            [
                "hypervisor (QEMU downtime, source side)",
                _number(qemu["downtime_ms"], 0),
                _number(qemu["downtime_ms"], 0),
                "qemu-query-migrate",
            ]
        )
    guest = (summary.get("guest") or {}).get("execution_gap")
    if guest:
        rows.append(
            [
                "guest execution gap (agent)",
                _number(guest["lower_ms"]),
                _number(guest["upper_ms"]),
                guest.get("source", ""),
            ]
        )
    decomposition = summary.get("decomposition") or {}
    reconvergence = decomposition.get("network_reconvergence")
    if reconvergence and reconvergence.get("lower_ms") is not None:
        rows.append(
            [
                "network reconvergence (after the resume)",
                _number(reconvergence["lower_ms"]),
                _number(reconvergence.get("upper_ms")),
                reconvergence.get("source", ""),
            ]
        )
    for direction in ("inbound", "outbound"):
        split = decomposition.get(f"{direction}_reconvergence")
        if split and split.get("lower_ms") is not None:
            towards = "to the guest" if direction == "inbound" else "from the guest"
            rows.append(
                [
                    f"  {direction} back ({towards})",
                    _number(split["lower_ms"]),
                    _number(split.get("upper_ms")),
                    split.get("source", ""),
                ]
            )
    if not rows:
        return []
    lines = ["", "Downtime by witness (ms)"]
    lines.extend(text_table(["witness", "lower", "upper", "source"], rows, align="lrrl"))
    truth = summary.get("ground_truth")
    if truth:
        lines.append(
            "  lab truth: pause -> resume "
            f"{_number(truth.get('pause_to_resume_ms'))} ms, pause -> network restored "
            f"{_number(truth.get('pause_to_network_restored_ms'))} ms"
        )
    points = decomposition.get("points") or {}
    if any((point or {}).get("at") for point in points.values()):
        marks = []
        for name in "ABCDEFGH":
            point = points.get(name) or {}
            at = point.get("at") or {}
            when = str(at.get("t_utc", ""))[11:23] if at.get("t_utc") else None
            marks.append(f"{name} {when}" if when else f"{name} {point.get('status', '?')}")
        lines.append("  points (UTC): " + ", ".join(marks))
    if qemu.get("outcome"):
        lines.append(
            f"  QEMU migration {qemu.get('source')} -> {qemu.get('destination')}: "
            f"{qemu['outcome']}, total {qemu.get('total_time_ms')} ms, setup "
            f"{qemu.get('setup_time_ms')} ms"
        )
    if hyperv.get("source"):
        lines.append(
            f"  migration {hyperv.get('vm')}: {hyperv['source']} -> {hyperv.get('destination')}"
        )
    return lines


def _applications(summary: Mapping[str, Any]) -> list[str]:
    """What applications felt: the TCP connect outages and the stream's stalls."""
    tcp = summary.get("tcp") or {}
    rows = []
    for name, port in (tcp.get("connect") or {}).items():
        longest = port.get("longest")
        if longest is None:
            none_failed = f"{port['attempts']} attempts, none failed"
            rows.append([f"TCP connect {name}", "-", "-", none_failed])
            continue
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(longest["outcomes"].items()))
        rows.append(
            [
                f"TCP connect {name}",
                _number(longest["lower_ms"]),
                _number(longest.get("upper_ms")),
                f"no new connection: {longest['failed']} attempts failed ({outcomes})",
            ]
        )
    stream = tcp.get("stream")
    if stream:
        for direction in ("inbound", "outbound"):
            stall = stream.get(direction)
            if stall:
                note = "still stalled at the end" if stall.get("open_end") else ""
                rows.append(
                    [
                        f"TCP stream stall, {direction}",
                        _number(stall["lower_ms"]),
                        _number(stall["upper_ms"]),
                        note,
                    ]
                )
    rows.extend(_brownout_rows(summary.get("brownout") or {}))
    if not rows:
        return []
    lines = ["", "What applications felt (ms)"]
    lines.extend(text_table(["witness", "lower", "upper", "note"], rows, align="lrrl"))
    if stream:
        survived = "survived" if stream["survived"] else "broke"
        lines.append(
            f"  the TCP stream {survived} ({stream['connections']} connection"
            f"{'s' if stream['connections'] != 1 else ''})"
        )
        beyond = stream.get("beyond_blackout")
        if beyond and beyond.get("beyond_ms") is not None:
            lines.append(
                f"  stall beyond the ICMP blackout: {_number(beyond['beyond_ms'])} ms "
                f"(bounds {_number(beyond['lower_ms'])} .. {_number(beyond.get('upper_ms'))})"
            )
        if stream.get("explanation"):
            lines.append(f"  {stream['explanation']}")
    return lines


def _brownout_rows(brownout: Mapping[str, Any]) -> list[list[str]]:
    """The guest's brownout before the blackout: its length with bounds, the
    work rate, and Hyper-V's / QEMU's figure beside it; no row for a run with
    none of these."""
    beside = []
    hyperv, qemu = brownout.get("hyperv"), brownout.get("qemu")
    if hyperv:
        beside.append(f"Hyper-V 22508: {_number(hyperv['brownout_ms'], 0)} ms")
    if qemu:
        beside.append(f"QEMU throttle up to {qemu['max_cpu_throttle_percentage']} %")
    measured = brownout.get("measured")
    if measured:
        note = f"work rate {measured['work_rate']:.2f} of normal"
        row = ["guest brownout", _number(measured["lower_ms"]), _number(measured["upper_ms"])]
        return [[*row, "; ".join([note, *beside])]]
    if not beside and not brownout.get("heartbeats_with_work"):
        return []
    return [["guest brownout", "-", "-", "; ".join([str(brownout.get("reason")), *beside])]]

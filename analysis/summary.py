"""``derived/summary.json``: the run's counts, outages and blackout as one document.

The document is a stable API that scripts and CI parse; docs/summary-format.md
describes every key. Later versions only add keys; a change that removes or
redefines one bumps ``runformat.SUMMARY_SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from migration_blackout.analysis.brownout import brownout_summary
from migration_blackout.analysis.console import console_document
from migration_blackout.analysis.decompose import decomposition_to_json
from migration_blackout.analysis.derive import Derived, derive
from migration_blackout.analysis.guest import guest_summary
from migration_blackout.analysis.hyperv_figures import hyperv_summary, truth_summary
from migration_blackout.analysis.icmp import BlackoutWindow, Outage, TargetIcmpSummary
from migration_blackout.analysis.outputs import replace_text
from migration_blackout.analysis.qemu import qemu_summary
from migration_blackout.analysis.rundata import manifest_icmp_interval_s
from migration_blackout.analysis.witness_summary import tcp_summary
from migration_blackout.runformat import (
    CONSOLE,
    SUMMARY_FILE,
    SUMMARY_SCHEMA_VERSION,
    RunFormatError,
    check_schema_version,
    package_version,
    utc_iso,
)


def _ms(value: float | None) -> float | None:
    """Milliseconds rounded to microseconds."""
    return None if value is None else round(value, 3)


def outage_to_json(outage: Outage) -> dict[str, Any]:
    return {
        "start_utc": outage.start_utc,
        "end_utc": outage.end_utc,
        "upper_start_utc": outage.upper_start_utc,
        "upper_end_utc": outage.upper_end_utc,
        "lower_ms": _ms(outage.lower_ms),
        "upper_ms": _ms(outage.upper_ms),
        "estimate_ms": _ms(outage.estimate_ms),
        "lost": outage.lost,
        "timeouts": outage.timeouts,
        "unreachable": outage.unreachable,
        "errors": outage.errors,
        "open_start": outage.open_start,
        "open_end": outage.open_end,
        "first_lost_n": outage.first_lost_n,
        "last_lost_n": outage.last_lost_n,
        "first_lost_send_mono_ns": outage.first_lost_send_mono_ns,
        "last_lost_send_mono_ns": outage.last_lost_send_mono_ns,
        "last_reply_before_send_mono_ns": outage.last_reply_before_send_mono_ns,
        "first_reply_after_send_mono_ns": outage.first_reply_after_send_mono_ns,
    }


def target_to_json(target: TargetIcmpSummary) -> dict[str, Any]:
    ratio = target.achieved_rate_ratio
    return {
        "send_clock": target.send_clock,
        "sent": target.sent,
        "replies": target.replies,
        "timeouts": target.timeouts,
        "unreachable": target.unreachable,
        "errors": target.errors,
        "unresolved": target.unresolved,
        "duplicates": target.duplicates,
        "late": target.late,
        "first_send_utc": _utc(target.first_send_utc_ns),
        "last_send_utc": _utc(target.last_send_utc_ns),
        "interval_ms": {
            "requested": _ms(target.requested_interval_ms),
            "achieved_median": _ms(target.achieved_median_interval_ms),
            "achieved_mean": _ms(target.achieved_mean_interval_ms),
            "jitter_p99": _ms(target.jitter_p99_ms),
        },
        "achieved_rate_ratio": None if ratio is None else round(ratio, 4),
        "outages": [outage_to_json(outage) for outage in target.outages],
    }


def blackout_to_json(blackout: BlackoutWindow) -> dict[str, Any]:
    return {
        "source": blackout.source,
        **outage_to_json(blackout.outage),
        "timeouts_outside": blackout.timeouts_outside,
        "unreachable_outside": blackout.unreachable_outside,
        "errors_outside": blackout.errors_outside,
    }


def _utc(utc_ns: int | None) -> str | None:
    return None if utc_ns is None else utc_iso(utc_ns)


def _icmp_warnings(derived: Derived) -> list[str]:
    """What a reader of the ICMP blackout should know about its raw file."""
    run, source = derived.run, derived.timeline.icmp_source
    if source is None:
        return []
    if not source.present:
        # A run that failed before its probe wrote anything still gets a summary.
        return [f"the icmp probe file {source.file} does not exist (run {run.manifest.status})"]
    warnings = []
    if source.partial_last_line:
        warnings.append(
            f"{source.file} ends in a partial line (the writer stopped mid-row); "
            "that line was ignored"
        )
    header_s, manifest_s = source.header_interval_s, manifest_icmp_interval_s(run)
    if header_s is not None and manifest_s is not None and manifest_s != header_s:
        warnings.append(
            f"icmp interval_s differs: {header_s} in the raw header, {manifest_s} in the "
            "manifest; the raw header's is used"
        )
    return warnings


def summary_document(derived: Derived) -> dict[str, Any]:
    """The summary document of a derived run (nothing is written)."""
    run, timeline, icmp = derived.run, derived.timeline, derived.icmp
    error = run.manifest.error
    blackout = None if icmp is None or icmp.blackout is None else blackout_to_json(icmp.blackout)
    guest_streams = derived.guest
    guest = (
        None
        if guest_streams.heartbeat is None and guest_streams.frames is None
        else guest_summary(guest_streams)
    )
    console = timeline.console_records
    console_file = run.probe_file(CONSOLE.probe)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "kind": "summary",
        "run_id": run.manifest.run_id,
        "status": run.manifest.status,
        "error": None if error is None else {"type": error.type, "message": error.message},
        "generated_by": f"migration-blackout {package_version()}",
        "warnings": [*_icmp_warnings(derived), *derived.raw_warnings],
        "icmp": {} if icmp is None else {t.target: target_to_json(t) for t in icmp.targets},
        "blackout": blackout,
        "hyperv": hyperv_summary(run, timeline.polls, timeline.hyperv_events),
        "qemu": qemu_summary(
            derived.qemu,
            icmp_blackout=blackout,
            guest_gap=None if guest is None else guest.get("execution_gap"),
        ),
        "guest": guest,
        "console": None
        if console is None
        else console_document(
            console,
            file=str(console_file.relative_to(run.path)) if console_file else CONSOLE.path,
            analysis=derived.console,
        ),
        "decomposition": decomposition_to_json(derived.decomposition, timeline)
        if derived.has_witnesses
        else None,
        "tcp": tcp_summary(derived.witnesses, blackout=blackout),
        "brownout": brownout_summary(
            derived.work,
            timeline,
            reported=derived.decomposition.reported_blackout,
            qemu=derived.qemu,
        ),
        "ground_truth": None
        if timeline.ground_truth is None
        else truth_summary(timeline.ground_truth),
    }


def build_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary document of a run folder (nothing is written)."""
    return summary_document(derive(run_dir))


def write_summary(run: Derived | str | os.PathLike[str]) -> Path:
    """Write the summary to ``derived/summary.json`` of the run folder (replacing it)."""
    derived = run if isinstance(run, Derived) else derive(run)
    document = summary_document(derived)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    return replace_text(derived.run.path / SUMMARY_FILE, text)


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a summary.json, refusing a schema version this release cannot read."""
    path = Path(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("kind") != "summary":
        raise RunFormatError(f"{path} is not a migration-blackout summary")
    check_schema_version(
        document.get("schema_version"), supported=SUMMARY_SCHEMA_VERSION, what=str(path)
    )
    return document

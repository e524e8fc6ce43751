"""``derived/summary.json``: the run's counts, outages and blackout as one document.

The document is a stable API that scripts and CI parse; docs/summary-format.md
describes every key. Later versions only add keys; a change that removes or
redefines one bumps ``SUMMARY_SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from migration_blackout.analysis.console import console_summary
from migration_blackout.analysis.decompose import decomposition_summary
from migration_blackout.analysis.guest import analyse_guest, guest_summary
from migration_blackout.analysis.hyperv_figures import (
    hyperv_summary,
    load_ground_truth,
    truth_summary,
)
from migration_blackout.analysis.icmp import (
    BlackoutWindow,
    IcmpAnalysis,
    Outage,
    TargetIcmpSummary,
    analyse_icmp,
    utc_iso,
)
from migration_blackout.analysis.outputs import replace_text
from migration_blackout.analysis.qemu import qemu_summary
from migration_blackout.analysis.runfolder import (
    RunFolder,
    RunFormatError,
    check_schema_version,
    load_icmp,
    load_run,
    package_version,
    raw_data_warnings,
    requested_icmp_interval_s,
)
from migration_blackout.analysis.witness_summary import tcp_summary

# Version history of derived/summary.json (docs/summary-format.md has the details):
#   1 (0.1.0): first version.
SUMMARY_SCHEMA_VERSION = 1

SUMMARY_FILE = Path("derived") / "summary.json"


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


def _analyse_run_icmp(run: RunFolder, warnings: list[str]) -> IcmpAnalysis | None:
    path = run.probe_file("icmp")
    if path is None:
        return None
    if not path.is_file() and run.manifest.status != "completed":
        # A run that failed before its probe wrote anything still gets a summary.
        warnings.append(
            f"the icmp probe file {path.relative_to(run.path)} does not exist "
            f"(run {run.manifest.status})"
        )
        return None
    records = load_icmp(run)
    if records is None:
        return None
    if records.dropped_partial_last_line:
        warnings.append(
            f"{records.path.relative_to(run.path)} ends in a partial line "
            "(the writer stopped mid-row); that line was ignored"
        )
    header_s = records.interval_s
    config = run.manifest.config.get("icmp")
    config_s = config.get("interval_s") if isinstance(config, dict) else None
    if header_s is not None and isinstance(config_s, int | float) and config_s != header_s:
        warnings.append(
            f"icmp interval_s differs: {header_s} in the raw header, {config_s} in the "
            "manifest config; the raw header's is used"
        )
    header_targets = records.targets or tuple(t for t in run.manifest.targets if isinstance(t, str))
    return analyse_icmp(
        records.frame,
        requested_interval_s=requested_icmp_interval_s(run, records),
        targets=header_targets,
    )


def _guest(run_dir: Path) -> dict[str, Any] | None:
    """The in-guest agent's evidence, or None when the run had no agent."""
    analysis = analyse_guest(run_dir)
    if analysis.heartbeat is None and analysis.frames is None:
        return None
    return guest_summary(analysis)


def build_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary document of a run folder (nothing is written).

    Lines of raw files that are not records are skipped; each file's count
    (a ``RawDataWarning``) lands in ``warnings``.
    """
    with raw_data_warnings() as skipped:
        document = _build_summary(run_dir)
    document["warnings"].extend(skipped)
    return document


def _build_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    run = load_run(run_dir)
    warnings: list[str] = []
    icmp = _analyse_run_icmp(run, warnings)
    truth = load_ground_truth(run)
    error = run.manifest.error
    blackout = None if icmp is None or icmp.blackout is None else blackout_to_json(icmp.blackout)
    guest = _guest(run.path)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "kind": "summary",
        "run_id": run.manifest.run_id,
        "status": run.manifest.status,
        "error": None if error is None else {"type": error.type, "message": error.message},
        "generated_by": f"migration-blackout {package_version()}",
        "warnings": warnings,
        "icmp": {} if icmp is None else {t.target: target_to_json(t) for t in icmp.targets},
        "blackout": blackout,
        "hyperv": hyperv_summary(run),
        "qemu": qemu_summary(
            run,
            icmp_blackout=blackout,
            guest_gap=None if guest is None else guest.get("execution_gap"),
        ),
        "guest": guest,
        "console": console_summary(run),
        "decomposition": decomposition_summary(run),
        "tcp": tcp_summary(run.path, blackout=blackout),
        "ground_truth": None if truth is None else truth_summary(truth),
    }


def write_summary(run_dir: str | os.PathLike[str]) -> Path:
    """Build the summary and write it to ``run_dir/derived/summary.json`` (replacing it)."""
    document = build_summary(run_dir)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    return replace_text(Path(run_dir) / SUMMARY_FILE, text)


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

"""What QEMU said about a migration (``raw/qemu_migration.jsonl``), beside what
the probes measured.

QEMU gives two figures that are easily confused: ``downtime`` (measured on the
source only, from the stop of the vCPUs to the end of the last transfer, as
the source sees it) and STOP -> RESUME (the source's STOP event to the
destination's RESUME event, on QEMU's own timestamps). The summary keeps them
apart, and the cross-check says how much longer the guest was unreachable
(ICMP) or not running (heartbeat) than QEMU's STOP -> RESUME: the guest
answering again and the network, not the hypervisor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migration_blackout.analysis.rundata import RunData, read_jsonl
from migration_blackout.runformat import QEMU_MIGRATION


@dataclass(frozen=True)
class QemuRecords:
    """``raw/qemu_migration.jsonl``: its header and its records, as QEMU said them."""

    header: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def result(self) -> dict[str, Any] | None:
        """The migration's final ``result`` record, None before one was written."""
        return next((r for r in reversed(self.records) if r.get("event") == "result"), None)


def load_qemu_records(run: RunData) -> QemuRecords | None:
    """The run's QEMU migration record, None when QEMU did not run."""
    path = run.probe_file(QEMU_MIGRATION.probe)
    if path is None or not path.exists():
        return None
    raw = read_jsonl(path, what=f"{path.name} (QEMU migration raw file)")
    return QemuRecords(raw.header, raw.records)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _excess(measured: dict[str, Any] | None, reference_ms: float | None) -> dict[str, Any] | None:
    if measured is None or reference_ms is None:
        return None
    lower, upper = measured.get("lower_ms"), measured.get("upper_ms")
    return {
        "source": measured.get("source"),
        "lower_ms": None if lower is None else _ms(lower - reference_ms),
        "upper_ms": None if upper is None else _ms(upper - reference_ms),
        "contains_stop_to_resume": (None if upper is None else bool(upper >= reference_ms)),
    }


def qemu_summary(
    qemu: QemuRecords | None,
    *,
    icmp_blackout: dict[str, Any] | None = None,
    guest_gap: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The ``qemu`` block of summary.json, or None when QEMU did not run."""
    if qemu is None:
        return None
    header, records, result = qemu.header, qemu.records, qemu.result
    events = [r for r in records if r.get("event") == "qmp_event"]
    polls = [r for r in records if r.get("event") == "migrate_poll"]
    document: dict[str, Any] = {
        "source": header.get("source"),
        "destination": header.get("destination"),
        "uri": header.get("uri"),
        "settings": header.get("settings"),
        "polls": len(polls),
        "events": sorted({str(e.get("name")) for e in events}),
        "outcome": None,
    }
    if result is None:
        return document
    stop_to_resume = result.get("stop_to_resume_ms")

    def edge(name: str) -> dict[str, Any] | None:
        event = result.get(name)
        if not event:
            return None
        return {"qemu_utc_ns": event.get("qemu_utc_ns"), "qemu_mono_ns": event.get("qemu_mono_ns")}

    document.update(
        {
            "outcome": result.get("outcome"),
            "error": result.get("error"),
            "stop_to_resume_ms": _ms(stop_to_resume),
            "downtime_ms": result.get("downtime_ms"),
            "downtime_measured_on": "source",
            "setup_time_ms": result.get("setup_time_ms"),
            "total_time_ms": result.get("total_time_ms"),
            "ram": result.get("ram"),
            "memory_check": result.get("memory"),
            "announced": result.get("announced"),
            "stop": edge("stop"),
            "resume": edge("resume"),
            "cross_check": {
                "icmp_beyond_stop_to_resume": _excess(icmp_blackout, stop_to_resume),
                "heartbeat_beyond_stop_to_resume": _excess(guest_gap, stop_to_resume),
            },
        }
    )
    return document

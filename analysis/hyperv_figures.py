"""What the hypervisor hosts said: state edges from the polls, Hyper-V's own
blackout figure from its event log, and (for the emulated lab) the truth.

Host-poll bounds use only the harness's clock: a poll observed the VM at some
instant between its send and its receive, so an edge between two polls lies
between the earlier poll's send and the later poll's receive. No host clock
enters these bounds; the host's own ``Get-Date`` reading in each poll is kept
for the timeline (mapped with the run's clock offsets, see ``host_to_harness``).

The hypervisor blackout from the polls runs from the source pausing the VM to
the destination running it:

* the pause lies in ``(send(last Running poll on source), recv(first later
  poll on source that is not Running)]``;
* the resume lies in ``(send(last poll on destination not Running),
  recv(first Running poll on destination)]``;
* lower = earliest resume - latest pause, upper = latest resume - earliest pause.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from migration_blackout.analysis.rundata import RunData, read_jsonl, read_jsonl_columns
from migration_blackout.runformat import (
    GROUND_TRUTH,
    HOST_PROBE_PREFIX,
    HYPERV_EVENTS,
    POLL_OK,
)

# Hyper-V's migration events: 20415 (20417 over the critical level) carries
# the VM's name, its id and the blackout in seconds as event data
# Parameter0..2; the English message is a fallback for older run folders.
BLACKOUT_EVENT_IDS = (20415, 20417)
BLACKOUT_DATA_POSITION = 2
_SECONDS = r"([0-9]+(?:[.,][0-9]+)?) seconds"
_BLACKOUT_RE = re.compile(rf"blackout time of {_SECONDS}|blackout (?:took )?{_SECONDS}", re.I)
_BROWNOUT_RE = re.compile(rf"brownout[^0-9]*{_SECONDS}", re.I)
_DIRTY_RE = re.compile(r"([0-9]+) dirty pages", re.I)


@dataclass(frozen=True)
class StateEdge:
    """A change of what a host reports, bracketed on the harness monotonic clock."""

    host: str
    before: str  # e.g. "Running"
    after: str  # e.g. "Paused", "unlisted"
    after_mono_ns: int  # the edge happened after this (send of the last poll before)
    by_mono_ns: int  # ... and no later than this (receive of the first poll after)


@dataclass(frozen=True)
class HostBlackout:
    """Source pause to destination running, from the host polls."""

    pause: StateEdge
    resume: StateEdge
    lower_ms: float
    upper_ms: float
    source: str = "host-polls"


def _read_jsonl(path: Path, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = read_jsonl(path, what=what)
    return raw.header, raw.records


def load_host_polls(run: RunData) -> pd.DataFrame:
    """Every host poll of the run, one row each, sorted by send time."""
    frames = []
    for probe in run.manifest.probes:
        if not probe.startswith(HOST_PROBE_PREFIX):
            continue
        path = run.probe_file(probe)
        if path is None or not path.exists():
            continue
        raw = read_jsonl_columns(path, what=f"{path.name} (host-state raw file)", event="poll")
        if not raw.rows:
            continue
        frame = pd.DataFrame(raw.columns)
        frame["host"] = raw.header.get("host", probe.removeprefix(HOST_PROBE_PREFIX))
        frame["role"] = raw.header.get("role")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(
            columns=["host", "role", "send_mono_ns", "recv_mono_ns", "listed", "state"]
        )
    polls = pd.concat(frames, ignore_index=True)
    ok = polls["outcome"] == POLL_OK
    polls["seen"] = "error"
    polls.loc[ok & ~polls["listed"].fillna(False).astype(bool), "seen"] = "unlisted"
    listed = ok & polls["listed"].fillna(False).astype(bool)
    polls.loc[listed, "seen"] = polls.loc[listed, "state"].astype(str)
    return polls.sort_values(["host", "send_mono_ns"], kind="stable").reset_index(drop=True)


def _first_edge(
    polls: pd.DataFrame,
    host: str,
    *,
    leaving: str | None,
    entering: str | None,
    after_mono_ns: int | None = None,
) -> StateEdge | None:
    """The first change on ``host`` away from ``leaving`` (or into ``entering``),
    ignoring polls that failed (they observed nothing)."""
    mine = polls[(polls["host"] == host) & (polls["seen"] != "error")]
    if after_mono_ns is not None:
        mine = mine[mine["recv_mono_ns"] > after_mono_ns]
    seen = mine["seen"].to_numpy()
    if len(seen) < 2:
        return None
    if leaving is not None:
        hits = (seen[:-1] == leaving) & (seen[1:] != leaving)
    else:
        hits = (seen[:-1] != entering) & (seen[1:] == entering)
    index = hits.nonzero()[0]
    if len(index) == 0:
        return None
    i = int(index[0])
    return StateEdge(
        host=host,
        before=str(seen[i]),
        after=str(seen[i + 1]),
        after_mono_ns=int(mine["send_mono_ns"].iloc[i]),
        by_mono_ns=int(mine["recv_mono_ns"].iloc[i + 1]),
    )


def host_blackout(polls: pd.DataFrame, source: str, destination: str) -> HostBlackout | None:
    """The pause-to-running window, or None if the polls do not show both edges."""
    pause = _first_edge(polls, source, leaving="Running", entering=None)
    if pause is None:
        return None
    resume = _first_edge(
        polls, destination, leaving=None, entering="Running", after_mono_ns=pause.after_mono_ns
    )
    if resume is None:
        return None
    lower = max(0, resume.after_mono_ns - pause.by_mono_ns) / 1e6
    upper = (resume.by_mono_ns - pause.after_mono_ns) / 1e6
    return HostBlackout(pause=pause, resume=resume, lower_ms=lower, upper_ms=upper)


def load_hyperv_events(run: RunData) -> list[dict[str, Any]]:
    path = run.probe_file(HYPERV_EVENTS.probe)
    if path is None or not path.exists():
        return []
    _header, records = _read_jsonl(path, f"{path.name} (Hyper-V events raw file)")
    return [r for r in records if r.get("event") == "win_event"]


def _seconds(pattern: re.Pattern[str], message: str) -> float | None:
    match = pattern.search(message)
    if not match:
        return None
    value = next(group for group in match.groups() if group is not None)
    return float(value.replace(",", "."))


def _number(text: str | None) -> float | None:
    """A figure from event data: "1.4", or "1,4" where the host's locale says so."""
    if text is None:
        return None
    try:
        return float(str(text).strip().replace(",", "."))
    except ValueError:
        return None


def _data(event: Mapping[str, Any], position: int) -> str | None:
    """The event data value at ``position`` (document order), or None."""
    data = event.get("event_data") or {}
    values = list(data.values()) if isinstance(data, Mapping) else []
    return None if position >= len(values) else str(values[position])


def _about_the_vm(event: Mapping[str, Any], vm: str) -> bool:
    if "matches_vm" in event and event.get("event_data"):
        return bool(event["matches_vm"])
    return vm.lower() in (event.get("message") or "").lower()


def _blackout_s(event: Mapping[str, Any]) -> tuple[float | None, str]:
    """20415/20417's blackout: event data Parameter2 (independent of the
    host's language), else the English message (older run folders)."""
    figure = _number(_data(event, BLACKOUT_DATA_POSITION))
    if figure is not None:
        return figure, "event-data"
    return _seconds(_BLACKOUT_RE, event.get("message") or ""), "message"


def reported_blackout(events: Sequence[Mapping[str, Any]], vm: str) -> dict[str, Any] | None:
    """Hyper-V's own blackout figure (event 20415, or 20417 when over the critical
    level), with the brownout and dirty pages from the Worker-Admin events.

    Figures come from the events' data (UserData/VmlEventLog Parameter0..n:
    the same on an English and a Japanese host); the English message is read
    only for an event without data (run folders harvested before the data
    was kept)."""
    mine = [e for e in events if _about_the_vm(e, vm)]
    # The latest one: the harvest asks for this migration's events only, but an
    # older run folder may hold an earlier migration's event as well.
    blackout = None
    for event in sorted(mine, key=lambda e: str(e.get("time_created")), reverse=True):
        if event.get("id") in BLACKOUT_EVENT_IDS and _blackout_s(event)[0] is not None:
            blackout = event
            break
    if blackout is None:
        return None
    seconds, figures_from = _blackout_s(blackout)
    document: dict[str, Any] = {
        "blackout_s": seconds,
        "event_id": blackout["id"],
        "critical": blackout["id"] == 20417,
        "host": blackout.get("host"),
        "time_created": blackout.get("time_created"),
        "resolution_s": 0.1,
        "source": f"hyperv-event:{blackout['id']}",
        "figures_from": figures_from,
    }
    for event in mine:
        message = event.get("message") or ""
        if event.get("id") == 22508 and "brownout_s" not in document:
            brownout = _number(_data(event, 2))
            document["brownout_s"] = (
                brownout if brownout is not None else _seconds(_BROWNOUT_RE, message)
            )
        if event.get("id") == 22509 and "dirty_pages" not in document:
            pages = _number(_data(event, 3))
            if pages is None:
                match = _DIRTY_RE.search(message)
                pages = None if match is None else float(match.group(1))
            document["dirty_pages"] = None if pages is None else int(pages)
    return document


def load_ground_truth(run: RunData) -> list[dict[str, Any]] | None:
    """The emulated lab's state changes during the run, or None for real hosts."""
    path = run.probe_file(GROUND_TRUTH.probe)
    if path is None or not path.exists():
        return None
    _header, records = _read_jsonl(path, f"{path.name} (lab ground truth)")
    return [r for r in records if r.get("kind") == "event"]


def truth_summary(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The lab's true intervals of the (first) migration in the run."""
    first: dict[str, Mapping[str, Any]] = {}
    for event in events:
        first.setdefault(str(event.get("event")), event)

    def span(start: str, end: str) -> float | None:
        if start in first and end in first:
            return round((first[end]["mono_ns"] - first[start]["mono_ns"]) / 1e6, 3)
        return None

    return {
        "events": {
            name: {"mono_ns": e["mono_ns"], "utc": e.get("utc")} for name, e in first.items()
        },
        "pause_to_resume_ms": span("pause", "resume"),
        "pause_to_network_restored_ms": span("pause", "network_restored"),
        "resume_to_network_restored_ms": span("resume", "network_restored"),
        "reported_blackout_s": first.get("resume", {}).get("blackout_s"),
    }


def _edge_json(edge: StateEdge) -> dict[str, Any]:
    return {
        "host": edge.host,
        "from": edge.before,
        "to": edge.after,
        "after_mono_ns": edge.after_mono_ns,
        "by_mono_ns": edge.by_mono_ns,
        "window_ms": round((edge.by_mono_ns - edge.after_mono_ns) / 1e6, 3),
    }


def hyperv_summary(
    run: RunData, polls: pd.DataFrame, events: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The ``hyperv`` block of summary.json, or None for runs without hosts.

    ``polls`` and ``events``: the run's host polls (``load_host_polls``, or the
    timeline's, which adds columns) and Hyper-V events (``load_hyperv_events``)."""
    document = run.manifest.document
    hyperv: Mapping[str, Any] = document.get("hyperv") or {}
    if not hyperv and not any(p.startswith(HOST_PROBE_PREFIX) for p in run.manifest.probes):
        return None
    config = run.manifest.config
    vm = str(config.get("vm") or "")
    source, destination = hyperv.get("source"), hyperv.get("destination")
    window = (
        None
        if not source or not destination or polls.empty
        else host_blackout(polls, source, destination)
    )
    per_host = {}
    for host, group in polls.groupby("host"):
        per_host[str(host)] = {
            "polls": len(group),
            "failed": int((group["outcome"] != POLL_OK).sum()),
            "states_seen": sorted(set(group["seen"].astype(str))),
        }
    return {
        "vm": vm,
        "source": source,
        "destination": destination,
        "polls": per_host,
        "host_blackout": None
        if window is None
        else {
            "lower_ms": round(window.lower_ms, 3),
            "upper_ms": round(window.upper_ms, 3),
            "pause": _edge_json(window.pause),
            "resume": _edge_json(window.resume),
            "source": window.source,
        },
        "reported": reported_blackout(events, vm),
        "clock": hyperv.get("clock"),
    }

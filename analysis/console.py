"""The console blackout: what the VM's screen did, from ``raw/console.jsonl``.

The console-view probe (``probes/console_view.py``) classified every sample of
the VM's screen as ``changed``, ``unchanged``, ``black`` or ``unavailable`` (no
host lists the VM, or the poll failed). Here, ``black`` and ``unavailable`` are
*abnormal*, everything else *normal*.

**Episodes.** Abnormal samples group into episodes. A normal interlude between
two abnormal samples at most ``interlude_max_s`` apart (receive of the one
before to send of the one after) belongs to the episode: that is the
write-up's reconnect, where VM Connection shows "Connecting to <vm>...", then
black again, then the desktop (points F-H). The console blackout is the
longest episode.

**Bounds**, on the harness monotonic clock only. A sample saw the screen at
some instant between its send and its receive, so

* the screen left normal in ``(send(last normal before), recv(first abnormal)]``;
* it was normal again in ``(send(last abnormal), recv(first normal after)]``;
* ``upper = recv(first normal after) - send(last normal before)``;
* ``lower = max(0, send(last abnormal) - recv(first abnormal))``;
* ``estimate`` runs from the midpoint of the first two samples' midpoints to
  that of the last two.

The first normal sample after a black one always differs from it, so it is
also the first *changed* desktop.

**Views** name each sample for the sequence: ``unavailable``, ``black``,
``connecting`` (a normal screen that is mostly dark, ``dark_fraction >=
dim_dark_fraction``: light text on black, as VM Connection's "Connecting to
...") and ``desktop``. ``connecting`` is a heuristic from the screen's
numbers: a desktop with a dark wallpaper looks the same.

**Host switch.** The VM Connection title names the host running the VM; here
the host that served the last normal screen before and the first normal screen
after. When they differ, the switch lies between the send of the last sample
served by the old host and the receive of the first served by the new one.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration_blackout.analysis.rundata import RunData, load_run, read_jsonl, warn_skipped
from migration_blackout.runformat import (
    CONSOLE,
    CONSOLE_BLACK,
    CONSOLE_UNAVAILABLE,
    utc_iso,
)

DEFAULT_INTERLUDE_MAX_S = 3.0
DEFAULT_DIM_DARK_FRACTION = 0.8

ABNORMAL = frozenset({CONSOLE_BLACK, CONSOLE_UNAVAILABLE})


@dataclass(frozen=True)
class ConsoleSample:
    """One poll of the VM's screen (harness clocks, ns)."""

    k: int
    send_mono_ns: int
    recv_mono_ns: int
    send_utc_ns: int
    recv_utc_ns: int
    host: str | None
    classification: str
    mean_luma: float | None
    dark_fraction: float | None
    changed_fraction: float | None
    image: str | None  # relative to the run folder, where the screen was saved

    @property
    def abnormal(self) -> bool:
        return self.classification in ABNORMAL

    @property
    def mid_mono_ns(self) -> int:
        return (self.send_mono_ns + self.recv_mono_ns) // 2

    def view(self, dim_dark_fraction: float) -> str:
        if self.abnormal:
            return self.classification
        if self.dark_fraction is not None and self.dark_fraction >= dim_dark_fraction:
            return "connecting"
        return "desktop"


@dataclass(frozen=True)
class SequenceStep:
    """Consecutive samples with the same view from the same host."""

    view: str
    host: str | None
    first: ConsoleSample
    last: ConsoleSample
    samples: int


@dataclass(frozen=True)
class HostSwitch:
    """The console's title host changed in ``(after_mono_ns, by_mono_ns]``."""

    from_host: str
    to_host: str
    after_mono_ns: int  # send of the last sample the old host served
    by_mono_ns: int  # receive of the first sample the new host served


@dataclass(frozen=True)
class ConsoleBlackout:
    """One episode of an abnormal screen, bracketed by the samples around it."""

    last_normal_before: ConsoleSample | None  # None: the record starts abnormal
    first_abnormal: ConsoleSample
    last_abnormal: ConsoleSample
    first_normal_after: ConsoleSample | None  # None: the record ends abnormal
    lower_ms: float
    upper_ms: float | None  # None when open at either end
    estimate_ms: float | None
    black_samples: int
    unavailable_samples: int
    interlude_samples: int  # normal samples inside the episode (the reconnect)
    host_switch: HostSwitch | None
    sequence: tuple[SequenceStep, ...]  # first abnormal .. first normal after
    source: str = "console-thumbnail"

    @property
    def host_before(self) -> str | None:
        return None if self.last_normal_before is None else self.last_normal_before.host

    @property
    def host_after(self) -> str | None:
        return None if self.first_normal_after is None else self.first_normal_after.host

    @property
    def start_after_mono_ns(self) -> int | None:
        return None if self.last_normal_before is None else self.last_normal_before.send_mono_ns

    @property
    def end_by_mono_ns(self) -> int | None:
        return None if self.first_normal_after is None else self.first_normal_after.recv_mono_ns


@dataclass(frozen=True)
class ConsoleRecords:
    header: dict[str, Any]
    samples: tuple[ConsoleSample, ...]


@dataclass(frozen=True)
class ConsoleAnalysis:
    samples: int
    classifications: dict[str, int]
    frames_by_host: dict[str, int]
    images: int
    episodes: tuple[ConsoleBlackout, ...]
    blackout: ConsoleBlackout | None  # the longest episode


# ---- reading ----------------------------------------------------------------------


def _int(value: Any) -> int:
    return int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def load_console(path: str | os.PathLike[str]) -> ConsoleRecords:
    """Read ``raw/console.jsonl``; refuses unknown schema versions.

    A last line without its newline (the writer stopped mid-line) is left out.
    Images saved after their poll (``image_saved`` events) are joined to it.
    """
    path = Path(path)
    raw = read_jsonl(path, what=f"{path.name} (console raw file)")
    header, records = raw.header, raw.records
    saved_later = {}
    for record in records:
        if record.get("event") == "image_saved" and isinstance(record.get("k"), int):
            saved_later[record["k"]] = str(record.get("image"))
    samples = []
    unreadable, first_unreadable = 0, ""
    for record in records:
        if record.get("event") != "poll":
            continue
        try:
            k = _int(record["k"])
            sample = ConsoleSample(
                k=k,
                send_mono_ns=_int(record["send_mono_ns"]),
                recv_mono_ns=_int(record["recv_mono_ns"]),
                send_utc_ns=_int(record["send_utc_ns"]),
                recv_utc_ns=_int(record["recv_utc_ns"]),
                host=record.get("host"),
                classification=str(record["classification"]),
                mean_luma=_float(record.get("mean_luma")),
                dark_fraction=_float(record.get("dark_fraction")),
                changed_fraction=_float(record.get("changed_fraction")),
                image=record.get("image") or saved_later.get(k),
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            unreadable += 1
            first_unreadable = first_unreadable or f"poll k={record.get('k')!r}"
            continue
        samples.append(sample)
    if unreadable:
        warn_skipped(
            f"{path.name} (console raw file)",
            unreadable,
            f"{first_unreadable}, a poll without its stamps or classification",
        )
    samples.sort(key=lambda s: s.send_mono_ns)
    return ConsoleRecords(header=header, samples=tuple(samples))


# ---- analysis ---------------------------------------------------------------------


def _episodes(samples: tuple[ConsoleSample, ...], interlude_max_ns: int) -> list[tuple[int, int]]:
    """(first, last) indices of abnormal samples, merged across short interludes."""
    groups: list[tuple[int, int]] = []
    for i, sample in enumerate(samples):
        if not sample.abnormal:
            continue
        if groups:
            first, last = groups[-1]
            adjacent = i == last + 1
            short = sample.send_mono_ns - samples[last].recv_mono_ns <= interlude_max_ns
            if adjacent or short:
                groups[-1] = (first, i)
                continue
        groups.append((i, i))
    return groups


def _sequence(
    samples: tuple[ConsoleSample, ...], dim_dark_fraction: float
) -> tuple[SequenceStep, ...]:
    steps: list[SequenceStep] = []
    for sample in samples:
        view = sample.view(dim_dark_fraction)
        last = steps[-1] if steps else None
        if last is not None and last.view == view and last.host == sample.host:
            steps[-1] = SequenceStep(view, sample.host, last.first, sample, last.samples + 1)
        else:
            steps.append(SequenceStep(view, sample.host, sample, sample, 1))
    return tuple(steps)


def _host_switch(
    span: tuple[ConsoleSample, ...], before: str | None, after: str | None
) -> HostSwitch | None:
    if before is None or after is None or before == after:
        return None
    last_old = max((s for s in span if s.host == before), key=lambda s: s.send_mono_ns)
    first_new = min((s for s in span if s.host == after), key=lambda s: s.send_mono_ns)
    return HostSwitch(
        from_host=before,
        to_host=after,
        after_mono_ns=last_old.send_mono_ns,
        by_mono_ns=first_new.recv_mono_ns,
    )


def _blackout(
    samples: tuple[ConsoleSample, ...], first: int, last: int, dim_dark_fraction: float
) -> ConsoleBlackout:
    before = samples[first - 1] if first > 0 else None
    after = samples[last + 1] if last + 1 < len(samples) else None
    inside = samples[first : last + 1]
    start, end = samples[first], samples[last]
    lower_ms = max(0, end.send_mono_ns - start.recv_mono_ns) / 1e6
    upper_ms = estimate_ms = None
    if before is not None and after is not None:
        upper_ms = (after.recv_mono_ns - before.send_mono_ns) / 1e6
        estimate_ms = (
            (end.mid_mono_ns + after.mid_mono_ns) / 2 - (before.mid_mono_ns + start.mid_mono_ns) / 2
        ) / 1e6
    span = samples[max(first - 1, 0) : last + 2]
    counts = Counter(s.classification for s in inside)
    return ConsoleBlackout(
        last_normal_before=before,
        first_abnormal=start,
        last_abnormal=end,
        first_normal_after=after,
        lower_ms=lower_ms,
        upper_ms=upper_ms,
        estimate_ms=estimate_ms,
        black_samples=counts[CONSOLE_BLACK],
        unavailable_samples=counts[CONSOLE_UNAVAILABLE],
        interlude_samples=sum(1 for s in inside if not s.abnormal),
        host_switch=_host_switch(
            span,
            None if before is None else before.host,
            None if after is None else after.host,
        ),
        sequence=_sequence(samples[first : last + 2], dim_dark_fraction),
    )


def analyse_console(
    samples: tuple[ConsoleSample, ...],
    *,
    interlude_max_s: float = DEFAULT_INTERLUDE_MAX_S,
    dim_dark_fraction: float = DEFAULT_DIM_DARK_FRACTION,
) -> ConsoleAnalysis:
    """Episodes of an abnormal screen and the console blackout (the longest)."""
    ordered = tuple(sorted(samples, key=lambda s: s.send_mono_ns))
    episodes = tuple(
        _blackout(ordered, first, last, dim_dark_fraction)
        for first, last in _episodes(ordered, int(interlude_max_s * 1e9))
    )

    def length(episode: ConsoleBlackout) -> float:
        return episode.upper_ms if episode.upper_ms is not None else episode.lower_ms

    return ConsoleAnalysis(
        samples=len(ordered),
        classifications=dict(Counter(s.classification for s in ordered)),
        frames_by_host=dict(Counter(s.host for s in ordered if s.host is not None)),
        images=sum(1 for s in ordered if s.image),
        episodes=episodes,
        blackout=max(episodes, key=length) if episodes else None,
    )


# ---- summary.json -------------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _to_utc(sample: ConsoleSample, mono_ns: float) -> str:
    return utc_iso(int(mono_ns + (sample.send_utc_ns - sample.send_mono_ns)))


def _sample_json(sample: ConsoleSample | None) -> dict[str, Any] | None:
    if sample is None:
        return None
    return {
        "k": sample.k,
        "host": sample.host,
        "classification": sample.classification,
        "send_mono_ns": sample.send_mono_ns,
        "recv_mono_ns": sample.recv_mono_ns,
        "send_utc": utc_iso(sample.send_utc_ns),
        "recv_utc": utc_iso(sample.recv_utc_ns),
        "image": sample.image,
    }


def _step_json(step: SequenceStep) -> dict[str, Any]:
    return {
        "view": step.view,
        "host": step.host,
        "samples": step.samples,
        "first_k": step.first.k,
        "last_k": step.last.k,
        "first_send_mono_ns": step.first.send_mono_ns,
        "last_recv_mono_ns": step.last.recv_mono_ns,
        "start_utc": utc_iso(step.first.send_utc_ns),
    }


def blackout_to_json(blackout: ConsoleBlackout) -> dict[str, Any]:
    first = blackout.first_abnormal
    before, after = blackout.last_normal_before, blackout.first_normal_after
    start_estimate = end_estimate = None
    if before is not None:
        start_estimate = _to_utc(first, (before.mid_mono_ns + first.mid_mono_ns) / 2)
    if after is not None:
        last = blackout.last_abnormal
        end_estimate = _to_utc(first, (last.mid_mono_ns + after.mid_mono_ns) / 2)
    switch = blackout.host_switch
    new_host = None if switch is None else switch.to_host
    reconnect = [s.view for s in blackout.sequence if new_host is not None and s.host == new_host]
    return {
        "lower_ms": _ms(blackout.lower_ms),
        "upper_ms": _ms(blackout.upper_ms),
        "estimate_ms": _ms(blackout.estimate_ms),
        "start_utc": start_estimate,
        "end_utc": end_estimate,
        "open_start": before is None,
        "open_end": after is None,
        "start_after_mono_ns": blackout.start_after_mono_ns,
        "start_by_mono_ns": first.recv_mono_ns,
        "end_after_mono_ns": blackout.last_abnormal.send_mono_ns,
        "end_by_mono_ns": blackout.end_by_mono_ns,
        "last_normal_before": _sample_json(before),
        "first_abnormal": _sample_json(first),
        "last_abnormal": _sample_json(blackout.last_abnormal),
        "first_normal_after": _sample_json(after),
        "black_samples": blackout.black_samples,
        "unavailable_samples": blackout.unavailable_samples,
        "interlude_samples": blackout.interlude_samples,
        "host_before": blackout.host_before,
        "host_after": blackout.host_after,
        "host_switch": None
        if switch is None
        else {
            "from": switch.from_host,
            "to": switch.to_host,
            "after_mono_ns": switch.after_mono_ns,
            "by_mono_ns": switch.by_mono_ns,
            "window_ms": _ms((switch.by_mono_ns - switch.after_mono_ns) / 1e6),
        },
        "sequence": [_step_json(s) for s in blackout.sequence],
        "reconnect": reconnect,
        "connecting_seen": "connecting" in reconnect,
        "source": blackout.source,
    }


def console_document(
    records: ConsoleRecords,
    *,
    file: str,
    interlude_max_s: float = DEFAULT_INTERLUDE_MAX_S,
    dim_dark_fraction: float = DEFAULT_DIM_DARK_FRACTION,
    analysis: ConsoleAnalysis | None = None,
) -> dict[str, Any]:
    """The ``console`` block of summary.json; ``analysis``: ``analyse_console`` of the
    records with these settings, where it is made already."""
    if analysis is None:
        analysis = analyse_console(
            records.samples, interlude_max_s=interlude_max_s, dim_dark_fraction=dim_dark_fraction
        )
    header = records.header
    return {
        "file": file,
        "vm": header.get("vm"),
        "interval_s": header.get("interval_s"),
        "width": header.get("width"),
        "height": header.get("height"),
        "interlude_max_s": interlude_max_s,
        "dim_dark_fraction": dim_dark_fraction,
        "samples": analysis.samples,
        "classifications": analysis.classifications,
        "frames_by_host": analysis.frames_by_host,
        "images": analysis.images,
        "episodes": len(analysis.episodes),
        "blackout": None if analysis.blackout is None else blackout_to_json(analysis.blackout),
    }


def console_summary(run: RunData | str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``console`` block of summary.json, or None for a run without the probe."""
    folder = run if isinstance(run, RunData) else load_run(run)
    path = folder.probe_file(CONSOLE.probe)
    if path is None or not path.exists():
        return None
    return console_document(load_console(path), file=str(path.relative_to(folder.path)))

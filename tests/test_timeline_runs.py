"""Hand-built run folders whose true timeline is known, for the timeline tests.

``write_run(dir, Scenario(...))`` writes a ``measure run`` folder (format v1)
through the probes' own sinks: manifest with clock estimates, ICMP every 5 ms,
10 Hz polls of both hosts whose clocks are off by seconds (one drifting),
Hyper-V events, harness events, the lab-style ground truth and, on request,
guest heartbeats and frames on a guest clock unrelated to the harness's. It
returns the ``Truth``: every true instant on the harness monotonic clock.

The other ``test_timeline_*`` modules import it; the tests here check that the
folders are what they claim to be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from migration_blackout.analysis.guest import analyse_guest
from migration_blackout.analysis.rundata import load_icmp, load_run
from migration_blackout.probes.sink import CsvSink, JsonlSink
from migration_blackout.runformat import FRAMES, HEARTBEAT, ICMP

MS = 1_000_000
S = 1_000_000_000
MONO0 = 50_000 * S  # harness CLOCK_MONOTONIC at the run's start
UTC0 = 1_795_611_760_000_000_000  # 2026-11-25T13:02:40Z, harness UTC at MONO0
GUEST_MONO0 = 7_777 * S  # the guest's monotonic clock at MONO0
AGENT = "0123456789abcdef"
SOURCE = "HV-SRC"
DESTINATION = "HV-DST"
GUEST = "10.0.0.2"
ROUTER = "10.0.0.1"
NAN = float("nan")


@dataclass(frozen=True)
class Scenario:
    """Times in ms from the run's start (harness monotonic MONO0)."""

    pause_ms: float = 4321.7
    gone_ms: float = 4900.0
    resume_ms: float = 5456.3
    network_ms: float = 6250.9
    end_ms: float = 12000.0
    # Host clock minus harness UTC: the source drifts, the destination does not.
    source_offset_s: float = 2.5
    source_drift_ppm: float = 200.0
    destination_offset_s: float = -3.2
    # The manifest's estimates err by this much (within their uncertainty).
    estimate_error_ms: tuple[float, float] = (2.0, -3.0)
    estimate_uncertainty_ms: tuple[float, float] = (6.0, 7.0)
    icmp_interval_ms: float = 5.0
    unreachable_ms: tuple[float, float] | None = None  # probes sent in it get unreachable
    source_failures_ms: tuple[float, float] | None = None  # source polls fail in it
    source_skipped_ms: tuple[float, float] | None = None  # no source poll slots in it
    guest: str = "none"  # "none", "heartbeats", "frames", "both"
    guest_drift_ppm: float = 80.0
    guest_clock_stops: bool = False  # the guest's clocks stand still while paused
    heartbeats_lost_until_network: bool = False  # UDP dropped until the network is back
    console: bool = False  # the console-view probe, every 100 ms
    seed: int = 11


@dataclass
class Truth:
    """True instants on the harness monotonic clock (ns)."""

    pause: int
    gone: int
    resume: int
    network: int
    event_20415: int
    reported_blackout_s: float
    # The console (VM Connection) after the resume, as in the write-up: black on the
    # new host, "Connecting to ...", black again, the desktop.
    console_connecting: int = 0
    console_black_again: int = 0
    console_desktop: int = 0
    heartbeat_send: dict[int, int] = field(default_factory=dict)  # seq -> true send
    frame_capture: dict[int, int] = field(default_factory=dict)  # seq -> true capture
    poll_observed: dict[tuple[str, int], int] = field(default_factory=dict)  # (host, k)

    @property
    def pause_to_resume_ms(self) -> float:
        return (self.resume - self.pause) / MS

    @property
    def pause_to_network_ms(self) -> float:
        return (self.network - self.pause) / MS

    @property
    def resume_to_network_ms(self) -> float:
        return (self.network - self.resume) / MS


def _at(ms: float) -> int:
    return MONO0 + round(ms * MS)


def _utc(mono: int) -> int:
    return mono - MONO0 + UTC0


def _iso(utc_ns: int, digits: int = 6, zone: str = "+00:00") -> str:
    from datetime import UTC, datetime

    seconds, ns = divmod(utc_ns, S)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{ns:09d}"[:digits]
    return f"{stamp}.{fraction}{zone}"


def host_offset_ns(scenario: Scenario, host: str, mono: int) -> int:
    """The true host clock minus harness UTC at harness time ``mono``."""
    if host == SOURCE:
        drift = scenario.source_drift_ppm * 1e-6 * (mono - MONO0)
        return round(scenario.source_offset_s * S + drift)
    return round(scenario.destination_offset_s * S)


def _manifest(run_dir: Path, scenario: Scenario, probes: dict[str, object]) -> dict[str, object]:
    clock: dict[str, object] = {}
    for host in (SOURCE, DESTINATION):
        entry: dict[str, object] = {}
        for phase, at_ms, error, unc in zip(
            ("before", "after"),
            (500.0, scenario.end_ms - 500.0),
            scenario.estimate_error_ms,
            scenario.estimate_uncertainty_ms,
            strict=True,
        ):
            at = _at(at_ms)
            entry[phase] = {
                "host": host,
                "phase": phase,
                "offset_ns": host_offset_ns(scenario, host, at) + round(error * MS),
                "uncertainty_ns": round(unc * MS),
                "at_mono_ns": at,
                "samples": 7,
            }
        clock[host] = entry
    end = _at(scenario.end_ms + 100)
    return {
        "schema_version": 1,
        "kind": "run",
        "run_id": run_dir.name,
        "run_kind": "run",
        "tool": "migration-blackout",
        "tool_version": "0.1.0",
        "command": ["measure", "run"],
        "config": {"vm": "HVSW10Home", "probes": {"icmp_interval_s": 0.005}},
        "targets": [GUEST],
        "started_utc": _iso(UTC0, zone="Z"),
        "ended_utc": _iso(_utc(end), zone="Z"),
        "status": "completed",
        "error": None,
        "clock": {
            "start": {"mono_ns": MONO0, "utc_ns": UTC0, "utc": _iso(UTC0, zone="Z")},
            "end": {"mono_ns": end, "utc_ns": _utc(end), "utc": _iso(_utc(end), zone="Z")},
        },
        "harness_host": {"hostname": "test", "platform": "Linux", "python": "3.11"},
        "probes": probes,
        "hyperv": {"source": SOURCE, "destination": DESTINATION, "clock": clock},
    }


def _write_icmp(run_dir: Path, scenario: Scenario, rng: np.random.Generator, truth: Truth) -> None:
    interval = round(scenario.icmp_interval_ms * MS)
    sends = np.arange(_at(900), _at(scenario.end_ms - 900), interval, dtype=np.int64)
    rows = []
    for n, send in enumerate(sends.tolist()):
        send = send + int(rng.integers(0, 60_000))
        base = [GUEST, n, n & 0xFFFF, 4660]
        in_outage = truth.pause <= send < truth.network
        window = scenario.unreachable_ms
        if in_outage and window is not None and _at(window[0]) <= send < _at(window[1]):
            recv = send + 2 * MS
            answer = [recv, _utc(recv), recv - send, 3, 1, ROUTER, "host unreachable"]
            rows.append([*base, "unreachable", send, _utc(send), *answer])
        elif in_outage:
            rows.append([*base, "timeout", send, _utc(send), *([None] * 7)])
        else:
            recv = send + 300_000 + int(rng.integers(0, 200_000))
            rows.append(
                [*base, "reply", send, _utc(send), recv, _utc(recv), recv - send, 0, 0, GUEST, None]
            )
    sink = CsvSink(
        run_dir / "raw" / "icmp.csv",
        probe="icmp",
        columns=ICMP.columns,
        meta={"interval_s": scenario.icmp_interval_ms / 1000, "timeout_s": 1.0, "targets": [GUEST]},
    )
    sink.write_rows(rows)
    sink.close()


def _state(scenario: Scenario, host: str, truth: Truth, at: int) -> tuple[bool, str | None, float]:
    """(listed, state, percent) that ``host`` reports at harness time ``at``."""
    start = _at(1500)
    percent = 0.0
    if at >= start:
        percent = min(80.0, 80.0 * (at - start) / (truth.pause - start))
    if at >= truth.pause:
        percent = 80.0
    if at >= truth.gone:
        percent = 95.0
    if at >= truth.resume + 300 * MS:
        percent = 100.0
    if host == SOURCE:
        if at < truth.pause:
            return True, "Running", percent
        if at < truth.gone:
            return True, "Paused", percent
        return False, None, percent
    if at < truth.resume:
        return False, None, NAN
    return True, "Running", NAN


def _write_polls(run_dir: Path, scenario: Scenario, rng: np.random.Generator, truth: Truth) -> None:
    for host, role in ((SOURCE, "source"), (DESTINATION, "destination")):
        sink = JsonlSink(
            run_dir / "raw" / f"host_{host}.jsonl",
            probe="host_state",
            meta={"host": host, "role": role, "vm": "HVSW10Home", "interval_s": 0.1},
        )
        k = 0
        slot = _at(1000)
        while slot < _at(scenario.end_ms - 1000):
            send = slot + int(rng.integers(0, 3 * MS))
            skipped = scenario.source_skipped_ms
            if host == SOURCE and skipped and _at(skipped[0]) <= send < _at(skipped[1]):
                k += 1
                slot += 100 * MS
                continue
            observed = send + int(rng.integers(8 * MS, 30 * MS))
            recv = observed + int(rng.integers(8 * MS, 30 * MS))
            failures = scenario.source_failures_ms
            record: dict[str, object] = {
                "event": "poll",
                "host": host,
                "role": role,
                "k": k,
                "send_mono_ns": send,
                "send_utc_ns": _utc(send),
                "recv_mono_ns": recv,
                "recv_utc_ns": _utc(recv),
            }
            if host == SOURCE and failures and _at(failures[0]) <= send < _at(failures[1]):
                record |= {
                    "outcome": "error",
                    "error": "WinRM timeout",
                    "listed": None,
                    "state": None,
                    "status": None,
                    "percent_complete": None,
                    "job_state": None,
                    "host_time": None,
                    "errors": [],
                }
            else:
                listed, state, percent = _state(scenario, host, truth, observed)
                host_utc = _utc(observed) + host_offset_ns(scenario, host, observed)
                truth.poll_observed[(host, k)] = observed
                record |= {
                    "outcome": "ok",
                    "error": None,
                    "listed": listed,
                    "state": state,
                    "status": "Operating normally" if listed else None,
                    "percent_complete": None if percent != percent else round(percent),
                    "job_state": 4 if percent == percent else None,
                    # A local time with its offset, as Get-Date sends it.
                    "host_time": _iso(host_utc + 3600 * S, zone="+01:00"),
                    "errors": [],
                }
            sink.write(record, flush=False)
            k += 1
            slot += 100 * MS
        sink.close()


def _write_hyperv_events(run_dir: Path, scenario: Scenario, truth: Truth) -> None:
    sink = JsonlSink(
        run_dir / "raw" / "hyperv_events.jsonl",
        probe="hyperv_events",
        meta={"vm": "HVSW10Home", "since": _iso(UTC0)},
    )
    logged = truth.event_20415
    host_utc = _utc(logged) + host_offset_ns(scenario, SOURCE, logged)
    for event_id, message in (
        (
            20415,
            "The Virtual Machine Management service successfully completed the live "
            "migration of virtual machine 'HVSW10Home' with a blackout time of "
            f"{truth.reported_blackout_s:.1f} seconds.",
        ),
        (20418, "Virtual machine migration operation for 'HVSW10Home' succeeded."),
    ):
        sink.write(
            {
                "event": "win_event",
                "host": SOURCE,
                "received_mono_ns": _at(scenario.end_ms - 200),
                "received_utc_ns": _utc(_at(scenario.end_ms - 200)),
                "matches_vm": True,
                "id": event_id,
                "log_name": "Microsoft-Windows-Hyper-V-VMMS-Admin",
                "provider": "Microsoft-Windows-Hyper-V-VMMS",
                "time_created": _iso(host_utc, digits=7, zone="Z"),
                "level": "Information",
                "machine": SOURCE,
                "message": message,
            }
        )
    sink.close()


def _write_harness_and_truth(run_dir: Path, scenario: Scenario, truth: Truth) -> None:
    events = JsonlSink(run_dir / "raw" / "events.jsonl", probe="harness")
    for at_ms, record in (
        (100.0, {"event": "phase", "phase": "preflight", "message": None}),
        (950.0, {"event": "probes_ready"}),
        (1500.0, {"event": "move_vm_start", "host": SOURCE, "destination": DESTINATION}),
        ((truth.resume - MONO0) / MS + 310, {"event": "move_vm_return", "host": SOURCE}),
        (scenario.end_ms, {"event": "end", "status": "completed", "message": None}),
    ):
        at = _at(at_ms)
        events.write({**record, "mono_ns": at, "utc_ns": _utc(at), "utc": _iso(_utc(at), 6, "Z")})
    events.close()
    sink = JsonlSink(run_dir / "raw" / "ground_truth.jsonl", probe="ground_truth")
    for name, at in (
        ("migration_start", _at(1500)),
        ("pause", truth.pause),
        ("gone_from_source", truth.gone),
        ("listed_on_destination", truth.resume),
        ("resume", truth.resume),
        ("network_restored", truth.network),
    ):
        sink.write({"kind": "event", "event": name, "mono_ns": at, "utc_ns": _utc(at)})
    sink.close()


def _guest_mono(scenario: Scenario, truth: Truth, harness: int) -> int:
    """The guest's monotonic clock at harness time ``harness`` (drifting; maybe stopped)."""
    elapsed = harness - MONO0
    if scenario.guest_clock_stops and harness >= truth.pause:
        elapsed -= min(harness, truth.resume) - truth.pause
    return GUEST_MONO0 + round(elapsed * (1 + scenario.guest_drift_ppm * 1e-6))


def _guest_sends(
    scenario: Scenario, truth: Truth, interval_ms: float, rng: np.random.Generator
) -> list[int]:
    """True harness send times of a grid-scheduled guest sender that freezes while paused."""
    sends = []
    at = _at(800)
    step = round(interval_ms * MS)
    while at < _at(scenario.end_ms - 800):
        when = at + int(rng.integers(0, 200_000))
        if truth.pause <= when < truth.resume:
            # Frozen: the next send goes out at once on resume, then the grid again.
            sends.append(truth.resume + 300_000)
            at = at + step * ((truth.resume - at) // step + 1)
            continue
        sends.append(when)
        at += step
    return sends


def _write_guest(run_dir: Path, scenario: Scenario, rng: np.random.Generator, truth: Truth) -> None:
    if scenario.guest in ("heartbeats", "both"):
        rows = []
        for seq, send in enumerate(_guest_sends(scenario, truth, 10.0, rng)):
            truth.heartbeat_send[seq] = send
            if scenario.heartbeats_lost_until_network and truth.pause <= send < truth.network:
                continue
            recv = send + 100_000 + int(rng.integers(0, 400_000))
            guest = _guest_mono(scenario, truth, send)
            rows.append((AGENT, seq, guest + 10**18, guest, 10_000, recv, _utc(recv), "10.0.0.2"))
        sink = CsvSink(
            run_dir / HEARTBEAT.path,
            probe="guest_heartbeat",
            columns=HEARTBEAT.columns,
            meta={"listen": "0.0.0.0:9999", "heartbeat_version": 1, "recv_stamp": "kernel"},
        )
        sink.write_rows(rows)
        sink.close()
    if scenario.guest in ("frames", "both"):
        sink = JsonlSink(
            run_dir / FRAMES.path,
            probe="guest_frames",
            meta={"listen": "0.0.0.0:9999", "frames_dir": "frames"},
        )
        (run_dir / "frames").mkdir(exist_ok=True)
        for seq, capture in enumerate(_guest_sends(scenario, truth, 1000.0, rng)):
            truth.frame_capture[seq] = capture
            upload = capture + 16 * MS
            if truth.pause <= upload + MS and upload < truth.network:
                upload = truth.network + 5 * MS  # queued until the network is back
            recv = upload + 400_000 + int(rng.integers(0, 500_000))  # headers, on a LAN
            name = f"frames/seq_{seq:06d}.png"
            shade = (seq * 37) % 256
            Image.new("RGB", (160, 120), (shade, 255 - shade, 128)).save(run_dir / name)
            sink.write(
                {
                    "seq": seq,
                    "file": name,
                    "format": "png",
                    "width": 160,
                    "height": 120,
                    "bytes": (run_dir / name).stat().st_size,
                    "guest_utc_ns": _guest_mono(scenario, truth, capture) + 10**18,
                    "guest_mono_ns": _guest_mono(scenario, truth, capture),
                    "capture_ms": 15.0,
                    "interval_ns": S,
                    "agent_id": AGENT,
                    "guest_send_mono_ns": _guest_mono(scenario, truth, upload),
                    "recv_mono_ns": recv,
                    "recv_utc_ns": _utc(recv),
                    "stored_mono_ns": recv + MS,
                    "from_addr": GUEST,
                },
                flush=False,
            )
        sink.close()


def _console_screen(truth: Truth, at: int) -> tuple[str | None, str, float | None, float | None]:
    """(host, view, mean luma, dark fraction) of the VM's screen at harness time ``at``."""
    if at < truth.pause:
        return SOURCE, "desktop", 120.0, 0.1
    if at < truth.gone:
        return SOURCE, "black", 0.0, 1.0
    if at < truth.resume:
        return None, "unavailable", None, None
    if at < truth.console_connecting:
        return DESTINATION, "black", 0.0, 1.0
    if at < truth.console_black_again:
        return DESTINATION, "connecting", 15.0, 0.95
    if at < truth.console_desktop:
        return DESTINATION, "black", 0.0, 1.0
    return DESTINATION, "desktop", 120.0, 0.1


def _write_console(
    run_dir: Path, scenario: Scenario, rng: np.random.Generator, truth: Truth
) -> None:
    sink = JsonlSink(
        run_dir / "raw" / "console.jsonl",
        probe="console",
        meta={
            "vm": "HVSW10Home",
            "width": 64,
            "height": 48,
            "interval_s": 0.1,
            "image_dir": "console",
        },
    )
    previous = None
    at = _at(1000)
    k = 0
    while at < _at(scenario.end_ms - 1000):
        rendered = at + int(rng.integers(5 * MS, 20 * MS))
        recv = rendered + int(rng.integers(5 * MS, 20 * MS))
        host, view, luma, dark = _console_screen(truth, rendered)
        if view == "unavailable":
            classification, outcome = "unavailable", "not_listed"
        elif view == "black":
            classification, outcome = "black", "ok"
        else:
            classification, outcome = ("unchanged" if view == previous else "changed"), "ok"
        sink.write(
            {
                "event": "poll",
                "k": k,
                "send_mono_ns": at,
                "send_utc_ns": _utc(at),
                "recv_mono_ns": recv,
                "recv_utc_ns": _utc(recv),
                "outcome": outcome,
                "error": None,
                "host": host,
                "classification": classification,
                "mean_luma": luma,
                "dark_fraction": dark,
                "changed_fraction": None,
                "image": None,
            },
            flush=False,
        )
        previous = view
        k += 1
        at += 100 * MS
    sink.close()


def write_run(run_dir: Path, scenario: Scenario | None = None) -> Truth:
    """Write a run folder for ``scenario`` into ``run_dir`` (created) and return its truth."""
    scenario = scenario or Scenario()
    rng = np.random.default_rng(scenario.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = _at(scenario.resume_ms)
    pause = _at(scenario.pause_ms)
    truth = Truth(
        pause=pause,
        gone=_at(scenario.gone_ms),
        resume=resume,
        network=_at(scenario.network_ms),
        event_20415=resume + 200_000,
        reported_blackout_s=round((resume - pause) / S, 1),
        console_connecting=resume + 600 * MS,
        console_black_again=resume + 1400 * MS,
        console_desktop=resume + 1800 * MS,
    )
    probes: dict[str, object] = {
        "harness": {"file": "raw/events.jsonl", "format": "jsonl"},
        "icmp": {"file": "raw/icmp.csv", "format": "csv"},
        f"host:{SOURCE}": {"file": f"raw/host_{SOURCE}.jsonl", "role": "source"},
        f"host:{DESTINATION}": {"file": f"raw/host_{DESTINATION}.jsonl", "role": "destination"},
        "hyperv_events": {"file": "raw/hyperv_events.jsonl"},
        "ground_truth": {"file": "raw/ground_truth.jsonl"},
    }
    _write_icmp(run_dir, scenario, rng, truth)
    _write_polls(run_dir, scenario, rng, truth)
    _write_hyperv_events(run_dir, scenario, truth)
    _write_harness_and_truth(run_dir, scenario, truth)
    _write_guest(run_dir, scenario, rng, truth)
    if scenario.console:
        probes["console"] = {"file": "raw/console.jsonl", "format": "jsonl"}
        _write_console(run_dir, scenario, rng, truth)
    manifest = _manifest(run_dir, scenario, probes)
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return truth


# -- the folders are what they claim -----------------------------------------


def test_a_synthetic_run_reads_as_a_run_folder(tmp_path: Path) -> None:
    truth = write_run(tmp_path / "run", Scenario(guest="both"))
    run = load_run(tmp_path / "run")
    records = load_icmp(run)
    assert records is not None
    lost = records.frame[records.frame["outcome"] == "timeout"]
    assert len(lost) > 300
    assert int(lost["send_mono_ns"].min()) >= truth.pause
    assert int(lost["send_mono_ns"].max()) < truth.network
    guest = analyse_guest(tmp_path / "run")
    assert guest.heartbeat is not None and guest.heartbeat.execution_gap is not None
    gap = guest.heartbeat.execution_gap
    assert gap.lower_ms <= truth.pause_to_resume_ms <= gap.upper_ms


def test_the_host_clocks_really_are_seconds_off(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    lines = (tmp_path / "run" / "raw" / f"host_{SOURCE}.jsonl").read_text().splitlines()
    poll = json.loads(lines[1])
    from datetime import datetime

    host = datetime.fromisoformat(poll["host_time"]).timestamp()
    harness = poll["send_utc_ns"] / 1e9
    assert 2.4 < host - harness < 2.6

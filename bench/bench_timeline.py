"""Benchmark: align, decompose and plot one hour of a migration run.

    .venv/bin/python bench/bench_timeline.py [--seconds 3600] [--icmp-hz 1000]
        [--poll-hz 10] [--heartbeat-hz 100] [--no-frames] [--repeat 1] [--keep DIR]

Writes a ``measure run`` folder (format v1) through the probes' own writers
(``probes.sink.CsvSink`` / ``JsonlSink``): ICMP at ``--icmp-hz`` (3.6 M
attempts for an hour at 1 kHz, rows in the order they resolve), both hosts
polled at ``--poll-hz`` with clocks off by +1.5 s and -0.7 s, Hyper-V's
events, the harness's events, the lab's ground truth, guest heartbeats at
``--heartbeat-hz`` and one frame a second (a small PNG each) on a guest clock
unrelated to the harness's. The migration pauses the VM half-way for 1.2 s;
the network comes back 0.8 s after the resume.

Each measurement runs in a fresh interpreter, so its peak RSS is that of a
real ``measure analyze``-style process:

* timeline: ``build_timeline`` (reading every raw file, mapping every clock);
* decompose: ``decompose`` on that timeline;
* figures: ``timeline_figures`` (binning, artists), then the PNG, the SVG and
  the zoom PNG written;
* then, each in its own process, the two public calls end to end:
  ``build_summary`` (summary.json) and ``plot_timeline``.

Prints a Markdown table. Generation (~30 s for an hour) is not timed;
``--keep DIR`` keeps the folder and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MS = 1_000_000
S = 1_000_000_000
MONO0 = 86_400 * S  # one day of uptime
UTC0 = 1_795_611_600_000_000_000  # 2026-11-25T13:00:00Z
GUEST0 = 3 * 86_400 * S  # the guest's monotonic clock at MONO0
TARGET = "10.0.0.2"
SOURCE, DESTINATION = "WS16TP4DM1VML1b", "WS16TP4DM2VML1b"
OFFSETS = {SOURCE: 1_500_000_000, DESTINATION: -700_000_000}  # host clock - harness UTC
AGENT = "00000000000000aa"
CHUNK = 200_000


def _iso(utc_ns: int, zone: str = "+00:00") -> str:
    from datetime import UTC, datetime

    seconds, ns = divmod(utc_ns, S)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}{zone}"


def _none(values: np.ndarray, present: np.ndarray) -> list[Any]:
    return [v if p else None for v, p in zip(values.tolist(), present.tolist(), strict=True)]


def generate(
    run: Path,
    *,
    seconds: float,
    icmp_hz: float,
    poll_hz: float,
    heartbeat_hz: float,
    frames: bool,
    seed: int = 20261125,
) -> dict[str, Any]:
    """Write ``run``; returns the true instants and sizes."""
    from PIL import Image

    from migration_blackout.probes.sink import CsvSink, JsonlSink
    from migration_blackout.runformat import FRAMES, HEARTBEAT, ICMP

    rng = np.random.default_rng(seed)
    utc = UTC0 - MONO0
    half = MONO0 + round(seconds / 2 * S)
    pause = half + int(rng.integers(0, 5 * MS))
    gone = pause + 600 * MS
    resume = pause + 1200 * MS + int(rng.integers(0, 10 * MS))
    network = resume + 800 * MS
    end = MONO0 + round(seconds * S)
    (run / "raw").mkdir(parents=True, exist_ok=True)

    # ICMP, in the order attempts resolve.
    interval = round(S / icmp_hz)
    count = int(seconds * icmp_hz)
    send = MONO0 + np.arange(count, dtype=np.int64) * interval
    send += np.minimum(rng.gamma(2.0, 30_000.0, count), 0.9 * interval).astype(np.int64)
    lost = (send >= pause) & (send < network)
    rtt = (250_000 + rng.gamma(2.0, 50_000.0, count)).astype(np.int64)
    resolve = np.where(lost, send + S, send + rtt)
    order = np.argsort(resolve, kind="stable")
    icmp = CsvSink(
        run / "raw" / "icmp.csv",
        probe="icmp",
        columns=ICMP.columns,
        meta={"interval_s": 1 / icmp_hz, "timeout_s": 1.0, "targets": [TARGET]},
    )
    for chunk in np.array_split(order, max(1, count // CHUNK)):
        ok = ~lost[chunk]
        s, r = send[chunk], send[chunk] + rtt[chunk]
        n = chunk.astype(np.int64)
        icmp.write_rows(
            zip(
                [TARGET] * len(chunk),
                n.tolist(),
                (n & 0xFFFF).tolist(),
                [4242] * len(chunk),
                np.where(ok, "reply", "timeout").tolist(),
                s.tolist(),
                (s + utc).tolist(),
                _none(r, ok),
                _none(r + utc, ok),
                _none(rtt[chunk], ok),
                _none(np.zeros(len(chunk), dtype=np.int64), ok),
                _none(np.zeros(len(chunk), dtype=np.int64), ok),
                [TARGET if o else None for o in ok.tolist()],
                [None] * len(chunk),
                strict=True,
            )
        )
    icmp.close()

    # Host polls: a drift-free schedule, each observing the VM in the middle.
    probes: dict[str, Any] = {
        "harness": {"file": "raw/events.jsonl"},
        "icmp": {"file": "raw/icmp.csv"},
        "hyperv_events": {"file": "raw/hyperv_events.jsonl"},
        "ground_truth": {"file": "raw/ground_truth.jsonl"},
    }
    start = half - 60 * S  # Move-VM starts a minute before the pause
    for host, role in ((SOURCE, "source"), (DESTINATION, "destination")):
        probes[f"host:{host}"] = {"file": f"raw/host_{host}.jsonl", "role": role}
        sink = JsonlSink(
            run / "raw" / f"host_{host}.jsonl",
            probe="host_state",
            meta={"host": host, "role": role, "vm": "HVSW10Home", "interval_s": 1 / poll_hz},
        )
        slots = MONO0 + np.arange(int(seconds * poll_hz), dtype=np.int64) * round(S / poll_hz)
        observed = slots + rng.integers(10 * MS, 30 * MS, len(slots))
        recv = observed + rng.integers(10 * MS, 30 * MS, len(slots))
        for k, (at, seen, got) in enumerate(
            zip(slots.tolist(), observed.tolist(), recv.tolist(), strict=True)
        ):
            if host == SOURCE:
                listed = seen < gone
                state = "Running" if seen < pause else "Paused" if listed else None
            else:
                listed = seen >= resume
                state = "Running" if listed else None
            percent = None
            if host == SOURCE and start <= seen < resume + 300 * MS:
                percent = min(80, int(80 * (seen - start) / (pause - start)))
                percent = 95 if seen >= gone else percent
            host_utc = seen + utc + OFFSETS[host]
            sink.write(
                {
                    "event": "poll",
                    "host": host,
                    "role": role,
                    "k": k,
                    "send_mono_ns": at,
                    "send_utc_ns": at + utc,
                    "recv_mono_ns": got,
                    "recv_utc_ns": got + utc,
                    "outcome": "ok",
                    "error": None,
                    "listed": listed,
                    "state": state,
                    "status": "Operating normally" if listed else None,
                    "percent_complete": percent,
                    "job_state": None if percent is None else 4,
                    "host_time": _iso(host_utc),
                    "errors": [],
                },
                flush=False,
            )
        sink.close()

    events = JsonlSink(run / "raw" / "hyperv_events.jsonl", probe="hyperv_events", meta={})
    logged = resume + OFFSETS[SOURCE] + utc
    events.write(
        {
            "event": "win_event",
            "host": SOURCE,
            "id": 20415,
            "received_mono_ns": end,
            "received_utc_ns": end + utc,
            "matches_vm": True,
            "log_name": "Microsoft-Windows-Hyper-V-VMMS-Admin",
            "time_created": _iso(logged, "Z"),
            "message": "The Virtual Machine Management service successfully completed the live "
            f"migration of virtual machine 'HVSW10Home' with a blackout time of "
            f"{(resume - pause) / S:.1f} seconds.",
        }
    )
    events.close()
    harness = JsonlSink(run / "raw" / "events.jsonl", probe="harness")
    for at, name in ((start, "move_vm_start"), (resume + 300 * MS, "move_vm_return"), (end, "end")):
        harness.write({"event": name, "mono_ns": at, "utc_ns": at + utc, "utc": _iso(at + utc)})
    harness.close()
    truth = JsonlSink(run / "raw" / "ground_truth.jsonl", probe="ground_truth")
    for name, at in (("pause", pause), ("resume", resume), ("network_restored", network)):
        truth.write({"kind": "event", "event": name, "mono_ns": at, "utc_ns": at + utc})
    truth.close()

    # Guest: heartbeats and frames on its own drifting clock, frozen while paused.
    def guest_sends(hz: float) -> np.ndarray:
        grid = MONO0 + np.arange(int(seconds * hz), dtype=np.int64) * round(S / hz)
        grid += rng.integers(0, 200_000, len(grid))
        frozen = (grid >= pause) & (grid < resume)
        return np.sort(np.concatenate([grid[~frozen], [resume + 300_000]]))

    def guest_mono(harness_ns: np.ndarray) -> np.ndarray:
        return GUEST0 + ((harness_ns - MONO0) * (1 + 60e-6)).astype(np.int64)

    hb = guest_sends(heartbeat_hz)
    hb_recv = hb + rng.integers(100_000, 500_000, len(hb))
    heartbeats = CsvSink(
        run / HEARTBEAT.path,
        probe="guest_heartbeat",
        columns=HEARTBEAT.columns,
        meta={"listen": "0.0.0.0:9", "heartbeat_version": 1, "recv_stamp": "kernel"},
    )
    g = guest_mono(hb)
    heartbeats.write_rows(
        zip(
            [AGENT] * len(hb),
            range(len(hb)),
            (g + 10**18).tolist(),
            g.tolist(),
            [round(1e6 / heartbeat_hz)] * len(hb),
            hb_recv.tolist(),
            (hb_recv + utc).tolist(),
            [TARGET] * len(hb),
            strict=True,
        )
    )
    heartbeats.close()
    frame_count = 0
    if frames:
        (run / "frames").mkdir(exist_ok=True)
        sink = JsonlSink(run / FRAMES.path, probe="guest_frames", meta={"frames_dir": "frames"})
        captures = guest_sends(1.0)
        for seq, capture in enumerate(captures.tolist()):
            upload = capture + 15 * MS
            if pause <= upload + 15 * MS and upload < network:
                upload = network + 5 * MS
            name = f"frames/seq_{seq:06d}.png"
            Image.new("RGB", (64, 48), ((seq * 37) % 256, 90, 160)).save(run / name)
            sink.write(
                {
                    "seq": seq,
                    "file": name,
                    "format": "png",
                    "width": 64,
                    "height": 48,
                    "guest_utc_ns": int(guest_mono(np.array([capture]))[0]) + 10**18,
                    "guest_mono_ns": int(guest_mono(np.array([capture]))[0]),
                    "capture_ms": 12.0,
                    "interval_ns": S,
                    "agent_id": AGENT,
                    "guest_send_mono_ns": int(guest_mono(np.array([upload]))[0]),
                    "recv_mono_ns": upload + 10 * MS,
                    "recv_utc_ns": upload + 10 * MS + utc,
                    "stored_mono_ns": upload + 11 * MS,
                    "from_addr": TARGET,
                },
                flush=False,
            )
        sink.close()
        frame_count = len(captures)

    clock = {
        host: {
            phase: {
                "offset_ns": OFFSETS[host] + int(rng.integers(-3 * MS, 3 * MS)),
                "uncertainty_ns": 7 * MS,
                "at_mono_ns": at,
            }
            for phase, at in (("before", MONO0 - 2 * S), ("after", end + 2 * S))
        }
        for host in (SOURCE, DESTINATION)
    }
    manifest = {
        "schema_version": 1,
        "kind": "run",
        "run_id": "bench-timeline-1h",
        "run_kind": "run",
        "status": "completed",
        "error": None,
        "started_utc": _iso(UTC0, "Z"),
        "ended_utc": _iso(end + utc, "Z"),
        "targets": [TARGET],
        "config": {"vm": "HVSW10Home", "icmp": {"interval_s": 1 / icmp_hz}},
        "clock": {
            "start": {"mono_ns": MONO0, "utc_ns": UTC0},
            "end": {"mono_ns": end, "utc_ns": end + utc},
        },
        "probes": probes,
        "hyperv": {"source": SOURCE, "destination": DESTINATION, "clock": clock},
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return {
        "icmp_rows": count,
        "polls": 2 * int(seconds * poll_hz),
        "heartbeats": len(hb),
        "frames": frame_count,
        "pause_to_resume_ms": (resume - pause) / MS,
        "pause_to_network_ms": (network - pause) / MS,
        "resume_to_network_ms": (network - resume) / MS,
    }


# --- measurement, each in a fresh interpreter ---------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_stages(run: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    from migration_blackout.analysis.decompose import decompose
    from migration_blackout.analysis.plot import timeline_figures
    from migration_blackout.analysis.timeline import build_timeline

    imported = time.perf_counter()
    rss_imports = _rss_mb()
    timeline = build_timeline(run)
    aligned = time.perf_counter()
    decomposition = decompose(timeline)
    decomposed = time.perf_counter()
    whole, zoom = timeline_figures(timeline, decomposition)
    built = time.perf_counter()
    whole.savefig(out / "timeline.png", format="png")
    png = time.perf_counter()
    whole.savefig(out / "timeline.svg", format="svg")
    svg = time.perf_counter()
    assert zoom is not None
    zoom.savefig(out / "timeline-zoom.png", format="png")
    zoomed = time.perf_counter()
    artists = sum(len(getattr(line, "get_xdata", list)()) for ax in whole.axes for line in ax.lines)
    components = {c.name: [c.lower_ms, c.upper_ms] for c in decomposition.components()}
    return {
        "import_s": imported - started,
        "timeline_s": aligned - imported,
        "decompose_s": decomposed - aligned,
        "figures_s": built - decomposed,
        "png_s": png - built,
        "svg_s": svg - png,
        "zoom_png_s": zoomed - svg,
        "total_s": zoomed - imported,
        "rss_after_imports_mb": rss_imports,
        "peak_rss_mb": _peak_mb(),
        "line_points": artists,
        "components": components,
        "files_kb": {p.name: p.stat().st_size / 1024 for p in sorted(out.iterdir())},
    }


def measure_summary(run: Path, _out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    from migration_blackout.analysis.summary import build_summary

    imported = time.perf_counter()
    document = build_summary(run)
    done = time.perf_counter()
    json.dumps(document, allow_nan=False)
    return {"import_s": imported - started, "total_s": done - imported, "peak_rss_mb": _peak_mb()}


def measure_plot(run: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    from migration_blackout.analysis.plot import plot_timeline

    imported = time.perf_counter()
    plot_timeline(run, out)
    done = time.perf_counter()
    return {"import_s": imported - started, "total_s": done - imported, "peak_rss_mb": _peak_mb()}


def _in_fresh_process(what: str, run: Path, out: Path) -> dict[str, Any]:
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "import bench.bench_timeline as b;"
        f"print(json.dumps(b.{what}(Path(sys.argv[2]), Path(sys.argv[3]))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(run), str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--icmp-hz", type=float, default=1000.0)
    parser.add_argument("--poll-hz", type=float, default=10.0)
    parser.add_argument("--heartbeat-hz", type=float, default=100.0)
    parser.add_argument("--no-frames", action="store_true")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-timeline-") as scratch:
        run = args.keep if args.keep is not None else Path(scratch) / "run"
        info_path = run / "bench-info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
        else:
            began = time.perf_counter()
            info = generate(
                run,
                seconds=args.seconds,
                icmp_hz=args.icmp_hz,
                poll_hz=args.poll_hz,
                heartbeat_hz=args.heartbeat_hz,
                frames=not args.no_frames,
            )
            info["generate_s"] = time.perf_counter() - began
            info_path.write_text(json.dumps(info))
        size_mb = sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) / 2**20
        stages, summaries, plots = [], [], []
        for i in range(args.repeat):
            out = Path(scratch) / f"out-{i}"
            out.mkdir()
            stages.append(_in_fresh_process("measure_stages", run, out))
            summaries.append(_in_fresh_process("measure_summary", run, out))
            plots.append(_in_fresh_process("measure_plot", run, out))

    def cell(runs: list[dict[str, Any]], key: str, unit: str = "s") -> str:
        values = [r[key] for r in runs]
        best, worst = min(values), max(values)
        digits = 2 if unit == "s" else 0
        if len(values) == 1 or round(best, digits) == round(worst, digits):
            return f"{statistics.median(values):.{digits}f} {unit}"
        return f"{best:.{digits}f} - {worst:.{digits}f} {unit}"

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"run: {args.seconds:g} s, ICMP {args.icmp_hz:g} Hz ({info['icmp_rows']} rows), "
        f"polls {args.poll_hz:g} Hz x 2 hosts ({info['polls']}), heartbeats "
        f"{args.heartbeat_hz:g} Hz ({info['heartbeats']}), frames {info['frames']}; "
        f"{size_mb:.0f} MiB on disk"
    )
    print(f"machine: {platform.python_implementation()} {platform.python_version()}, {cpus} CPUs")
    print(f"truth: {json.dumps({k: v for k, v in info.items() if k.endswith('_ms')})}")
    print(f"components: {json.dumps(stages[0]['components'])}")
    print()
    print("| stage | time | peak RSS |")
    print("| --- | --- | --- |")
    rows = [
        ("import analysis (timeline, decompose, plot)", "import_s"),
        ("build_timeline (read + align every source)", "timeline_s"),
        ("decompose", "decompose_s"),
        ("timeline_figures (binning + artists)", "figures_s"),
        ("savefig timeline.png", "png_s"),
        ("savefig timeline.svg", "svg_s"),
        ("savefig timeline-zoom.png", "zoom_png_s"),
        ("**alignment + decomposition + plot**", "total_s"),
    ]
    for name, key in rows:
        peak = cell(stages, "peak_rss_mb", "MiB") if key == "total_s" else ""
        print(f"| {name} | {cell(stages, key)} | {peak} |")
    print(
        f"| build_summary (own process) | {cell(summaries, 'total_s')} | "
        f"{cell(summaries, 'peak_rss_mb', 'MiB')} |"
    )
    print(
        f"| plot_timeline (own process) | {cell(plots, 'total_s')} | "
        f"{cell(plots, 'peak_rss_mb', 'MiB')} |"
    )
    print()
    print(
        f"line points drawn in the whole-run figure: {stages[0]['line_points']}; files: "
        + ", ".join(f"{k} {v:.0f} KiB" for k, v in stages[0]["files_kb"].items())
    )


if __name__ == "__main__":
    main()

"""The console-view probe through a live migration on the emulated hosts,
checked against the lab's ground truth; then the console analysis of its record."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_netns import until
from PIL import Image
from test_lab_hyperv_support import DST, SRC, VM, fast_config, fast_timing

from migration_blackout.analysis.console import console_summary, load_console
from migration_blackout.harness.config import HostConfig
from migration_blackout.harness.console import console_poll_function
from migration_blackout.harness.psrp_session import HostSession, MoveVmCall
from migration_blackout.harness.runwriter import create_run_folder
from migration_blackout.lab.hyperv_emulator import LabThread, Span, read_ground_truth
from migration_blackout.lab.hyperv_emulator import groundtruth as gt
from migration_blackout.lab.hyperv_emulator.screen import encode_rgb565, render_desktop
from migration_blackout.probes.console_view import ConsoleFrame, ConsoleViewProbe
from migration_blackout.runformat import CONSOLE

INTERVAL_S = 0.1
KEEP_AROUND = 3
# A transition is seen by the first poll sent after it; that poll is due at
# most one interval later, give or take the event loop and a poll in flight.
SLACK_S = 0.15


def endpoint(lab: LabThread, name: str) -> HostConfig:
    host = lab.hosts[name]
    return HostConfig(
        name=name,
        address=host.address,
        port=host.port,
        https=False,
        auth="basic",
        username=lab.credentials.username,
    )


def _migrate(lab: LabThread) -> None:
    call = MoveVmCall(endpoint(lab, SRC), lab.credentials.password, vm=VM, destination=DST)
    try:
        call.start()
        deadline = time.monotonic() + 30
        while not call.poll(1):
            assert time.monotonic() < deadline, "Move-VM did not return"
        call.result()
    finally:
        call.close()


async def _wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 15) -> None:
    await until(condition, timeout_s=deadline_s, what=what)


def _console_events(lab: LabThread) -> list[dict[str, Any]]:
    return [
        e for e in read_ground_truth(lab.ground_truth_path)[1] if e["event"].startswith("console_")
    ]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One migration watched by the probe: the run folder and the ground truth."""
    config = fast_config(
        timing=fast_timing(console_connecting=Span(0.4), console_black_after_connecting=Span(0.3))
    )
    run = create_run_folder(
        tmp_path_factory.mktemp("runs"), kind="run", command=["test"], config={}, targets=[]
    )
    with (
        LabThread(config) as lab,
        HostSession(endpoint(lab, SRC), lab.credentials.password) as src,
        HostSession(endpoint(lab, DST), lab.credentials.password) as dst,
    ):
        probe = ConsoleViewProbe.create(
            run.path,
            poll=console_poll_function([src, dst], VM),
            vm=VM,
            width=160,
            height=120,
            interval_s=INTERVAL_S,
            keep_around=KEEP_AROUND,
        )
        run.register_probe("console", CONSOLE.path, format="jsonl", **probe.meta)

        def desktop_back_and_kept() -> bool:
            events = _console_events(lab)
            if not events or events[-1].get("reason") != "reconnected":
                return False
            # Every image after the last change is in: keep_around more polls.
            return _polls_after(run.path, events[-1]) > KEEP_AROUND

        async def scenario() -> None:
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(probe.run(stop))
                try:
                    async with asyncio.timeout(10):
                        await probe.ready.wait()
                    # Let the probe see the running desktop before the move.
                    await _wait_for(lambda: probe.stats().polls >= 5, "five polls")
                    await asyncio.to_thread(_migrate, lab)
                    await _wait_for(desktop_back_and_kept, "the desktop to come back")
                finally:
                    stop.set()

        try:
            asyncio.run(scenario())
        finally:
            probe.sink.close()
        _, truth = read_ground_truth(lab.ground_truth_path)
    records = load_console(run.path / CONSOLE.path)
    return {"run": run.path, "truth": truth, "records": records, "stats": probe.stats()}


def _polls_after(run_path: Path, event: dict[str, Any]) -> int:
    lines = (run_path / CONSOLE.path).read_text(encoding="utf-8").splitlines()[1:]
    polls = [json.loads(line) for line in lines]
    return sum(1 for p in polls if p["event"] == "poll" and p["send_mono_ns"] > event["mono_ns"])


def _by_reason(truth: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["reason"]: e for e in truth if e["event"].startswith("console_")}


def test_lab_records_the_console_view(migrated: dict[str, Any]) -> None:
    truth = migrated["truth"]
    console = [(e["event"], e["host"], e["reason"]) for e in truth if "reason" in e]
    assert console == [
        ("console_desktop", SRC, "first_request"),
        ("console_black", SRC, "pause"),
        ("console_connecting", DST, "resume"),
        ("console_black", DST, "reconnecting"),
        ("console_desktop", DST, "reconnected"),
    ]
    first = {e["event"]: e for e in reversed(truth)}
    reasons = _by_reason(truth)
    assert reasons["pause"]["mono_ns"] <= first[gt.PAUSE]["mono_ns"]
    assert reasons["resume"]["mono_ns"] >= first[gt.RESUME]["mono_ns"]
    assert reasons["reconnected"]["mono_ns"] - reasons["resume"]["mono_ns"] >= 0.7e9


def _view(sample: Any) -> tuple[str, str | None]:
    """What the sample showed, and from which host."""
    if sample.classification in ("black", "unavailable"):
        return sample.classification, sample.host
    dark = sample.dark_fraction is not None and sample.dark_fraction > 0.8
    return ("connecting" if dark else "desktop"), sample.host


def test_probe_sees_each_switch_within_one_interval(migrated: dict[str, Any]) -> None:
    samples = migrated["records"].samples
    truth = migrated["truth"]
    reasons = _by_reason(truth)
    events = {e["event"]: e for e in reversed(truth)}
    slack_ns = int((INTERVAL_S + SLACK_S) * 1e9)

    def switch(mono_ns: int, old: tuple[str, str | None], new: tuple[str, str | None]) -> None:
        """Polls done before ``mono_ns`` show ``old``; the first sent after it,
        due within an interval, shows ``new``; a poll in flight shows either."""
        done_before = [s for s in samples if s.recv_mono_ns < mono_ns]
        first_after = next(s for s in samples if s.send_mono_ns > mono_ns)
        assert _view(done_before[-1]) == old
        assert _view(first_after) == new, first_after
        assert first_after.send_mono_ns - mono_ns <= slack_ns, first_after
        in_flight = [s for s in samples if s.send_mono_ns < mono_ns <= s.recv_mono_ns]
        assert all(_view(s) in (old, new) for s in in_flight)
        # The first screen of the new view differs from the one before.
        first_new = next(s for s in [*in_flight, first_after] if _view(s) == new)
        if new[0] != "unavailable":
            assert first_new.classification == ("black" if new[0] == "black" else "changed")

    switch(reasons["pause"]["mono_ns"], ("desktop", SRC), ("black", SRC))
    # Listed on neither host: no screen.
    switch(events[gt.GONE_FROM_SOURCE]["mono_ns"], ("black", SRC), ("unavailable", None))
    # Listed on the destination but not yet resumed: black from the new host.
    listed = events[gt.LISTED_ON_DESTINATION]["mono_ns"]
    resumed = events[gt.RESUME]["mono_ns"]
    between = [s for s in samples if listed < s.send_mono_ns and s.recv_mono_ns < resumed]
    assert all(_view(s) == ("black", DST) for s in between)
    old = ("black", DST) if between else ("unavailable", None)
    switch(reasons["resume"]["mono_ns"], old, ("connecting", DST))
    switch(reasons["reconnecting"]["mono_ns"], ("connecting", DST), ("black", DST))
    switch(reasons["reconnected"]["mono_ns"], ("black", DST), ("desktop", DST))
    # The Connecting... screen stays put between polls.
    connecting = [s for s in samples if _view(s) == ("connecting", DST)]
    assert len(connecting) >= 2 and connecting[-1].classification == "unchanged"


def test_images_around_every_change_are_saved_and_decode(migrated: dict[str, Any]) -> None:
    run_path: Path = migrated["run"]
    samples = migrated["records"].samples
    saved = sorted((run_path / "console").glob("*.png"))
    assert saved, "no images saved"
    assert not list((run_path / "console").glob(".*")), "no partial files left"
    assert migrated["stats"].images_saved == len(saved)
    for path in saved:
        assert path.name[:-4].isdigit() and len(path.name) == len("000000.png")
        with Image.open(path) as image:
            image.load()
            assert image.size == (160, 120) and image.mode == "RGB"
    named = {s.image for s in samples if s.image}
    assert named == {f"console/{p.name}" for p in saved}

    with_screen = [s for s in samples if s.classification != "unavailable"]
    for i in range(1, len(samples)):
        if samples[i].classification == samples[i - 1].classification:
            continue
        before = [s for s in with_screen if s.send_mono_ns < samples[i].send_mono_ns]
        after = [s for s in with_screen if s.send_mono_ns >= samples[i].send_mono_ns]
        for sample in before[-KEEP_AROUND:] + after[: KEEP_AROUND + 1]:
            assert sample.image, f"screen k={sample.k} around a change was not kept"
    assert len(saved) < len(with_screen), "screens far from any change are not kept"

    # A saved black screen is black, a saved desktop is not.
    for sample in samples:
        if sample.image and sample.classification in ("black", "changed"):
            pixels = np.asarray(Image.open(run_path / sample.image))
            assert (pixels.max() == 0) == (sample.classification == "black")


def test_analysis_brackets_the_true_console_blackout(migrated: dict[str, Any]) -> None:
    document = console_summary(migrated["run"])
    assert document is not None
    assert document["file"] == CONSOLE.path
    blackout = document["blackout"]
    assert blackout is not None and document["episodes"] == 1
    reasons = _by_reason(migrated["truth"])
    true_start = reasons["pause"]["mono_ns"]
    true_end = reasons["reconnected"]["mono_ns"]
    assert blackout["start_after_mono_ns"] < true_start <= blackout["start_by_mono_ns"]
    assert blackout["end_after_mono_ns"] < true_end <= blackout["end_by_mono_ns"]
    true_ms = (true_end - true_start) / 1e6
    assert blackout["lower_ms"] <= true_ms <= blackout["upper_ms"]
    assert abs(blackout["estimate_ms"] - true_ms) <= (INTERVAL_S + SLACK_S) * 1e3
    assert blackout["upper_ms"] - true_ms <= 2 * (INTERVAL_S + SLACK_S) * 1e3

    assert (blackout["host_before"], blackout["host_after"]) == (SRC, DST)
    switch = blackout["host_switch"]
    assert (switch["from"], switch["to"]) == (SRC, DST)
    gone = next(e for e in migrated["truth"] if e["event"] == gt.GONE_FROM_SOURCE)
    listed = next(e for e in migrated["truth"] if e["event"] == gt.LISTED_ON_DESTINATION)
    assert switch["after_mono_ns"] < gone["mono_ns"]
    assert listed["mono_ns"] <= switch["by_mono_ns"]

    # Hyper-V Manager's order (DOMAIN.md B-H); the lab's in-memory guest
    # resumes the moment the destination lists it, so no black comes from the
    # destination before "Connecting...".
    views = [(step["view"], step["host"]) for step in blackout["sequence"]]
    assert views == [
        ("black", SRC),
        ("unavailable", None),
        ("connecting", DST),
        ("black", DST),
        ("desktop", DST),
    ]
    assert blackout["reconnect"] == ["connecting", "black", "desktop"]
    assert blackout["connecting_seen"] is True
    assert blackout["interlude_samples"] >= 2
    assert document["frames_by_host"].keys() == {SRC, DST}


def test_failed_and_odd_polls_are_recorded_not_fatal(tmp_path: Path) -> None:
    """A poll that raises, answers no screen, or a screen of the wrong size is an
    event of its own; the probe goes on."""
    desktop = encode_rgb565(render_desktop(32, 24, frame_number=1, clock_text="13:02:38.000"))
    answers: list[Any] = [
        ConsoleFrame(SRC, 32, 24, desktop),
        RuntimeError(f"{SRC}: cannot reach WinRM (ConnectionError)"),
        None,
        ConsoleFrame(DST, 32, 24, desktop[:-2]),
        ConsoleFrame(DST, 32, 24, bytes(32 * 24 * 2)),
    ]

    def poll() -> ConsoleFrame | None:
        answer = answers[min(probe.stats().polls, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    probe = ConsoleViewProbe.create(
        tmp_path, poll=poll, vm=VM, width=32, height=24, interval_s=0.02, keep_around=1
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(probe.run(stop))
            try:
                await _wait_for(lambda: probe.stats().polls >= 6, "six polls")
            finally:
                stop.set()

    try:
        asyncio.run(scenario())
    finally:
        probe.sink.close()
    lines = (tmp_path / CONSOLE.path).read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header["probe"] == "console" and header["schema_version"] == 1
    assert (header["width"], header["height"], header["image_dir"]) == (32, 24, "console")
    polls = [json.loads(line) for line in lines[1:] if '"event":"poll"' in line]
    seen = [(p["outcome"], p["classification"]) for p in polls[:5]]
    assert seen == [
        ("ok", "changed"),
        ("error", "unavailable"),
        ("not_listed", "unavailable"),
        ("error", "unavailable"),
        ("ok", "black"),
    ]
    assert "cannot reach WinRM" in polls[1]["error"]
    assert "should have 1536 bytes, got 1534" in polls[3]["error"]
    stats = probe.stats()
    assert (stats.failures, stats.unavailable) == (2, 3)
    # The desktop before the outage was kept once the change came.
    assert any(json.loads(line).get("event") == "image_saved" for line in lines[1:])

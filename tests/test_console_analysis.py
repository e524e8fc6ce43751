"""The console analysis rules on hand-made samples: episodes, bounds, views, host switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from migration_blackout.analysis.console import (
    ConsoleSample,
    analyse_console,
    blackout_to_json,
    console_document,
    load_console,
)
from migration_blackout.runformat import RunFormatError

MS = 1_000_000
EPOCH_NS = 1_795_000_000 * 10**9
RTT_MS = 20


def sample(
    k: int, at_ms: int, classification: str, host: str | None, dark: float = 0.05
) -> ConsoleSample:
    return ConsoleSample(
        k=k,
        send_mono_ns=at_ms * MS,
        recv_mono_ns=(at_ms + RTT_MS) * MS,
        send_utc_ns=EPOCH_NS + at_ms * MS,
        recv_utc_ns=EPOCH_NS + (at_ms + RTT_MS) * MS,
        host=host,
        classification=classification,
        mean_luma=None if classification == "unavailable" else 50.0,
        dark_fraction=None if classification == "unavailable" else dark,
        changed_fraction=None,
        image=None,
    )


def write_up_run() -> tuple[ConsoleSample, ...]:
    """A 100 ms probe through the write-up's B-H, then a screen saver 10 s later."""
    plan = [
        ("changed", "A", 0.05),
        ("changed", "A", 0.05),
        ("changed", "A", 0.05),  # k=2, t=200: last desktop on the source
        ("black", "A", 1.0),  # k=3, t=300: paused
        ("black", "A", 1.0),
        ("unavailable", None, 0.0),
        ("unavailable", None, 0.0),
        ("black", "B", 1.0),  # k=7: listed on the destination
        ("changed", "B", 0.9),  # k=8: Connecting...
        ("unchanged", "B", 0.9),
        ("black", "B", 1.0),  # k=10, t=1000: black again
        ("changed", "B", 0.05),  # k=11, t=1100: the desktop
        ("changed", "B", 0.05),
        ("unchanged", "B", 0.05),
    ]
    plan += [("changed", "B", 0.05)] * 96  # k=14..109: the desktop until t=10 900
    plan += [("black", "B", 1.0)] * 2 + [("changed", "B", 0.05)]  # the screen saver
    return tuple(sample(k, 100 * k, c, h, d) for k, (c, h, d) in enumerate(plan))


def test_the_reconnect_belongs_to_the_blackout() -> None:
    analysis = analyse_console(write_up_run())
    assert len(analysis.episodes) == 2, "the screen saver is an episode of its own"
    blackout = analysis.blackout
    assert blackout is analysis.episodes[0], "the longest episode"
    assert blackout.last_normal_before is not None and blackout.last_normal_before.k == 2
    assert blackout.first_abnormal.k == 3 and blackout.last_abnormal.k == 10
    assert blackout.first_normal_after is not None and blackout.first_normal_after.k == 11
    assert blackout.upper_ms == 1100 + RTT_MS - 200
    assert blackout.lower_ms == 1000 - (300 + RTT_MS)
    assert blackout.estimate_ms == pytest.approx((1000 + 1100) / 2 - (200 + 300) / 2)
    assert (blackout.black_samples, blackout.unavailable_samples) == (4, 2)
    assert blackout.interlude_samples == 2
    assert (blackout.host_before, blackout.host_after) == ("A", "B")
    switch = blackout.host_switch
    assert switch is not None
    assert (switch.after_mono_ns, switch.by_mono_ns) == (400 * MS, (700 + RTT_MS) * MS)
    views = [(s.view, s.host, s.samples) for s in blackout.sequence]
    assert views == [
        ("black", "A", 2),
        ("unavailable", None, 2),
        ("black", "B", 1),
        ("connecting", "B", 2),
        ("black", "B", 1),
        ("desktop", "B", 1),
    ]
    document = blackout_to_json(blackout)
    assert document["reconnect"] == ["black", "connecting", "black", "desktop"]
    assert document["connecting_seen"] is True
    assert document["start_utc"].endswith("Z") and document["end_utc"] > document["start_utc"]
    assert document["upper_ms"] == 920.0


def test_a_long_interlude_splits_the_episode() -> None:
    analysis = analyse_console(write_up_run(), interlude_max_s=0.1)
    # 0.1 s: the Connecting... screens (black at 720 ms recv, black again at
    # 1000 ms send) are 280 ms apart, so the reconnect ends the first episode.
    assert len(analysis.episodes) == 3
    first = analysis.episodes[0]
    assert first.last_abnormal.k == 7 and first.first_normal_after is not None
    assert first.first_normal_after.k == 8


def test_open_ends_have_no_upper_bound() -> None:
    samples = (sample(0, 0, "black", "A", 1.0), sample(1, 100, "black", "A", 1.0))
    blackout = analyse_console(samples).blackout
    assert blackout is not None
    assert blackout.upper_ms is None and blackout.estimate_ms is None
    assert blackout.lower_ms == 100 - RTT_MS
    document = blackout_to_json(blackout)
    assert document["open_start"] and document["open_end"]
    assert analyse_console((sample(0, 0, "changed", "A"),)).blackout is None


def _write(path: Path, lines: list[dict[str, object]], *, tail: str = "") -> None:
    text = "".join(json.dumps(line) + "\n" for line in lines) + tail
    path.write_text(text, encoding="utf-8")


def _poll(k: int, classification: str, image: str | None = None) -> dict[str, object]:
    return {
        "event": "poll",
        "k": k,
        "send_mono_ns": k * 100 * MS,
        "recv_mono_ns": (k * 100 + RTT_MS) * MS,
        "send_utc_ns": EPOCH_NS + k * 100 * MS,
        "recv_utc_ns": EPOCH_NS + (k * 100 + RTT_MS) * MS,
        "host": "A",
        "classification": classification,
        "mean_luma": 50.0,
        "dark_fraction": 0.1,
        "changed_fraction": 0.05,
        "image": image,
    }


def test_loader_joins_images_saved_later_and_ignores_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "console.jsonl"
    header = {"schema_version": 1, "probe": "console", "header": True, "vm": "HVSW10Home"}
    lines = [
        header,
        _poll(0, "changed"),
        _poll(1, "changed"),
        {"event": "image_saved", "k": 1, "image": "console/000001.png"},
        _poll(2, "black", "console/000002.png"),
    ]
    _write(path, lines, tail='{"event": "poll", "k": 3, "send_mo')
    records = load_console(path)
    assert [s.k for s in records.samples] == [0, 1, 2]
    assert [s.image for s in records.samples] == [
        None,
        "console/000001.png",
        "console/000002.png",
    ]
    document = console_document(records, file="raw/console.jsonl")
    assert document["vm"] == "HVSW10Home" and document["images"] == 2
    assert document["blackout"]["open_end"] is True


def test_loader_refuses_an_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "console.jsonl"
    _write(path, [{"schema_version": 2, "probe": "console", "header": True}])
    with pytest.raises(RunFormatError, match="schema_version 2"):
        load_console(path)

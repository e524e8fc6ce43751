"""The console-view probe: the VM's screen as its Hyper-V host renders it.

The host-side twin of the write-up's VM Connection window. The probe does not
know how to talk to a host: the harness hands it a blocking ``poll`` function
that returns the VM's screen from whichever host holds it (for Hyper-V, the
script ``Get-VMThumbnail.ps1`` around ``GetVirtualSystemThumbnailImage``,
asking the last holder first), or None when no host lists the VM. The probe
owns the schedule, the worker thread, the timestamps and the record: one JSON
Lines event per poll, successful or not, with the harness's send and receive
times, and PNGs of the screens around every change of classification.

Each sample is classified:

* ``unavailable``: no host lists the VM, or the poll failed (the error is
  recorded);
* ``black``: mean luma (Rec. 601, 0-255) below ``black_max_luma``;
* ``unchanged``: at most ``unchanged_max_fraction`` of the pixels differ from
  the previous screen by more than ``pixel_tolerance`` in some channel;
* ``changed``: anything else, including the first screen.

Images: the ``keep_around`` screens before and after every change of
classification are saved as ``<image_dir>/<k>.png`` (``k`` the poll's slot
number, six digits). A screen saved when it is polled carries its file in its
own ``poll`` event; a screen saved later, because the change came after it,
gets an ``image_saved`` event naming its ``k``. Raw events are never
rewritten.

RGB565 as Hyper-V returns it (and Windows' ``Format16bppRgb565`` holds it): one
little-endian 16-bit word per pixel, red in bits 15-11, green 10-5, blue 4-0.
Pillow's raw mode ``BGR;16`` reads exactly that (its name counts from the low
bits); ``tests/test_console_decode.py`` pins the byte order.

Polls run on a drift-free schedule (poll k is due at t0 + k*interval); slots
a slow poll overran are counted in ``skipped``, never silently lost.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from migration_blackout.runformat import (
    CONSOLE,
    CONSOLE_BLACK,
    CONSOLE_CHANGED,
    CONSOLE_IMAGE_DIR,
    CONSOLE_NOT_LISTED,
    CONSOLE_UNAVAILABLE,
    CONSOLE_UNCHANGED,
    POLL_ERROR,
    POLL_OK,
)

from .clock import clock_pair
from .schedule import poll_on_schedule
from .sink import JsonlSink

DEFAULT_INTERVAL_S = 0.5
DEFAULT_KEEP_AROUND = 3
# A screen whose mean luma is below this is black: a paused VM's is exactly 0,
# VM Connection's "Connecting to ..." (light text and bar on black) about 15.
DEFAULT_BLACK_MAX_LUMA = 4.0
# Per-channel difference (0-255) below which a pixel counts as the same:
# absorbs scaler noise, well above RGB565's 8-level steps.
DEFAULT_PIXEL_TOLERANCE = 24
# At most this share of pixels differing: the same screen (a blinking caret).
DEFAULT_UNCHANGED_MAX_FRACTION = 0.002
# Luma below this counts a pixel as dark, for ``dark_fraction``.
DARK_LUMA = 32.0

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class ConsoleFrame:
    """One screen from a host. Returned by the harness's poll function."""

    host: str  # the host that rendered it (the one listing the VM)
    width: int
    height: int
    rgb565: bytes  # width * height * 2 bytes, see the module docstring
    host_time: str | None = None  # the host's clock, ISO 8601 with offset


PollFunction = Callable[[], ConsoleFrame | None]


@dataclass(frozen=True)
class ScreenStats:
    """What one screen looks like, as numbers."""

    mean_luma: float  # 0-255
    dark_fraction: float  # share of pixels with luma below DARK_LUMA
    changed_fraction: float | None  # share differing from the previous screen; None: none before


@dataclass(frozen=True)
class ConsoleProbeStats:
    polls: int
    failures: int  # polls that raised (host unreachable, bad image, ...)
    unavailable: int  # polls without a screen, failures included
    skipped: int
    images_saved: int
    last_classification: str | None
    last_host: str | None


def decode_rgb565(data: bytes, width: int, height: int) -> Image.Image:
    """Hyper-V's RGB565 thumbnail bytes as an RGB image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid thumbnail size {width}x{height}")
    if len(data) != width * height * 2:
        raise ValueError(
            f"thumbnail of {width}x{height} should have {width * height * 2} bytes, got {len(data)}"
        )
    return Image.frombuffer("RGB", (width, height), data, "raw", "BGR;16", 0, 1)


def screen_stats(
    pixels: np.ndarray, previous: np.ndarray | None, *, pixel_tolerance: int
) -> ScreenStats:
    """Stats of an ``(h, w, 3)`` uint8 screen against the previous one (None: first)."""
    luma = pixels.astype(np.float64) @ _LUMA
    changed: float | None = None
    if previous is not None and previous.shape == pixels.shape:
        difference = np.abs(pixels.astype(np.int16) - previous.astype(np.int16))
        changed = float((difference > pixel_tolerance).any(axis=2).mean())
    return ScreenStats(
        mean_luma=float(luma.mean()),
        dark_fraction=float((luma < DARK_LUMA).mean()),
        changed_fraction=changed,
    )


def classify(stats: ScreenStats, *, black_max_luma: float, unchanged_max_fraction: float) -> str:
    if stats.mean_luma < black_max_luma:
        return CONSOLE_BLACK
    if stats.changed_fraction is not None and stats.changed_fraction <= unchanged_max_fraction:
        return CONSOLE_UNCHANGED
    return CONSOLE_CHANGED


@dataclass
class _Kept:
    """A recent screen that may still be saved if a change follows it."""

    k: int
    image: Image.Image
    saved: bool


class ConsoleViewProbe:
    """Polls the VM's screen; same shape as every probe: ``ready`` and ``run(stop)``."""

    def __init__(
        self,
        *,
        poll: PollFunction,
        sink: JsonlSink,
        image_dir: Path,
        interval_s: float = DEFAULT_INTERVAL_S,
        keep_around: int = DEFAULT_KEEP_AROUND,
        black_max_luma: float = DEFAULT_BLACK_MAX_LUMA,
        pixel_tolerance: int = DEFAULT_PIXEL_TOLERANCE,
        unchanged_max_fraction: float = DEFAULT_UNCHANGED_MAX_FRACTION,
        stop_grace_s: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if keep_around < 0:
            raise ValueError("keep_around must be 0 or more")
        self.interval_s = interval_s
        self.keep_around = keep_around
        self.black_max_luma = black_max_luma
        self.pixel_tolerance = pixel_tolerance
        self.unchanged_max_fraction = unchanged_max_fraction
        self._poll = poll
        self._sink = sink
        self.stop_grace_s = stop_grace_s  # as HostStatePoller's
        self._image_dir = Path(image_dir)
        self.ready = asyncio.Event()
        self._polls = 0
        self._failures = 0
        self._unavailable = 0
        self._skipped = 0
        self._images_saved = 0
        self._last_class: str | None = None
        self._last_host: str | None = None
        self._previous_pixels: np.ndarray | None = None
        self._recent: collections.deque[_Kept] = collections.deque(maxlen=max(keep_around, 1))
        self._save_after = 0

    @classmethod
    def create(
        cls,
        run_dir: Path,
        *,
        poll: PollFunction,
        vm: str,
        width: int,
        height: int,
        interval_s: float = DEFAULT_INTERVAL_S,
        keep_around: int = DEFAULT_KEEP_AROUND,
        stop_grace_s: float | None = None,
    ) -> ConsoleViewProbe:
        """A probe writing ``raw/console.jsonl`` and ``console/`` in ``run_dir``."""
        settings = {
            "vm": vm,
            "width": width,
            "height": height,
            "interval_s": interval_s,
            "keep_around": keep_around,
            "image_dir": CONSOLE_IMAGE_DIR,
            "black_max_luma": DEFAULT_BLACK_MAX_LUMA,
            "pixel_tolerance": DEFAULT_PIXEL_TOLERANCE,
            "unchanged_max_fraction": DEFAULT_UNCHANGED_MAX_FRACTION,
            "dark_luma": DARK_LUMA,
        }
        sink = JsonlSink(Path(run_dir) / CONSOLE.path, probe=CONSOLE.probe, meta=settings)
        return cls(
            poll=poll,
            sink=sink,
            image_dir=Path(run_dir) / CONSOLE_IMAGE_DIR,
            interval_s=interval_s,
            keep_around=keep_around,
            stop_grace_s=stop_grace_s,
        )

    @property
    def sink(self) -> JsonlSink:
        return self._sink

    @property
    def meta(self) -> dict[str, Any]:
        """Settings for the manifest's probe entry."""
        return {
            "interval_s": self.interval_s,
            "keep_around": self.keep_around,
            "image_dir": self._image_dir.name,
        }

    def stats(self) -> ConsoleProbeStats:
        return ConsoleProbeStats(
            polls=self._polls,
            failures=self._failures,
            unavailable=self._unavailable,
            skipped=self._skipped,
            images_saved=self._images_saved,
            last_classification=self._last_class,
            last_host=self._last_host,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; the poll in flight then completes and is recorded."""
        try:
            await poll_on_schedule(
                self.interval_s,
                stop,
                self._poll_once,
                self._note_skipped,
                stop_grace_s=self.stop_grace_s,
            )
        finally:
            self._sink.flush()

    def _note_skipped(self, slots: int) -> None:
        self._skipped += slots

    async def _poll_once(self, k: int) -> None:
        send = clock_pair()
        frame: ConsoleFrame | None = None
        error: str | None = None
        abandoned = False
        try:
            frame = await asyncio.to_thread(self._poll)
        except Exception as exc:  # a failed poll is an event, never the end of the run
            error = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            error, abandoned = "abandoned: no answer when the probes stopped", True
        recv = clock_pair()
        self._polls += 1
        record: dict[str, Any] = {
            "event": "poll",
            "k": k,
            "send_mono_ns": send.mono_ns,
            "send_utc_ns": send.utc_ns,
            "recv_mono_ns": recv.mono_ns,
            "recv_utc_ns": recv.utc_ns,
        }
        if frame is not None:
            try:
                # Decoding, stats and PNGs stay off the event loop.
                record.update(await asyncio.to_thread(self._screen, k, frame))
            except ValueError as exc:  # not a screen we can read: a failed poll
                error, frame = str(exc), None
        if error is not None:
            self._failures += 1
        else:
            self.ready.set()
        if frame is None:
            self._unavailable += 1
            record.update(await asyncio.to_thread(self._unavailable_fields, error))
        self._last_class = record["classification"]
        self._last_host = record.get("host")
        self._sink.write(record)
        if abandoned:
            raise asyncio.CancelledError

    def _unavailable_fields(self, error: str | None) -> dict[str, Any]:
        if self._last_class is not None and self._last_class != CONSOLE_UNAVAILABLE:
            self._save_recent()
            self._save_after = self.keep_around
        return {
            "outcome": CONSOLE_NOT_LISTED if error is None else POLL_ERROR,
            "error": error,
            "host": None,
            "classification": CONSOLE_UNAVAILABLE,
            "image": None,
        }

    def _screen(self, k: int, frame: ConsoleFrame) -> dict[str, Any]:
        image = decode_rgb565(frame.rgb565, frame.width, frame.height)
        pixels = np.asarray(image)
        stats = screen_stats(pixels, self._previous_pixels, pixel_tolerance=self.pixel_tolerance)
        classification = classify(
            stats,
            black_max_luma=self.black_max_luma,
            unchanged_max_fraction=self.unchanged_max_fraction,
        )
        self._previous_pixels = pixels
        kept = _Kept(k, image, saved=False)
        if self._last_class is not None and classification != self._last_class:
            self._save_recent()
            self._save_after = self.keep_around + 1  # this screen and keep_around after it
        image_name = image_error = None
        if self._save_after > 0:
            self._save_after -= 1
            try:
                image_name = self._save(kept)
            except OSError as exc:  # the sample stands without its picture
                image_error = str(exc)
        if self.keep_around:
            self._recent.append(kept)
        return {
            "outcome": POLL_OK,
            "error": None,
            "host": frame.host,
            "host_time": frame.host_time,
            "width": frame.width,
            "height": frame.height,
            "digest": hashlib.blake2b(frame.rgb565, digest_size=8).hexdigest(),
            "classification": classification,
            "mean_luma": round(stats.mean_luma, 3),
            "dark_fraction": round(stats.dark_fraction, 5),
            "changed_fraction": None
            if stats.changed_fraction is None
            else round(stats.changed_fraction, 5),
            "image": image_name,
            "image_error": image_error,
        }

    def _save_recent(self) -> None:
        """Save the screens before a change that are not saved yet."""
        if not self.keep_around:
            return
        for kept in self._recent:
            if kept.saved:
                continue
            try:
                name = self._save(kept)
            except OSError as exc:
                self._sink.write({"event": "image_failed", "k": kept.k, "error": str(exc)})
            else:
                self._sink.write({"event": "image_saved", "k": kept.k, "image": name})

    def _save(self, kept: _Kept) -> str:
        self._image_dir.mkdir(parents=True, exist_ok=True)
        file_name = f"{kept.k:06d}.png"
        final = self._image_dir / file_name
        partial = self._image_dir / f".{file_name}.part"
        # Named from the slot number alone; "x": never overwrite an image.
        try:
            with open(partial, "xb") as handle:
                kept.image.save(handle, format="PNG")
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk leaves nothing behind
            raise
        if final.exists():
            partial.unlink()
            raise FileExistsError(f"{final} exists already")
        os.replace(partial, final)
        kept.saved = True
        self._images_saved += 1
        return f"{self._image_dir.name}/{file_name}"

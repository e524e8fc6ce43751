"""The migrated VM's console screen on the emulated hosts: what it shows, and its pixels.

The screen follows the write-up (the shared DOMAIN.md, points A-H):

* **desktop** while the VM runs: a pattern that differs on every request (a
  frame counter, a block that steps along a track, the host's clock), so a
  sample equal to the one before means a frozen screen, not an idle one;
* **black** from the moment the source pauses the VM, while it is listed on
  neither host, and on the destination until it resumes;
* after the resume, **connecting** ("Connecting to <vm>...", white text on
  black) for ``MigrationTiming.console_connecting``, **black** again for
  ``console_black_after_connecting``, then the **desktop** (F-H).

Each switch is a ground-truth event ``console_desktop`` / ``console_black`` /
``console_connecting`` meaning "from this stamp on, the screen shows this",
with ``vm``, ``host`` (the host holding the VM) and ``reason``. They are
recorded from the first thumbnail request on (a VM Connection window being
open; that request records the screen as it is then, reason
``first_request``), so a lab nobody watches writes the same ground truth as
before.

RGB565 here is what Windows' ``Format16bppRgb565`` holds and what every
published reader of this method decodes: one little-endian 16-bit word per
pixel, red in bits 15-11, green in 10-5, blue in 4-0, rows top to bottom.

The migration model (``model.Lab``) drives the screen and the thumbnail script
(``thumbnail``) reads it; this module imports neither, and takes the durations
and the clock it needs as values.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import random
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from migration_blackout.probes.clock import ClockPair

CONSOLE_DESKTOP = "console_desktop"
CONSOLE_BLACK = "console_black"
CONSOLE_CONNECTING = "console_connecting"

# Windows 10's default accent blue, its dark taskbar, and the console's grey.
DESKTOP_BLUE = (0, 120, 215)
TASKBAR = (16, 16, 16)
TRACK = (0, 84, 153)
BLOCK = (255, 255, 255)
CONNECTING_TEXT = (255, 255, 255)
CONNECTING_BAR = (160, 160, 160)
TRACK_SLOTS = 8


class ScreenPhase(enum.StrEnum):
    DESKTOP = "desktop"
    BLACK = "black"
    CONNECTING = "connecting"

    @property
    def event(self) -> str:
        return f"console_{self.value}"


class Duration(Protocol):
    """A duration in seconds drawn from ``rng`` (``model.Span``)."""

    def draw(self, rng: random.Random) -> float: ...


class Sleeper(Protocol):
    """The lab's clock, for waiting (``model.LabClock``)."""

    async def sleep(self, seconds: float) -> None: ...


# ---- the screen ---------------------------------------------------------------

Record = Callable[..., ClockPair]
Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


class ConsoleScreen:
    """What the migrated VM's screen shows, driven by the migration model.

    ``Lab`` calls :meth:`pause` when the source pauses the VM and
    :meth:`resume` when it resumes on the destination; the thumbnail script
    reads :meth:`frame`. Every method runs on the lab's event loop.
    """

    def __init__(
        self,
        *,
        vm_name: str,
        connecting: Duration,
        black_after_connecting: Duration,
        seed: int,
        clock: Sleeper,
        record: Record,
        spawn: Spawn,
    ) -> None:
        self.vm_name = vm_name
        self._connecting = connecting
        self._black_after_connecting = black_after_connecting
        self._clock = clock
        self._record = record
        self._spawn = spawn
        # A stream of its own: drawing console spans must not shift the
        # migration timeline a seed reproduces.
        self._rng = random.Random(f"console:{seed}")
        self._phase = ScreenPhase.DESKTOP
        self._host: str | None = None
        # Bumped by every pause/resume: a reconnect sequence that a newer
        # migration overtook stops switching.
        self._generation = 0
        self._watched = False
        self._frames = 0

    @property
    def phase(self) -> ScreenPhase:
        return self._phase

    @property
    def frames_served(self) -> int:
        return self._frames

    def pause(self, *, host: str) -> None:
        """The source paused the VM: the screen goes black."""
        self._generation += 1
        self._switch(ScreenPhase.BLACK, host=host, reason="pause")

    def resume(self, *, host: str) -> None:
        """The VM runs on ``host`` again: Connecting..., black, then the desktop."""
        self._generation += 1
        connecting_s = self._connecting.draw(self._rng)
        black_s = self._black_after_connecting.draw(self._rng)
        if connecting_s > 0:
            self._switch(ScreenPhase.CONNECTING, host=host, reason="resume")
        self._spawn(self._reconnect(self._generation, host, connecting_s, black_s))

    async def _reconnect(
        self, generation: int, host: str, connecting_s: float, black_s: float
    ) -> None:
        if connecting_s > 0:
            await self._clock.sleep(connecting_s)
            if generation != self._generation:
                return
        if black_s > 0:
            self._switch(ScreenPhase.BLACK, host=host, reason="reconnecting")
            await self._clock.sleep(black_s)
            if generation != self._generation:
                return
        self._switch(ScreenPhase.DESKTOP, host=host, reason="reconnected")

    def _switch(self, phase: ScreenPhase, *, host: str, reason: str) -> None:
        self._phase = phase
        self._host = host
        if self._watched:
            self._record(phase.event, vm=self.vm_name, host=host, reason=reason)

    def frame(
        self,
        *,
        running: bool,
        host: str,
        width: int,
        height: int,
        host_time_ns: int,
        utc_offset: dt.timedelta,
    ) -> bytes:
        """The screen as ``host`` renders it now, ``width`` x ``height`` RGB565 (black
        unless the VM is ``running`` there)."""
        if not self._watched:
            self._watched = True
            self._record(self._phase.event, vm=self.vm_name, host=host, reason="first_request")
        phase = self._phase if running else ScreenPhase.BLACK
        self._frames += 1
        if phase == ScreenPhase.BLACK:
            return bytes(width * height * 2)
        if phase == ScreenPhase.CONNECTING:
            return encode_rgb565(render_connecting(width, height, self.vm_name))
        stamp = dt.datetime.fromtimestamp(host_time_ns / 1e9, tz=dt.timezone(utc_offset))
        return encode_rgb565(
            render_desktop(
                width,
                height,
                frame_number=self._frames,
                clock_text=stamp.strftime("%H:%M:%S.%f")[:12],
            )
        )


# ---- drawing and encoding -----------------------------------------------------


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def render_desktop(width: int, height: int, *, frame_number: int, clock_text: str) -> Image.Image:
    """A Windows-like desktop whose content depends on ``frame_number`` and the clock."""
    image = Image.new("RGB", (width, height), DESKTOP_BLUE)
    draw = ImageDraw.Draw(image)
    taskbar = max(1, height // 12)
    draw.rectangle((0, height - taskbar, width, height), fill=TASKBAR)
    # A block stepping along a track, one slot per frame: every request
    # changes a fixed share of the screen, whatever the clock did.
    slot_width = max(1, width // TRACK_SLOTS)
    track_top = height // 2
    track_bottom = track_top + max(1, height // 6)
    draw.rectangle((0, track_top, width, track_bottom), fill=TRACK)
    left = (frame_number % TRACK_SLOTS) * slot_width
    draw.rectangle((left, track_top, left + slot_width - 1, track_bottom), fill=BLOCK)
    font = _font(max(6, height // 10))
    draw.text((2, 2), f"#{frame_number}", fill=BLOCK, font=font)
    draw.text((2, 2 + max(6, height // 8)), clock_text, fill=BLOCK, font=font)
    return image


def render_connecting(width: int, height: int, vm_name: str) -> Image.Image:
    """VM Connection's "Connecting to <vm>..." screen: white text and a bar on black."""
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    font = _font(max(6, height // 12))
    text = f"Connecting to {vm_name}..."
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = max(0, (width - (right - left)) // 2)
    y = max(0, height // 2 - (bottom - top) - 2)
    draw.text((x, y), text, fill=CONNECTING_TEXT, font=font)
    bar_top = height // 2 + 2
    bar_height = max(1, height // 10)
    margin = width // 6
    draw.rectangle(
        (margin, bar_top, width - margin - 1, bar_top + bar_height - 1), fill=CONNECTING_BAR
    )
    return image


def encode_rgb565(image: Image.Image) -> bytes:
    """``image`` as Hyper-V's thumbnail bytes (see the module docstring for the layout)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint16)
    words = ((rgb[..., 0] >> 3) << 11) | ((rgb[..., 1] >> 2) << 5) | (rgb[..., 2] >> 3)
    return words.astype("<u2").tobytes()

"""The VM's console screen on the emulated hosts, and the one script that reads it.

On a real host, ``Msvm_VirtualSystemManagementService.GetVirtualSystemThumbnailImage``
returns the VM's screen as raw RGB565: the host-side twin of the VM Connection
window the write-up watched. The harness reads it with
``harness/scripts/Get-VMThumbnail.ps1``, sent unchanged with ``AddScript`` and
the VM name, width and height as parameters. The lab does not interpret
PowerShell: it recognises that script by its text (loaded from the same package
path the harness sends it from) and answers what the script answers on a real
host: one object with ``VMName``, ``VMId``, ``ComputerName``, ``Width``,
``Height``, ``ImageData`` and ``HostTime`` from the host that lists the VM; on a
host that does not, the script's non-terminating "unable to find a virtual
machine" error and nothing else. Any other script text is still refused.

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
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import pkgutil
import random
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from psrpcore.types import ErrorCategory, ErrorRecord, PSByteArray, PSCustomObject, PSInt

from migration_blackout.lab.hyperv_emulator import cmdlets, model, pstypes
from migration_blackout.lab.hyperv_emulator.cmdlets import (
    CmdletContext,
    Parameter,
    TerminatingError,
)
from migration_blackout.probes.clock import ClockPair

SCRIPT_PACKAGE = "migration_blackout.harness"
SCRIPT_RESOURCE = "scripts/Get-VMThumbnail.ps1"
SCRIPT_NAME = "Get-VMThumbnail.ps1"

# The script's [ValidateRange(1, 4096)] on Width and Height.
MIN_PIXELS = 1
MAX_PIXELS = 4096

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
        timing: model.MigrationTiming,
        seed: int,
        clock: model.LabClock,
        record: Record,
        spawn: Spawn,
    ) -> None:
        self.vm_name = vm_name
        self._timing = timing
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
        connecting_s = self._timing.console_connecting.draw(self._rng)
        black_s = self._timing.console_black_after_connecting.draw(self._rng)
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
        state: model.VmState,
        host: str,
        width: int,
        height: int,
        host_time_ns: int,
        utc_offset: dt.timedelta,
    ) -> bytes:
        """The screen as ``host`` renders it now, ``width`` x ``height`` RGB565."""
        if not self._watched:
            self._watched = True
            self._record(self._phase.event, vm=self.vm_name, host=host, reason="first_request")
        phase = self._phase if state == model.VmState.Running else ScreenPhase.BLACK
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


# ---- the script -----------------------------------------------------------------


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


@functools.cache
def shipped_script() -> str:
    """The thumbnail script as the harness ships it (normalised line ends)."""
    data = pkgutil.get_data(SCRIPT_PACKAGE, SCRIPT_RESOURCE)
    if data is None:
        raise FileNotFoundError(f"{SCRIPT_PACKAGE}/{SCRIPT_RESOURCE} is not installed")
    return _normalise(data.decode("utf-8-sig"))


async def _thumbnail(ctx: CmdletContext, params: dict[str, Any]) -> None:
    vm_name = _string_argument(params["VMName"])
    width = _int_argument(params, "Width", 320)
    height = _int_argument(params, "Height", 240)
    lab = ctx.lab
    if lab.host(ctx.host).config.access_denied:
        # Get-CimInstance in root\virtualization\v2 fails; $ErrorActionPreference
        # = 'Stop' makes that terminating.
        raise TerminatingError(_cim_access_denied())
    # ElementName -eq $VMName: literal and case-insensitive, no wildcards.
    listed = [v for v in lab.vms_on(ctx.host) if v.name.lower() == vm_name.lower()]
    if not listed:
        ctx.out.write_error(vm_not_found(vm_name))
        return
    offset = lab.host_utc_offset(ctx.host)
    for vm in listed:
        image = lab.console.frame(
            state=vm.state,
            host=ctx.host,
            width=width,
            height=height,
            host_time_ns=lab.host_time_ns(ctx.host),
            utc_offset=offset,
        )
        ctx.out.write_output(
            PSCustomObject(
                VMName=vm.name,
                VMId=str(vm.vm_id).upper(),
                ComputerName=ctx.host,
                Width=PSInt(width),
                Height=PSInt(height),
                ImageData=PSByteArray(image),
                HostTime=pstypes.get_date_output(lab.host_time_ns(ctx.host), utc_offset=offset),
            )
        )


# The script's param() block: positions in declaration order, as PowerShell
# gives a script's parameters.
THUMBNAIL_SCRIPT = cmdlets.Cmdlet(
    SCRIPT_NAME,
    SCRIPT_NAME,
    (
        Parameter("VMName", position=0, mandatory=True),
        Parameter("Width", position=1),
        Parameter("Height", position=2),
    ),
    _thumbnail,
)


def _validation_error(parameter: str, message: str, value: Any) -> TerminatingError:
    return TerminatingError(
        pstypes.error_record(
            f"Cannot validate argument on parameter '{parameter}'. {message}",
            exception_types=[
                "System.Management.Automation.ParameterBindingValidationException",
                "System.Management.Automation.ParameterBindingException",
                "System.Management.Automation.RuntimeException",
                "System.SystemException",
            ],
            fully_qualified_error_id=THUMBNAIL_SCRIPT.error_id("ParameterArgumentValidationError"),
            category=ErrorCategory.InvalidData,
            activity=SCRIPT_NAME,
            reason="ParameterBindingValidationException",
            target_object=value,
        )
    )


def _string_argument(value: Any) -> str:
    text = "" if value is None else str(value)
    if not text:
        raise TerminatingError(
            pstypes.error_record(
                "Cannot bind argument to parameter 'VMName' because it is an empty string.",
                exception_types=[
                    "System.Management.Automation.ParameterBindingValidationException",
                    "System.Management.Automation.ParameterBindingException",
                    "System.Management.Automation.RuntimeException",
                    "System.SystemException",
                ],
                fully_qualified_error_id=THUMBNAIL_SCRIPT.error_id(
                    "ParameterArgumentValidationErrorEmptyStringNotAllowed"
                ),
                category=ErrorCategory.InvalidData,
                activity=SCRIPT_NAME,
                reason="ParameterBindingValidationException",
            )
        )
    return text


def _int_argument(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else int(value)
    except ValueError:
        raise cmdlets.transformation_error(
            THUMBNAIL_SCRIPT,
            name,
            value,
            "System.Int32",
            ' Error: "Input string was not in a correct format."',
        ) from None
    if number < MIN_PIXELS:
        raise _validation_error(
            name,
            f"The {number} argument is less than the minimum allowed range of {MIN_PIXELS}. "
            f"Supply an argument that is greater than or equal to {MIN_PIXELS} and then try the "
            "command again.",
            number,
        )
    if number > MAX_PIXELS:
        raise _validation_error(
            name,
            f"The {number} argument is greater than the maximum allowed range of {MAX_PIXELS}. "
            f"Supply an argument that is less than or equal to {MAX_PIXELS} and then try the "
            "command again.",
            number,
        )
    return number


def vm_not_found(name: str) -> ErrorRecord:
    """The script's Write-Error for a host that does not hold the VM (non-terminating)."""
    return pstypes.error_record(
        f'Hyper-V was unable to find a virtual machine with name "{name}".',
        exception_types=[
            "Microsoft.PowerShell.Commands.WriteErrorException",
            "System.SystemException",
        ],
        fully_qualified_error_id="VMNotFound",
        category=ErrorCategory.ObjectNotFound,
        activity="Write-Error",
        reason="WriteErrorException",
        target_object=name,
    )


def _cim_access_denied() -> ErrorRecord:
    return pstypes.error_record(
        "Access denied ",
        exception_types=cmdlets.CIM_EXCEPTION,
        fully_qualified_error_id=cmdlets.GET_CIMINSTANCE.error_id("HRESULT 0x80041003"),
        category=ErrorCategory.PermissionDenied,
        activity=cmdlets.GET_CIMINSTANCE.name,
        reason="CimException",
        target_object=cmdlets.VIRTUALIZATION_NAMESPACE,
    )

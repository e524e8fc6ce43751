"""The VM's console screen from its Hyper-V host: the harness side of the console probe.

``Get-VMThumbnail.ps1`` (package data, ``harness/scripts/``) runs on the host
through the session's RunspacePool: ``AddScript(<the file's text>)`` then
``AddParameter("VMName", vm)``, ``AddParameter("Width", ...)``,
``AddParameter("Height", ...)``. PowerShell binds those to the script's
``param()`` block, so the VM name reaches the host as a typed string and is
never part of any script or query text. The script calls
``Msvm_VirtualSystemManagementService.GetVirtualSystemThumbnailImage`` and
answers one object with ``ImageData`` (raw RGB565) and ``HostTime``; a host
that does not hold the VM answers a non-terminating "unable to find a virtual
machine" error instead.

Everything here blocks (pypsrp 0.9); the probe calls it from a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from migration_blackout.probes.console_view import ConsoleFrame

from . import scripts
from .psrp_session import HostError, HostSession, _is_vm_not_found, _prop, parse_host_datetime

SCRIPT_RESOURCE = "scripts/Get-VMThumbnail.ps1"
SCRIPT_NAME = "Get-VMThumbnail.ps1"
# Small: 38 400 bytes of RGB565 per poll keeps a poll to a few ms on a LAN.
DEFAULT_WIDTH = 160
DEFAULT_HEIGHT = 120


def thumbnail_script() -> str:
    """The text of ``Get-VMThumbnail.ps1`` as shipped."""
    return scripts.load(SCRIPT_NAME)


@dataclass(frozen=True)
class ConsoleThumbnail:
    """One screen of the VM as a host rendered it."""

    host: str  # the host asked (the one holding the VM)
    width: int
    height: int
    rgb565: bytes  # width * height * 2 bytes: little-endian words, red in bits 15-11
    host_time: datetime | None  # the host's clock just after the image was taken


def fetch_thumbnail(
    session: HostSession, vm: str, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT
) -> ConsoleThumbnail | None:
    """The VM's screen from ``session``'s host, or None when that host does not list it.

    Raises :class:`HostError` when the host cannot be asked, the script fails,
    or the image is not ``width`` x ``height`` RGB565.
    """
    result = session.invoke_script(
        thumbnail_script(),
        [("VMName", vm), ("Width", width), ("Height", height)],
        name=SCRIPT_NAME,
    )
    for obj in result.output:
        name = _prop(obj, "VMName")
        if name is None or str(name).lower() != vm.lower():
            continue
        return _thumbnail(session.name, obj)
    other = [e.message for e in result.errors if not _is_vm_not_found(e)]
    if other:
        raise HostError(session.name, f"{SCRIPT_NAME} failed: {'; '.join(other)}")
    return None


def _thumbnail(host: str, obj: Any) -> ConsoleThumbnail:
    width, height = _prop(obj, "Width"), _prop(obj, "Height")
    data = _prop(obj, "ImageData")
    if width is None or height is None or not isinstance(data, bytes | bytearray):
        raise HostError(host, f"{SCRIPT_NAME} answered an object without Width/Height/ImageData")
    width, height = int(str(width)), int(str(height))
    if len(data) != width * height * 2:
        raise HostError(
            host,
            f"{SCRIPT_NAME} answered {len(data)} bytes of ImageData for {width}x{height} "
            f"(expected {width * height * 2})",
        )
    stamp = _prop(obj, "HostTime")
    host_time = None
    if stamp is not None:
        try:
            host_time = parse_host_datetime(stamp)
        except ValueError:
            pass  # the screen stands; the harness clocks still bracket it
    return ConsoleThumbnail(
        host=host, width=width, height=height, rgb565=bytes(data), host_time=host_time
    )


def console_poll_function(
    sessions: Sequence[HostSession],
    vm: str,
    *,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
) -> Callable[[], ConsoleFrame | None]:
    """The console probe's poll: the VM's screen from whichever host holds it.

    Asks the host that answered last time first, then the others in order;
    returns None when every host answered that it does not list the VM. When
    no host answered with a screen and some could not be asked, raises a
    :class:`HostError` naming each host's failure.
    """
    order = list(sessions)
    holder: list[HostSession] = []

    def poll() -> ConsoleFrame | None:
        candidates = holder + [s for s in order if s not in holder]
        failures: list[HostError] = []
        for session in candidates:
            try:
                thumbnail = fetch_thumbnail(session, vm, width, height)
            except HostError as exc:
                failures.append(exc)
                continue
            if thumbnail is None:
                continue
            holder[:] = [session]
            return ConsoleFrame(
                host=thumbnail.host,
                width=thumbnail.width,
                height=thumbnail.height,
                rgb565=thumbnail.rgb565,
                host_time=None if thumbnail.host_time is None else thumbnail.host_time.isoformat(),
            )
        if len(failures) == 1 and len(candidates) == 1:
            raise failures[0]
        if failures:
            reasons = [f"{e.host}: {e.reason}" for e in failures]
            reasons += [
                f"{s.name}: does not list {vm}"
                for s in candidates
                if s.name not in {e.host for e in failures}
            ]
            raise HostError(", ".join(e.host for e in failures), "; ".join(reasons))
        return None

    return poll

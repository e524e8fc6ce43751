"""A screen for the guest agent to capture: Xvfb plus a clock drawn on it.

The guest-agent tests and ``bench/bench_guest_agent.py`` import
``XvfbDisplay`` and ``ScreenClock`` from here. Nothing beyond the ``xvfb``
package is needed: the clock is drawn by a minimal X11 protocol client (setup,
CreateGC, PutImage, GetInputFocus as a round trip) over the display's Unix
socket, with the clock face rendered by Pillow.

Xvfb picks a free display number itself and reports it through
``-displayfd``, so parallel test runs and a desktop session never collide.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from types import TracebackType

import pytest
from PIL import Image, ImageDraw, ImageFont, ImageGrab

XVFB = shutil.which("Xvfb")
needs_xvfb = pytest.mark.skipif(
    XVFB is None, reason="Xvfb is not installed (Debian package xvfb; bootstrap.sh installs it)"
)


class XvfbDisplay:
    """An Xvfb server on a display number it chose itself; a context manager."""

    def __init__(self, width: int = 1024, height: int = 768, *, start_timeout_s: float = 20.0):
        if XVFB is None:
            raise RuntimeError("Xvfb is not installed")
        read_fd, write_fd = os.pipe()
        try:
            self._process = subprocess.Popen(
                [
                    XVFB,
                    "-displayfd",
                    str(write_fd),
                    "-screen",
                    "0",
                    f"{width}x{height}x24",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(write_fd)
        try:
            number = self._read_display_number(read_fd, start_timeout_s)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(read_fd)
        self.display = f":{number}"
        self.size = (width, height)

    def _read_display_number(self, read_fd: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("Xvfb did not report its display number in time")
            readable, _, _ = select.select([read_fd], [], [], left)
            if readable:
                chunk = os.read(read_fd, 64)
                if not chunk:
                    raise RuntimeError(f"Xvfb exited with code {self._process.wait()}")
                data += chunk
        return int(data)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> XvfbDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class XRootPainter:
    """Draws Pillow images onto the root window of a local X display (X11 protocol)."""

    def __init__(self, display: str) -> None:
        number = display.lstrip(":").split(".")[0]
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(f"/tmp/.X11-unix/X{number}")
            self._setup()
        except BaseException:
            self._sock.close()
            raise

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("X server closed the connection")
            data += chunk
        return data

    def _setup(self) -> None:
        # Little-endian client, protocol 11.0, no authorisation (Xvfb without -auth).
        self._sock.sendall(struct.pack("<BxHHHHxx", 0x6C, 11, 0, 0, 0))
        head = self._recv_exact(8)
        status, _, _, _, extra_words = struct.unpack("<BBHHH", head)
        body = self._recv_exact(extra_words * 4)
        if status != 1:
            raise ConnectionError(f"X server refused the connection: {body!r}")
        (resource_base,) = struct.unpack_from("<I", body, 4)
        vendor_len, self._max_request_words, _, formats = struct.unpack_from("<HHBB", body, 16)
        screen_offset = 32 + vendor_len + _pad4(vendor_len) + 8 * formats
        self._root, _, _, _, _, width, height = struct.unpack_from("<IIIIIHH", body, screen_offset)
        (self._depth,) = struct.unpack_from("<B", body, screen_offset + 38)
        self.size = (width, height)
        self._gc = resource_base | 1
        # CreateGC(cid, drawable, value-mask 0)
        self._sock.sendall(struct.pack("<BxHIII", 55, 4, self._gc, self._root, 0))
        self.sync()

    def sync(self) -> None:
        """Round trip (GetInputFocus): every request sent before has been processed."""
        self._sock.sendall(struct.pack("<BxH", 43, 1))
        reply = self._recv_exact(32)
        if reply[0] == 0:
            raise RuntimeError(f"X error code {reply[1]} (opcode {reply[10]})")

    def paint(self, image: Image.Image, x: int = 0, y: int = 0) -> None:
        """PutImage (ZPixmap, 32 bits per pixel BGRX), in strips that fit one request."""
        rgb = image.convert("RGB")
        width, height = rgb.size
        rows_per_request = max(1, (self._max_request_words * 4 - 24) // (width * 4))
        for top in range(0, height, rows_per_request):
            strip = rgb.crop((0, top, width, min(height, top + rows_per_request)))
            data = strip.tobytes("raw", "BGRX")
            header = struct.pack(
                "<BBHIIHHhhBBxx",
                72,  # PutImage
                2,  # ZPixmap
                6 + len(data) // 4,
                self._root,
                self._gc,
                width,
                strip.height,
                x,
                y + top,
                0,
                self._depth,
            )
            self._sock.sendall(header + data)
        self.sync()

    def close(self) -> None:
        self._sock.close()


class ScreenClock:
    """A thread that redraws a clock (tick count and time) every ``period_s``.

    Every tick uses a new background colour, so two screenshots taken at least
    one period apart always differ.
    """

    def __init__(self, display: str, *, period_s: float = 0.05, size: tuple[int, int] = (480, 120)):
        self._painter = XRootPainter(display)
        self._period_s = period_s
        self._size = size
        self._font = ImageFont.load_default(size=40)
        self._stop = threading.Event()
        self._ticked = threading.Condition()
        self.ticks = 0
        self._tick()  # the screen shows a clock before the thread starts
        self._thread = threading.Thread(target=self._run, name="screen-clock", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        colour = ((self.ticks * 53) % 256, (self.ticks * 97) % 256, (self.ticks * 193) % 256)
        face = Image.new("RGB", self._size, colour)
        draw = ImageDraw.Draw(face)
        stamp = time.strftime("%H:%M:%S", time.gmtime()) + f".{time.time_ns() // 10**6 % 1000:03d}"
        draw.text((10, 10), f"#{self.ticks} {stamp}", fill=(255, 255, 255), font=self._font)
        self._painter.paint(face)
        with self._ticked:
            self.ticks += 1
            self._ticked.notify_all()

    def wait_ticks(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` more ticks have been drawn (and are on the screen)."""
        with self._ticked:
            target = self.ticks + count
            if not self._ticked.wait_for(lambda: self.ticks >= target, timeout_s):
                raise TimeoutError("the screen clock stopped ticking")

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            next_tick += self._period_s
            self._stop.wait(max(0.0, next_tick - time.monotonic()))
            if not self._stop.is_set():
                self._tick()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._painter.close()

    def __enter__(self) -> ScreenClock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@needs_xvfb
def test_xvfb_reports_a_free_display_number() -> None:
    with XvfbDisplay(320, 200) as first, XvfbDisplay(320, 200) as second:
        assert first.display != second.display
        assert ImageGrab.grab(xdisplay=first.display).size == (320, 200)
        assert ImageGrab.grab(xdisplay=second.display).size == (320, 200)


@needs_xvfb
def test_screen_clock_changes_what_a_grab_sees() -> None:
    with XvfbDisplay(640, 480) as xvfb:
        painter = XRootPainter(xvfb.display)
        try:
            assert painter.size == (640, 480)
            painter.paint(Image.new("RGB", (640, 480), (10, 200, 30)))
            assert ImageGrab.grab(xdisplay=xvfb.display).getpixel((600, 400)) == (10, 200, 30)
        finally:
            painter.close()
        with ScreenClock(xvfb.display, period_s=0.02) as clock:
            first = ImageGrab.grab(xdisplay=xvfb.display).tobytes()
            clock.wait_ticks(2)
            assert ImageGrab.grab(xdisplay=xvfb.display).tobytes() != first

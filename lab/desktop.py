"""The lab guest's desktop: an Xvfb screen with a clock drawn on it.

The in-guest agent captures this screen; the clock makes every capture
differ, so a frozen guest shows as a frozen picture. Nothing beyond the
``xvfb`` package is needed: the clock is drawn by a minimal X11 protocol
client (setup, CreateGC, PutImage, GetInputFocus as a round trip) over the
display's Unix socket, with the face rendered by Pillow. Xvfb picks a free
display number itself and reports it through ``-displayfd``.

``python -m migration_blackout.lab.desktop clock --display :N`` runs the clock as a process of
its own (the lab starts it inside the guest's namespace, so freezing the
guest stops it too).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from PIL import Image, ImageDraw, ImageFont

XVFB = shutil.which("Xvfb")


class XvfbDisplay:
    """An Xvfb server on a display number it chose itself; a context manager."""

    def __init__(
        self,
        width: int = 1024,
        height: int = 768,
        *,
        start_timeout_s: float = 20.0,
        argv_prefix: Sequence[str] = (),
    ):
        if XVFB is None:
            raise RuntimeError("Xvfb is not installed (Debian package xvfb)")
        read_fd, write_fd = os.pipe()
        try:
            self._process = subprocess.Popen(
                [
                    *argv_prefix,
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


# The migration_blackout package folder, and the folder that holds it (for PYTHONPATH).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_ROOT = os.path.dirname(PACKAGE_ROOT)
AGENT = os.path.join(PACKAGE_ROOT, "probes", "guest_agent.py")


class GuestDesktop:
    """Xvfb, the clock and the in-guest agent, all inside a network namespace.

    ``measure run --guest-agent`` against the lab starts this: the agent sends
    frames and heartbeats to the harness's receiver from inside the guest, and
    freezing the guest (every process in its namespace) freezes all three.
    The token travels in the agent's environment, not on its command line.
    """

    def __init__(
        self,
        *,
        namespace: str,
        receiver_url: str,
        token: str,
        log_path: str | os.PathLike[str],
        interval_s: float = 1.0,
        heartbeat_hz: float = 100.0,
        size: tuple[int, int] = (640, 480),
        python: str = sys.executable,
        witness_port: int | None = None,
    ) -> None:
        self._prefix = ["ip", "netns", "exec", namespace]
        self._receiver_url = receiver_url
        self._token = token
        self._log_path = log_path
        self._interval_s = interval_s
        self._heartbeat_hz = heartbeat_hz
        self._size = size
        self._python = python
        self._witness_port = witness_port
        self._xvfb: XvfbDisplay | None = None
        self._clock: subprocess.Popen[bytes] | None = None
        self._agent: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": IMPORT_ROOT}
        self._xvfb = XvfbDisplay(*self._size, argv_prefix=self._prefix)
        try:
            display = self._xvfb.display
            self._clock = subprocess.Popen(
                [
                    *self._prefix,
                    self._python,
                    "-m",
                    "migration_blackout.lab.desktop",
                    "clock",
                    "--display",
                    display,
                    "--period",
                    "0.05",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._log = open(self._log_path, "xb")  # noqa: SIM115 - closed in stop()
            self._agent = subprocess.Popen(
                [
                    *self._prefix,
                    self._python,
                    AGENT,
                    "--url",
                    self._receiver_url,
                    "--display",
                    display,
                    "--interval",
                    str(self._interval_s),
                    "--heartbeat-hz",
                    str(self._heartbeat_hz),
                    "--drain",
                    "5",
                    *(
                        ()
                        if self._witness_port is None
                        else ("--witness-port", str(self._witness_port))
                    ),
                ],
                env={**env, "MB_AGENT_TOKEN": self._token},
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the agent first (it drains its queue and prints its counts)."""
        for proc in (self._agent, self._clock):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._agent = self._clock = None
        if self._xvfb is not None:
            self._xvfb.close()
            self._xvfb = None
        if self._log is not None:
            self._log.close()
            self._log = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migration_blackout.lab.desktop", description=__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    clock = commands.add_parser("clock", help="draw a clock on a display until SIGTERM")
    clock.add_argument("--display", required=True)
    clock.add_argument("--period", type=float, default=0.05, help="seconds between redraws")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ScreenClock(args.display, period_s=args.period):
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

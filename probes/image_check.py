"""Checking the guest's images in a budget of their own.

The guest is the thing being measured, and everything it sends is untrusted:
an image that is cheap to send and expensive to decode (within the size and
pixel caps) must not slow another witness. So images are decoded in a child
process of their own, never in the harness's threads or event loop:

* one image at a time, each within ``time_limit_s`` (the child is killed and
  replaced when it is late: ``decode_timeout``);
* at most ``queue_limit`` images waiting; beyond, an upload is refused at once
  (``decode_busy``, HTTP 503 with Retry-After: the agent keeps the capture
  and sends it again later);
* each refusal is counted by its reason in ``raw/guest_rejects.jsonl``.

The child (``multiprocessing`` spawn context, so it shares no thread or lock
with the harness) imports only this module and Pillow.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import struct
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

DEFAULT_TIME_LIMIT_S = 2.0
DEFAULT_QUEUE_LIMIT = 4
START_DEADLINE_S = 30.0

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class FrameRefused(Exception):
    """A frame upload refused: the HTTP ``status`` and the ``reason`` logged in guest_rejects."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CheckedImage:
    image_format: str  # "png" or "jpeg"
    width: int
    height: int


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature, then the IHDR chunk: length (13), "IHDR", width, height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first SOF segment, without decoding anything."""
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any SOF
            return None
        pos += 2 + length
    return None


def image_header(data: bytes, max_pixels: int) -> CheckedImage:
    """Format and size from the header alone (cheap, on the caller's side):
    refuses what is not a PNG or JPEG, or has too many pixels, before any
    decoding."""
    if data.startswith(_PNG_MAGIC):
        image_format, size = "png", _png_size(data)
    elif data.startswith(_JPEG_MAGIC):
        image_format, size = "jpeg", _jpeg_size(data)
    else:
        raise FrameRefused(415, "not_an_image", "neither PNG nor JPEG")
    if size is None:
        raise FrameRefused(400, "bad_image", "no image size in the header")
    width, height = size
    if width == 0 or height == 0:
        raise FrameRefused(400, "bad_image", f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise FrameRefused(413, "too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
    return CheckedImage(image_format, width, height)


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """``("png" | "jpeg", width, height)`` of a complete, decodable image; else ``FrameRefused``.

    The pixel count is checked from the header before Pillow decodes anything
    (decompression bombs); then the image is verified (PNG chunk CRCs) and
    fully decoded, so a truncated or corrupt file is refused. Runs wherever
    it is called: the receiver calls it in :class:`ImageChecker`'s child.
    """
    header = image_header(data, max_pixels)
    size = (header.width, header.height)
    pil_format = header.image_format.upper()
    try:
        if header.image_format == "png":
            with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
                image.verify()
        with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
            if image.size != size:
                raise FrameRefused(400, "bad_image", f"size {image.size} != header {size}")
            image.load()
    except FrameRefused:
        raise
    except Exception as error:  # any decoder failure on untrusted input is a refusal
        raise FrameRefused(400, "bad_image", f"{type(error).__name__}: {error}"[:300]) from None
    return header.image_format, header.width, header.height


def _serve(connection: Connection) -> None:
    """The child: say ``("ready",)``, then decode what comes, answer
    ``("ok", format, w, h)`` or ``("refused", status, reason, detail)``,
    until the pipe closes."""
    connection.send(("ready",))
    while True:
        try:
            data, max_pixels = connection.recv()
        except (EOFError, OSError):
            return
        try:
            image_format, width, height = inspect_image(data, max_pixels)
            answer: tuple[Any, ...] = ("ok", image_format, width, height)
        except FrameRefused as refusal:
            answer = ("refused", refusal.status, refusal.reason, refusal.detail)
        except Exception as error:  # MemoryError and the like: refused, the child lives on
            answer = ("refused", 400, "bad_image", f"{type(error).__name__}"[:300])
        try:
            connection.send(answer)
        except (EOFError, OSError):
            return


class ImageChecker:
    """Decodes images in a child process, one at a time, within a time limit
    each, with a bounded queue (see the module docstring). ``close()`` kills
    the child; a check in progress is then refused."""

    def __init__(
        self,
        *,
        max_pixels: int,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.max_pixels = max_pixels
        self.time_limit_s = time_limit_s
        self.queue_limit = queue_limit
        self._turn = asyncio.Lock()
        self._waiting = 0
        self._process: Any = None
        self._connection: Connection | None = None
        self._closed = False
        self.children_started = 0  # more than one: a child was killed (late) and replaced

    @property
    def waiting(self) -> int:
        """Images being decoded or waiting for the decoder."""
        return self._waiting

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    async def check(self, data: bytes) -> CheckedImage:
        """The image's format and size once it decoded completely in the child;
        ``FrameRefused`` otherwise (bad image, over the time limit, queue full)."""
        header = image_header(data, self.max_pixels)  # cheap refusals first, here
        if self._waiting >= self.queue_limit:
            raise FrameRefused(
                503, "decode_busy", f"{self._waiting} images already wait to be decoded"
            )
        self._waiting += 1
        try:
            async with self._turn:
                if self._closed:
                    raise FrameRefused(503, "shutting_down", "the receiver is closing")
                answer = await self._ask(data)
        finally:
            self._waiting -= 1
        if answer[0] != "ok":
            _, status, reason, detail = answer
            raise FrameRefused(int(status), str(reason), str(detail))
        _, image_format, width, height = answer
        if (image_format, width, height) != (header.image_format, header.width, header.height):
            raise FrameRefused(400, "bad_image", "decoded image differs from its header")
        return CheckedImage(str(image_format), int(width), int(height))

    async def _ask(self, data: bytes) -> tuple[Any, ...]:
        connection = await self._ensure_child()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = connection.fileno()
        loop.add_reader(fd, readable)
        failure: FrameRefused | None = None
        try:
            await asyncio.to_thread(connection.send, (data, self.max_pixels))
            async with asyncio.timeout(self.time_limit_s):
                await ready
            answer: tuple[Any, ...] = connection.recv()
            return answer
        except TimeoutError:
            failure = FrameRefused(
                503, "decode_timeout", f"not decoded within {self.time_limit_s:g} s"
            )
        except (EOFError, OSError) as error:
            if self._closed:
                failure = FrameRefused(503, "shutting_down", "the receiver is closing")
            else:
                failure = FrameRefused(400, "bad_image", f"the decoder died: {error}"[:300])
        finally:
            # Before the pipe is closed: a closed descriptor's number is reused.
            loop.remove_reader(fd)
        self._kill()
        raise failure

    async def _ensure_child(self) -> Connection:
        if self._connection is not None and self._process is not None:
            if self._process.is_alive():
                return self._connection
            self._kill()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(target=_serve, args=(child,), name="image-check", daemon=True)
        await asyncio.to_thread(process.start)
        child.close()
        self._process, self._connection = process, parent
        self.children_started += 1
        # The time limit counts from a child that runs: wait for it to say so.
        if not await asyncio.to_thread(parent.poll, START_DEADLINE_S) or parent.recv() != (
            "ready",
        ):
            self._kill()
            raise FrameRefused(503, "decode_busy", "the image decoder did not start")
        return parent

    def _kill(self) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is not None:
            with contextlib.suppress(Exception):
                process.kill()
                process.join(timeout=1.0)
                process.close()  # its sentinel pipe now, not whenever it is collected

    async def start(self) -> None:
        """Start the child now (a spawn takes a few tenths of a second), not on
        the first frame."""
        async with self._turn:
            await self._ensure_child()

    def close(self) -> None:
        self._closed = True
        self._kill()

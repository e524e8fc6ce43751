"""RGB565 as Hyper-V returns it, the lab's screens, and the probe's classification."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from migration_blackout.lab.hyperv_emulator.screen import (
    encode_rgb565,
    render_connecting,
    render_desktop,
)
from migration_blackout.probes.console_view import (
    DEFAULT_BLACK_MAX_LUMA,
    DEFAULT_PIXEL_TOLERANCE,
    DEFAULT_UNCHANGED_MAX_FRACTION,
    classify,
    decode_rgb565,
    screen_stats,
)
from migration_blackout.runformat import CONSOLE_BLACK, CONSOLE_CHANGED, CONSOLE_UNCHANGED

# 100% colour bars: white, yellow, cyan, green, magenta, red, blue, black.
BARS = [
    (255, 255, 255),
    (255, 255, 0),
    (0, 255, 255),
    (0, 255, 0),
    (255, 0, 255),
    (255, 0, 0),
    (0, 0, 255),
    (0, 0, 0),
]


def colour_bars(width: int = 160, height: int = 120) -> np.ndarray:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    bar = width // len(BARS)
    for i, colour in enumerate(BARS):
        pixels[:, i * bar : (i + 1) * bar] = colour
    return pixels


def _classify(pixels: np.ndarray, previous: np.ndarray | None) -> str:
    stats = screen_stats(pixels, previous, pixel_tolerance=DEFAULT_PIXEL_TOLERANCE)
    return classify(
        stats,
        black_max_luma=DEFAULT_BLACK_MAX_LUMA,
        unchanged_max_fraction=DEFAULT_UNCHANGED_MAX_FRACTION,
    )


def test_byte_order_is_little_endian_red_in_the_high_bits() -> None:
    """Windows' Format16bppRgb565 in memory: red = 0xF800 stored as 00 F8."""
    image = Image.fromarray(np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255)]], dtype=np.uint8))
    data = encode_rgb565(image)
    assert data == bytes([0x00, 0xF8, 0xE0, 0x07, 0x1F, 0x00])
    decoded = np.asarray(decode_rgb565(data, 3, 1))
    assert decoded.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]


def test_colour_bars_round_trip_exactly() -> None:
    bars = colour_bars()
    data = encode_rgb565(Image.fromarray(bars))
    assert len(data) == 160 * 120 * 2
    assert np.array_equal(np.asarray(decode_rgb565(data, 160, 120)), bars)


def test_every_rgb565_word_survives_decode_and_encode() -> None:
    words = np.arange(65536, dtype="<u2").tobytes()
    assert encode_rgb565(decode_rgb565(words, 256, 256)) == words


def test_wrong_length_or_size_is_refused() -> None:
    with pytest.raises(ValueError, match="should have 38400 bytes, got 38398"):
        decode_rgb565(bytes(38398), 160, 120)
    with pytest.raises(ValueError, match="invalid thumbnail size"):
        decode_rgb565(b"", 0, 120)


def test_classification_of_the_lab_screens() -> None:
    def screen(image: Image.Image) -> np.ndarray:
        return np.asarray(decode_rgb565(encode_rgb565(image), 160, 120))

    black = np.zeros((120, 160, 3), dtype=np.uint8)
    first = screen(render_desktop(160, 120, frame_number=1, clock_text="13:02:46.000"))
    second = screen(render_desktop(160, 120, frame_number=2, clock_text="13:02:46.100"))
    connecting = screen(render_connecting(160, 120, "HVSW10Home"))

    assert _classify(first, None) == CONSOLE_CHANGED
    assert _classify(second, first) == CONSOLE_CHANGED, "the desktop differs on every request"
    assert _classify(second, second) == CONSOLE_UNCHANGED
    assert _classify(black, second) == CONSOLE_BLACK
    assert _classify(black, black) == CONSOLE_BLACK
    assert _classify(connecting, black) == CONSOLE_CHANGED
    assert _classify(connecting, connecting) == CONSOLE_UNCHANGED
    stats = screen_stats(connecting, None, pixel_tolerance=DEFAULT_PIXEL_TOLERANCE)
    assert stats.mean_luma > 2 * DEFAULT_BLACK_MAX_LUMA, "Connecting... is not black"
    assert stats.dark_fraction > 0.8, "... but mostly dark"
    desktop = screen_stats(first, None, pixel_tolerance=DEFAULT_PIXEL_TOLERANCE)
    assert desktop.dark_fraction < 0.2


def test_a_few_pixels_are_the_same_screen() -> None:
    base = colour_bars()
    caret = base.copy()
    caret[10:15, 100] = 255 - caret[10:15, 100]  # 5 pixels of 19 200
    assert _classify(caret, base) == CONSOLE_UNCHANGED
    noisy = base.astype(np.int16) + 8  # scaler noise below the tolerance
    assert _classify(np.clip(noisy, 0, 255).astype(np.uint8), base) == CONSOLE_UNCHANGED

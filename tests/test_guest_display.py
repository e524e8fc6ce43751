"""The lab desktop the guest agent captures (lab/desktop.py): Xvfb plus a clock.

``needs_xvfb`` is shared by the guest-agent tests.
"""

from __future__ import annotations

import shutil

import pytest
from PIL import Image, ImageGrab

from migration_blackout.lab.desktop import ScreenClock, XRootPainter, XvfbDisplay

XVFB = shutil.which("Xvfb")
needs_xvfb = pytest.mark.skipif(
    XVFB is None, reason="Xvfb is not installed (Debian package xvfb; bootstrap.sh installs it)"
)


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

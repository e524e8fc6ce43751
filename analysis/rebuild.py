"""Everything in ``derived/``, rebuilt from ``raw/`` by one call.

``measure analyze``, ``measure run``, ``measure watch`` and ``measure import``
all end here, so a run folder's derived files are the same whichever wrote
them, and can be rebuilt at any time (raw data is never touched). The run is
read and analysed once (``analysis.derive``); every file is a view of that,
and is replaced, never written through (``analysis/outputs.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from migration_blackout.analysis.derive import Derived, derive
from migration_blackout.analysis.guest import FRAMES_SOURCE, contact_sheet
from migration_blackout.analysis.plot import write_timeline_figures
from migration_blackout.analysis.summary import write_summary
from migration_blackout.runformat import CONTACT_SHEET_FILE


def rebuild_derived(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``derived/summary.json``, the timeline plots (``timeline.png``,
    ``timeline.svg``, ``timeline-zoom.png``) and, with guest frames, the
    contact sheet; return the paths written (the summary first)."""
    derived = derive(run_dir)
    written = [write_summary(derived)]
    written += write_timeline_figures(derived)
    written += write_contact_sheet(derived)
    return written


def write_contact_sheet(derived: Derived) -> list[Path]:
    """The contact sheet of the guest agent's frames, when the run has two of one agent."""
    timeline = derived.timeline
    if FRAMES_SOURCE not in timeline.guest_streams or len(timeline.frames) < 2:
        return []
    run_path = derived.run.path
    try:
        return [contact_sheet(run_path, run_path / CONTACT_SHEET_FILE, frames=timeline.frames)]
    except ValueError:
        return []  # no two frames of one agent: nothing to put side by side


__all__ = ["rebuild_derived", "write_contact_sheet"]

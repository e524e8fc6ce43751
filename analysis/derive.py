"""Everything in ``derived/``, rebuilt from ``raw/`` by one call.

Each file is replaced, never written through (``analysis/outputs.py``).

``measure analyze``, ``measure run`` and ``measure watch`` all end here, so a
run folder's derived files are the same whichever wrote them, and can be
rebuilt at any time (raw data is never touched).
"""

from __future__ import annotations

import os
from pathlib import Path

from migration_blackout.analysis.guest import FRAMES_FILE, contact_sheet, load_frames
from migration_blackout.analysis.plot import plot_timeline
from migration_blackout.analysis.runfolder import raw_data_warnings
from migration_blackout.analysis.summary import SUMMARY_FILE, write_summary

CONTACT_SHEET_FILE = Path("derived") / "contact-sheet.png"


def rebuild_derived(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``derived/summary.json``, the timeline plots (``timeline.png``,
    ``timeline.svg``, ``timeline-zoom.png``) and, with guest frames, the
    contact sheet; return the paths written (the summary first)."""
    run_path = Path(run_dir)
    written = [write_summary(run_path)]  # its warnings list the raw lines skipped
    with raw_data_warnings():  # the same lines, skipped again by the plots: said once
        written += plot_timeline(run_path)
        if (run_path / FRAMES_FILE).is_file() and len(load_frames(run_path)) >= 2:
            try:
                written.append(contact_sheet(run_path, run_path / CONTACT_SHEET_FILE))
            except ValueError:
                pass  # no two frames of one agent: nothing to put side by side
    return written


__all__ = ["CONTACT_SHEET_FILE", "SUMMARY_FILE", "rebuild_derived"]

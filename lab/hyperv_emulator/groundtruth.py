"""The lab's ground truth: what the emulated hosts really did, and when.

One JSON object per line. The first line is a header carrying
``schema_version``; every later line is one state change of the emulated
lab, stamped with CLOCK_MONOTONIC and CLOCK_REALTIME nanoseconds
(``time.monotonic_ns`` / ``time.time_ns``) so that analysis can compare the
harness's measurements against it on either clock.

The file is raw data: it is created once (never overwritten) and only
appended to.

The format's version and its history: ``runformat.GROUND_TRUTH_SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from migration_blackout.probes.clock import ClockPair, clock_pair
from migration_blackout.runformat import GROUND_TRUTH_SCHEMA_VERSION

# Event names written by the migration model, in the order a successful
# migration produces them.
MIGRATION_START = "migration_start"
# Pre-copy slows the guest (its dirtying workload, a CPU quota) from here ...
BROWNOUT_START = "brownout_start"
# ... to here, just before the pause.
BROWNOUT_END = "brownout_end"
PAUSE = "pause"
GONE_FROM_SOURCE = "gone_from_source"
LISTED_ON_DESTINATION = "listed_on_destination"
RESUME = "resume"
MOVE_VM_RETURNED = "move_vm_returned"
NETWORK_RESTORED = "network_restored"
# One direction of the guest's network (``direction``: inbound, outbound) works
# again; both come with network_restored unless they were drawn apart.
LINK_RESTORED = "link_restored"
# Failure paths.
ROLLBACK = "rollback"
MOVE_VM_FAILED = "move_vm_failed"
# The VM stopped on the destination just as the migration completed (fault).
VM_TURNED_OFF = "vm_turned_off"
HOST_UNRESPONSIVE = "host_unresponsive"
HOST_RESPONSIVE = "host_responsive"


class GroundTruthLog:
    """Append-only JSON Lines writer for the lab's state changes.

    Refuses to open an existing file: a second run must not overwrite the raw
    data of the first.
    """

    def __init__(self, path: Path, *, lab_description: dict[str, Any]) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("x", encoding="utf-8")
        header = {
            "kind": "header",
            "schema_version": GROUND_TRUTH_SCHEMA_VERSION,
            "writer": "lab.hyperv_emulator",
            "created": clock_pair().to_json(),
            "lab": lab_description,
        }
        self._write(header)

    def record(self, event: str, stamp: ClockPair | None = None, **details: Any) -> ClockPair:
        """Append one state change; ``stamp`` defaults to now. Returns the stamp used."""
        when = stamp if stamp is not None else clock_pair()
        line: dict[str, Any] = {"kind": "event", "event": event, **when.to_json()}
        line.update(details)
        self._write(line)
        return when

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"ground-truth log {self.path} is closed")
        self._file.write(json.dumps(obj, sort_keys=True) + "\n")
        # Flushed per line: a run that dies still leaves every event it saw.
        self._file.flush()


def read_ground_truth(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a ground-truth file: (header, events). Refuses unknown versions.

    Safe while the lab is still appending: a last line without its newline is
    not complete yet and is left out.
    """
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    if not lines:
        raise ValueError(f"{path} is empty; expected a ground-truth header line")
    header = json.loads(lines[0])
    version = header.get("schema_version")
    if version != GROUND_TRUTH_SCHEMA_VERSION:
        raise ValueError(
            f"{path} has ground-truth schema_version {version!r}; this reader understands "
            f"only {GROUND_TRUTH_SCHEMA_VERSION}. Re-run the lab with this version of "
            "lab.hyperv_emulator, or read it with the version that wrote it."
        )
    events = [json.loads(line) for line in lines[1:] if line.strip()]
    return header, events

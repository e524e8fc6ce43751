"""One derive pipeline: a run folder read once, every analysis of it made once.

``derive`` reads the run folder's raw files once (``build_timeline`` reads
each of them and puts every record on the harness's clock) and makes from
that one reading every analysis the outputs need: the ICMP blackout, the
guest agent's gaps and its work rate (the brownout, from the heartbeat
frame the timeline keeps), the console blackout, QEMU's own record, the
witnesses (TCP connects, the TCP stream, the direction probe), and the
decomposition (with the hypervisor's events: QEMU's STOP -> RESUME when no
host was polled). ``Derived`` holds them; ``summary.json``
(``analysis.summary.summary_document``), the timeline plots
(``analysis.plot.write_timeline_figures``), the contact sheet, the reports
and the notebooks are all views of the same object, so they cannot disagree
on a figure. ``analysis.rebuild.rebuild_derived`` writes them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from migration_blackout.analysis.brownout import WorkRate, analyse_work, heartbeats_with_work
from migration_blackout.analysis.console import ConsoleAnalysis, analyse_console
from migration_blackout.analysis.decompose import (
    Decomposition,
    decompose,
    direction_reconvergence,
    has_witnesses,
    qemu_component,
)
from migration_blackout.analysis.guest import (
    FRAMES_SOURCE,
    HEARTBEAT_SOURCE,
    GuestAnalysis,
    analyse_stream,
)
from migration_blackout.analysis.icmp import IcmpAnalysis
from migration_blackout.analysis.qemu import QemuRecords, load_qemu_records
from migration_blackout.analysis.rundata import RunData, load_run, raw_data_warnings
from migration_blackout.analysis.timeline import (
    Timeline,
    analyse_timeline_icmp,
    build_timeline,
)
from migration_blackout.analysis.witness_summary import WitnessAnalysis, analyse_witnesses


@dataclass(frozen=True, eq=False)
class Derived:
    """A run folder read once, and everything derived from it.

    ``icmp``: None when the run has no ICMP probe, or its file is missing (a run
    that did not complete). ``guest``: a stream is None when its file is
    absent. ``console``: None without the console-view probe. ``qemu``: None
    when QEMU did not run. ``witnesses``: the TCP connects, the TCP stream and
    the direction probe's edges (summary.json's ``tcp`` block, the plot's lane
    'what applications felt'). ``decomposition``: always made (the plots draw
    it), its reconvergence split per direction when the direction probe saw
    both come back; summary.json carries it only for runs with more witnesses
    than ICMP (``has_witnesses``). ``work``: the guest's work rate and the
    brownout that led into its execution gap (``analysis.brownout``;
    summary.json's ``brownout`` block), None without 20 heartbeats that carry
    a work time. ``raw_warnings``: the raw lines skipped while reading, one
    message per file.
    """

    timeline: Timeline
    icmp: IcmpAnalysis | None
    guest: GuestAnalysis
    console: ConsoleAnalysis | None
    qemu: QemuRecords | None
    decomposition: Decomposition
    witnesses: WitnessAnalysis = field(default_factory=WitnessAnalysis)
    work: WorkRate | None = None
    raw_warnings: tuple[str, ...] = ()  # raw lines skipped, not records (RawDataWarning)

    @property
    def run(self) -> RunData:
        return self.timeline.run

    @property
    def has_witnesses(self) -> bool:
        """More than ICMP to decompose: host polls, the guest agent, the console view or QEMU."""
        return has_witnesses(self.run)


def derive(run: RunData | str | os.PathLike[str]) -> Derived:
    """Read ``run`` once and make every analysis of it (module docstring)."""
    folder = run if isinstance(run, RunData) else load_run(run)
    # Each raw file's skipped lines are said once, in summary.json's warnings.
    with raw_data_warnings() as skipped:
        derived = _derive(folder)
    return replace(derived, raw_warnings=tuple(skipped))  # collected as the block ends


def _derive(folder: RunData) -> Derived:
    timeline = build_timeline(folder)
    source = timeline.icmp_source
    icmp = analyse_timeline_icmp(timeline) if source is not None and source.present else None
    streams = timeline.guest_streams
    heartbeat, frames = streams.get(HEARTBEAT_SOURCE), streams.get(FRAMES_SOURCE)
    guest = GuestAnalysis(
        heartbeat=None
        if heartbeat is None
        else analyse_stream(
            timeline.heartbeats, source=HEARTBEAT_SOURCE, duplicates_dropped=heartbeat.duplicates
        ),
        frames=None
        if frames is None
        else analyse_stream(
            timeline.frames, source=FRAMES_SOURCE, duplicates_dropped=frames.duplicates
        ),
    )
    records = timeline.console_records
    console = None if records is None else analyse_console(records.samples)
    qemu = load_qemu_records(folder)
    decomposition = decompose(
        timeline, hypervisor_events=qemu_component(qemu), icmp=icmp, console=console
    )
    gap = None if guest.heartbeat is None else guest.heartbeat.execution_gap
    work = analyse_work(
        heartbeats_with_work(timeline.heartbeats),
        gap_start_guest_mono_ns=None if gap is None else gap.before_guest_mono_ns,
    )
    witnesses = analyse_witnesses(folder.path)
    if witnesses.restored is not None:
        inbound, outbound = witnesses.restored
        reconvergence = decomposition.network_reconvergence
        decomposition = replace(
            decomposition,
            inbound_reconvergence=direction_reconvergence("inbound", inbound, reconvergence),
            outbound_reconvergence=direction_reconvergence("outbound", outbound, reconvergence),
        )
    return Derived(
        timeline=timeline,
        icmp=icmp,
        guest=guest,
        console=console,
        qemu=qemu,
        decomposition=decomposition,
        witnesses=witnesses,
        work=work,
    )

"""A live migration as the harness sees it through WinRM, checked against the ground truth."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import pytest
from pypsrp.exceptions import WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from test_lab_hyperv_support import (
    DST,
    SRC,
    VM,
    cmdlet,
    error_ids,
    error_texts,
    fast_config,
    fast_timing,
    migration_job,
    open_pool,
    parse_dotnet_datetime,
    run,
    vm_state,
    wait_until,
)

from migration_blackout.lab.hyperv_emulator import (
    HostConfig,
    InMemoryGuest,
    LabThread,
    Span,
    read_ground_truth,
)
from migration_blackout.lab.hyperv_emulator import groundtruth as gt

VMMS_LOG = "Microsoft-Windows-Hyper-V-VMMS-Admin"
WORKER_LOG = "Microsoft-Windows-Hyper-V-Worker-Admin"


def _events(pool: RunspacePool, log: str, ids: list[int] | int) -> PowerShell:
    return run(pool, "Get-WinEvent", FilterHashtable={"LogName": log, "Id": ids})


def test_states_on_both_hosts_follow_the_migration_timeline() -> None:
    with (
        LabThread(fast_config()) as lab,
        open_pool(lab, SRC, max_runspaces=2) as src,
        open_pool(lab, DST) as dst,
    ):
        move = cmdlet(src, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        observed: list[tuple[str | None, str | None]] = []
        percents: list[int] = []

        def landed() -> bool:
            # Poll Get-VM in the same pool as Move-VM, and from the other host's pool.
            states = (vm_state(src), vm_state(dst))
            job = migration_job(src)
            if job is not None:
                percents.append(int(job["PercentComplete"]))
            if not observed or observed[-1] != states:
                observed.append(states)
            return states == (None, "Running")

        wait_until(landed, deadline_s=10, what="the VM to run on the destination")
        move.end_invoke()

        assert not move.had_errors
        assert move.output == []
        assert observed == [("Running", None), ("Paused", None), (None, None), (None, "Running")]
        assert percents == sorted(percents), "PercentComplete never goes back"
        assert percents[0] < 80
        assert 80 in percents and 95 in percents
        job = migration_job(src)
        assert job is not None
        assert (job["PercentComplete"], job["JobState"]) == (100, 7)
        assert (
            job["VirtualSystemName"]
            == str(run(dst, "Get-VM", Name=VM).output[0].adapted_properties["VMId"]).upper()
        )

        # The not-listed phase is a non-terminating "not found" on both hosts.
        gone = run(src, "Get-VM", Name=VM)
        assert not gone.had_errors
        assert error_ids(gone) == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"]


def test_blackout_in_event_20415_matches_ground_truth() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        move = run(src, "Move-VM", VM, DestinationHost=DST)
        assert not move.had_errors and move.streams.error == []

        since = started.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        events = run(
            src,
            "Get-WinEvent",
            LogName=VMMS_LOG,
            FilterXPath=f"*[System[(EventID=20415 or EventID=20417) and "
            f"TimeCreated[@SystemTime>='{since}']]]",
        )
        assert not events.had_errors and events.streams.error == []
        (event,) = events.output
        assert event.types[0] == "System.Diagnostics.Eventing.Reader.EventLogRecord"
        assert event.adapted_properties["Id"] == 20415
        assert event.adapted_properties["ProviderName"] == "Microsoft-Windows-Hyper-V-VMMS"
        assert event.adapted_properties["MachineName"] == SRC
        message = event.extended_properties["Message"]
        match = re.search(r"blackout time of (\d+\.\d) seconds", message)
        assert match is not None, message
        reported = float(match.group(1))
        # Each EventProperty lies below the serialisation depth: its type name.
        assert (
            event.adapted_properties["Properties"]
            == ["System.Diagnostics.Eventing.Reader.EventProperty"] * 3
        )

        header, truth = read_ground_truth(lab.ground_truth_path)
        assert header["schema_version"] == 1
        by_name = {e["event"]: e for e in truth}
        true_blackout = (by_name[gt.RESUME]["mono_ns"] - by_name[gt.PAUSE]["mono_ns"]) / 1e9
        assert abs(reported - true_blackout) <= 0.05 + 1e-9

        worker = run(
            src,
            "Get-WinEvent",
            LogName=WORKER_LOG,
            FilterXPath="*[System[EventID=22507 or EventID=22508 or EventID=22509]]",
        )
        assert sorted(e.adapted_properties["Id"] for e in worker.output) == [22507, 22508, 22509]
        assert [e.adapted_properties["Id"] for e in _events(src, VMMS_LOG, 20418).output] == [20418]


def test_filter_hashtable_with_a_list_of_ids_finds_nothing_as_on_windows() -> None:
    """pypsrp sends a list as <LST>; PowerShell deserialises it as an ArrayList,
    which Get-WinEvent's hashtable query builder does not expand (it wants an
    Array): the XPath becomes "(System/EventID=20415 20417)" and matches nothing."""
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        assert not run(src, "Move-VM", VM, DestinationHost=DST).streams.error
        listed = _events(src, VMMS_LOG, [20415, 20417])
        assert listed.output == [] and not listed.had_errors
        assert error_ids(listed) == [
            "NoMatchingEventsFound,Microsoft.PowerShell.Commands.GetWinEventCommand"
        ]
        # One id (not a list) is pasted as it is and matches.
        assert [e.adapted_properties["Id"] for e in _events(src, VMMS_LOG, 20415).output] == [20415]
        # An XPath that Windows cannot read fails the command.
        bad = run(src, "Get-WinEvent", LogName=VMMS_LOG, FilterXPath="*[System[EventID=]]")
        assert bad.had_errors
        assert error_texts(bad) == ["The specified query is invalid"]


def test_ground_truth_records_every_state_change_in_order() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        assert not run(src, "Move-VM", VM, DestinationHost=DST).had_errors

        def network_back() -> list[str] | None:
            names = [e["event"] for e in read_ground_truth(lab.ground_truth_path)[1]]
            return names if gt.NETWORK_RESTORED in names else None

        names = wait_until(network_back, deadline_s=5, what="the guest network to be restored")
        _, truth = read_ground_truth(lab.ground_truth_path)

    assert names == [
        gt.MIGRATION_START,
        gt.BROWNOUT_START,
        gt.BROWNOUT_END,
        gt.PAUSE,
        gt.GONE_FROM_SOURCE,
        gt.LISTED_ON_DESTINATION,
        gt.RESUME,
        gt.MOVE_VM_RETURNED,
        gt.LINK_RESTORED,
        gt.LINK_RESTORED,
        gt.NETWORK_RESTORED,
    ]
    mono = [e["mono_ns"] for e in truth]
    assert mono == sorted(mono)
    for event in truth:
        assert event["utc_ns"] > 1_600_000_000 * 10**9
        assert (
            event["vm"] == VM and event["source_host"] == SRC and event["destination_host"] == DST
        )
    by_name = {e["event"]: e for e in truth}
    reconvergence = by_name[gt.NETWORK_RESTORED]["mono_ns"] - by_name[gt.RESUME]["mono_ns"]
    assert reconvergence >= 0.2e9


def test_guest_is_frozen_exactly_during_the_blackout() -> None:
    guest = InMemoryGuest()
    with LabThread(fast_config(), guest=guest) as lab, open_pool(lab, SRC) as src:
        assert not run(src, "Move-VM", VM, DestinationHost=DST).had_errors
        calls = wait_until(
            lambda: lab.call(lambda: list(guest.calls) if len(guest.calls) == 5 else None),
            deadline_s=5,
            what="brownout, freeze, thaw and network restore",
        )
        _, truth = read_ground_truth(lab.ground_truth_path)
    by_name = {e["event"]: e for e in truth}
    assert [c[0] for c in calls] == [
        "brownout_start",
        "brownout_end",
        "freeze",
        "thaw",
        "network_restored",
    ]
    assert calls[0][1].mono_ns == by_name[gt.BROWNOUT_START]["mono_ns"]
    assert by_name[gt.BROWNOUT_START]["cpu_share"] == 0.2
    assert calls[1][1].mono_ns == by_name[gt.BROWNOUT_END]["mono_ns"]
    assert calls[2][1].mono_ns == by_name[gt.PAUSE]["mono_ns"]
    assert calls[3][1].mono_ns == by_name[gt.RESUME]["mono_ns"]
    assert calls[4][1].mono_ns == by_name[gt.NETWORK_RESTORED]["mono_ns"]


def test_inbound_and_outbound_reconverge_apart_when_drawn_apart() -> None:
    """[timing] reconvergence_in / _out: inbound comes back first (the link
    filter's inbound chain alone), the guest answers pings once outbound is
    back too; each direction's return is in the ground truth. Without a
    brownout (precopy_cpu_share 1) pre-copy leaves no events."""
    guest = InMemoryGuest()
    timing = fast_timing(
        reconvergence_in=Span(0.2), reconvergence_out=Span(0.5), precopy_cpu_share=1.0
    )
    with LabThread(fast_config(timing=timing), guest=guest) as lab, open_pool(lab, SRC) as src:
        assert not run(src, "Move-VM", VM, DestinationHost=DST).had_errors
        wait_until(
            lambda: lab.call(lambda: len(guest.calls) == 4 or None),
            deadline_s=5,
            what="freeze, thaw, inbound and network restore",
        )
        _, truth = read_ground_truth(lab.ground_truth_path)
    assert [c[0] for c in guest.calls] == ["freeze", "thaw", "inbound_restored", "network_restored"]
    by_name = {e["event"]: e for e in truth}
    assert gt.BROWNOUT_START not in by_name
    links = [e for e in truth if e["event"] == gt.LINK_RESTORED]
    assert [e["direction"] for e in links] == ["inbound", "outbound"]
    resume = by_name[gt.RESUME]["mono_ns"]
    assert links[0]["mono_ns"] - resume >= 0.2e9
    assert links[1]["mono_ns"] - resume >= 0.5e9
    assert links[1]["mono_ns"] == by_name[gt.NETWORK_RESTORED]["mono_ns"]


def test_get_date_shows_the_host_clock_offset() -> None:
    config = fast_config(hosts=(HostConfig(SRC, clock_offset_s=2.5), HostConfig(DST)))
    with LabThread(config) as lab, open_pool(lab, SRC) as src, open_pool(lab, DST) as dst:
        for pool, expected in ((src, 2.5), (dst, 0.0)):
            before = time.time()
            ps = run(pool, "Get-Date")
            after = time.time()
            (value,) = ps.output
            # pypsrp 0.9 returns the DateTime (with its DisplayHint note) as a
            # generic object whose first property set is the serialized text.
            text = value if isinstance(value, str) else value.property_sets[0]
            host_time = parse_dotnet_datetime(text).timestamp()
            assert before + expected - 0.001 <= host_time <= after + expected + 0.001


def test_second_pool_and_same_pool_answer_while_move_vm_runs() -> None:
    config = fast_config()
    with (
        LabThread(config) as lab,
        open_pool(lab, SRC, max_runspaces=2) as busy,
        open_pool(lab, SRC) as other,
    ):
        move = cmdlet(busy, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        start = time.monotonic()
        latencies = []
        while vm_state(other) in ("Running", "Paused"):
            t0 = time.monotonic()
            assert run(busy, "Get-Date").output
            latencies.append(time.monotonic() - t0)
            assert time.monotonic() - start < 10
        move.end_invoke()
        assert not move.had_errors
        assert latencies and max(latencies) < 0.5


def test_no_matching_events_is_a_non_terminating_error() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src:
        ps = _events(src, VMMS_LOG, 20415)
    assert not ps.had_errors
    assert ps.output == []
    assert error_texts(ps) == ["No events were found that match the specified selection criteria."]
    assert error_ids(ps) == [
        "NoMatchingEventsFound,Microsoft.PowerShell.Commands.GetWinEventCommand"
    ]


def test_get_vm_without_a_name_lists_every_vm() -> None:
    with LabThread(fast_config()) as lab, open_pool(lab, SRC) as src, open_pool(lab, DST) as dst:
        listed = run(src, "Get-VM")
        assert [v.adapted_properties["Name"] for v in listed.output] == [VM]
        vm = listed.output[0].adapted_properties
        assert vm["ComputerName"] == SRC
        assert vm["MemoryAssigned"] == 64 * 1024 * 1024
        assert vm["Status"] == "Operating normally"
        assert str(vm["State"]) == "Running"
        empty = run(dst, "Get-VM")
        assert empty.output == [] and empty.streams.error == []
        assert vm["Uptime"].startswith("PT")


def test_idle_receive_answers_the_operation_timeout_fault() -> None:
    config = fast_config(timing=fast_timing(precopy_overhead=Span(2.0)))
    with LabThread(config) as lab, open_pool(lab, SRC) as src:
        move = cmdlet(src, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        command_id = str(move.id).upper()
        # First Receive: PipelineState Running, at once. The next one has
        # nothing to return within its OperationTimeout.
        src.shell.receive("stdout", command_id=command_id, timeout=1)
        started = time.monotonic()
        with pytest.raises(WSManFaultError) as fault:
            src.shell.receive("stdout", command_id=command_id, timeout=1)
        assert 0.9 <= time.monotonic() - started < 3
        assert fault.value.code == 2150858793
        assert "OperationTimeout" in (fault.value.reason or "")
        # pypsrp swallows that fault while polling and carries on.
        move.end_invoke()
        assert not move.had_errors


def test_same_seed_same_timeline() -> None:
    config = fast_config(
        seed=7,
        timing=fast_timing(paused_listed=Span(0.1, 0.3), unlisted=Span(0.1, 0.3)),
    )
    planned = []
    for _ in range(2):
        with LabThread(config) as lab, open_pool(lab, SRC) as src:
            vm_id = run(src, "Get-VM").output[0].adapted_properties["VMId"]
            assert not run(src, "Move-VM", VM, DestinationHost=DST).had_errors
            _, truth = read_ground_truth(lab.ground_truth_path)
        start = next(e for e in truth if e["event"] == gt.MIGRATION_START)
        planned.append((vm_id, start["planned"]))
    assert planned[0] == planned[1]
    assert 0.1 <= planned[0][1]["paused_listed_s"] <= 0.3


def test_one_runspace_pool_queues_calls_behind_move_vm() -> None:
    # Why the harness opens its polling pool with max_runspaces=2: with one
    # runspace, Get-VM waits until Move-VM has finished, as on Windows.
    with LabThread(fast_config()) as lab, open_pool(lab, SRC, max_runspaces=1) as src:
        move = cmdlet(src, "Move-VM", VM, DestinationHost=DST)
        move.begin_invoke()
        queued = run(src, "Get-VM", Name=VM)
        move.end_invoke()
        assert queued.output == [], "Get-VM ran only after the VM had left"
        names = [e["event"] for e in read_ground_truth(lab.ground_truth_path)[1]]
        assert gt.MOVE_VM_RETURNED in names


def test_ground_truth_file_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "ground_truth.jsonl"
    with LabThread(fast_config(ground_truth_path=target)) as lab:
        assert lab.ground_truth_path == target
    header, events = read_ground_truth(target)
    assert header["schema_version"] == 1 and header["lab"]["seed"] == 0
    assert events == []
    with pytest.raises(RuntimeError) as failed, LabThread(fast_config(ground_truth_path=target)):
        pass
    assert isinstance(failed.value.__cause__, FileExistsError)

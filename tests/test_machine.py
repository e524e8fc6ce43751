"""The measuring machine's context (harness/machine.py): read from this machine's /proc,
/sys and adjtimex, and CPU steal from two /proc/stat readings."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from fixtures_netns import wait_until

from migration_blackout.harness.machine import MachineWatch, read_cpu_times, steal_between

# /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = "cpu  1000 0 500 8000 100 0 50 350 0 0\ncpu0 1 2 3\n"
AFTER = "cpu  1100 0 550 8700 100 0 50 500 0 0\ncpu0 1 2 3\n"


def test_steal_is_the_share_of_cpu_time_waited_for(tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    before.write_text(BEFORE)
    after.write_text(AFTER)
    start, end = read_cpu_times(before), read_cpu_times(after)
    assert start is not None and start.total == 10000 and start.steal == 350
    steal = steal_between(start, end)
    assert steal is not None
    assert steal["pct"] == 15.0  # 150 of 1000 ticks
    assert steal["seconds"] == round(150 / os.sysconf("SC_CLK_TCK"), 3)
    assert steal_between(end, start) is None  # no interval, no figure


def test_unreadable_stat_is_none_not_an_error(tmp_path: Path) -> None:
    assert read_cpu_times(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert read_cpu_times(tmp_path / "odd") is None


def test_this_machine_is_described() -> None:
    start = read_cpu_times()
    assert start is not None
    watch = MachineWatch()
    # Steal needs an interval: wait until the kernel counted a few more ticks.
    wait_until(
        lambda: (now := read_cpu_times()) is not None and now.total > start.total + 2,
        timeout_s=10,
        what="/proc/stat to advance",
    )
    context = watch.finish()
    assert context["kernel"] == platform.release()
    assert context["cpus"] == os.cpu_count()
    assert (
        context["clocksource"]
        == Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .read_text()
        .strip()
    )
    assert isinstance(context["clock_synchronised"], bool)
    assert context["clock_max_error_us"] >= 0
    assert context["cpu_steal"]["source"] == "/proc/stat"
    assert 0.0 <= context["cpu_steal"]["pct"] <= 100.0

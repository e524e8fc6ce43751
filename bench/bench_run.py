"""Benchmarks of the emulated lab and `measure run` (needs root).

(a) `measure lab up` to ready, (b) host-state polls per second per host
through one open RunspacePool while Move-VM runs, (c) the wall time of a
complete `measure run --lab` with a ~2 s migration. Prints a Markdown table.

    sudo .venv/bin/python bench/bench_run.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from migration_blackout.harness.config import HostConfig  # noqa: E402
from migration_blackout.harness.psrp_session import HostSession, MoveVmCall  # noqa: E402
from migration_blackout.lab import control  # noqa: E402

# Pre-copy of about 2 s, a blackout of about 1 s, reconvergence 0.5 s.
TWO_SECOND_MIGRATION = """
[vm]
memory_mb = 128
[timing]
transfer_rate_mb_s = 100
precopy_overhead = 0.7
paused_listed = 0.5
unlisted = 0.5
completion = 0.3
network_reconvergence = 0.5
"""


def lab_up_times(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as state_dir:
            start = time.monotonic()
            control.up(state_dir=Path(state_dir))
            times.append(time.monotonic() - start)
            control.down(state_dir=Path(state_dir))
    return times


def polls_during_move(config_path: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state_dir:
        state, _ = control.up(state_dir=Path(state_dir), config=config_path)
        try:
            hosts = {
                h["name"]: HostConfig(
                    name=h["name"],
                    address=h["address"],
                    port=h["port"],
                    https=False,
                    auth="basic",
                    username=h["username"],
                )
                for h in state.hosts
            }
            password = state.hosts[0]["password"]
            sessions = {n: HostSession(h, password) for n, h in hosts.items()}
            for session in sessions.values():
                session.open()
            counts = dict.fromkeys(sessions, 0)
            done = threading.Event()

            def poll(name: str) -> None:
                while not done.is_set():
                    sessions[name].poll_vm("HVSW10Home")
                    counts[name] += 1

            source = next(n for n, s in sessions.items() if s.get_vm("HVSW10Home"))
            destination = next(n for n in sessions if n != source)
            threads = [threading.Thread(target=poll, args=(n,)) for n in sessions]
            call = MoveVmCall(hosts[source], password, vm="HVSW10Home", destination=destination)
            call.start()
            start = time.monotonic()
            for thread in threads:
                thread.start()
            while not call.poll(1):
                pass
            elapsed = time.monotonic() - start
            done.set()
            for thread in threads:
                thread.join()
            call.close()
            for session in sessions.values():
                session.close()
            return {n: c / elapsed for n, c in counts.items()} | {"move_vm_s": elapsed}
        finally:
            control.down(state_dir=Path(state_dir))


def run_wall_times(config_path: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.monotonic()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "migration_blackout.harness.cli",
                    "run",
                    "--lab-config",
                    str(config_path),
                    "--out",
                    out,
                ],
                check=True,
                capture_output=True,
                cwd=REPO,
                env={**os.environ, "MEASURE_LAB_DIR": str(Path(out) / "lab")},
            )
            times.append(time.monotonic() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "lab.toml"
        config_path.write_text(TWO_SECOND_MIGRATION)
        up = lab_up_times(args.repeats)
        polls = [polls_during_move(config_path) for _ in range(3)]
        walls = run_wall_times(config_path, args.repeats)
    print("| measure | median | min | max |")
    print("| --- | --- | --- | --- |")
    print(
        f"| `measure lab up` to ready (s) | {statistics.median(up):.2f} | {min(up):.2f} | "
        f"{max(up):.2f} |"
    )
    for host in polls[0]:
        values = [p[host] for p in polls]
        unit = "s" if host == "move_vm_s" else "polls/s"
        print(
            f"| {host} during Move-VM ({unit}) | {statistics.median(values):.1f} | "
            f"{min(values):.1f} | {max(values):.1f} |"
        )
    print(
        f"| `measure run --lab`, ~2 s migration, default 10 s settle (s) | "
        f"{statistics.median(walls):.1f} | {min(walls):.1f} | {max(walls):.1f} |"
    )


if __name__ == "__main__":
    main()

"""What the lab's Kerberos costs (needs root): side by side, interleaved.

(a) `measure lab up` to ready with the KDC (`[kerberos] enabled = true`, the
default) and without; (b) an in-process lab (`LabThread`, what a test starts)
from start to stopped, with and without; (c) `measure run` against one running
lab with `--auth basic`, `ntlm` and `kerberos`: the preflight phase (from the
run's own events) and the whole run. Prints Markdown tables with ratios.

    sudo .venv/bin/python bench/bench_kerberos.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from migration_blackout.lab import control  # noqa: E402
from migration_blackout.lab.hyperv_emulator import LabConfig, LabThread  # noqa: E402
from migration_blackout.lab.kerberos import KerberosSettings  # noqa: E402

# A ~1 s migration: the run's wall time is mostly the harness, not the lab.
SHORT_MIGRATION = """
[vm]
memory_mb = 64
[timing]
transfer_rate_mb_s = 200
precopy_overhead = 0.5
paused_listed = 0.3
unlisted = 0.3
completion = 0.2
network_reconvergence = 0.3
"""


def lab_up_s(config: Path) -> float:
    with tempfile.TemporaryDirectory() as state_dir:
        start = time.monotonic()
        control.up(state_dir=Path(state_dir), config=config)
        elapsed = time.monotonic() - start
        control.down(state_dir=Path(state_dir))
    return elapsed


def lab_thread_s(kerberos: bool) -> float:
    start = time.monotonic()
    with LabThread(LabConfig(kerberos=KerberosSettings(enabled=kerberos))):
        pass
    return time.monotonic() - start


def run_once(state_dir: Path, auth: str) -> tuple[float, float, float | None]:
    """(whole run s, preflight s, kerberos checks s) of one `measure run`."""
    with tempfile.TemporaryDirectory() as out:
        start = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "migration_blackout.harness.cli",
                "run",
                "--auth",
                auth,
                "--settle",
                "1",
                "--out",
                out,
            ],
            check=True,
            capture_output=True,
            cwd=REPO,
            env={**os.environ, "MEASURE_LAB_DIR": str(state_dir)},
        )
        wall = time.monotonic() - start
        (run_dir,) = Path(out).glob("*-run-*")
        events = [
            json.loads(line) for line in (run_dir / "raw" / "events.jsonl").read_text().splitlines()
        ]
    phases = {e["phase"]: e["mono_ns"] for e in events if e.get("event") == "phase"}
    preflight = (phases["clock"] - phases["preflight"]) / 1e9
    checks = [e["mono_ns"] for e in events if e.get("check") == "kerberos"]
    kerberos = (checks[-1] - phases["preflight"]) / 1e9 if checks else None
    return wall, preflight, kerberos


def row(name: str, values: list[float], unit: str = "s") -> str:
    return (
        f"| {name} ({unit}) | {statistics.median(values):.3f} | {min(values):.3f} | "
        f"{max(values):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    up: dict[bool, list[float]] = {True: [], False: []}
    thread: dict[bool, list[float]] = {True: [], False: []}
    runs: dict[str, list[tuple[float, float, float | None]]] = {
        a: [] for a in ("basic", "ntlm", "kerberos")
    }
    with tempfile.TemporaryDirectory() as tmp:
        configs = {}
        for enabled in (True, False):
            configs[enabled] = Path(tmp) / f"lab-{enabled}.toml"
            configs[enabled].write_text(
                SHORT_MIGRATION + f"[kerberos]\nenabled = {str(enabled).lower()}\n"
            )
        for index in range(args.repeats):
            # Alternate which goes first, so drift in the machine's load hits both.
            for enabled in (True, False) if index % 2 else (False, True):
                up[enabled].append(lab_up_s(configs[enabled]))
                thread[enabled].append(lab_thread_s(enabled))
        state_dir = Path(tmp) / "running"
        control.up(state_dir=state_dir, config=configs[True])
        try:
            for index in range(args.repeats):
                order = ["basic", "ntlm", "kerberos"]
                for auth in order[index % 3 :] + order[: index % 3]:
                    runs[auth].append(run_once(state_dir, auth))
        finally:
            control.down(state_dir=state_dir)

    print("| measure | median | min | max |")
    print("| --- | --- | --- | --- |")
    for enabled in (False, True):
        label = "with the KDC" if enabled else "without (`[kerberos] enabled = false`)"
        print(row(f"`measure lab up` to ready, {label}", up[enabled]))
    for enabled in (False, True):
        label = "with the KDC" if enabled else "without"
        print(row(f"in-process lab (`LabThread`) start to stopped, {label}", thread[enabled]))
    for auth, values in runs.items():
        print(row(f"`measure run`, preflight phase, --auth {auth}", [v[1] for v in values]))
    for auth, values in runs.items():
        print(
            row(
                f"`measure run`, whole run (~1 s migration, 1 s settle), --auth {auth}",
                [v[0] for v in values],
            )
        )
    kerberos_checks = [v[2] for v in runs["kerberos"] if v[2] is not None]
    print(row("`measure run --auth kerberos`: the KDC checks of both hosts", kerberos_checks))
    print()
    print("| ratio of medians | value |")
    print("| --- | --- |")

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(a) / statistics.median(b)

    print(f"| lab up, KDC / no KDC | {ratio(up[True], up[False]):.2f}x |")
    print(f"| in-process lab, KDC / no KDC | {ratio(thread[True], thread[False]):.2f}x |")
    for auth in ("basic", "ntlm"):
        pre = ratio([v[1] for v in runs["kerberos"]], [v[1] for v in runs[auth]])
        whole = ratio([v[0] for v in runs["kerberos"]], [v[0] for v in runs[auth]])
        print(f"| preflight, kerberos / {auth} | {pre:.2f}x |")
        print(f"| whole run, kerberos / {auth} | {whole:.2f}x |")


if __name__ == "__main__":
    main()

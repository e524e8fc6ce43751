"""The QEMU lab as a background process:
``python -m migration_blackout.lab.qemu.daemon --state-dir DIR``.

Runs ``QemuLab`` until SIGTERM or SIGINT (with ``--owner-pid``, also until
that process is gone: a lab started for one run or one test session) and
keeps ``DIR/qemu-lab.json`` (mode 0600: it holds the heartbeat token) up to
date: rewritten atomically at every change of the lab (a QEMU started or
exited, the guest moved), with a ``lab.serial`` that grows each time. On the
way out it stops both QEMUs, removes the network and the state file.
``lab.qemu.control`` starts and stops it; docs/qemu.md documents the file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from migration_blackout.probes.clock import clock_pair
from migration_blackout.runformat import utc_iso

from ..netns import watch_owner
from .artefacts import QemuSetupError, ensure_artefacts
from .lab import GUEST_NAME, LabSnapshot, QemuLab, QemuLabConfig, QemuLabError

STATE_FILE = "qemu-lab.json"
# qemu-lab.json history: 1 (0.1.0): first version.
STATE_SCHEMA_VERSION = 1


def write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the token
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def state_document(lab: QemuLab, snapshot: LabSnapshot, started_utc: str) -> dict[str, Any]:
    """What ``qemu-lab.json`` holds (docs/qemu.md)."""
    assert lab.artefacts is not None
    heartbeat_host, heartbeat_port = lab.heartbeat_target
    return {
        "schema_version": STATE_SCHEMA_VERSION,
        "hypervisor": "qemu",
        "pid": os.getpid(),
        "started_utc": started_utc,
        "updated_utc": utc_iso(clock_pair().utc_ns),
        "qemu": {
            "binary": str(lab.artefacts.qemu_binary),
            "version": lab.artefacts.qemu_version,
            "accel": "tcg",
            "kernel_package": lab.artefacts.kernel_package,
            "memory_mib": lab.config.memory_mib,
        },
        "network": {
            "namespace": lab.network.namespace,
            "harness_interface": lab.network.host_if,
        },
        "guest": {
            "name": GUEST_NAME,
            "address": lab.guest_address,
            "mac": lab.network.guest_mac,
            "harness_side_address": lab.harness_address,
            "control_port": lab.config.control_port,
        },
        "heartbeat": {
            "address": heartbeat_host,
            "port": heartbeat_port,
            "hz": lab.config.heartbeat_hz,
            "token": lab.token,
        },
        "config": asdict(lab.config),
        "lab_events": None if lab.events_path is None else str(lab.events_path),
        "lab": snapshot.to_json(),
    }


async def serve(state_dir: Path, config: QemuLabConfig, owner_pid: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    state_path = state_dir / STATE_FILE
    started_utc = utc_iso(clock_pair().utc_ns)
    # A signal while the guest boots interrupts the boot; afterwards it ends the wait.
    this_task = asyncio.current_task()
    assert this_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, this_task.cancel)
    artefacts = await asyncio.to_thread(ensure_artefacts)
    lab: QemuLab | None = None

    def on_change(snapshot: LabSnapshot) -> None:
        assert lab is not None
        write_state(state_path, state_document(lab, snapshot, started_utc))

    lab = QemuLab(state_dir, config=config, artefacts=artefacts, on_change=on_change)
    try:
        await lab.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if owner_pid is None:
            await stop.wait()
        else:  # a lab started for one process ends with it
            await watch_owner(owner_pid, stop)
    finally:
        await lab.close()
        state_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migration_blackout.lab.qemu.daemon", description=__doc__
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config-json", default="{}", help="QemuLabConfig fields as a JSON object")
    parser.add_argument(
        "--owner-pid", type=int, default=None, help="stop once this process is gone"
    )
    args = parser.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        config = QemuLabConfig(**json.loads(args.config_json))
        asyncio.run(serve(args.state_dir, config, args.owner_pid))
    except asyncio.CancelledError:
        return 0  # stopped while the guest booted
    except (QemuSetupError, QemuLabError, TypeError, ValueError) as exc:
        print(f"qemu lab: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

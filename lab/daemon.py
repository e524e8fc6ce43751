"""The lab as a background process: ``python -m migration_blackout.lab.daemon --state-dir DIR``.

Starts the guest namespace and both emulated hosts, writes ``DIR/lab.json``
(endpoints, credentials, guest address, ground-truth path) once everything
listens, and runs until SIGTERM or SIGINT; then it stops the hosts, removes
the namespace and the state file. ``lab.control`` starts and stops it.

With ``--owner-pid`` (a lab started for one ``measure run``) it also stops
when that process is gone, however it ended. SIGUSR1 fires the faults whose
``unresponsive_after`` is ``"signal"``: tests time a host's failure to a
phase of the run that way.
            realm = lab.realm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from migration_blackout.probes.clock import clock_pair
from migration_blackout.runformat import utc_iso

from .guest import NetnsGuest
from .hyperv_emulator import LabHosts
from .labconfig import LabConfigError, load_lab_config
from .netns import watch_owner

STATE_FILE = "lab.json"
STATE_SCHEMA_VERSION = 1
KERBEROS_DIR = "kerberos"


def _write_state(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the lab password
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


FAULT_SIGNAL_EVENT = "signal"  # unresponsive_after = "signal": fired by SIGUSR1


async def serve(
    state_dir: Path, config_path: Path | None, seed: int | None, owner_pid: int | None = None
) -> None:
    config = load_lab_config(config_path, seed=seed)
    started = clock_pair()
    stamp = utc_iso(started.utc_ns).replace(":", "").replace("-", "")[:15]
    ground_truth = state_dir / f"ground_truth-{stamp}-{os.getpid()}.jsonl"
    config = replace(config, ground_truth_path=ground_truth, kerberos_dir=state_dir / KERBEROS_DIR)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    guest = NetnsGuest(truth_path=state_dir / f"injector-{stamp}-{os.getpid()}.jsonl")
    state_path = state_dir / STATE_FILE
    guest.create()
    try:
        async with LabHosts(config, guest=guest) as lab, asyncio.TaskGroup() as tasks:

            def fire_signal_faults() -> None:
                for fault in config.faults.unresponsive:
                    if fault.after_event == FAULT_SIGNAL_EVENT:
                        lab.set_unresponsive(fault.host, fault.mode)

            loop.add_signal_handler(signal.SIGUSR1, fire_signal_faults)
            if owner_pid is not None:
                tasks.create_task(watch_owner(owner_pid, stop))
            realm = lab.realm
            state = {
                "schema_version": STATE_SCHEMA_VERSION,
                "pid": os.getpid(),
                "started_utc": utc_iso(started.utc_ns),
                "ready_utc": utc_iso(clock_pair().utc_ns),
                "hosts": [
                    {
                        "name": endpoint.name,
                        "url": endpoint.url,
                        "address": endpoint.address,
                        "port": endpoint.port,
                        "auth": sorted(
                            config.auth_methods | ({"kerberos"} if realm is not None else set())
                        ),
                        "username": lab.credentials.username,
                        "principal": lab.credentials.principal,
                        "password": lab.credentials.password,
                        "service_principal": None
                        if realm is None
                        else realm.host(endpoint.name).service_principal,
                        "fqdn": None if realm is None else realm.host(endpoint.name).fqdn,
                    }
                    for endpoint in lab.hosts.values()
                ],
                "kerberos": None if realm is None else realm.describe(),
                "guest": {
                    "name": config.vm.name,
                    "address": guest.address,
                    "namespace": guest.namespace.name,
                    "harness_side_address": guest.host_address,
                },
                "vm_initial_host": config.vm.host,
                "seed": config.seed,
                "config_file": None if config_path is None else str(config_path),
                "ground_truth": str(lab.ground_truth_path),
                "tls": config.tls,
                "ca": None if lab.ca_path is None else str(lab.ca_path),
            }
            _write_state(state_path, state)
            await stop.wait()
            loop.remove_signal_handler(signal.SIGUSR1)
    finally:
        guest.destroy()
        state_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migration_blackout.lab.daemon", description=__doc__
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--owner-pid", type=int, default=None)
    args = parser.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(args.state_dir, args.config, args.seed, args.owner_pid))
    except LabConfigError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

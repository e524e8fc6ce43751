"""``measure lab up / status / down`` and the lab as ``measure run``'s default.

When no hosts are configured (or ``--lab`` is given), ``measure run`` uses
the emulated lab: a lab already started with ``measure lab up`` when one
runs and no lab settings were asked for, otherwise a lab of its own, started
for the run in a private state folder and stopped afterwards.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from lab import control
from lab.control import LabError, LabState

from ..config import HostConfig, RunConfig
from ..guestagent import GuestAgentSetup


def up(*, config: Path | None, seed: int | None) -> tuple[LabState, bool]:
    """Start the lab in the background (or find the running one)."""
    return control.up(config=config, seed=seed)


def status() -> dict[str, Any]:
    state = control.read_state()
    if state is None:
        return {"running": False, "state_file": str(control.default_state_dir() / "lab.json")}
    return state.public()


def down() -> list[str]:
    return control.down()


def run_config_for_lab(
    config: RunConfig, state: LabState, *, vm: str | None = None
) -> tuple[RunConfig, dict[str, str | None]]:
    """``config`` pointed at the lab's hosts and guest (and its VM unless ``vm``
    names another); returns it and the passwords."""
    hosts = []
    passwords: dict[str, str | None] = {}
    for host in state.hosts:
        address, port = host["address"], int(host["port"])
        hosts.append(
            HostConfig(
                name=host["name"],
                address=address,
                port=port,
                https=False,
                auth="basic",
                username=host["username"],
                password_env="(lab)",
                cert_validation=False,
            )
        )
        passwords[host["name"]] = str(host["password"])
    vm = vm or str(state.document["guest"]["name"])
    return (
        replace(config, hosts=tuple(hosts), guest_addresses=(state.guest_address,), vm=vm),
        passwords,
    )


def guest_agent_setup(
    state: LabState,
    *,
    listen: tuple[str, int] | None,
    contact_deadline_s: float,
    interval_s: float = 1.0,
) -> GuestAgentSetup:
    """The receiver on the harness's side of the guest's link; the lab starts
    the agent inside the guest namespace."""
    guest = state.document["guest"]
    host, port = listen or (str(guest["harness_side_address"]), 0)
    return GuestAgentSetup(
        listen_host=host,
        listen_port=port,
        contact_deadline_s=contact_deadline_s,
        interval_s=interval_s,
        lab_namespace=str(guest["namespace"]),
    )


@contextlib.contextmanager
def lab_for_run(*, config: Path | None = None, seed: int | None = None) -> Iterator[LabState]:
    """The running lab if there is one and no settings were asked for; else a
    private lab for the duration of the ``with`` block."""
    if config is None and seed is None:
        running = control.read_state()
        if running is not None:
            yield running
            return
    with tempfile.TemporaryDirectory(prefix="measure-lab-") as state_dir:
        state, _ = control.up(state_dir=Path(state_dir), config=config, seed=seed)
        try:
            yield state
        finally:
            control.down(state_dir=Path(state_dir))


__all__ = ["LabError", "down", "lab_for_run", "run_config_for_lab", "status", "up"]

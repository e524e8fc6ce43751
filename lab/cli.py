"""``measure lab up / status / down``: the lab's commands, handed to the product's
CLI through the plug-in seam (``harness.labseam``; ``lab/plugin.py``).

A command that cannot do its work raises ``LabError`` (or ``PermissionError``);
the product's ``measure lab`` group turns that into one line and exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from migration_blackout.harness import exitcodes
from migration_blackout.harness.labseam import LabError

from . import control
from .qemu import control as qemu_control


def up(
    *, config: Path | None, seed: int | None, hypervisor: str = "hyperv"
) -> tuple[dict[str, Any], bool]:
    """Start the lab in the background (or find the running one); its public state."""
    if hypervisor == "qemu":
        if config is not None or seed is not None:
            raise LabError("the QEMU lab takes no lab.toml or seed")
        qemu_state, started = qemu_control.up()
        return qemu_state.public(), started
    state, started = control.up(config=config, seed=seed)
    return state.public(), started


def describe(hypervisor: str = "hyperv") -> dict[str, Any]:
    if hypervisor == "qemu":
        qemu_state = qemu_control.read_state()
        if qemu_state is None:
            return {"running": False, "state_file": str(qemu_control.default_state_dir())}
        return qemu_state.public()
    state = control.read_state()
    if state is None:
        return {"running": False, "state_file": str(control.default_state_dir() / "lab.json")}
    return state.public()


def down(hypervisor: str | None = None) -> list[str]:
    """Stop the lab(s); both kinds unless ``hypervisor`` names one."""
    removed: list[str] = []
    if hypervisor in (None, "qemu"):
        removed += qemu_control.down()
    if hypervisor in (None, "hyperv"):
        removed += control.down()
    return removed


@click.group()
def lab() -> None:
    """The emulated Hyper-V lab: two hosts speaking WinRM/PSRP and a guest in a
    network namespace (needs root)."""


@lab.command("up", epilog=exitcodes.LAB_EPILOG)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="lab.toml (timing, hosts, faults).",
)
@click.option("--seed", type=int, default=None, help="Seed for the random durations.")
@click.option(
    "--hypervisor",
    type=click.Choice(["hyperv", "qemu"]),
    default="hyperv",
    show_default=True,
    help="The emulated Hyper-V lab, or the QEMU lab (a real guest).",
)
def lab_up(config_path: Path | None, seed: int | None, hypervisor: str) -> None:
    """Start the lab in the background and print its endpoints."""
    public, started = up(config=config_path, seed=seed, hypervisor=hypervisor)
    click.echo("lab started" if started else "lab already running", err=True)
    if hypervisor == "qemu":
        running = public.get("running_qemu") or {}
        click.echo(f"qemu  running on side {public.get('running_side')}: QMP {running.get('qmp')}")
        click.echo(
            f"guest {public['guest']['address']}  heartbeat to "
            f"{public['heartbeat']['address']}:{public['heartbeat']['port']}"
        )
        click.echo(f"state file {public['state_file']}")
        return
    for host in public["hosts"]:
        click.echo(
            f"host  {host['name']:18} {host['url']}  auth {'/'.join(host['auth'])}  "
            f"user {host['username']}"
        )
    click.echo(f"guest {public['guest']['name']:18} {public['guest']['address']}")
    _echo_realm(public)
    click.echo(f"credentials: `measure lab status --json` (state file {public['state_file']})")
    click.echo(f"ground truth: {public['ground_truth']}")


def _echo_realm(public: dict[str, Any]) -> None:
    realm = public.get("kerberos")
    if realm:
        click.echo(
            f"realm {realm['realm']:18} KDC {realm['kdc']}  user {realm['user_principal']}  "
            f"KRB5_CONFIG={realm['krb5_config']}"
        )


@lab.command("status", epilog=exitcodes.LAB_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with credentials.")
@click.option(
    "--hypervisor", type=click.Choice(["hyperv", "qemu"]), default="hyperv", show_default=True
)
def lab_status(as_json: bool, hypervisor: str) -> None:
    """Show whether the lab runs, its endpoints and its ground-truth file."""
    status = describe(hypervisor)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    if not status["running"]:
        click.echo("lab: not running")
        sys.exit(1)
    if hypervisor == "qemu":
        click.echo(f"qemu  {status['status']}, guest runs on side {status.get('running_side')}")
        click.echo(f"guest {status['guest']['address']}")
        return
    for host in status["hosts"]:
        click.echo(f"host  {host['name']:18} {host['url']}")
    click.echo(f"guest {status['guest']['name']:18} {status['guest']['address']}")
    _echo_realm(status)
    click.echo(f"ground truth: {status['ground_truth']}")


@lab.command("down", epilog=exitcodes.LAB_EPILOG)
@click.option(
    "--hypervisor",
    type=click.Choice(["hyperv", "qemu"]),
    default=None,
    help="Stop only this lab [default: both].",
)
def lab_down(hypervisor: str | None) -> None:
    """Stop the lab and remove its namespaces and processes (idempotent)."""
    removed = down(hypervisor)
    click.echo("lab: stopped" if removed else "lab: nothing was running", err=True)
    for item in removed:
        click.echo(f"  removed {item}", err=True)

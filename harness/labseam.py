"""Where a lab plugs into the product.

The product (``harness``, ``probes``, ``analysis``) never imports a lab: it
measures real hosts and real QEMUs. An emulated lab sits above it and is
handed to it through this seam: :class:`LabPlugin`, which ``lab/plugin.py``
implements and the package announces as the entry point ``lab`` in the group
``migration_blackout.plugins``. The CLI loads it (:func:`load_lab`) only when
it needs a lab: ``measure lab ...``, ``measure run --lab`` (or a lab.toml or
seed) and a run with nothing real configured. Without the ``[lab]`` extra
(psrpcore) the plug-in cannot be imported, and those commands say so in one
line (:data:`LAB_NEEDS`); everything else works.

What a lab hands the product for ``measure run`` (or a session of runs) is a
run environment (``harness.measurement.RunEnvironment``): started once the
run folder exists, it describes the lab for each run as a
``PreparedRun`` (the run's configuration pointed at the lab's hosts or QMP
endpoints and its guest, the passwords, the ground-truth file, the
manifest's ``lab`` entry, the guest agent's set-up, whose ``desktop`` factory
starts the agent inside the lab's guest: ``harness.guestagent``), and is
stopped after the last run.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .config import RunConfig

if TYPE_CHECKING:
    import click

    from .measurement import RunEnvironment

PLUGIN_GROUP = "migration_blackout.plugins"
LAB_PLUGIN = "lab"
LAB_NEEDS = "the lab needs: pip install 'migration-blackout[lab]'"


class LabError(Exception):
    """A lab could not be started, found or stopped; the message says why."""


class LabUnavailableError(LabError):
    """No lab is installed, or it cannot be imported (the ``[lab]`` extra is missing)."""


@dataclass(frozen=True)
class LabRequest:
    """What ``measure run`` asks of a lab: one of the kind ``config.hypervisor`` names.

    ``lab_config`` and ``seed`` shape an emulated Hyper-V lab started for the
    run (a running lab is used only when neither is given); ``vm`` names
    another VM than the lab's own. The agent's settings: ``guest_agent`` asks
    for the in-guest agent (the QEMU lab's guest always sends its heartbeat),
    ``agent_listen`` is where its receiver listens (default: the lab's link),
    ``agent_wait_s`` how long it waits for the agent's first contact;
    ``witness_port``, when set, is where the agent answers the witnesses
    (``measure run --witnesses``; the QEMU lab's guest always answers them).
    """

    config: RunConfig
    lab_config: Path | None = None
    seed: int | None = None
    vm: str | None = None
    guest_agent: bool = False
    agent_listen: tuple[str, int] | None = None
    agent_wait_s: float = 60.0
    agent_interval_s: float = 1.0
    witness_port: int | None = None


class LabPlugin(Protocol):
    """What a lab implements to plug into the product."""

    def environment_for_run(self, request: LabRequest) -> RunEnvironment:
        """The lab for a run or a session: the running lab of the requested kind, or
        one the environment starts and stops. Raises :class:`LabError` at once when
        the request cannot work (a lab.toml that cannot), before anything starts."""
        ...

    def commands(self) -> click.Group:
        """The ``measure lab`` commands (up, status, down)."""
        ...


def load_lab() -> LabPlugin:
    """The installed lab plug-in; :class:`LabUnavailableError` (:data:`LAB_NEEDS`) when
    there is none or what it needs is not installed."""
    entry = next(iter(metadata.entry_points(group=PLUGIN_GROUP, name=LAB_PLUGIN)), None)
    if entry is None:
        raise LabUnavailableError(LAB_NEEDS)
    try:
        factory = entry.load()
    except ModuleNotFoundError as exc:
        raise LabUnavailableError(f"{LAB_NEEDS} ({exc.name} is not installed)") from exc
    plugin: LabPlugin = factory()
    return plugin

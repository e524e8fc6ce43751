"""The labs as a plug-in of the product (``harness.labseam.LabPlugin``).

``pyproject.toml`` announces :class:`Labs` as the entry point ``lab`` of the
group ``migration_blackout.plugins``; ``measure`` loads it when a run needs a
lab (the run environments: ``lab/runenv.py``) and for ``measure lab`` (its
commands: ``lab/cli.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration_blackout.harness.labseam import LabError, LabRequest

from .labconfig import LabConfigError, load_lab_config

if TYPE_CHECKING:
    import click

    from migration_blackout.harness.measurement import RunEnvironment


class Labs:
    """The emulated Hyper-V lab and the QEMU lab, handed to the product."""

    def environment_for_run(self, request: LabRequest) -> RunEnvironment:
        if request.lab_config is not None:
            # A lab.toml that cannot work is refused before anything starts.
            try:
                load_lab_config(request.lab_config, seed=request.seed)
            except LabConfigError as exc:
                raise LabError(str(exc)) from None
        # Imported here: the run environments stand on the whole run command
        # (probes, analysis), which `measure lab up/status/down` do not need.
        from .runenv import HyperVLabForRun, QemuLabForRun

        if request.config.hypervisor == "qemu":
            return QemuLabForRun(agent_wait_s=request.agent_wait_s)
        return HyperVLabForRun(
            config=request.lab_config,
            seed=request.seed,
            vm=request.vm,
            agent_listen=request.agent_listen,
            agent_wait_s=request.agent_wait_s if request.guest_agent else None,
            agent_interval_s=request.agent_interval_s,
            witness_port=request.witness_port,
        )

    def commands(self) -> click.Group:
        from .cli import lab

        return lab

"""Emulated Hyper-V hosts that speak real WinRM + PSRP to an unmodified pypsrp client.

Start them with :class:`LabHosts` (in an event loop) or :class:`LabThread`
(in a background thread, for blocking clients); configure them with
:class:`LabConfig`. The migration model lives in :mod:`lab.hyperv_emulator.model`, the
ground-truth file format in :mod:`lab.hyperv_emulator.groundtruth`.
"""

from migration_blackout.lab.hyperv_emulator.groundtruth import read_ground_truth
from migration_blackout.lab.hyperv_emulator.model import (
    DEFAULT_DESTINATION_HOST,
    DEFAULT_SOURCE_HOST,
    DEFAULT_VM_NAME,
    FaultConfig,
    GuestControl,
    HostConfig,
    InMemoryGuest,
    JobState,
    LabClock,
    LabConfig,
    MigrationTiming,
    Span,
    UnresponsiveFault,
    VmConfig,
    VmState,
)
from migration_blackout.lab.hyperv_emulator.runner import HostEndpoint, LabHosts, LabThread

__all__ = [
    "DEFAULT_DESTINATION_HOST",
    "DEFAULT_SOURCE_HOST",
    "DEFAULT_VM_NAME",
    "FaultConfig",
    "GuestControl",
    "HostConfig",
    "HostEndpoint",
    "InMemoryGuest",
    "JobState",
    "LabClock",
    "LabConfig",
    "LabHosts",
    "LabThread",
    "MigrationTiming",
    "Span",
    "UnresponsiveFault",
    "VmConfig",
    "VmState",
    "read_ground_truth",
]

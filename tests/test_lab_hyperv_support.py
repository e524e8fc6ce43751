"""Helpers for the emulated Hyper-V host tests (no tests here).

Everything goes through the unmodified pypsrp 0.9 client: ``WSMan`` +
``RunspacePool`` + ``PowerShell.add_cmdlet``/``add_parameter``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from migration_blackout.lab.hyperv_emulator import (
    DEFAULT_DESTINATION_HOST,
    DEFAULT_SOURCE_HOST,
    DEFAULT_VM_NAME,
    LabConfig,
    LabThread,
    MigrationTiming,
    Span,
    VmConfig,
)
from migration_blackout.lab.hyperv_emulator.model import MIB

SRC = DEFAULT_SOURCE_HOST
DST = DEFAULT_DESTINATION_HOST
VM = DEFAULT_VM_NAME
VIRTUALIZATION_NS = r"root\virtualization\v2"

T = TypeVar("T")


def fast_timing(**overrides: Any) -> MigrationTiming:
    """Sub-second, fixed phases long enough for a polling client to see each one."""
    values: dict[str, Any] = {
        "transfer_rate_bytes_per_s": 256 * MIB,
        "dirty_rate_bytes_per_s": 16 * MIB,
        "precopy_overhead": Span(0.3),
        "paused_listed": Span(0.4),
        "unlisted": Span(0.4),
        "completion": Span(0.1),
        "network_reconvergence": Span(0.2),
        "negotiation": Span(0.05),
    }
    values.update(overrides)
    return MigrationTiming(**values)


def fast_config(**overrides: Any) -> LabConfig:
    values: dict[str, Any] = {
        "vm": VmConfig(memory_bytes=64 * MIB, disk_bytes=64 * MIB),
        "timing": fast_timing(),
    }
    values.update(overrides)
    return LabConfig(**values)


def wsman_for(
    lab: LabThread, host: str, *, auth: str = "basic", password: str | None = None, **kwargs: Any
) -> WSMan:
    endpoint = lab.hosts[host]
    secret = lab.credentials.password if password is None else password
    if auth == "basic":
        return WSMan(
            endpoint.address,
            port=endpoint.port,
            username=lab.credentials.username,
            password=secret,
            ssl=False,
            auth="basic",
            encryption="never",
            **kwargs,
        )
    return WSMan(
        endpoint.address,
        port=endpoint.port,
        username=lab.credentials.principal,
        password=secret,
        ssl=False,
        auth=auth,
        **kwargs,
    )


@contextlib.contextmanager
def open_pool(
    lab: LabThread, host: str, *, max_runspaces: int = 1, **kwargs: Any
) -> Iterator[RunspacePool]:
    with (
        wsman_for(lab, host, **kwargs) as wsman,
        RunspacePool(wsman, max_runspaces=max_runspaces) as pool,
    ):
        yield pool


def cmdlet(pool: RunspacePool, name: str, *args: Any, **params: Any) -> PowerShell:
    """A PowerShell with one cmdlet; ``args`` positional, ``params`` named (True: switch)."""
    ps = PowerShell(pool)
    ps.add_cmdlet(name)
    for value in args:
        ps.add_argument(value)
    for key, value in params.items():
        if value is True:
            ps.add_parameter(key)
        else:
            ps.add_parameter(key, value)
    return ps


def run(pool: RunspacePool, name: str, *args: Any, **params: Any) -> PowerShell:
    ps = cmdlet(pool, name, *args, **params)
    ps.invoke()
    return ps


def vm_state(pool: RunspacePool, vm: str = VM) -> str | None:
    """The VM's State as the host lists it, or None when it is not listed."""
    ps = run(pool, "Get-VM", Name=vm)
    if ps.output:
        return str(ps.output[0].adapted_properties["State"])
    return None


def migration_job(pool: RunspacePool) -> dict[str, Any] | None:
    ps = run(pool, "Get-CimInstance", Namespace=VIRTUALIZATION_NS, ClassName="Msvm_MigrationJob")
    if not ps.output:
        return None
    return dict(ps.output[-1].adapted_properties)


def wait_until(condition: Callable[[], T | None], *, deadline_s: float, what: str) -> T:
    """Evaluate ``condition`` (a client call) until it returns a truthy value."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


def error_texts(ps: PowerShell) -> list[str]:
    return [str(e) for e in ps.streams.error]


def error_ids(ps: PowerShell) -> list[str]:
    return [getattr(e, "fq_error", None) or "" for e in ps.streams.error]


def parse_dotnet_datetime(text: str) -> dt.datetime:
    """A serialized .NET DateTime (7 fractional digits, Z or offset)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))

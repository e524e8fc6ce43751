"""``lab.toml``: how the emulated lab behaves (timing, hosts, faults).

Every key is optional; the defaults give a short migration of a small VM
(about 2-4 s of pre-copy, a blackout of about 1.5-3.5 s, then 1-3 s of
network reconvergence), drawn from ``seed``. See ``lab.example.toml``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .hyperv_emulator import (
    DEFAULT_DESTINATION_HOST,
    DEFAULT_SOURCE_HOST,
    FaultConfig,
    HostConfig,
    LabConfig,
    MigrationTiming,
    Span,
    UnresponsiveFault,
    VmConfig,
)
from .kerberos import KerberosSettings

MIB = 1024 * 1024

# The lab's own defaults: a VM small enough that `measure run --lab` is quick.
DEFAULT_LAB = LabConfig(vm=VmConfig(memory_bytes=256 * MIB, disk_bytes=512 * MIB))


class LabConfigError(Exception):
    pass


# [hosts.<name>] keys: every field of the lab's HostConfig but its name.
HOST_KEYS = {f.name for f in fields(HostConfig)} - {"name"}


def _span(value: Any, where: str) -> Span:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Span(float(value))
    if isinstance(value, list) and len(value) == 2:
        return Span(float(value[0]), float(value[1]))
    raise LabConfigError(f"{where}: a duration is a number of seconds or [low, high]")


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(table, Mapping):
        raise LabConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise LabConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def parse_lab_config(document: Mapping[str, Any], origin: str = "<lab config>") -> LabConfig:
    _check_keys(
        document,
        {
            "seed",
            "vm",
            "timing",
            "hosts",
            "faults",
            "username",
            "password",
            "auth_methods",
            "tls",
            "kerberos",
        },
        origin,
    )
    config = DEFAULT_LAB
    try:
        if "seed" in document:
            config = replace(config, seed=int(document["seed"]))
        if "username" in document:
            config = replace(config, username=str(document["username"]))
        if "password" in document:
            config = replace(config, password=str(document["password"]))
        if "tls" in document:
            config = replace(config, tls=bool(document["tls"]))
        if "auth_methods" in document:
            config = replace(config, auth_methods=frozenset(document["auth_methods"]))

        vm = document.get("vm", {})
        _check_keys(vm, {"name", "host", "memory_mb", "disk_mb"}, f"{origin}: [vm]")
        vm_changes: dict[str, Any] = {}
        if "name" in vm:
            vm_changes["name"] = str(vm["name"])
        if "host" in vm:
            vm_changes["host"] = str(vm["host"])
        if "memory_mb" in vm:
            vm_changes["memory_bytes"] = int(vm["memory_mb"] * MIB)
        if "disk_mb" in vm:
            vm_changes["disk_bytes"] = int(vm["disk_mb"] * MIB)
        vm_config: VmConfig = replace(config.vm, **vm_changes)

        timing = document.get("timing", {})
        span_keys = {
            f.name for f in fields(MigrationTiming) if f.type in ("Span", Span, "Span | None")
        }
        number_keys = {
            "transfer_rate_mb_s",
            "dirty_rate_mb_s",
            "critical_blackout_s",
            "precopy_cpu_share",
        }
        _check_keys(timing, span_keys | number_keys, f"{origin}: [timing]")
        timing_changes: dict[str, Any] = {
            key: _span(value, f"{origin}: [timing] {key}")
            for key, value in timing.items()
            if key in span_keys
        }
        if "transfer_rate_mb_s" in timing:
            timing_changes["transfer_rate_bytes_per_s"] = float(timing["transfer_rate_mb_s"]) * 1e6
        if "dirty_rate_mb_s" in timing:
            timing_changes["dirty_rate_bytes_per_s"] = float(timing["dirty_rate_mb_s"]) * 1e6
        if "critical_blackout_s" in timing:
            timing_changes["critical_blackout_s"] = float(timing["critical_blackout_s"])
        if "precopy_cpu_share" in timing:
            timing_changes["precopy_cpu_share"] = float(timing["precopy_cpu_share"])
        timing_config = replace(config.timing, **timing_changes)

        hosts_doc = document.get("hosts", {})
        _check_keys(
            hosts_doc, {DEFAULT_SOURCE_HOST, DEFAULT_DESTINATION_HOST}, f"{origin}: [hosts]"
        )
        hosts = []
        for host in config.hosts:
            table = hosts_doc.get(host.name, {})
            where = f"{origin}: [hosts.{host.name}]"
            _check_keys(table, HOST_KEYS, where)
            settings = dict(table)
            if "migration_networks" in settings:
                settings["migration_networks"] = tuple(
                    str(n) for n in settings["migration_networks"]
                )
            hosts.append(HostConfig(name=host.name, **settings))

        kerberos = document.get("kerberos", {})
        _check_keys(
            kerberos,
            {"enabled", "kdc_clock_offset_s", "protocol_transition"},
            f"{origin}: [kerberos]",
        )
        kerberos_config = KerberosSettings(
            enabled=bool(kerberos.get("enabled", True)),
            kdc_clock_offset_s=float(kerberos.get("kdc_clock_offset_s", 0.0)),
            protocol_transition=bool(kerberos.get("protocol_transition", True)),
        )

        faults = document.get("faults", {})
        _check_keys(
            faults,
            {
                "fail_midway_at_percent",
                "vm_missing",
                "vm_off_after_landing",
                "unresponsive_host",
                "unresponsive_mode",
                "unresponsive_after",
                "unresponsive_for",
            },
            f"{origin}: [faults]",
        )
        unresponsive: tuple[UnresponsiveFault, ...] = ()
        if "unresponsive_host" in faults:
            unresponsive = (
                UnresponsiveFault(
                    host=str(faults["unresponsive_host"]),
                    mode=faults.get("unresponsive_mode", "hang"),
                    after_event=faults.get("unresponsive_after"),
                    duration_s=None
                    if "unresponsive_for" not in faults
                    else float(faults["unresponsive_for"]),
                ),
            )
        fault_config = FaultConfig(
            fail_midway_at_percent=faults.get("fail_midway_at_percent"),
            vm_missing=bool(faults.get("vm_missing", False)),
            unresponsive=unresponsive,
            vm_off_after_landing=bool(faults.get("vm_off_after_landing", False)),
        )
        return replace(
            config,
            vm=vm_config,
            timing=timing_config,
            hosts=tuple(hosts),
            faults=fault_config,
            kerberos=kerberos_config,
        )
    except (TypeError, ValueError) as exc:
        raise LabConfigError(f"{origin}: {exc}") from None


def load_lab_config(path: Path | None, *, seed: int | None = None) -> LabConfig:
    config = DEFAULT_LAB
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LabConfigError(f"lab config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise LabConfigError(f"{path}: not valid TOML: {exc}") from None
        config = parse_lab_config(document, origin=str(path))
    if seed is not None:
        config = replace(config, seed=seed)
    return config

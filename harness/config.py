"""Configuration of ``measure run``: a TOML file, overridden by flags.

The file names the Hyper-V hosts, the guest, probe settings and thresholds
(see ``measure.example.toml``). Passwords never live in it: each host names an
environment variable (``password_env``, default ``MEASURE_PASSWORD``) and the
CLI prompts when that is unset and a terminal is attached. Nothing here reads
CLI objects; the CLI maps flags onto :func:`apply_overrides`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from migration_blackout.runformat import Thresholds

AUTH_METHODS = ("kerberos", "negotiate", "ntlm", "credssp", "basic")
# What a stock domain host accepts: Enable-PSRemoting creates an HTTP listener
# on 5985 only (HTTPS on 5986 needs a certificate an administrator binds) and
# enables Kerberos and Negotiate; over HTTP the messages are encrypted by the
# Negotiate context (NTLM, or Kerberos where a ticket is at hand).
DEFAULT_TRANSPORT = "http"
DEFAULT_AUTH = "negotiate"
DEFAULT_PORTS = {"http": 5985, "https": 5986}
DEFAULT_PASSWORD_ENV = "MEASURE_PASSWORD"
DEFAULT_CONFIG_NAME = "measure.toml"
_THRESHOLD_KEYS = frozenset(f.name for f in fields(Thresholds))


class ConfigError(Exception):
    """The configuration file or a flag is invalid; the message says where."""


def guest_address_problem(address: str) -> str | None:
    """Why ``address`` cannot be a guest to probe, or None. The unspecified
    address (0.0.0.0, ::), broadcast and multicast reach no single guest:
    probing them would measure whoever answers."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address, not a guest"
    if ip.is_multicast:
        return f"{ip} is a multicast address, not a guest"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is the broadcast address, not a guest"
    return None


@dataclass(frozen=True)
class HostConfig:
    """One Hyper-V host reached over WinRM (PowerShell remoting).

    ``address`` is where the harness reaches the host's WinRM listener (a
    name or an IP address). ``computer_name`` is the name the *other* host
    uses for it: it becomes ``Move-VM -DestinationHost`` when this host is
    the destination, so it must be a name the source resolves and that
    matches this host's Kerberos service principal (``Microsoft Virtual System
    Migration Service/<name>``: the computer name or its DNS name, never an IP
    address with Kerberos). Default: ``name``.
    """

    name: str
    address: str
    port: int
    https: bool = False
    auth: str = DEFAULT_AUTH
    username: str | None = None
    password_env: str = DEFAULT_PASSWORD_ENV
    cert_validation: bool | str = True
    path: str = "wsman"
    # Kerberos: the host's WinRM SPN when it is not HTTP/<address> (the host
    # reached through another name or an address); None: HTTP/<address>.
    service_principal: str | None = None
    computer_name: str | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.https else "http"
        return f"{scheme}://{self.address}:{self.port}/{self.path}"

    @property
    def transport(self) -> str:
        return "https" if self.https else "http"

    @property
    def migration_name(self) -> str:
        """What Move-VM -DestinationHost gets for this host."""
        return self.computer_name or self.name

    def describe(self) -> dict[str, Any]:
        """For the manifest: everything but secrets (there are none here)."""
        return {
            "name": self.name,
            "url": self.url,
            "auth": self.auth,
            "username": self.username,
            "cert_validation": self.cert_validation,
            "password_env": self.password_env,
            "service_principal": self.service_principal,
            "computer_name": self.migration_name,
        }


@dataclass(frozen=True)
class ProbeConfig:
    icmp_interval_s: float = 0.010
    icmp_timeout_s: float | None = None
    host_poll_interval_s: float = 0.100
    # A host call (poll, Get-Date, harvest) with no answer after this long has
    # failed; the session is then reopened (pypsrp's pool is unusable after a
    # read timeout).
    host_call_timeout_s: float = 20.0
    # [probes.tcp_connect]: TCP connects to these ports of the guest (none: off).
    tcp_connect_ports: tuple[int, ...] = ()
    tcp_connect_interval_s: float = 0.050
    tcp_connect_timeout_s: float = 0.5
    # [probes.witnesses]: with the guest agent, its direction probe and TCP stream.
    witnesses: bool = False
    witness_port: int = 47601
    witness_interval_s: float = 0.010


@dataclass(frozen=True)
class MigrationConfig:
    include_storage: bool = False
    destination_storage_path: str | None = None
    timeout_s: float = 600.0
    settle_s: float = 10.0
    settle_quiet_s: float = 2.0
    harvest_timeout_s: float = 20.0  # clocks and the hypervisor's figures after the migration


@dataclass(frozen=True)
class QemuSideConfig:
    name: str
    qmp: str  # UNIX socket path or host:port
    incoming_uri: str | None = None  # where it listens when it is the destination


@dataclass(frozen=True)
class QemuConfig:
    """``[qemu]``: the QEMU backend (``--hypervisor qemu``)."""

    sides: tuple[QemuSideConfig, ...] = ()
    downtime_limit_ms: int | None = None
    max_bandwidth_mib_s: float | None = None
    auto_converge: bool = False
    verify_memory: bool = False


@dataclass(frozen=True)
class RunConfig:
    vm: str = "HVSW10Home"
    hosts: tuple[HostConfig, ...] = ()
    guest_addresses: tuple[str, ...] = ()
    # (address, name) for each guest address given as a host name (--target):
    # resolved once, the name kept for the run folder (config.target_names).
    target_names: tuple[tuple[str, str], ...] = ()
    source: str | None = None
    destination: str | None = None
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    qemu: QemuConfig = field(default_factory=QemuConfig)
    hypervisor: str = "hyperv"
    # The authentication every host uses unless it names its own (and the lab's).
    auth: str | None = None
    # [kerberos] krb5_config: the krb5.conf for this run (KRB5_CONFIG); None:
    # the environment's, else /etc/krb5.conf.
    krb5_config: str | None = None
    origin: str | None = None  # the file it came from, for messages

    @property
    def uses_lab(self) -> bool:
        """True when nothing real is configured: the emulated lab is the default."""
        if self.hypervisor == "qemu":
            return not self.qemu.sides
        return not self.hosts

    def host(self, name: str) -> HostConfig:
        for host in self.hosts:
            if host.name.lower() == name.lower():
                return host
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise ConfigError(f"no host named {name!r} is configured (configured: {known})")

    def describe(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "hosts": [h.describe() for h in self.hosts],
            "guest_addresses": list(self.guest_addresses),
            "target_names": dict(self.target_names),
            "source": self.source,
            "destination": self.destination,
            "probes": vars(self.probes).copy(),
            "migration": vars(self.migration).copy(),
            "thresholds": vars(self.thresholds).copy(),
            "hypervisor": self.hypervisor,
            "auth": self.auth,
            "krb5_config": self.krb5_config,
            "qemu": {
                **vars(self.qemu),
                "sides": [vars(side).copy() for side in self.qemu.sides],
            },
            "origin": self.origin,
        }


def check_ports(ports: Sequence[int], where: str) -> tuple[int, ...]:
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536 for p in ports):
        raise ConfigError(f"{where}: ports must be numbers 1-65535, not {list(ports)!r}")
    return tuple(ports)


def _witness_settings(probes_doc: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """``[probes.tcp_connect]`` and ``[probes.witnesses]`` as ProbeConfig fields."""
    connect = probes_doc.get("tcp_connect", {})
    where = f"{origin}: [probes.tcp_connect]"
    _reject_unknown(connect, {"ports", "interval_ms", "timeout_ms"}, where)
    witnesses = probes_doc.get("witnesses", {})
    where_w = f"{origin}: [probes.witnesses]"
    _reject_unknown(witnesses, {"enabled", "port", "interval_ms"}, where_w)
    settings: dict[str, Any] = {}
    if "ports" in connect:
        settings["tcp_connect_ports"] = check_ports(_expect(connect, "ports", list, where), where)
    if (interval := _ms(connect, "interval_ms", where)) is not None:
        settings["tcp_connect_interval_s"] = interval
    if (timeout := _ms(connect, "timeout_ms", where)) is not None:
        settings["tcp_connect_timeout_s"] = timeout
    if "enabled" in witnesses:
        settings["witnesses"] = _expect(witnesses, "enabled", bool, where_w)
    if "port" in witnesses:
        port = _expect(witnesses, "port", int, where_w)
        (settings["witness_port"],) = check_ports([port], where_w)
    if (interval := _ms(witnesses, "interval_ms", where_w)) is not None:
        settings["witness_interval_s"] = interval
    return settings


def _expect(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: {key} must be {names}, not {value!r}")
    return value


def _reject_unknown(table: Mapping[str, Any], allowed: AbstractSet[str], where: str) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    if any("password" in str(key) and key != "password_env" for key in table):
        raise ConfigError(
            f"{where}: passwords do not belong in the config file; name an environment "
            f"variable with password_env"
        )
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")


def _auth(value: Any, where: str) -> str:
    auth = str(value).lower()
    if auth not in AUTH_METHODS:
        raise ConfigError(f"{where}: auth must be one of {', '.join(AUTH_METHODS)}, not {auth!r}")
    return auth


def _service_principal(value: Any, where: str) -> str:
    """``SERVICE/host`` or ``SERVICE/host@REALM``."""
    if not isinstance(value, str) or "/" not in value or not value.split("/", 1)[1]:
        raise ConfigError(
            f"{where}: service_principal must look like HTTP/host.example.com, not {value!r}"
        )
    service = value.split("/", 1)[0]
    if service.upper() != "HTTP":
        raise ConfigError(f"{where}: service_principal must be WinRM's HTTP/<host>, not {value!r}")
    return value


def _parse_host(
    table: Mapping[str, Any], index: int, origin: str, default_auth: str | None = None
) -> HostConfig:
    where = f"{origin}: hosts[{index}]"
    allowed = {
        "name",
        "address",
        "port",
        "transport",
        "auth",
        "username",
        "password_env",
        "cert_validation",
        "path",
        "service_principal",
        "computer_name",
    }
    _reject_unknown(table, allowed, where)
    for required in ("name", "address"):
        if required not in table:
            raise ConfigError(f"{where}: {required} is required")
    transport = table.get("transport", DEFAULT_TRANSPORT)
    if transport not in DEFAULT_PORTS:
        raise ConfigError(f"{where}: transport must be https or http, not {transport!r}")
    https = transport == "https"
    auth = _auth(table.get("auth", default_auth or DEFAULT_AUTH), where)
    if auth == "basic" and not https:
        raise ConfigError(
            f'{where}: auth = "basic" over HTTP would send the password unencrypted (and a '
            'stock host refuses it): use auth = "negotiate", or transport = "https"'
        )
    port = table.get("port", DEFAULT_PORTS[transport])
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"{where}: port must be 1-65535, not {port!r}")
    cert = table.get("cert_validation", True)
    if not isinstance(cert, bool | str):
        raise ConfigError(f"{where}: cert_validation must be true, false or a CA bundle path")
    return HostConfig(
        name=_expect(table, "name", str, where),
        address=_expect(table, "address", str, where),
        port=port,
        https=https,
        auth=auth,
        username=table.get("username"),
        password_env=table.get("password_env", DEFAULT_PASSWORD_ENV),
        cert_validation=cert,
        path=table.get("path", "wsman"),
        service_principal=None
        if "service_principal" not in table
        else _service_principal(table["service_principal"], where),
        computer_name=_optional_str(table, "computer_name", where),
    )


def _optional_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    if key not in table:
        return None
    value = _expect(table, key, str, where)
    if not value.strip():
        raise ConfigError(f"{where}: {key} must not be empty")
    return str(value).strip()


def _ms(table: Mapping[str, Any], key: str, where: str) -> float | None:
    if key not in table:
        return None
    value = _expect(table, key, (int, float), where)
    if value <= 0:
        raise ConfigError(f"{where}: {key} must be positive, not {value!r}")
    return float(value) / 1000.0


def parse_config(document: Mapping[str, Any], origin: str = "<config>") -> RunConfig:
    """Validate a parsed TOML document into a :class:`RunConfig`."""
    _reject_unknown(
        document,
        {
            "vm",
            "hosts",
            "guest",
            "source",
            "destination",
            "probes",
            "migration",
            "thresholds",
            "hypervisor",
            "qemu",
            "auth",
            "kerberos",
        },
        origin,
    )
    default_auth = None if "auth" not in document else _auth(document["auth"], origin)
    kerberos = document.get("kerberos", {})
    _reject_unknown(kerberos, {"krb5_config"}, f"{origin}: [kerberos]")
    krb5_config = kerberos.get("krb5_config")
    if krb5_config is not None and not isinstance(krb5_config, str):
        raise ConfigError(f"{origin}: [kerberos] krb5_config must be a path")
    hosts_doc = document.get("hosts", [])
    if not isinstance(hosts_doc, list):
        raise ConfigError(f"{origin}: hosts must be an array of tables ([[hosts]])")
    hosts = tuple(_parse_host(h, i, origin, default_auth) for i, h in enumerate(hosts_doc))
    names = [h.name.lower() for h in hosts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: two hosts share a name")

    guest = document.get("guest", {})
    _reject_unknown(guest, {"addresses"}, f"{origin}: [guest]")
    addresses = guest.get("addresses", [])
    if isinstance(addresses, str):
        addresses = [addresses]
    for address in addresses:
        problem = guest_address_problem(str(address))
        if problem is not None:
            raise ConfigError(f"{origin}: [guest] {problem}")

    probes_doc = document.get("probes", {})
    _reject_unknown(
        probes_doc, {"icmp", "host_state", "tcp_connect", "witnesses"}, f"{origin}: [probes]"
    )
    icmp = probes_doc.get("icmp", {})
    _reject_unknown(icmp, {"interval_ms", "timeout_ms"}, f"{origin}: [probes.icmp]")
    host_state = probes_doc.get("host_state", {})
    _reject_unknown(host_state, {"interval_ms", "timeout_ms"}, f"{origin}: [probes.host_state]")
    probes = ProbeConfig(
        icmp_interval_s=_ms(icmp, "interval_ms", f"{origin}: [probes.icmp]") or 0.010,
        icmp_timeout_s=_ms(icmp, "timeout_ms", f"{origin}: [probes.icmp]"),
        host_poll_interval_s=_ms(host_state, "interval_ms", f"{origin}: [probes.host_state]")
        or 0.100,
        host_call_timeout_s=_ms(host_state, "timeout_ms", f"{origin}: [probes.host_state]") or 20.0,
    )
    probes = replace(probes, **_witness_settings(probes_doc, origin))
    if probes.host_call_timeout_s < 2:
        raise ConfigError(
            f"{origin}: [probes.host_state] timeout_ms must be at least 2000 (WinRM's "
            "OperationTimeout is one second shorter and at least one second)"
        )

    mig = document.get("migration", {})
    where = f"{origin}: [migration]"
    _reject_unknown(
        mig,
        {
            "include_storage",
            "destination_storage_path",
            "timeout_s",
            "settle_s",
            "settle_quiet_s",
            "harvest_timeout_s",
        },
        where,
    )
    migration = MigrationConfig(
        include_storage=bool(mig.get("include_storage", False)),
        destination_storage_path=mig.get("destination_storage_path"),
        timeout_s=float(mig.get("timeout_s", 600.0)),
        settle_s=float(mig.get("settle_s", 10.0)),
        settle_quiet_s=float(mig.get("settle_quiet_s", 2.0)),
        harvest_timeout_s=float(mig.get("harvest_timeout_s", 20.0)),
    )

    thr = document.get("thresholds", {})
    _reject_unknown(thr, _THRESHOLD_KEYS, f"{origin}: [thresholds]")
    try:
        thresholds = Thresholds(**{key: thr.get(key) for key in _THRESHOLD_KEYS})
    except ValueError as exc:
        raise ConfigError(f"{origin}: [thresholds] {exc}") from None
    qemu_doc = document.get("qemu", {})
    where = f"{origin}: [qemu]"
    _reject_unknown(
        qemu_doc,
        {"sides", "downtime_limit_ms", "max_bandwidth_mib_s", "auto_converge", "verify_memory"},
        where,
    )
    sides = []
    for index, side in enumerate(qemu_doc.get("sides", [])):
        side_where = f"{where} sides[{index}]"
        _reject_unknown(side, {"name", "qmp", "incoming_uri"}, side_where)
        if "name" not in side or "qmp" not in side:
            raise ConfigError(f"{side_where}: name and qmp are required")
        sides.append(
            QemuSideConfig(
                name=str(side["name"]), qmp=str(side["qmp"]), incoming_uri=side.get("incoming_uri")
            )
        )
    if sides and len(sides) != 2:
        raise ConfigError(f"{where}: two sides are needed (source and destination)")
    qemu = QemuConfig(
        sides=tuple(sides),
        downtime_limit_ms=qemu_doc.get("downtime_limit_ms"),
        max_bandwidth_mib_s=qemu_doc.get("max_bandwidth_mib_s"),
        auto_converge=bool(qemu_doc.get("auto_converge", False)),
        verify_memory=bool(qemu_doc.get("verify_memory", False)),
    )
    hypervisor = document.get("hypervisor", "hyperv")
    if hypervisor not in ("hyperv", "qemu"):
        raise ConfigError(f"{origin}: hypervisor must be hyperv or qemu, not {hypervisor!r}")
    vm = document.get("vm", "HVSW10Home")
    if not isinstance(vm, str) or not vm:
        raise ConfigError(f"{origin}: vm must be a non-empty string")
    return RunConfig(
        vm=vm,
        hosts=hosts,
        guest_addresses=tuple(addresses),
        source=document.get("source"),
        destination=document.get("destination"),
        probes=probes,
        migration=migration,
        thresholds=thresholds,
        qemu=qemu,
        hypervisor=hypervisor,
        auth=default_auth,
        krb5_config=krb5_config,
        origin=origin,
    )


def load_config(path: Path | None) -> RunConfig:
    """Read ``path``; with ``None``, ``./measure.toml`` if present, else the defaults."""
    explicit = path is not None
    path = Path(path) if path is not None else Path(DEFAULT_CONFIG_NAME)
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return RunConfig()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(document, origin=str(path))


def apply_overrides(
    config: RunConfig,
    *,
    vm: str | None = None,
    source: str | None = None,
    destination: str | None = None,
    guest_addresses: Sequence[str] | None = None,
    target_names: Mapping[str, str] | None = None,
    hypervisor: str | None = None,
    auth: str | None = None,
    icmp_interval_s: float | None = None,
    icmp_timeout_s: float | None = None,
    host_poll_interval_s: float | None = None,
    tcp_connect_ports: Sequence[int] | None = None,
    witnesses: bool | None = None,
    include_storage: bool | None = None,
    destination_storage_path: str | None = None,
    timeout_s: float | None = None,
    settle_s: float | None = None,
    harvest_timeout_s: float | None = None,
    max_blackout_ms: float | None = None,
    max_timeouts: int | None = None,
    max_regression_pct: float | None = None,
    max_tcp_stall_ms: float | None = None,
    downtime_limit_ms: int | None = None,
    max_bandwidth_mib_s: float | None = None,
    auto_converge: bool | None = None,
    verify_memory: bool | None = None,
) -> RunConfig:
    """Flags win over the file. ``None`` means "not given"; a keyword this
    signature does not name is a ``TypeError``, never silently ignored."""
    top = _given(
        vm=vm,
        source=source,
        destination=destination,
        guest_addresses=None if guest_addresses is None else tuple(guest_addresses),
        target_names=None if target_names is None else tuple(target_names.items()),
        hypervisor=hypervisor,
    )
    if auth is not None:
        top["auth"] = _auth(auth, "--auth")
        top["hosts"] = tuple(replace(host, auth=top["auth"]) for host in config.hosts)
    probes = _given(
        icmp_interval_s=icmp_interval_s,
        icmp_timeout_s=icmp_timeout_s,
        host_poll_interval_s=host_poll_interval_s,
        tcp_connect_ports=None if tcp_connect_ports is None else tuple(tcp_connect_ports),
        witnesses=witnesses,
    )
    migration = _given(
        include_storage=include_storage,
        destination_storage_path=destination_storage_path,
        timeout_s=timeout_s,
        settle_s=settle_s,
        harvest_timeout_s=harvest_timeout_s,
    )
    thresholds = _given(
        max_blackout_ms=max_blackout_ms,
        max_timeouts=max_timeouts,
        max_regression_pct=max_regression_pct,
        max_tcp_stall_ms=max_tcp_stall_ms,
    )
    qemu = _given(
        downtime_limit_ms=downtime_limit_ms,
        max_bandwidth_mib_s=max_bandwidth_mib_s,
        auto_converge=auto_converge,
        verify_memory=verify_memory,
    )
    return replace(
        config,
        probes=replace(config.probes, **probes),
        migration=replace(config.migration, **migration),
        thresholds=replace(config.thresholds, **thresholds),
        qemu=replace(config.qemu, **qemu),
        **top,
    )


def _given(**values: Any) -> dict[str, Any]:
    """The values that were given (not None)."""
    return {name: value for name, value in values.items() if value is not None}


KEYRING_SERVICE = "migration-blackout"


def password_from_env(host: HostConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The host's password from its environment variable, or None if unset."""
    environ = os.environ if environ is None else environ
    return environ.get(host.password_env)


def password_from_keyring(host: HostConfig) -> str | None:
    """The host's password from the OS keyring, when the optional ``keyring``
    package is installed: service ``migration-blackout``, user
    ``<host name>:<username>`` (``keyring set migration-blackout HOST:USER``)."""
    try:
        import keyring  # optional dependency
    except ImportError:
        return None
    try:
        value = keyring.get_password(KEYRING_SERVICE, f"{host.name}:{host.username or ''}")
    except Exception:  # a keyring without a backend must not stop a run
        return None
    return None if value is None else str(value)

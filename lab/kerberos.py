"""The lab's domain controller: a real MIT Kerberos KDC for a lab realm on loopback.

:meth:`LabKdc.start` builds the realm ``<DOMAIN>.TEST`` (DNS domain
``<domain>.test``) in a private directory and returns a :class:`LabRealm`:

- an OpenLDAP ``slapd`` on a UNIX socket in that directory holds the KDC's
  database (MIT's ``kldap`` module). Not MIT's default DB2 file: the DB2
  module implements no delegation policy, so the KDC refuses every S4U2Proxy
  request (``UNSUPPORTED_S4U2PROXY_REQUEST``: ``krb5_db_check_allowed_to_delegate``
  returns ``KRB5_PLUGIN_OP_NOTSUPP`` without it, krb5 ``src/lib/kdb/kdb5.c``
  and ``src/kdc/tgs_policy.c``). The LDAP module reads
  ``krbAllowedToDelegateTo``, the MIT counterpart of Active Directory's
  ``msDS-AllowedToDelegateTo``, so constrained delegation works as in a domain;
- ``krb5kdc`` on 127.0.0.1 (UDP and TCP, a free port);
- the lab user ``<user>@<REALM>`` with the lab's password, pre-authentication
  required (as Active Directory does);
- per host the service principals of a Hyper-V host's computer account,
  ``host/``, ``HTTP/`` (WinRM), ``cifs/`` and ``Microsoft Virtual System
  Migration Service/`` + its FQDN, in one keytab per host;
- for a host with constrained delegation: ``krbAllowedToDelegateTo`` the cifs
  and migration services of the hosts it may migrate to, and, unless
  ``protocol_transition`` is off, ``ok_to_auth_as_delegate`` (AD's "Use any
  authentication protocol", which Windows Server 2016 needs for a Move-VM
  started over WinRM);
- ``krb5.conf`` for clients (``KRB5_CONFIG``) that never asks DNS anything:
  no KDC or realm lookups, no hostname canonicalisation.

:meth:`LabKdc.stop` ends both daemons and removes the directory;
:func:`cleanup_stale` does the same for a lab whose process died.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIGRATION_SERVICE = "Microsoft Virtual System Migration Service"
# The services a Hyper-V host's computer account answers for in the lab.
HOST_SERVICES = ("host", "HTTP", "cifs", MIGRATION_SERVICE)
# What a host with constrained delegation may delegate to on the other hosts
# (the write-up's and Microsoft's set-up for live migration).
DELEGATED_SERVICES = ("cifs", MIGRATION_SERVICE)
REALM_SUFFIX = "TEST"  # RFC 2606: a name that exists nowhere
# Active Directory's and MIT's default "maximum tolerance for computer clock
# synchronization".
CLOCK_SKEW_S = 300

KERBEROS_SCHEMA = Path("/usr/share/doc/krb5-kdc-ldap/kerberos.schema.gz")
OPENLDAP_SCHEMA_DIR = Path("/etc/ldap/schema")
OPENLDAP_MODULE_DIR = Path("/usr/lib/ldap")
PACKAGES = "krb5-kdc krb5-admin-server krb5-kdc-ldap krb5-user slapd ldap-utils"
START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 3.0
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)


class KerberosLabError(Exception):
    """The lab's KDC could not be set up or started; the message says why."""


@dataclass(frozen=True)
class KerberosSettings:
    """``[kerberos]`` in lab.toml."""

    enabled: bool = True
    # The KDC's clock (the domain's time) runs this far ahead of this machine,
    # seconds; beyond CLOCK_SKEW_S the hosts refuse the tickets it issues.
    kdc_clock_offset_s: float = 0.0
    # Constrained delegation with "Use any authentication protocol" (True) or
    # "Use Kerberos only" (False: S4U2Self tickets are not forwardable).
    protocol_transition: bool = True


@dataclass(frozen=True)
class HostAccount:
    """A host's computer account: its name and whom it may delegate to."""

    name: str
    delegates_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class RealmHost:
    name: str
    fqdn: str
    realm: str
    keytab: Path
    delegates_to: tuple[str, ...]

    def principal(self, service: str) -> str:
        return f"{service}/{self.fqdn}@{self.realm}"

    @property
    def service_principal(self) -> str:
        """WinRM's SPN, the one a client asks a ticket for."""
        return self.principal("HTTP")


@dataclass(frozen=True)
class LabRealm:
    realm: str
    dns_domain: str
    kdc_address: str
    kdc_port: int
    krb5_config: Path
    directory: Path
    user_principal: str
    hosts: tuple[RealmHost, ...]
    kdc_clock_offset_s: float = 0.0
    protocol_transition: bool = True

    def host(self, name: str) -> RealmHost:
        for host in self.hosts:
            if host.name.lower() == name.lower() or host.fqdn == name.lower():
                return host
        raise KeyError(name)

    def find_host(self, name: str) -> RealmHost | None:
        with contextlib.suppress(KeyError):
            return self.host(name)
        return None

    def describe(self) -> dict[str, Any]:
        """``lab status --json``'s ``kerberos`` object (no secret in it)."""
        return {
            "realm": self.realm,
            "krb5_config": str(self.krb5_config),
            "kdc": f"{self.kdc_address}:{self.kdc_port}",
            "user_principal": self.user_principal,
            "dns_domain": self.dns_domain,
            "kdc_clock_offset_s": self.kdc_clock_offset_s,
            "hosts": [
                {
                    "name": host.name,
                    "fqdn": host.fqdn,
                    "service_principal": host.service_principal,
                    "keytab": str(host.keytab),
                    "delegates_to": [
                        self.host(target).principal(service)
                        for target in host.delegates_to
                        for service in DELEGATED_SERVICES
                    ],
                    "protocol_transition": bool(host.delegates_to) and self.protocol_transition,
                }
                for host in self.hosts
            ],
        }


def realm_for(domain: str) -> tuple[str, str]:
    """The realm and DNS domain of the lab domain ``LAB``: ``LAB.TEST``, ``lab.test``."""
    realm = f"{domain.upper()}.{REALM_SUFFIX}"
    return realm, realm.lower()


def _program(name: str) -> str:
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise KerberosLabError(
            f"the lab's KDC needs {name}: install the Debian packages {PACKAGES} "
            "(./bootstrap.sh does as root), or set [kerberos] enabled = false in lab.toml"
        )
    return path


def _free_port(address: str) -> int:
    """A port free for both TCP and UDP on ``address`` (a KDC listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
                return port
    raise KerberosLabError(f"no free port for the KDC on {address}")


def _quote(text: str) -> str:
    """A kadmin.local argument (its parser honours double quotes)."""
    if any(c in text for c in '"\n\r\\'):
        raise KerberosLabError(f"{text!r}: quotes, backslashes and line breaks cannot be used")
    return f'"{text}"'


def _faketime_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        raise KerberosLabError(
            "kdc_clock_offset_s needs libfaketime: install the Debian package faketime"
        )
    return found[0]


def _run(argv: list[str], *, env: dict[str, str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=START_DEADLINE_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KerberosLabError(f"{Path(argv[0]).name} did not finish") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise KerberosLabError(
            f"{Path(argv[0]).name} failed: {detail[-1] if detail else done.returncode}"
        )
    return done.stdout


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_DEADLINE_S)


@dataclass
class _Daemons:
    slapd: subprocess.Popen[bytes] | None = None
    kdc: subprocess.Popen[bytes] | None = None
    logs: list[Any] = field(default_factory=list)


class LabKdc:
    """The KDC of one lab, in ``directory`` (created, and removed by :meth:`stop`)."""

    def __init__(
        self,
        directory: Path,
        *,
        domain: str,
        username: str,
        password: str,
        hosts: Sequence[HostAccount],
        settings: KerberosSettings | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        self.directory = Path(directory)
        self.realm, self.dns_domain = realm_for(domain)
        self.username = username
        self._password = password
        self.accounts = tuple(hosts)
        self.settings = settings or KerberosSettings()
        self.address = address
        self._suffix = ",".join(f"dc={part}" for part in self.dns_domain.split("."))
        self._admin_dn = f"cn=admin,{self._suffix}"
        self._admin_password = secrets.token_hex(16)
        self._daemons = _Daemons()
        self.realm_info: LabRealm | None = None

    # ---- paths ---------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / name

    @property
    def _ldap_uri(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self._path("ldapi")), safe="")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KRB5_CONFIG": str(self._path("krb5.conf")),
            "KRB5_KDC_PROFILE": str(self._path("kdc.conf")),
        }

    def fqdn(self, host: str) -> str:
        return f"{host.lower()}.{self.dns_domain}"

    # ---- lifecycle -----------------------------------------------------------

    def start(self) -> LabRealm:
        """Set the realm up and start its daemons (blocking, well under a second)."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LabRealm:
        programs = {
            name: _program(name)
            for name in ("slapd", "slapadd", "ldapmodify", "kdb5_ldap_util", "kadmin.local")
        }
        programs["krb5kdc"] = _program("krb5kdc")
        if not KERBEROS_SCHEMA.exists():
            raise KerberosLabError(
                f"{KERBEROS_SCHEMA} is missing (Debian package krb5-kdc-ldap; some images "
                "leave out /usr/share/doc: reinstall it without that exclusion)"
            )
        if len(str(self._path("ldapi"))) > 100:
            raise KerberosLabError(f"{self.directory}: too long a path for a UNIX socket")
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, mode=0o700)
        self._start_directory(programs)
        port = self._start_kdc_on_free_port(programs["krb5kdc"])
        self.realm_info = LabRealm(
            realm=self.realm,
            dns_domain=self.dns_domain,
            kdc_address=self.address,
            kdc_port=port,
            krb5_config=self._path("krb5.conf"),
            directory=self.directory,
            user_principal=f"{self.username}@{self.realm}",
            hosts=tuple(
                RealmHost(
                    name=account.name,
                    fqdn=self.fqdn(account.name),
                    realm=self.realm,
                    keytab=self._path(f"{account.name.lower()}.keytab"),
                    delegates_to=account.delegates_to,
                )
                for account in self.accounts
            ),
            kdc_clock_offset_s=self.settings.kdc_clock_offset_s,
            protocol_transition=self.settings.protocol_transition,
        )
        return self.realm_info

    def _start_directory(self, programs: dict[str, str]) -> None:
        """slapd with the Kerberos schema, the realm in it, principals, keytabs."""
        schema = self._path("kerberos.schema")
        schema.write_bytes(gzip.decompress(KERBEROS_SCHEMA.read_bytes()))
        (self._path("db")).mkdir(mode=0o700)
        self._path("slapd.conf").write_text(
            f"include {OPENLDAP_SCHEMA_DIR / 'core.schema'}\n"
            f"include {OPENLDAP_SCHEMA_DIR / 'cosine.schema'}\n"
            f"include {schema}\n"
            f"pidfile {self._path('slapd.pid')}\n"
            f"modulepath {OPENLDAP_MODULE_DIR}\n"
            "moduleload back_mdb\n"
            "database mdb\n"
            f'suffix "{self._suffix}"\n'
            f'rootdn "{self._admin_dn}"\n'
            f"rootpw {self._admin_password}\n"
            f"directory {self._path('db')}\n"
            "index objectClass eq\n"
            "index krbPrincipalName eq,pres,sub\n",
            encoding="utf-8",
        )
        self._path("slapd.conf").chmod(0o600)
        top = self.dns_domain.split(".")[0]
        env = self._env()
        _run(
            [programs["slapadd"], "-q", "-f", str(self._path("slapd.conf"))],
            env=env,
            stdin=f"dn: {self._suffix}\nobjectClass: dcObject\nobjectClass: organization\n"
            f"o: {top}\ndc: {top}\n",
        )
        log = open(self._path("slapd.log"), "wb")  # noqa: SIM115 - closed in stop()
        self._daemons.logs.append(log)
        self._daemons.slapd = subprocess.Popen(
            [
                programs["slapd"],
                "-f",
                str(self._path("slapd.conf")),
                "-h",
                self._ldap_uri,
                "-d",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
        self._wait_unix_socket(self._path("ldapi"), self._daemons.slapd, "slapd")
        # kldap binds with this DN and the password in this file.
        keyfile = self._path("ldap-service.keyfile")
        keyfile.write_text(
            f"{self._admin_dn}#{{HEX}}{self._admin_password.encode().hex()}\n", encoding="utf-8"
        )
        keyfile.chmod(0o600)
        self._write_configs(port=0)
        _run(
            [
                programs["kdb5_ldap_util"],
                "-D",
                self._admin_dn,
                "-w",
                self._admin_password,
                "-H",
                self._ldap_uri,
                "create",
                "-subtrees",
                self._suffix,
                "-r",
                self.realm,
                "-s",
                "-P",
                secrets.token_hex(16),
            ],
            env=env,
        )
        _run([programs["kadmin.local"], "-r", self.realm], env=env, stdin=self._kadmin_script())
        self._set_delegation(programs["ldapmodify"], env)

    def _kadmin_script(self) -> str:
        lines = [f"addprinc -pw {_quote(self._password)} +requires_preauth {_quote(self.username)}"]
        for account in self.accounts:
            fqdn = self.fqdn(account.name)
            principals = [f"{service}/{fqdn}" for service in HOST_SERVICES]
            for principal in principals:
                lines.append(f"addprinc -randkey {_quote(principal)}")
            if account.delegates_to and self.settings.protocol_transition:
                lines.append(f"modprinc +ok_to_auth_as_delegate {_quote(f'host/{fqdn}')}")
            keytab = self._path(f"{account.name.lower()}.keytab")
            lines.append(
                f"ktadd -norandkey -k {_quote(str(keytab))} "
                + " ".join(_quote(p) for p in principals)
            )
        return "\n".join(lines) + "\n"

    def _set_delegation(self, ldapmodify: str, env: dict[str, str]) -> None:
        """``krbAllowedToDelegateTo`` on each delegating host's ``host/`` principal."""
        changes = []
        for account in self.accounts:
            if not account.delegates_to:
                continue
            principal = f"host/{self.fqdn(account.name)}@{self.realm}"
            targets = [
                f"{service}/{self.fqdn(target)}@{self.realm}"
                for target in account.delegates_to
                for service in DELEGATED_SERVICES
            ]
            changes.append(
                f"dn: krbPrincipalName={principal},cn={self.realm},cn=krbcontainer,"
                f"{self._suffix}\nchangetype: modify\nadd: krbAllowedToDelegateTo\n"
                + "".join(f"krbAllowedToDelegateTo: {t}\n" for t in targets)
            )
        if changes:
            _run(
                [
                    ldapmodify,
                    "-x",
                    "-H",
                    self._ldap_uri,
                    "-D",
                    self._admin_dn,
                    "-w",
                    self._admin_password,
                ],
                env=env,
                stdin="\n".join(changes),
            )

    def _write_configs(self, *, port: int) -> None:
        krb5_conf = (
            "[libdefaults]\n"
            f"    default_realm = {self.realm}\n"
            "    dns_lookup_kdc = false\n"
            "    dns_lookup_realm = false\n"
            "    dns_canonicalize_hostname = false\n"
            "    rdns = false\n"
            "    forwardable = true\n"
            "    udp_preference_limit = 1\n"
            f"    clockskew = {CLOCK_SKEW_S}\n"
            "[realms]\n"
            f"    {self.realm} = {{\n"
            f"        kdc = {self.address}:{port}\n"
            "    }\n"
            "[domain_realm]\n"
            f"    .{self.dns_domain} = {self.realm}\n"
            f"    {self.dns_domain} = {self.realm}\n"
        )
        self._path("krb5.conf").write_text(krb5_conf, encoding="utf-8")
        self._path("krb5.conf").chmod(0o644)
        kdc_conf = (
            "[kdcdefaults]\n"
            f"    kdc_listen = {self.address}:{port}\n"
            f"    kdc_tcp_listen = {self.address}:{port}\n"
            "[realms]\n"
            f"    {self.realm} = {{\n"
            "        database_module = ldap\n"
            f"        key_stash_file = {self._path('stash')}\n"
            "        max_life = 10h 0m 0s\n"
            "        max_renewable_life = 7d 0h 0m 0s\n"
            "        supported_enctypes = aes256-cts-hmac-sha1-96:normal "
            "aes128-cts-hmac-sha1-96:normal\n"
            "    }\n"
            "[dbmodules]\n"
            "    ldap = {\n"
            "        db_library = kldap\n"
            f"        ldap_kerberos_container_dn = cn=krbcontainer,{self._suffix}\n"
            f"        ldap_kdc_dn = {self._admin_dn}\n"
            f"        ldap_kadmind_dn = {self._admin_dn}\n"
            f"        ldap_service_password_file = {self._path('ldap-service.keyfile')}\n"
            f"        ldap_servers = {self._ldap_uri}\n"
            "        ldap_conns_per_server = 2\n"
            "    }\n"
            "[logging]\n"
            f"    kdc = FILE:{self._path('kdc.log')}\n"
        )
        self._path("kdc.conf").write_text(kdc_conf, encoding="utf-8")

    def _start_kdc_on_free_port(self, krb5kdc: str) -> int:
        env = self._env()
        offset = self.settings.kdc_clock_offset_s
        if offset:
            env |= {
                "LD_PRELOAD": _faketime_library(),
                "FAKETIME": f"{offset:+.0f}",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            }
        last_error = ""
        for _ in range(3):
            port = _free_port(self.address)
            self._write_configs(port=port)
            log = open(self._path("krb5kdc.out"), "wb")  # noqa: SIM115 - closed in stop()
            self._daemons.logs.append(log)
            process = subprocess.Popen(
                [krb5kdc, "-n", "-r", self.realm, "-P", str(self._path("krb5kdc.pid"))],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
            self._daemons.kdc = process
            if self._wait_tcp(port, process):
                return port
            _terminate(process)
            last_error = self._path("krb5kdc.out").read_text(errors="replace").strip()
        raise KerberosLabError(f"krb5kdc did not start: {last_error.splitlines()[-1:]}")

    def _wait_tcp(self, port: int, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((self.address, port)) == 0:
                    return True
            time.sleep(0.01)
        return False

    def _wait_unix_socket(self, path: Path, process: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = self._path("slapd.log").read_text(errors="replace").strip().splitlines()
                raise KerberosLabError(f"{name} exited: {log[-1] if log else process.returncode}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                if probe.connect_ex(str(path)) == 0:
                    return
            time.sleep(0.01)
        raise KerberosLabError(f"{name} did not start within {START_DEADLINE_S:.0f} s")

    def stop(self) -> None:
        """Stop the KDC and slapd and remove the directory. Idempotent."""
        _terminate(self._daemons.kdc)
        _terminate(self._daemons.slapd)
        for log in self._daemons.logs:
            log.close()
        self._daemons = _Daemons()
        shutil.rmtree(self.directory, ignore_errors=True)


class ProcessKrb5Config:
    """This process's ``KRB5_CONFIG``, pointed at a realm's ``krb5.conf``.

    The hosts' acceptors and their second hops run in the lab's process and
    MIT's library reads the variable on every new context, so only one realm
    per process can own it at a time; the previous value is restored on close.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._previous = os.environ.get("KRB5_CONFIG")
        os.environ["KRB5_CONFIG"] = self.path

    def close(self) -> None:
        if os.environ.get("KRB5_CONFIG") == self.path:
            if self._previous is None:
                del os.environ["KRB5_CONFIG"]
            else:
                os.environ["KRB5_CONFIG"] = self._previous


def _kill_recorded(pid_file: Path, directory: Path) -> str | None:
    """Kill the daemon whose pid ``pid_file`` records if it still runs with a
    command line naming ``directory`` (a recycled pid is left alone)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    if str(directory) not in cmdline:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"killed {Path(cmdline.split()[0]).name} {pid}"


def cleanup_stale(directory: Path) -> list[str]:
    """After a crash: kill the KDC and slapd a lab left in ``directory`` and
    remove it. Returns what was done."""
    directory = Path(directory)
    if not directory.exists():
        return []
    done = [
        message
        for name in ("krb5kdc.pid", "slapd.pid")
        if (message := _kill_recorded(directory / name, directory)) is not None
    ]
    shutil.rmtree(directory, ignore_errors=True)
    done.append(str(directory))
    return done


__all__ = [
    "CLOCK_SKEW_S",
    "DELEGATED_SERVICES",
    "HOST_SERVICES",
    "MIGRATION_SERVICE",
    "HostAccount",
    "KerberosLabError",
    "KerberosSettings",
    "LabKdc",
    "LabRealm",
    "ProcessKrb5Config",
    "RealmHost",
    "cleanup_stale",
    "realm_for",
]

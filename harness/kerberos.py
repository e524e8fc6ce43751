"""Kerberos for PowerShell remoting: the krb5 environment, a preflight, errors a user can act on.

With ``auth = "kerberos"`` pypsrp authenticates through GSSAPI (MIT krb5),
which takes everything from the process environment: ``KRB5_CONFIG`` (the
realm and its KDCs) and ``KRB5CCNAME`` (the ticket cache). This module

- points ``KRB5_CONFIG`` at the configured ``krb5.conf`` for the run
  (:func:`use_krb5_config`, restored afterwards), so the harness never needs
  the machine's own ``/etc/krb5.conf``;
- names the host's WinRM service principal as Windows' own client does,
  ``HTTP/<the host's DNS name>`` (:func:`wsman_options`);
- asks the KDC for that ticket before any WinRM traffic (:func:`preflight`),
  from the user's ticket cache (after ``kinit``) or from a user name and
  password, and turns what fails into one line naming the host and the fix
  (:class:`KerberosError`). What it found is a :class:`KerberosLogin`: the
  run folder keeps it; it holds no secret and no ticket.

``gssapi`` and ``krb5`` come with the ``kerberos`` extra
(``pip install 'migration-blackout[kerberos]'``, which builds against the
system's libkrb5).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .config import HostConfig

SERVICE = "HTTP"  # WinRM's SPN class, as the Windows client asks for it
CLOCK_SKEW_LIMIT_S = 300  # MIT's and Active Directory's default tolerance
EXTRA_HINT = "pip install 'migration-blackout[kerberos]' (needs the system's libkrb5)"

# krb5 error codes (krb5/krb5_err.et) as offsets from the table's base; a GSS
# minor status carries the same code as an unsigned 32-bit number.
_KRB5_BASE = -1765328384
KDC_ERR_C_PRINCIPAL_UNKNOWN = _KRB5_BASE + 6
KDC_ERR_S_PRINCIPAL_UNKNOWN = _KRB5_BASE + 7
KDC_ERR_CLIENT_REVOKED = _KRB5_BASE + 18
KDC_ERR_KEY_EXPIRED = _KRB5_BASE + 23
KDC_ERR_PREAUTH_FAILED = _KRB5_BASE + 24
KRB_AP_ERR_BAD_INTEGRITY = _KRB5_BASE + 31
KRB_AP_ERR_TKT_EXPIRED = _KRB5_BASE + 32
KRB_AP_ERR_TKT_NYV = _KRB5_BASE + 33
KRB_AP_ERR_SKEW = _KRB5_BASE + 37
KRB5_CC_NOTFOUND = _KRB5_BASE + 141
KRB5_FCC_NOFILE = _KRB5_BASE + 195
KRB5_KDC_UNREACH = _KRB5_BASE + 156
KRB5_KDCREP_SKEW = _KRB5_BASE + 148
KRB5_REALM_CANT_RESOLVE = _KRB5_BASE + 220
KRB5_CONFIG_NODEFREALM = _KRB5_BASE + 224


class KerberosError(Exception):
    """Kerberos cannot work for this host; the message names it and the fix."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message


@dataclass(frozen=True)
class KerberosLogin:
    """What the preflight established for one host (no secret, no ticket)."""

    host: str
    client_principal: str
    service_principal: str
    credential_source: Literal["ticket cache", "password"]
    ccache: str | None  # the cache read, with "ticket cache"
    krb5_config: str  # the file MIT krb5 read ("<default>": /etc/krb5.conf)
    tgt_expires_utc: str
    ticket_flags: tuple[str, ...]
    clock_skew_s: float  # the KDC's clock minus ours, from the service ticket

    def describe(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "client_principal": self.client_principal,
            "service_principal": self.service_principal,
            "credential_source": self.credential_source,
            "ccache": self.ccache,
            "krb5_config": self.krb5_config,
            "tgt_expires_utc": self.tgt_expires_utc,
            "ticket_flags": list(self.ticket_flags),
            "clock_skew_s": self.clock_skew_s,
        }


# ---- the environment --------------------------------------------------------


@contextlib.contextmanager
def use_krb5_config(path: str | Path | None) -> Iterator[None]:
    """``KRB5_CONFIG`` = ``path`` inside the block (nothing changes with None)."""
    if path is None:
        yield
        return
    previous = os.environ.get("KRB5_CONFIG")
    os.environ["KRB5_CONFIG"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("KRB5_CONFIG", None)
        else:
            os.environ["KRB5_CONFIG"] = previous


def _krb5_config_in_use() -> str:
    return os.environ.get("KRB5_CONFIG") or "<default: /etc/krb5.conf>"


def require_extra(host: str) -> None:
    """A one-line error instead of an ImportError when the extra is missing."""
    try:
        import gssapi  # noqa: F401
        import krb5  # noqa: F401
    except ImportError:
        raise KerberosError(
            host, f'auth = "kerberos" needs the optional kerberos support: {EXTRA_HINT}'
        ) from None


# ---- names ------------------------------------------------------------------


def spn_host(host: HostConfig) -> str:
    """The host part of the WinRM SPN: ``service_principal``'s, else the address."""
    if host.service_principal:
        return host.service_principal.split("/", 1)[1].split("@", 1)[0].lower()
    return host.address.lower()


def service_principal(host: HostConfig) -> str:
    return f"{SERVICE}/{spn_host(host)}"


def client_principal(username: str | None) -> str | None:
    """A Kerberos principal for a configured user name: ``user@REALM`` stays,
    ``DOMAIN\\user`` becomes ``user`` in the default realm (krb5.conf)."""
    if username is None:
        return None
    if "\\" in username:
        return username.split("\\", 1)[1]
    return username


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def wsman_options(host: HostConfig) -> dict[str, Any]:
    """pypsrp's Negotiate settings for ``host``: the SPN Windows' client uses."""
    if host.auth not in ("kerberos", "negotiate"):
        return {}
    options: dict[str, Any] = {"negotiate_service": SERVICE}
    if host.service_principal:
        options["negotiate_hostname_override"] = spn_host(host)
    return options


# ---- errors -----------------------------------------------------------------


def _code(error: BaseException) -> int | None:
    """The krb5 error code of a krb5 or GSSAPI error, as a signed number."""
    code = getattr(error, "err_code", None)
    if code is None:
        code = getattr(error, "min_code", None)
    if code is None:
        base = getattr(error, "base_error", None)  # pyspnego's SpnegoError
        return None if base is None else _code(base)
    code = int(code)
    return code - (1 << 32) if code >= 1 << 31 else code


def _message(error: BaseException) -> str:
    gen = getattr(error, "gen_message", None)
    text = gen() if callable(gen) else str(error)
    return " ".join(str(text).split())


def is_kerberos_failure(error: BaseException) -> bool:
    """A failure inside GSSAPI/Kerberos (as pypsrp lets it through)."""
    return _code(error) is not None and type(error).__module__.split(".")[0] in (
        "gssapi",
        "krb5",
        "spnego",
    )


def explain(
    host: HostConfig | None,
    error: BaseException,
    *,
    principal: str | None = None,
    ccache: str | None = None,
) -> str:
    """What a Kerberos failure means (for ``host``, if known) and what to do about it."""
    code = _code(error)
    spn = "HTTP/<host>" if host is None else service_principal(host)
    password_env = "the password's environment variable" if host is None else host.password_env
    who = principal or "your user"
    if code in (KRB5_FCC_NOFILE, KRB5_CC_NOTFOUND):
        return (
            f"no Kerberos ticket{f' in {ccache}' if ccache else ''}: run `kinit {who}` "
            f"first, or set {password_env} to log on with a password"
        )
    if code == KRB_AP_ERR_TKT_EXPIRED:
        return f"the Kerberos ticket of {who} has expired: run `kinit {who}` again"
    if code in (KRB_AP_ERR_SKEW, KRB5_KDCREP_SKEW, KRB_AP_ERR_TKT_NYV):
        return (
            "clocks differ by more than the domain allows (5 minutes): synchronise this "
            "machine's clock with the domain controllers (NTP)"
        )
    if code == KDC_ERR_S_PRINCIPAL_UNKNOWN:
        if host is not None and _is_ip_address(spn_host(host)):
            return (
                f"the KDC knows no service principal {spn} because the host is reached by IP "
                "address; Kerberos needs its DNS name: set address to the host's name, or "
                'service_principal = "HTTP/<its DNS name>"'
            )
        return (
            f"the KDC knows no service principal {spn}: use the host's DNS name as address "
            "(setspn -L <host> on a domain controller lists its SPNs), or set service_principal"
        )
    if code in (KRB5_KDC_UNREACH, KRB5_REALM_CANT_RESOLVE):
        return (
            f"cannot reach a KDC ({_message(error)}): check the realm's kdc entries in "
            f"{_krb5_config_in_use()} and that this machine reaches a domain controller "
            "on port 88"
        )
    if code in (KDC_ERR_PREAUTH_FAILED, KRB_AP_ERR_BAD_INTEGRITY):
        return f"the KDC refused the password of {who}: check {password_env}"
    if code == KDC_ERR_C_PRINCIPAL_UNKNOWN:
        return f"the KDC does not know {who}: give username as user@REALM"
    if code == KDC_ERR_KEY_EXPIRED:
        return f"the password of {who} has expired: change it, then run again"
    if code == KDC_ERR_CLIENT_REVOKED:
        return f"the account {who} is disabled or locked out"
    if code == KRB5_CONFIG_NODEFREALM:
        return (
            f"no default realm in {_krb5_config_in_use()}: point KRB5_CONFIG (or [kerberos] "
            "krb5_config) at the domain's krb5.conf, or give username as user@REALM"
        )
    return f"Kerberos failed: {_message(error)}"


# ---- the preflight -----------------------------------------------------------


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _flags(creds: Any) -> tuple[str, ...]:
    return tuple(
        str(flag.name) for flag in type(creds.ticket_flags) if flag & creds.ticket_flags and flag
    )


def preflight(host: HostConfig, password: str | None, *, clock: Any = time.time) -> KerberosLogin:
    """Get ``host``'s service ticket from the KDC, from ``password`` or the
    ticket cache. Blocking. Raises :class:`KerberosError`."""
    require_extra(host.name)
    import gssapi
    import gssapi.raw as gss_raw
    import krb5

    principal = client_principal(host.username)
    spn = service_principal(host)
    context = krb5.init_context()
    ccache: Any = None
    try:
        if password is not None:
            if principal is None:
                raise KerberosError(host.name, "a password needs a username (user@REALM)")
            client = krb5.parse_name_flags(context, principal.encode())
            options = krb5.get_init_creds_opt_alloc(context)
            tgt = krb5.get_init_creds_password(context, client, options, password.encode())
            ccache = krb5.cc_new_unique(context, b"MEMORY")
            krb5.cc_initialize(context, ccache, client)
            krb5.cc_store_cred(context, ccache, tgt)
            source: Literal["ticket cache", "password"] = "password"
            cache_name = None
        else:
            ccache = krb5.cc_default(context)
            cache_name = (ccache.cache_type or b"").decode() + ":" + (ccache.name or b"").decode()
            try:
                cached = krb5.cc_get_principal(context, ccache)
            except krb5.Krb5Error as error:
                raise KerberosError(
                    host.name, explain(host, error, principal=principal, ccache=cache_name)
                ) from None
            cached_name = (cached.name or b"").decode()
            if (
                principal is not None
                and cached_name.split("@")[0].lower() != principal.split("@")[0].lower()
            ):
                raise KerberosError(
                    host.name,
                    f"the ticket cache {cache_name} holds {cached_name}, not {principal}: "
                    f"run `kinit {principal}`",
                )
            principal = cached_name
            cached_tgt = next(
                (c for c in ccache if (c.server.name or b"").startswith(b"krbtgt/")), None
            )
            if cached_tgt is None:
                raise KerberosError(
                    host.name,
                    f"no Kerberos ticket in {cache_name}: run `kinit {principal}` first, or set "
                    f"{host.password_env} to log on with a password",
                )
            tgt = cached_tgt
            if tgt.times.endtime <= clock():
                raise KerberosError(
                    host.name,
                    f"the Kerberos ticket of {principal} in {cache_name} expired at "
                    f"{_utc(tgt.times.endtime)}: run `kinit {principal}` again",
                )
            source = "ticket cache"
        store: dict[bytes | str, bytes | str] = {
            b"ccache": (ccache.cache_type or b"") + b":" + (ccache.name or b"")
        }
        credentials = gssapi.Credentials(
            gss_raw.acquire_cred_from(
                store, mechs=[gssapi.MechType.kerberos], usage="initiate"
            ).creds
        )
        gssapi.SecurityContext(
            name=gssapi.Name(f"{SERVICE}@{spn_host(host)}", gssapi.NameType.hostbased_service),
            creds=credentials,
            usage="initiate",
            mech=gssapi.MechType.kerberos,
            flags=int(gssapi.RequirementFlag.mutual_authentication),
        ).step()
        prefix = f"{spn}@".encode().lower()
        ticket = next(
            (c for c in ccache if (c.server.name or b"").lower().startswith(prefix)), None
        )
        if ticket is None:
            raise KerberosError(host.name, f"the KDC issued no ticket for {spn}")
        skew = ticket.times.starttime - clock()
        if abs(skew) > CLOCK_SKEW_LIMIT_S:
            raise KerberosError(
                host.name,
                f"the KDC's clock is {skew:+.0f} s from this machine's, beyond the "
                f"{CLOCK_SKEW_LIMIT_S} s the domain allows: synchronise this machine's clock "
                "with the domain controllers (NTP)",
            )
        return KerberosLogin(
            host=host.name,
            client_principal=principal or (tgt.client.name or b"").decode(),
            service_principal=(ticket.server.name or b"").decode(),
            credential_source=source,
            ccache=cache_name,
            krb5_config=_krb5_config_in_use(),
            tgt_expires_utc=_utc(tgt.times.endtime),
            ticket_flags=_flags(ticket),
            clock_skew_s=float(skew),
        )
    except KerberosError:
        raise
    except (krb5.Krb5Error, gssapi.exceptions.GSSError) as error:
        raise KerberosError(
            host.name, explain(host, error, principal=principal, ccache=None)
        ) from None
    finally:
        if ccache is not None and password is not None:
            with contextlib.suppress(krb5.Krb5Error):
                krb5.cc_destroy(context, ccache)


__all__ = [
    "KerberosError",
    "KerberosLogin",
    "client_principal",
    "explain",
    "is_kerberos_failure",
    "preflight",
    "require_extra",
    "service_principal",
    "spn_host",
    "use_krb5_config",
    "wsman_options",
]

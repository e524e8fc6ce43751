"""Kerberos on the emulated hosts: a GSSAPI acceptor per host, and the second hop.

Each host accepts Kerberos with its own keytab from the lab's KDC
(:mod:`lab.kerberos`): a raw Kerberos token (what pypsrp sends with
``auth="kerberos"``) or SPNEGO whose preferred mechanism is Kerberos (Negotiate
picking Kerberos), in the HTTP ``Negotiate`` (or ``Kerberos``) scheme. Anything
else (NTLM, SPNEGO offering NTLM first) stays with pyspnego's NTLM acceptor.
Messages are then protected as WinRM does over HTTP: GSS wrap with
confidentiality, in the ``multipart/encrypted`` envelope of [MS-WSMV] 2.2.9.1.

The second hop (:class:`SecondHop`) is what a source host's Virtual Machine
Management Service does when Move-VM or Compare-VM must reach the destination
on the user's behalf, with real tickets from the lab's KDC:

- the session delegated the user's password (CredSSP): the source logs the
  user on (an AS exchange) and asks a ticket for the destination's service;
- otherwise constrained delegation: the source asks a ticket to itself for
  the user (S4U2Self, "protocol transition") and with it one for the
  destination's ``Microsoft Virtual System Migration Service`` (S4U2Proxy).
  The KDC grants it only where delegation is configured; this is what
  Windows Server 2016 does for a Move-VM started over WinRM (Microsoft's
  virtualization blog, "Live Migration via Constrained Delegation with
  Kerberos in Windows Server 2016", 2017-02-01).

The destination then accepts the ticket with its keytab. Whatever the KDC or
the destination refuses becomes :class:`HopRefused`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from migration_blackout.lab.kerberos import (
    MIGRATION_SERVICE,
    KerberosLabError,
    LabRealm,
    RealmHost,
)

try:  # the kerberos extra; without it the lab runs without its KDC
    import gssapi
    import gssapi.raw as gss_raw
    from gssapi.exceptions import GSSError
    from gssapi.raw import IOV, IOVBufferType
except ImportError:  # pragma: no cover - CI installs the extra
    gssapi = None  # type: ignore[assignment]

    class GSSError(Exception):  # type: ignore[no-redef]
        """Stands in for gssapi's error where gssapi is not installed."""


KRB5_OID = bytes.fromhex("2a864886f712010202")  # 1.2.840.113554.1.2.2
MS_KRB5_OID = bytes.fromhex("2a864882f712010202")  # 1.2.840.48018.1.2.2
SPNEGO_OID = bytes.fromhex("2b0601050502")  # 1.3.6.1.5.5.2
SPNEGO_MECH = "1.3.6.1.5.5.2"


def require_gssapi() -> None:
    """The lab's Kerberos needs python-gssapi (the ``kerberos`` extra)."""
    if gssapi is None:
        raise KerberosLabError(
            "the lab's Kerberos needs the kerberos extra: pip install "
            "'migration-blackout[kerberos]' (./bootstrap.sh does), or set [kerberos] "
            "enabled = false in lab.toml"
        )


TokenKind = Literal["kerberos", "spnego-kerberos", "other"]


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """One DER element at ``offset``: (tag, start of its value, end of its value)."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, start, end


def token_kind(token: bytes) -> TokenKind:
    """Which acceptor a first security token needs.

    A GSS InitialContextToken (RFC 2743 3.1) names its mechanism: Kerberos
    itself, or SPNEGO (RFC 4178), whose NegTokenInit lists the mechanisms in
    the client's order of preference.
    """
    try:
        tag, start, _ = _tlv(token, 0)
        if tag != 0x60:
            return "other"
        tag, oid_start, oid_end = _tlv(token, start)
        if tag != 0x06:
            return "other"
        mechanism = token[oid_start:oid_end]
        if mechanism in (KRB5_OID, MS_KRB5_OID):
            return "kerberos"
        if mechanism != SPNEGO_OID:
            return "other"
        # [0] NegTokenInit -> SEQUENCE -> [0] mechTypes -> SEQUENCE OF OID
        offset = oid_end
        for expected in (0xA0, 0x30, 0xA0, 0x30, 0x06):
            tag, value_start, value_end = _tlv(token, offset)
            if tag != expected:
                return "other"
            offset = value_start
        first = token[value_start:value_end]
        return "spnego-kerberos" if first in (KRB5_OID, MS_KRB5_OID) else "other"
    except (IndexError, ValueError):
        return "other"


def _principal(name: str) -> gssapi.Name:
    return gssapi.Name(name, gssapi.NameType.kerberos_principal)


class KerberosContext:
    """One client's Kerberos security context on one connection.

    On python-gssapi's raw calls: its SecurityContext keeps a failure that came
    with a token and raises it only at the next attribute access.
    """

    def __init__(self, credentials: gssapi.Credentials) -> None:
        self._credentials = credentials
        self._context: Any = None
        self._client: str | None = None

    @property
    def complete(self) -> bool:
        return self._client is not None

    @property
    def client_principal(self) -> str | None:
        return self._client

    def step(self, token: bytes) -> bytes | None:
        """Feed the client's token. Raises GSSError; its ``token`` (a
        KRB-ERROR, if any) is what to send the client back."""
        result = gss_raw.accept_sec_context(
            token, acceptor_creds=self._credentials, context=self._context
        )
        self._context = result.context
        if not result.more_steps:
            self._client = gss_raw.display_name(result.initiator_name).name.decode()
        out: bytes | None = result.token
        return out

    def wrap_winrm(self, message: bytes) -> tuple[bytes, bytes, int]:
        """(signature header, encrypted message, padding length)."""
        iov = IOV(IOVBufferType.header, message, IOVBufferType.padding, std_layout=False)
        gss_raw.wrap_iov(self._context, iov, confidential=True)
        padding = iov[2].value or b""
        return iov[0].value or b"", (iov[1].value or b"") + padding, len(padding)

    def unwrap_winrm(self, header: bytes, data: bytes) -> bytes:
        iov = IOV(
            (IOVBufferType.header, False, header),
            (IOVBufferType.data, False, data),
            std_layout=False,
        )
        gss_raw.unwrap_iov(self._context, iov)
        return iov[1].value or b""


def _acceptor_store(host: RealmHost) -> dict[bytes | str, bytes | str]:
    """The host's keytab, and its replay cache beside it (MIT's default is a
    shared file in /var/tmp that would outlive the lab)."""
    return {
        b"keytab": str(host.keytab).encode(),
        b"rcache": f"file2:{host.keytab.with_suffix('.rcache2')}".encode(),
    }


class KerberosAcceptor:
    """A host's acceptor credential: its keytab, for its WinRM principal only."""

    def __init__(self, host: RealmHost) -> None:
        self.host = host
        self._credentials: gssapi.Credentials | None = None

    def new_context(self) -> KerberosContext:
        if self._credentials is None:
            self._credentials = gssapi.Credentials(
                gss_raw.acquire_cred_from(
                    _acceptor_store(self.host),
                    name=_principal(self.host.service_principal),
                    mechs=[gssapi.MechType.kerberos, gssapi.OID.from_int_seq(SPNEGO_MECH)],
                    usage="accept",
                ).creds
            )
        return KerberosContext(self._credentials)


# --------------------------------------------------------------------------
# The second hop


# Windows' failure for each kind of hop, as keys of lab.hyperv_emulator.messages (the
# same texts as the lab's rule without a KDC, Lab.second_hop_failure): CredSSP
# without delegated credentials and Kerberos refused both 0x8009030E (docs/lab.md);
# a destination with no account in the realm 0x8009030D (not verified).
NO_CREDENTIALS = "no_credentials"
UNKNOWN_CREDENTIALS = "unknown_credentials"


class HopRefused(Exception):
    """The source host could not authenticate to the destination for the user.

    ``message_key``: Windows' failure (lab.hyperv_emulator.messages); ``detail``: what
    the KDC or the destination said.
    """

    def __init__(self, message_key: str, detail: str) -> None:
        super().__init__(f"{message_key}: {detail}")
        self.message_key = message_key
        self.detail = detail


@dataclass(frozen=True)
class HopTicket:
    """A ticket the destination accepted: for whom, and how it was obtained."""

    client: str
    service: str
    how: Literal["password", "constrained-delegation"]


def _gss_detail(error: GSSError) -> str:
    return " ".join(error.gen_message().split())


class SecondHop:
    """Tickets from a source host to a destination's service, on a user's behalf."""

    def __init__(self, realm: LabRealm) -> None:
        self.realm = realm

    def user_principal(self, user: str) -> str:
        """The lab realm's principal for a user name as a host saw it
        (``harness``, ``LAB\\harness``, ``harness@LAB``, ``harness@LAB.TEST``)."""
        name = user.split("\\", 1)[-1].split("@", 1)[0]
        return f"{name}@{self.realm.realm}"

    def obtain(
        self,
        *,
        source: str,
        destination: str,
        user: str,
        password: str | None,
        migration_auth: str,
    ) -> HopTicket:
        """Blocking (it talks to the KDC). Raises :class:`HopRefused`."""
        source_host = self.realm.host(source)
        target = self.realm.find_host(destination)
        if target is None:
            raise HopRefused(
                UNKNOWN_CREDENTIALS, f"{destination} has no account in {self.realm.realm}"
            )
        service = target.principal(MIGRATION_SERVICE)
        principal = self.user_principal(user)
        try:
            if password is not None:
                credentials = gssapi.Credentials(
                    gss_raw.acquire_cred_with_password(
                        _principal(principal),
                        password.encode(),
                        usage="initiate",
                        mechs=[gssapi.MechType.kerberos],
                    ).creds
                )
                how: Literal["password", "constrained-delegation"] = "password"
            elif migration_auth == "credssp":
                raise HopRefused(
                    NO_CREDENTIALS,
                    "CredSSP migration needs the user's credentials on the source host; "
                    "this session did not delegate them",
                )
            else:
                credentials = self._impersonate(source_host, principal)
                how = "constrained-delegation"
            client = _accept_at(target, service, credentials)
        except GSSError as error:
            raise HopRefused(
                NO_CREDENTIALS,
                _gss_detail(error),
            ) from None
        return HopTicket(client=client, service=service, how=how)

    def _impersonate(self, source: RealmHost, principal: str) -> gssapi.Credentials:
        """S4U2Self: the source host's own ticket for the user (from its keytab)."""
        own = gss_raw.acquire_cred_from(
            {
                b"client_keytab": str(source.keytab).encode(),
                b"ccache": f"MEMORY:hop-{uuid.uuid4().hex}".encode(),
            },
            name=_principal(source.principal("host")),
            mechs=[gssapi.MechType.kerberos],
            usage="initiate",
        ).creds
        return gssapi.Credentials(
            gss_raw.acquire_cred_impersonate_name(
                own, _principal(principal), mechs=[gssapi.MechType.kerberos], usage="initiate"
            ).creds
        )


def _accept_at(target: RealmHost, service: str, credentials: gssapi.Credentials) -> str:
    """Present a ticket for ``service`` to the destination (S4U2Proxy happens
    here for impersonated credentials); returns whom it authenticated."""
    initiator = gssapi.SecurityContext(
        name=_principal(service),
        creds=credentials,
        usage="initiate",
        mech=gssapi.MechType.kerberos,
    )
    token = initiator.step()
    acceptor = gssapi.SecurityContext(
        creds=gssapi.Credentials(
            gss_raw.acquire_cred_from(
                _acceptor_store(target),
                name=_principal(service),
                mechs=[gssapi.MechType.kerberos],
                usage="accept",
            ).creds
        ),
        usage="accept",
    )
    acceptor.step(token)
    return str(acceptor.initiator_name)


__all__ = [
    "NO_CREDENTIALS",
    "UNKNOWN_CREDENTIALS",
    "GSSError",
    "HopRefused",
    "HopTicket",
    "KerberosAcceptor",
    "KerberosContext",
    "SecondHop",
    "require_gssapi",
    "token_kind",
]

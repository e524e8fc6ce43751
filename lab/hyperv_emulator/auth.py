"""HTTP authentication and WinRM message encryption for the emulated hosts.

- Basic: checked on every request against the lab credentials.
- CredSSP (when the lab's ``auth_methods`` include it, as ``Enable-WSManCredSSP
  -Role Server`` does on a host): pyspnego's CredSSP acceptor (TLS, NTLM
  inside); the client delegates the user's password, which the shell keeps
  for Move-VM's second hop. Messages are TLS-wrapped in 16 KiB parts.
- Negotiate: one security context per TCP connection (as on Windows, the
  client authenticates once per connection and later requests carry no
  Authorization header). Kerberos (a raw Kerberos token, or SPNEGO preferring
  Kerberos) goes to the host's GSSAPI acceptor (:mod:`lab.hyperv_emulator.gss`, the
  host's keytab from the lab's KDC) when the lab has one; everything else to
  pyspnego's NTLM acceptor. Bodies are then wrapped in the
  ``multipart/encrypted`` envelope of [MS-WSMV] 2.2.9.1.
  pyspnego's NTLM acceptor reads its user database from the file named by the
  ``NTLM_USER_FILE`` environment variable (lines ``DOMAIN:user:password``);
  :class:`NtlmUserFile` writes that file and points the variable at it.

Whoever authenticated is a :class:`~lab.hyperv_emulator.identity.SessionIdentity`,
which the shells keep.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import spnego
from spnego.exceptions import SpnegoError

from migration_blackout.lab.hyperv_emulator.gss import GSSError, KerberosAcceptor, token_kind
from migration_blackout.lab.hyperv_emulator.identity import SessionIdentity

SPNEGO_ENCRYPTED = "application/HTTP-SPNEGO-session-encrypted"
CREDSSP_ENCRYPTED = "application/HTTP-CredSSP-session-encrypted"
CREDSSP_PART_BYTES = 16384  # [MS-WSMV] 2.2.9.1.1: CredSSP encrypts at most 16 KiB per part
BOUNDARY = "Encrypted Boundary"
_ORIGINAL_LENGTH = re.compile(rb"Length=(\d+)")


@dataclass(frozen=True)
class Credentials:
    domain: str
    username: str
    password: str

    @property
    def principal(self) -> str:
        """``DOMAIN\\user``, the form Windows shows as a shell's owner."""
        return f"{self.domain}\\{self.username}"

    def accepts(self, user: str, password: str) -> bool:
        """Basic auth: ``user``, ``DOMAIN\\user`` or ``user@DOMAIN`` with the password."""
        name = user
        domain = None
        if "\\" in user:
            domain, name = user.split("\\", 1)
        elif "@" in user:
            name, domain = user.split("@", 1)
        if domain is not None and domain.split(".")[0].upper() != self.domain.upper():
            return False
        return name.lower() == self.username.lower() and password == self.password


AuthMethod = Literal["ntlm", "kerberos", "credssp"]


class AuthenticationRefused(Exception):
    """The client's token was refused; ``token`` (a KRB-ERROR, if any) goes back to it."""

    def __init__(self, reason: str, token: bytes | None = None) -> None:
        super().__init__(reason)
        self.token = token


class NtlmUserFile:
    """The ``NTLM_USER_FILE`` database for pyspnego's acceptor, installed process-wide.

    pyspnego reads the variable on every authentication, so only one lab per
    process can own it at a time; the previous value is restored on close.
    """

    def __init__(self, path: Path, credentials: Credentials) -> None:
        self.path = path
        path.write_text(
            # The domain-qualified and the bare user name, so clients may send either.
            f"{credentials.domain}:{credentials.username}:{credentials.password}\n"
            f":{credentials.username}:{credentials.password}\n",
            encoding="utf-8",
        )
        path.chmod(0o600)
        self._previous = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(path)

    def close(self) -> None:
        if os.environ.get("NTLM_USER_FILE") == str(self.path):
            if self._previous is None:
                del os.environ["NTLM_USER_FILE"]
            else:
                os.environ["NTLM_USER_FILE"] = self._previous


class ConnectionSecurity:
    """The Negotiate state of one TCP connection."""

    def __init__(self, kerberos: KerberosAcceptor | None = None) -> None:
        self.context: Any = None
        self.method: AuthMethod = "ntlm"
        self._kerberos = kerberos

    @property
    def established(self) -> bool:
        return self.context is not None and self.context.complete

    @property
    def identity(self) -> SessionIdentity | None:
        if not self.established:
            return None
        user = str(self.context.client_principal)
        if self.method != "credssp":
            return SessionIdentity(user=user, scheme=self.method)
        delegated = self.context.get_extra_info("client_credential")  # TSPasswordCreds
        return SessionIdentity(
            user=user,
            scheme="credssp",
            delegated_credentials=True,
            delegated_password=str(delegated.password),
        )

    def reset(self) -> None:
        self.context = None

    def step(self, token: bytes, *, scheme: str = "negotiate") -> bytes | None:
        """Feed one client token of HTTP ``scheme``; returns the token to send
        back (if any). Raises :class:`AuthenticationRefused` when the client is
        rejected.
        """
        if self.context is None or self.context.complete:
            if scheme == "credssp":
                self.context, self.method = spnego.server(protocol="credssp"), "credssp"
            elif self._kerberos is not None and token_kind(token) != "other":
                self.context, self.method = self._kerberos.new_context(), "kerberos"
            else:
                self.context, self.method = (
                    spnego.server(
                        protocol="negotiate", options=spnego.NegotiateOptions.wrapping_winrm
                    ),
                    "ntlm",
                )
        try:
            out: bytes | None = self.context.step(token)
        except SpnegoError as error:
            raise AuthenticationRefused(str(error)) from None
        except GSSError as error:
            raise AuthenticationRefused(str(error), getattr(error, "token", None)) from None
        return out

    def unwrap(self, body: bytes, boundary: str) -> bytes:
        """Decrypt a ``multipart/encrypted`` request body."""
        parts = [
            p for p in re.split(rb"--\s*" + re.escape(boundary.encode()) + rb"\r\n", body) if p
        ]
        message = b""
        for i in range(0, len(parts) - 1, 2):
            header, payload = parts[i], parts[i + 1]
            length_match = _ORIGINAL_LENGTH.search(header)
            if length_match is None:
                raise ValueError("encrypted part without OriginalContent length")
            payload = re.sub(rb"--\s*" + re.escape(boundary.encode()) + rb"--\r\n$", b"", payload)
            payload = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
            (header_length,) = struct.unpack("<i", payload[:4])
            signature = payload[4 : 4 + header_length]
            data = self.context.unwrap_winrm(signature, payload[4 + header_length :])
            if len(data) != int(length_match.group(1)):
                raise ValueError("decrypted length does not match OriginalContent")
            message += data
        return message

    def wrap(self, message: bytes) -> tuple[str, bytes]:
        """Encrypt a response body; returns (Content-Type, body)."""
        protocol, size = SPNEGO_ENCRYPTED, max(len(message), 1)
        if self.method == "credssp":
            protocol, size = CREDSSP_ENCRYPTED, CREDSSP_PART_BYTES
        payload = b""
        for start in range(0, max(len(message), 1), size):
            part = message[start : start + size]
            header, wrapped, padding = self.context.wrap_winrm(part)
            payload += (
                f"--{BOUNDARY}\r\n"
                f"\tContent-Type: {protocol}\r\n"
                "\tOriginalContent: type=application/soap+xml;charset=UTF-8;"
                f"Length={len(part) + padding}\r\n"
                f"--{BOUNDARY}\r\n"
                "\tContent-Type: application/octet-stream\r\n"
            ).encode()
            payload += struct.pack("<i", len(header)) + header + wrapped
        payload += f"--{BOUNDARY}--\r\n".encode()
        kind = "x-multi-encrypted" if len(message) > size else "encrypted"
        return f'multipart/{kind};protocol="{protocol}";boundary="{BOUNDARY}"', payload


class ConnectionRegistry:
    """One :class:`ConnectionSecurity` per live transport (TCP connection)."""

    def __init__(self, kerberos: KerberosAcceptor | None = None) -> None:
        self._kerberos = kerberos
        self._states: weakref.WeakKeyDictionary[Any, ConnectionSecurity] = (
            weakref.WeakKeyDictionary()
        )

    def for_transport(self, transport: Any) -> ConnectionSecurity:
        state = self._states.get(transport)
        if state is None:
            state = ConnectionSecurity(self._kerberos)
            self._states[transport] = state
        return state


def parse_basic(header_value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header_value.split(" ", 1)[1].strip()).decode("utf-8")
    except (IndexError, binascii.Error, UnicodeDecodeError):
        return None
    if ":" not in decoded:
        return None
    user, password = decoded.split(":", 1)
    return user, password


def parse_negotiate(header_value: str) -> bytes | None:
    try:
        return base64.b64decode(header_value.split(" ", 1)[1].strip())
    except (IndexError, binascii.Error):
        return None


__all__ = [
    "BOUNDARY",
    "AuthenticationRefused",
    "ConnectionRegistry",
    "ConnectionSecurity",
    "Credentials",
    "NtlmUserFile",
    "SpnegoError",
    "parse_basic",
    "parse_negotiate",
]

"""Who a remote session is, as the emulated host's cmdlets see it.

The HTTP authentication layer (``server.py`` with ``auth.py``) decides it
once per request and hands it to the WinRM shell it creates; every pipeline
of that shell runs with it (``CmdletContext.identity``). The cmdlet layer
uses it for the live-migration second hop (``Lab.second_hop_failure``):

- ``delegated_credentials``: the client delegated the user's credentials to
  this host, so that the host can authenticate onwards as the user (CredSSP:
  ``Enable-WSManCredSSP``; ``New-PSSession -Authentication CredSSP``). A
  Basic, NTLM or plain Kerberos (Negotiate) session never does: False. The
  authentication layer sets it from the TSCredentials a CredSSP client sent
  (``delegated_password``, never shown, is what the host then logs the user
  on with for the second hop); a Kerberos session leaves it False (a
  forwardable TGT forwarded into the session would be delegation too, but
  Hyper-V's live migration relies on the host's constrained delegation, not
  on the user's ticket).
- ``user``: the authenticated user name, ``DOMAIN\\user`` or ``user@REALM``
  as the mechanism reports it.
- ``scheme``: what authenticated the request: ``basic``, ``ntlm`` or
  ``kerberos`` (both through HTTP Negotiate), ``credssp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SessionIdentity:
    user: str
    scheme: str
    delegated_credentials: bool = False
    delegated_password: str | None = field(default=None, repr=False)


# For code that runs pipelines without a WinRM request (in-process tests).
ANONYMOUS = SessionIdentity(user="", scheme="none")

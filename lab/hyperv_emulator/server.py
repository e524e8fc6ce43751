"""One emulated Hyper-V host: an aiohttp app answering WinRM on ``POST /wsman``.

Authentication (Basic, or Negotiate with message encryption: NTLM, and
Kerberos with the host's keytab when the lab has a KDC) happens first, then
the WS-Man action is dispatched to the host's shells
(:class:`~lab.hyperv_emulator.psrp.PoolSession`), each of which remembers who opened it.
A Move-VM in such a shell reaches the destination only as far as that
identity and the lab's KDC allow (:meth:`HostServer.reach_for`). A host the
lab has made unresponsive either holds every request unanswered or closes the
connection.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from psrpcore import PSRPCoreError

from migration_blackout.lab.hyperv_emulator import wsman
from migration_blackout.lab.hyperv_emulator.auth import (
    AuthenticationRefused,
    ConnectionRegistry,
    ConnectionSecurity,
    Credentials,
    SpnegoError,
    parse_basic,
    parse_negotiate,
)
from migration_blackout.lab.hyperv_emulator.gss import (
    GSSError,
    HopRefused,
    KerberosAcceptor,
    SecondHop,
)
from migration_blackout.lab.hyperv_emulator.identity import ANONYMOUS, SessionIdentity
from migration_blackout.lab.hyperv_emulator.model import Lab, ReachDestination, SecondHopRefused
from migration_blackout.lab.hyperv_emulator.psrp import PoolSession, Spawn, UnknownCommandError

log = logging.getLogger(__name__)

SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
IDENTITY_KEY = web.RequestKey("identity", SessionIdentity)  # who the request is
DEFAULT_OPERATION_TIMEOUT_S = 60.0
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


@dataclass
class _Authenticated:
    security: ConnectionSecurity | None  # set when the body is (to be) encrypted
    extra_headers: dict[str, str]
    # Who the request is (identity.py); the shell it creates runs as this.
    identity: SessionIdentity


class _NotAuthenticated(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__("not authenticated")
        self.response = response


class HostServer:
    """The WinRM endpoint of one emulated host."""

    def __init__(
        self,
        *,
        lab: Lab,
        host_name: str,
        credentials: Credentials,
        auth_methods: frozenset[str],
        spawn: Spawn,
        receive_timeout_cap_s: float | None,
        kerberos: KerberosAcceptor | None = None,
        second_hop: SecondHop | None = None,
    ) -> None:
        self.lab = lab
        self.host_name = host_name
        self._credentials = credentials
        self._auth_methods = auth_methods
        self._spawn = spawn
        self._receive_cap = receive_timeout_cap_s
        self._connections = ConnectionRegistry(kerberos)
        self._second_hop = second_hop
        self.shells: dict[str, PoolSession] = {}
        self.address = ""
        self.closing = False
        self.app = web.Application()
        self.app.router.add_post("/wsman", self.handle)

    # ---- request entry -----------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except ConnectionResetError:
            return web.Response(status=400)  # the client is gone
        if await self._stop_answering(request):
            return web.Response(status=503)
        try:
            auth = self._authenticate(request)
        except _NotAuthenticated as refused:
            return refused.response
        request[IDENTITY_KEY] = auth.identity
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith(("multipart/encrypted", "multipart/x-multi-encrypted")):
            if auth.security is None or not auth.security.established:
                return self._unauthorized()
            boundary = _BOUNDARY.search(content_type)
            try:
                soap = auth.security.unwrap(
                    body, boundary.group(1) if boundary else "Encrypted Boundary"
                )
            except (ValueError, SpnegoError, GSSError):
                log.warning("%s: could not decrypt a request", self.host_name)
                return web.Response(status=400)
            encrypt = auth.security
        else:
            soap = body
            encrypt = None
        if not soap:
            # The client's empty POST that sets up the security context.
            return web.Response(status=200, headers=auth.extra_headers)
        status, payload = await self._dispatch(soap, request)
        if await self._stop_answering(request):
            return web.Response(status=503)
        headers = dict(auth.extra_headers)
        if encrypt is not None:
            headers["Content-Type"], payload = encrypt.wrap(payload)
        else:
            headers["Content-Type"] = SOAP_CONTENT_TYPE
        return web.Response(status=status, body=payload, headers=headers)

    async def _stop_answering(self, request: web.Request) -> bool:
        """Apply the unresponsive fault; True when no answer may be sent.

        A request held by ``hang`` is never answered, even once the host
        recovers: its client has long given up. The connection is closed.
        """
        mode = self.lab.unresponsive_mode(self.host_name)
        if mode == "hang":
            await self.lab.wait_responsive(self.host_name)
        if mode is None and not self.closing:
            return False
        if request.transport is not None:
            request.transport.close()
        return True

    # ---- authentication ------------------------------------------------------

    def _unauthorized(self) -> web.Response:
        response = web.Response(status=401)
        if "negotiate" in self._auth_methods:
            response.headers.add("WWW-Authenticate", "Negotiate")
        if "basic" in self._auth_methods:
            response.headers.add("WWW-Authenticate", 'Basic realm="WSMAN"')
        if "credssp" in self._auth_methods:
            response.headers.add("WWW-Authenticate", "CredSSP")
        return response

    def _authenticate(self, request: web.Request) -> _Authenticated:
        security = self._connections.for_transport(request.transport)
        header = request.headers.get("Authorization")
        if header is None:
            identity = security.identity
            if identity is not None:
                return _Authenticated(security, {}, identity)
            raise _NotAuthenticated(self._unauthorized())
        scheme = header.split(" ", 1)[0].lower()
        if scheme == "basic" and "basic" in self._auth_methods:
            parsed = parse_basic(header)
            if parsed is None or not self._credentials.accepts(*parsed):
                raise _NotAuthenticated(self._unauthorized())
            return _Authenticated(None, {}, SessionIdentity(user=parsed[0], scheme="basic"))
        negotiate = (
            scheme in ("negotiate", "ntlm", "kerberos") and "negotiate" in self._auth_methods
        )
        if negotiate or (scheme == "credssp" and "credssp" in self._auth_methods):
            token = parse_negotiate(header)
            if token is None:
                raise _NotAuthenticated(self._unauthorized())
            try:
                out_token = security.step(token, scheme=scheme)
            except AuthenticationRefused as refused:
                security.reset()
                log.info("%s: authentication refused: %s", self.host_name, refused)
                response = self._unauthorized()
                if refused.token:
                    # The KRB-ERROR (clock skew, ...) lets the client say why.
                    response.headers["WWW-Authenticate"] = (
                        "Negotiate " + base64.b64encode(refused.token).decode()
                    )
                raise _NotAuthenticated(response) from None
            extra = {}
            if out_token:
                label = "CredSSP" if scheme == "credssp" else "Negotiate"
                extra["WWW-Authenticate"] = f"{label} " + base64.b64encode(out_token).decode()
            identity = security.identity
            if identity is None:
                raise _NotAuthenticated(web.Response(status=401, headers=extra))
            return _Authenticated(security, extra, identity)
        raise _NotAuthenticated(self._unauthorized())

    # ---- the second hop --------------------------------------------------------

    def reach_for(self, identity: SessionIdentity) -> ReachDestination | None:
        """How this host reaches a destination for ``identity`` in Move-VM and
        Compare-VM: with tickets from the lab's KDC (None: the lab has no KDC).
        The destination's migration authentication says which kind."""
        hop = self._second_hop
        if hop is None:
            return None
        source = self.host_name

        async def reach(destination: str) -> dict[str, Any]:
            migration_auth = self.lab.host(destination).config.migration_auth
            details: dict[str, Any] = {
                "client": identity.user,
                "client_auth": identity.scheme,
                "migration_auth": migration_auth,
            }
            try:
                ticket = await asyncio.to_thread(
                    hop.obtain,
                    source=source,
                    destination=destination,
                    user=identity.user,
                    password=identity.delegated_password,
                    migration_auth=migration_auth,
                )
            except HopRefused as refused:
                raise SecondHopRefused(
                    refused.message_key, {**details, "refused": refused.detail}
                ) from None
            return {
                **details,
                "ticket_client": ticket.client,
                "service": ticket.service,
                "how": ticket.how,
            }

        return reach

    # ---- WS-Man dispatch -----------------------------------------------------

    async def _dispatch(self, soap: bytes, request: web.Request) -> tuple[int, bytes]:
        try:
            req = wsman.parse_request(soap)
        except wsman.WSManParseError as error:
            fault = wsman.Fault(
                2150858817, f"The WS-Management service cannot process the request: {error}"
            )
            return 500, wsman.fault_envelope("", fault, self.host_name)
        try:
            return 200, await self._action(req, request)
        except _FaultResponse as raised:
            return 500, wsman.fault_envelope(req.message_id, raised.fault, self.host_name)
        except (wsman.WSManParseError, PSRPCoreError, ValueError) as error:
            fault = wsman.Fault(
                2150858817, f"The WS-Management service cannot process the request: {error}"
            )
            return 500, wsman.fault_envelope(req.message_id, fault, self.host_name)

    def _session(self, req: wsman.WSManRequest) -> PoolSession:
        session = self.shells.get(req.shell_id or "")
        if session is None:
            raise _FaultResponse(wsman.shell_not_found_fault(req.shell_id))
        return session

    async def _action(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        handlers = {
            wsman.ACTION_CREATE: self._create,
            wsman.ACTION_COMMAND: self._command,
            wsman.ACTION_SEND: self._send,
            wsman.ACTION_RECEIVE: self._receive,
            wsman.ACTION_SIGNAL: self._signal,
            wsman.ACTION_DELETE: self._delete,
        }
        handler = handlers.get(req.action)
        if handler is None:
            raise _FaultResponse(wsman.action_not_supported_fault(req.action))
        return await handler(req, request)

    async def _create(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        identity = request.get(IDENTITY_KEY, ANONYMOUS)
        client_shell_id, creation = wsman.creation_xml(req)
        shell_id = client_shell_id or str(uuid.uuid4()).upper()
        session = PoolSession(
            shell_id,
            lab=self.lab,
            host=self.host_name,
            spawn=self._spawn,
            identity=identity,
            reach=self.reach_for(identity),
        )
        session.open(creation)
        self.shells[shell_id] = session
        return wsman.create_response(
            req,
            shell_id=shell_id,
            address=self.address,
            owner=self._credentials.principal,
            client_ip=request.remote or "",
        )

    async def _command(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        session = self._session(req)
        command_id, fragment = wsman.command_line(req)
        session.create_pipeline(command_id, fragment)
        return wsman.command_response(req, command_id)

    async def _send(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        session = self._session(req)
        try:
            for command_id, data in wsman.send_streams(req):
                session.send(command_id, data)
        except UnknownCommandError:
            raise _FaultResponse(wsman.shell_not_found_fault(req.shell_id)) from None
        return wsman.empty_response(req, "SendResponse")

    async def _receive(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        session = self._session(req)
        command_id = wsman.receive_target(req)
        # Long-poll until there is data or the client's OperationTimeout passes.
        timeout = req.operation_timeout_s or DEFAULT_OPERATION_TIMEOUT_S
        if self._receive_cap is not None:
            timeout = min(timeout, self._receive_cap)
        try:
            result = await session.receive(command_id, timeout)
        except UnknownCommandError:
            raise _FaultResponse(wsman.shell_not_found_fault(req.shell_id)) from None
        if result is None:
            raise _FaultResponse(wsman.operation_timeout_fault())
        chunks, done = result
        return wsman.receive_response(req, command_id, chunks, done)

    async def _signal(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        session = self._session(req)
        command_id, code = wsman.signal_request(req)
        if command_id is not None:
            if code in (wsman.SIGNAL_PS_CTRL_C, wsman.SIGNAL_CTRL_C):
                await session.stop_pipeline(command_id)
            elif code == wsman.SIGNAL_TERMINATE:
                await session.close_pipeline(command_id)
        return wsman.empty_response(req, "SignalResponse")

    async def _delete(self, req: wsman.WSManRequest, request: web.Request) -> bytes:
        session = self._session(req)
        del self.shells[session.shell_id]
        await session.close()
        return wsman.empty_response(req, "DeleteResponse")

    async def shutdown(self) -> None:
        self.closing = True
        for session in list(self.shells.values()):
            session.shutdown()


class _FaultResponse(Exception):
    def __init__(self, fault: wsman.Fault) -> None:
        super().__init__(fault.message)
        self.fault = fault

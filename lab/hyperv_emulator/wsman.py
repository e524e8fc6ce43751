"""The WS-Management SOAP layer of an emulated WinRM endpoint, written by hand.

Parses request envelopes ([MS-WSMV]: Create, Command, Send, Receive, Signal,
Delete) into :class:`WSManRequest` and builds the response and fault
envelopes a Windows host returns, in the shape pypsrp reads them.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "pwsh": "http://schemas.microsoft.com/powershell",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
for _prefix, _uri in NS.items():
    if _prefix != "xml":
        ET.register_namespace(_prefix, _uri)

TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTION_CREATE = f"{TRANSFER}/Create"
ACTION_DELETE = f"{TRANSFER}/Delete"
ACTION_GET = f"{TRANSFER}/Get"
ACTION_COMMAND = f"{SHELL}/Command"
ACTION_SEND = f"{SHELL}/Send"
ACTION_RECEIVE = f"{SHELL}/Receive"
ACTION_SIGNAL = f"{SHELL}/Signal"
FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
POWERSHELL_RESOURCE = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"

SIGNAL_TERMINATE = f"{SHELL}/signal/Terminate"
SIGNAL_CTRL_C = f"{SHELL}/signal/ctrl_c"
SIGNAL_PS_CTRL_C = "powershell/signal/ctrl_c"
COMMAND_STATE_DONE = f"{SHELL}/CommandState/Done"
COMMAND_STATE_RUNNING = f"{SHELL}/CommandState/Running"

# WSManFault codes (winerror.h) with the texts Windows sends.
ERROR_WSMAN_OPERATION_TIMEDOUT = 2150858793  # 0x80338029
OPERATION_TIMEOUT_TEXT = (
    "The WS-Management service cannot complete the operation within the time specified in "
    "OperationTimeout.  "
)
ERROR_WSMAN_SHELL_NOT_FOUND = 2150858843  # 0x8033805B, "unexpected selectors"
ERROR_WSMAN_ACTION_NOT_SUPPORTED = 2150858754  # 0x80338002


class WSManParseError(ValueError):
    pass


@dataclass(frozen=True)
class WSManRequest:
    action: str
    message_id: str
    resource_uri: str
    operation_timeout_s: float | None
    selectors: dict[str, str]
    options: dict[str, str]
    body: ET.Element

    @property
    def shell_id(self) -> str | None:
        value = self.selectors.get("ShellId")
        return value.upper() if value else None


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float | None:
    """xs:duration as WS-Man uses it (``PT20S``, ``PT60.000S``) to seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return (
        parts.get("d", 0.0) * 86400
        + parts.get("h", 0.0) * 3600
        + parts.get("m", 0.0) * 60
        + parts.get("s", 0.0)
    )


def _text(parent: ET.Element, path: str) -> str:
    element = parent.find(path, NS)
    return (element.text or "").strip() if element is not None else ""


def parse_request(payload: bytes) -> WSManRequest:
    try:
        envelope = ET.fromstring(payload)
    except ET.ParseError as error:
        raise WSManParseError(f"request is not XML: {error}") from None
    header = envelope.find("s:Header", NS)
    body = envelope.find("s:Body", NS)
    if header is None or body is None:
        raise WSManParseError("request is not a SOAP envelope with Header and Body")
    timeout_text = _text(header, "w:OperationTimeout")
    selectors = {
        e.attrib.get("Name", ""): (e.text or "")
        for e in header.findall("w:SelectorSet/w:Selector", NS)
    }
    options = {
        e.attrib.get("Name", ""): (e.text or "") for e in header.findall("w:OptionSet/w:Option", NS)
    }
    return WSManRequest(
        action=_text(header, "a:Action"),
        message_id=_text(header, "a:MessageID"),
        resource_uri=_text(header, "w:ResourceURI"),
        operation_timeout_s=parse_duration(timeout_text) if timeout_text else None,
        selectors=selectors,
        options=options,
        body=body,
    )


# ---- request bodies ---------------------------------------------------------------


def creation_xml(request: WSManRequest) -> tuple[str | None, bytes]:
    """From a Create: the client's ShellId (if it chose one) and the creationXml bytes."""
    shell = request.body.find("rsp:Shell", NS)
    if shell is None:
        raise WSManParseError("Create without rsp:Shell")
    creation = shell.find("pwsh:creationXml", NS)
    if creation is None:
        creation = shell.find("creationXml")
    if creation is None or not creation.text:
        raise WSManParseError("Create without creationXml")
    shell_id = shell.attrib.get("ShellId")
    return (shell_id.upper() if shell_id else None), base64.b64decode(creation.text)


def command_line(request: WSManRequest) -> tuple[str, bytes]:
    """From a Command: (CommandId, first PSRP fragment bytes from Arguments)."""
    line = request.body.find("rsp:CommandLine", NS)
    if line is None:
        raise WSManParseError("Command without rsp:CommandLine")
    command_id = (line.attrib.get("CommandId") or str(uuid.uuid4())).upper()
    data = b"".join(base64.b64decode(a.text) for a in line.findall("rsp:Arguments", NS) if a.text)
    return command_id, data


def send_streams(request: WSManRequest) -> list[tuple[str | None, bytes]]:
    """From a Send: [(CommandId or None, data)]."""
    send = request.body.find("rsp:Send", NS)
    if send is None:
        raise WSManParseError("Send without rsp:Send")
    streams = []
    for stream in send.findall("rsp:Stream", NS):
        command_id = stream.attrib.get("CommandId")
        data = base64.b64decode(stream.text) if stream.text else b""
        streams.append((command_id.upper() if command_id else None, data))
    return streams


def receive_target(request: WSManRequest) -> str | None:
    """From a Receive: the CommandId asked for, or None for the runspace pool."""
    desired = request.body.find("rsp:Receive/rsp:DesiredStream", NS)
    if desired is None:
        raise WSManParseError("Receive without rsp:DesiredStream")
    command_id = desired.attrib.get("CommandId")
    return command_id.upper() if command_id else None


def signal_request(request: WSManRequest) -> tuple[str | None, str]:
    signal = request.body.find("rsp:Signal", NS)
    if signal is None:
        raise WSManParseError("Signal without rsp:Signal")
    command_id = signal.attrib.get("CommandId")
    return (command_id.upper() if command_id else None), _text(signal, "rsp:Code")


# ---- responses ----------------------------------------------------------------------


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def envelope(action: str, relates_to: str, body_children: list[ET.Element]) -> bytes:
    root = ET.Element(_q("s", "Envelope"), {_q("xml", "lang"): "en-US"})
    header = ET.SubElement(root, _q("s", "Header"))
    ET.SubElement(header, _q("a", "Action")).text = action
    ET.SubElement(header, _q("a", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, _q("a", "To")).text = ANONYMOUS
    ET.SubElement(header, _q("a", "RelatesTo")).text = relates_to
    body = ET.SubElement(root, _q("s", "Body"))
    body.extend(body_children)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def create_response(
    request: WSManRequest, *, shell_id: str, address: str, owner: str, client_ip: str
) -> bytes:
    created = ET.Element(_q("x", "ResourceCreated"))
    ET.SubElement(created, _q("a", "Address")).text = address
    refs = ET.SubElement(created, _q("a", "ReferenceParameters"))
    ET.SubElement(refs, _q("w", "ResourceURI")).text = request.resource_uri
    selector_set = ET.SubElement(refs, _q("w", "SelectorSet"))
    ET.SubElement(selector_set, _q("w", "Selector"), Name="ShellId").text = shell_id

    shell = ET.Element(_q("rsp", "Shell"))
    for name, value in (
        ("ShellId", shell_id),
        ("Name", "WinRM1"),
        ("ResourceUri", request.resource_uri),
        ("Owner", owner),
        ("ClientIP", client_ip),
        ("IdleTimeOut", "PT7200.000S"),
        ("InputStreams", "stdin pr"),
        ("OutputStreams", "stdout"),
        ("ShellRunTime", "P0DT0H0M0S"),
        ("ShellInactivity", "P0DT0H0M0S"),
    ):
        ET.SubElement(shell, _q("rsp", name)).text = value
    return envelope(f"{TRANSFER}/CreateResponse", request.message_id, [created, shell])


def command_response(request: WSManRequest, command_id: str) -> bytes:
    response = ET.Element(_q("rsp", "CommandResponse"))
    ET.SubElement(response, _q("rsp", "CommandId")).text = command_id
    return envelope(f"{SHELL}/CommandResponse", request.message_id, [response])


def empty_response(request: WSManRequest, action_suffix: str) -> bytes:
    if action_suffix == "DeleteResponse":
        return envelope(f"{TRANSFER}/DeleteResponse", request.message_id, [])
    return envelope(
        f"{SHELL}/{action_suffix}",
        request.message_id,
        [ET.Element(_q("rsp", action_suffix))],
    )


def receive_response(
    request: WSManRequest, command_id: str | None, chunks: list[bytes], done: bool
) -> bytes:
    response = ET.Element(_q("rsp", "ReceiveResponse"))
    for chunk in chunks:
        attrib = {"Name": "stdout"}
        if command_id is not None:
            attrib["CommandId"] = command_id
        ET.SubElement(response, _q("rsp", "Stream"), attrib).text = base64.b64encode(chunk).decode()
    if command_id is not None:
        ET.SubElement(
            response,
            _q("rsp", "CommandState"),
            CommandId=command_id,
            State=COMMAND_STATE_DONE if done else COMMAND_STATE_RUNNING,
        )
    return envelope(f"{SHELL}/ReceiveResponse", request.message_id, [response])


@dataclass(frozen=True)
class Fault:
    code: int
    message: str
    subcode: str = "w:InternalError"
    value: str = "s:Receiver"


def operation_timeout_fault() -> Fault:
    return Fault(ERROR_WSMAN_OPERATION_TIMEDOUT, OPERATION_TIMEOUT_TEXT, subcode="w:TimedOut")


def shell_not_found_fault(shell_id: str | None) -> Fault:
    return Fault(
        ERROR_WSMAN_SHELL_NOT_FOUND,
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the "
        "shell was not found on the server. Possible causes are: the specified ShellId is "
        "incorrect or the shell no longer exists on the server. Provide the correct ShellId or "
        "create a new shell and retry the operation. ",
        subcode="w:InvalidSelectors",
        value="s:Sender",
    )


def action_not_supported_fault(action: str) -> Fault:
    return Fault(
        ERROR_WSMAN_ACTION_NOT_SUPPORTED,
        f"The WS-Management service cannot process the request. The action {action} is not "
        "supported by the emulated host. ",
        subcode="a:ActionNotSupported",
        value="s:Sender",
    )


def fault_envelope(relates_to: str, fault: Fault, machine: str) -> bytes:
    element = ET.Element(_q("s", "Fault"))
    code = ET.SubElement(element, _q("s", "Code"))
    ET.SubElement(code, _q("s", "Value")).text = fault.value
    subcode = ET.SubElement(code, _q("s", "Subcode"))
    ET.SubElement(subcode, _q("s", "Value")).text = fault.subcode
    reason = ET.SubElement(element, _q("s", "Reason"))
    ET.SubElement(reason, _q("s", "Text"), {_q("xml", "lang"): "en-US"}).text = fault.message
    detail = ET.SubElement(element, _q("s", "Detail"))
    wsman_fault = ET.SubElement(
        detail, _q("f", "WSManFault"), Code=str(fault.code), Machine=machine
    )
    ET.SubElement(wsman_fault, _q("f", "Message")).text = fault.message
    return envelope(FAULT_ACTION, relates_to, [element])

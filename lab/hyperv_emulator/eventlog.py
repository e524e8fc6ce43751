"""Event records as Windows shows them: their XML, XPath queries, and the
harness's events script.

- :func:`event_xml` renders a lab event as ``EventRecord.ToXml()`` does: a
  ``System`` block and, for Hyper-V's events, the event data under
  ``UserData/VmlEventLog`` (namespace
  ``http://www.microsoft.com/Windows/Virtualization/Events``) as
  ``Parameter0``, ``Parameter1``, ... in order. For 20415/20417 that is the
  VM's name, its id and the blackout in seconds, which is where real hosts'
  events carry them (Icinga's icinga-powershell-hyperv reads
  ``UserData.VmlEventLog.Parameter0`` and ``.Parameter2`` of 20415/20417;
  other events' element names are the lab's choice, not verified).
- :func:`compile_xpath` evaluates the XPath subset the harness and an
  administrator use with ``Get-WinEvent -FilterXPath``: ``*`` or
  ``*[System[...]]`` with ``EventID``, ``Level``, ``EventRecordID``
  comparisons, ``Provider[@Name='...']``, ``TimeCreated[@SystemTime OP
  '...']``, ``and``, ``or`` and parentheses. Anything else is an invalid
  query, as on Windows.
- ``Get-WinEvent`` (``-FilterHashtable``, ``-LogName`` / ``-FilterXPath``) and
  ``Get-MigrationEvents.ps1`` (the harness's harvest) are answered here; both
  register with the cmdlet layer when this module is imported.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from psrpcore.types import ErrorCategory, ErrorRecord, PSCustomObject, PSInt, PSInt64

from migration_blackout.lab.hyperv_emulator import cmdlets, model, pstypes, scripts

SCRIPT_RESOURCE = "scripts/Get-MigrationEvents.ps1"
SCRIPT_NAME = "Get-MigrationEvents.ps1"

EVENT_NAMESPACE = "http://schemas.microsoft.com/win/2004/08/events/event"
VML_NAMESPACE = "http://www.microsoft.com/Windows/Virtualization/Events"
# Provider GUIDs as the manifests register them (VMMS from a real event's XML).
PROVIDER_GUIDS = {
    model.VMMS_PROVIDER: "{6066f867-7ca1-4418-85fd-36e3f9c0600c}",
    model.WORKER_PROVIDER: "{51ddfa29-d5c8-4803-be4b-2ecb715570fe}",
}


def system_time(ns: int) -> str:
    """``TimeCreated/@SystemTime``: UTC with 7 fractional digits and Z."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 100:07d}Z"


def event_xml(event: model.HostEvent) -> str:
    """The event as ``EventRecord.ToXml()`` renders it (one line, no declaration)."""
    guid = PROVIDER_GUIDS.get(event.provider_name)
    provider = f"<Provider Name={quoteattr(event.provider_name)}"
    provider += f" Guid={quoteattr(guid)}/>" if guid else "/>"
    system = (
        f"<System>{provider}<EventID>{event.event_id}</EventID><Version>0</Version>"
        f"<Level>{int(event.level)}</Level><Task>0</Task><Opcode>0</Opcode>"
        "<Keywords>0x8000000000000000</Keywords>"
        f"<TimeCreated SystemTime={quoteattr(system_time(event.time_created_ns))}/>"
        f"<EventRecordID>{event.record_id}</EventRecordID><Correlation/>"
        f"<Channel>{escape(event.log_name)}</Channel>"
        f"<Computer>{escape(event.machine_name)}</Computer>"
        '<Security UserID="S-1-5-18"/></System>'
    )
    data = "".join(
        f"<Parameter{i}>{escape(str(value))}</Parameter{i}>"
        for i, value in enumerate(event.properties)
    )
    return (
        f'<Event xmlns="{EVENT_NAMESPACE}">{system}'
        f'<UserData><VmlEventLog xmlns="{VML_NAMESPACE}">{data}</VmlEventLog></UserData></Event>'
    )


# ---- XPath ----------------------------------------------------------------------


class XPathError(ValueError):
    """Windows' "The specified query is invalid" (ERROR_EVT_INVALID_QUERY)."""


_TOKEN = re.compile(
    r"\s*(?:(?P<op>>=|<=|!=|=|>|<)|(?P<punct>[\[\]()@*])|(?P<str>'[^']*'|\"[^\"]*\")"
    r"|(?P<num>\d+)|(?P<name>[A-Za-z_][\w.]*))"
)

Predicate = Callable[[model.HostEvent], bool]


def _tokens(text: str) -> list[str]:
    text = text.replace("&gt;", ">").replace("&lt;", "<")
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise XPathError(f"cannot read the query at {text[at:]!r}")
        tokens.append(match.group(match.lastgroup or "name"))
        at = match.end()
    return tokens


def _compare(op: str, actual: Any, wanted: Any) -> bool:
    return {
        "=": actual == wanted,
        "!=": actual != wanted,
        ">": actual > wanted,
        ">=": actual >= wanted,
        "<": actual < wanted,
        "<=": actual <= wanted,
    }[op]


def _parse_time(text: str) -> int:
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise XPathError(f"{text!r} is not a time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1_000_000) * 1000


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise XPathError(f"expected {expected or 'more'}, found {token!r}")
        self.at += 1
        return token

    def query(self) -> Predicate:
        self.take("*")
        if self.peek() is None:
            return lambda event: True
        self.take("[")
        self.take("System")
        self.take("[")
        condition = self.disjunction()
        self.take("]")
        self.take("]")
        if self.peek() is not None:
            raise XPathError(f"unexpected {self.peek()!r}")
        return condition

    def disjunction(self) -> Predicate:
        terms = [self.conjunction()]
        while self.peek() == "or":
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else lambda e: any(t(e) for t in terms)

    def conjunction(self) -> Predicate:
        terms = [self.term()]
        while self.peek() == "and":
            self.take()
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else lambda e: all(t(e) for t in terms)

    def term(self) -> Predicate:
        token = self.take()
        if token == "(":
            inner = self.disjunction()
            self.take(")")
            return inner
        if token in ("EventID", "Level", "EventRecordID"):
            op = self.take()
            value = self.take()
            if not value.isdigit():
                raise XPathError(f"{token} compares with a number, not {value!r}")
            wanted = int(value)
            field: Callable[[model.HostEvent], int] = {
                "EventID": lambda e: e.event_id,
                "Level": lambda e: int(e.level),
                "EventRecordID": lambda e: e.record_id,
            }[token]
            return lambda e: _compare(op, field(e), wanted)
        if token == "Provider":
            self.take("[")
            self.take("@")
            self.take("Name")
            self.take("=")
            name = self.take()[1:-1]
            self.take("]")
            return lambda e: e.provider_name.lower() == name.lower()
        if token == "TimeCreated":
            self.take("[")
            self.take("@")
            self.take("SystemTime")
            op = self.take()
            bound_ns = _parse_time(self.take()[1:-1])
            self.take("]")
            # SystemTime has 100 ns ticks; compare on them.
            return lambda e: _compare(op, e.time_created_ns // 100, bound_ns // 100)
        raise XPathError(f"the emulated host does not evaluate {token!r} in a query")


def compile_xpath(xpath: str) -> Predicate:
    """A predicate for ``Get-WinEvent -FilterXPath``; XPathError when invalid."""
    return _Parser(_tokens(xpath)).query()


def invalid_query(activity: str) -> ErrorRecord:
    return pstypes.error_record(
        "The specified query is invalid",
        exception_types=[
            "System.Diagnostics.Eventing.Reader.EventLogInvalidDataException",
            "System.Diagnostics.Eventing.Reader.EventLogException",
        ],
        fully_qualified_error_id=GET_WINEVENT.error_id("The specified query is invalid"),
        category=ErrorCategory.NotSpecified,
        activity=activity,
        reason="EventLogInvalidDataException",
    )


# ---- Get-WinEvent -------------------------------------------------------------


def _normalise_log(name: str) -> str:
    return name.replace("/", "-").lower()


def parse_datetime(value: Any, host_offset: dt.timedelta, *, activity: str) -> dt.datetime:
    """A DateTime argument: a DateTime, or a string PowerShell would cast to one
    (an ISO 8601 text with or without offset; without: the host's local time)."""
    if isinstance(value, dt.datetime):
        stamp = value
    else:
        try:
            stamp = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise cmdlets.TerminatingError(
                pstypes.error_record(
                    f'Cannot convert value "{value}" to type "System.DateTime". Error: "String '
                    'was not recognized as a valid DateTime."',
                    exception_types=[
                        "System.Management.Automation.PSInvalidCastException",
                        "System.InvalidCastException",
                        "System.SystemException",
                    ],
                    fully_qualified_error_id="InvalidCastParseTargetInvocation",
                    category=ErrorCategory.InvalidArgument,
                    activity=activity,
                    reason="PSInvalidCastException",
                    target_object=str(value),
                )
            ) from None
    if stamp.tzinfo is None:
        # Unspecified/Local DateTime: the host's local time.
        stamp = stamp.replace(tzinfo=dt.timezone(host_offset))
    return stamp


def _no_events_error() -> ErrorRecord:
    return pstypes.error_record(
        "No events were found that match the specified selection criteria.",
        exception_types=[],
        fully_qualified_error_id=GET_WINEVENT.error_id("NoMatchingEventsFound"),
        category=ErrorCategory.ObjectNotFound,
        activity=GET_WINEVENT.name,
        reason="Exception",
    )


def _no_log_error(log: str) -> ErrorRecord:
    return pstypes.error_record(
        f'There is not an event log on the localhost computer that matches "{log}".',
        exception_types=[],
        fully_qualified_error_id=GET_WINEVENT.error_id("NoMatchingLogsFound"),
        category=ErrorCategory.ObjectNotFound,
        activity=GET_WINEVENT.name,
        reason="Exception",
        target_object=log,
    )


KNOWN_LOGS = frozenset(
    _normalise_log(name)
    for name in (model.VMMS_LOG, model.WORKER_LOG, model.HA_LOG, "Application", "Security")
)


def query_events(
    ctx: cmdlets.CmdletContext, log_names: list[str], predicate: Predicate
) -> tuple[list[model.HostEvent], list[ErrorRecord]]:
    """The host's events in ``log_names`` that ``predicate`` selects, newest
    first, and the non-terminating errors Get-WinEvent writes on the way
    (no such log, no events)."""
    errors = [_no_log_error(log) for log in log_names if _normalise_log(log) not in KNOWN_LOGS]
    wanted = {_normalise_log(n) for n in log_names} & KNOWN_LOGS
    if not wanted:
        return [], errors
    events = [
        e
        for e in ctx.lab.events_on(ctx.host)
        if _normalise_log(e.log_name) in wanted and predicate(e)
    ]
    events.sort(key=lambda e: (e.time_created_ns, e.record_id), reverse=True)
    if not events:
        errors.append(_no_events_error())
    return events, errors


async def _get_winevent(ctx: cmdlets.CmdletContext, params: dict[str, Any]) -> None:
    offset = ctx.lab.host_utc_offset(ctx.host)
    filters = params.get("FilterHashtable")
    log_names = [str(n) for n in cmdlets.as_list(params.get("LogName"))]
    xpath = params.get("FilterXPath")
    if filters is not None and (log_names or xpath is not None):
        raise cmdlets.binding_error(
            GET_WINEVENT,
            "Parameter set cannot be resolved using the specified named parameters.",
            "AmbiguousParameterSet",
        )
    if filters is not None:
        tables = cmdlets.as_list(filters)
        log_names = []
        for table in tables:
            log_names += _hashtable_logs(table)
        if not log_names:
            # ProviderName alone: the logs its providers write to.
            log_names = sorted(KNOWN_LOGS)
        predicates = [_hashtable_predicate(t, offset) for t in tables]
        predicate: Predicate = lambda event: any(p(event) for p in predicates)  # noqa: E731
    else:
        try:
            predicate = compile_xpath("*" if xpath is None else str(xpath))
        except ValueError:
            # Invalid query: EventLogReader throws, Get-WinEvent fails.
            raise cmdlets.TerminatingError(invalid_query(GET_WINEVENT.name)) from None
    events, errors = query_events(ctx, log_names, predicate)
    for record in errors:
        ctx.out.write_error(record)
    if params.get("Oldest"):
        events.reverse()
    max_events = params.get("MaxEvents")
    if max_events is not None:
        events = events[: int(max_events)]
    for event in events:
        ctx.out.write_output(
            pstypes.event_log_record(
                event,
                utc_offset=offset,
                level_display_name=ctx.lab.text(ctx.host, f"level_{int(event.level)}"),
            )
        )


def _as_remote_value(value: Any) -> Any:
    """A hashtable value as Get-WinEvent sees it when it came over the wire: a
    list arrives as an ArrayList, which is not an ``Array``, so the query
    builder pastes its ToString(), the items joined by spaces (PowerShell's
    GetEventCommand.cs, HandleEventIdHashValue and friends)."""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return value


def _hashtable_logs(table: Any) -> list[str]:
    if not isinstance(table, Mapping):
        raise cmdlets.binding_error(
            GET_WINEVENT,
            "Cannot bind parameter 'FilterHashtable'. The value is not a hashtable.",
            "CannotConvertArgumentNoMessage",
        )
    for raw_key, value in table.items():
        if str(raw_key).lower() == "logname":
            return [str(_as_remote_value(value))]
    return []


def _event_field(field: Callable[[model.HostEvent], Any], op: str, wanted: Any) -> Predicate:
    def test(event: model.HostEvent) -> bool:
        actual = field(event)
        if op == ">=":
            return bool(actual >= wanted)
        if op == "<=":
            return bool(actual <= wanted)
        return bool(actual == wanted)

    return test


def _hashtable_predicate(table: Any, offset: dt.timedelta) -> Predicate:
    """One hashtable's selection, as the XPath Get-WinEvent builds from it."""
    tests: list[Predicate] = []
    for raw_key, raw_value in table.items():
        key = str(raw_key).lower()
        value = _as_remote_value(raw_value)
        if key == "logname":
            continue
        if key == "providername":
            tests.append(_event_field(lambda e: e.provider_name.lower(), "=", str(value).lower()))
        elif key in ("id", "level"):
            text = str(value).strip()
            if not text.isdigit():
                # "(System/EventID=20415 20417)": a query that matches nothing
                # (the hashtable query tolerates query errors).
                tests.append(lambda event: False)
                continue
            field: Callable[[model.HostEvent], Any] = (
                (lambda e: e.event_id) if key == "id" else (lambda e: int(e.level))
            )
            tests.append(_event_field(field, "=", int(text)))
        elif key in ("starttime", "endtime"):
            bound = parse_datetime(value, offset, activity=GET_WINEVENT.name)
            bound_ns = int(bound.timestamp() * 1e9)
            op = ">=" if key == "starttime" else "<="
            tests.append(_event_field(lambda e: e.time_created_ns, op, bound_ns))
        else:
            raise cmdlets.TerminatingError(
                pstypes.error_record(
                    f"The specified key '{raw_key}' is not valid for this filter hashtable; the "
                    "emulated host supports LogName, ProviderName, Id, Level, StartTime, EndTime.",
                    exception_types=["System.Exception"],
                    fully_qualified_error_id=GET_WINEVENT.error_id("InvalidFilterKey"),
                    category=ErrorCategory.InvalidArgument,
                    activity=GET_WINEVENT.name,
                    reason="Exception",
                    target_object=str(raw_key),
                )
            )
    return lambda event: all(t(event) for t in tests)


GET_WINEVENT = cmdlets.register_cmdlet(
    cmdlets.Cmdlet(
        "Get-WinEvent",
        "Microsoft.PowerShell.Commands.GetWinEventCommand",
        (
            cmdlets.Parameter("FilterHashtable", position=0),
            cmdlets.Parameter("LogName"),
            cmdlets.Parameter("FilterXPath"),
            cmdlets.Parameter("MaxEvents"),
            cmdlets.Parameter("Oldest", switch=True),
            cmdlets.Parameter("ComputerName"),
        ),
        _get_winevent,
    )
)


# ---- the harness's events script ---------------------------------------------------


def _int_list(value: Any) -> list[int]:
    """``[int[]]``: PowerShell converts a list (an ArrayList when it came
    over the wire) or a single value, element by element."""
    values = value if isinstance(value, list | tuple) else [value]
    try:
        return [int(str(v).strip()) for v in values]
    except ValueError:
        raise cmdlets.transformation_error(EVENTS_SCRIPT, "Id", value, "System.Int32[]") from None


async def _events_script(ctx: cmdlets.CmdletContext, params: dict[str, Any]) -> None:
    lab = ctx.lab
    offset = lab.host_utc_offset(ctx.host)
    log_name = str(params["LogName"])
    ids = _int_list(params["Id"])
    since = parse_datetime(params["StartTime"], offset, activity=SCRIPT_NAME)
    # The script's own XPath: integers and the UTC time, truncated to ms.
    since_utc = since.astimezone(dt.UTC)
    since_text = since_utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{since_utc.microsecond // 1000:03d}Z"
    xpath = (
        "*[System[("
        + " or ".join(f"EventID={i}" for i in ids)
        + f") and TimeCreated[@SystemTime>='{since_text}']]]"
    )
    events, errors = query_events(ctx, [log_name], compile_xpath(xpath))
    for record in errors:
        if not str(record.FullyQualifiedErrorId).startswith("NoMatchingEventsFound"):
            ctx.out.write_error(record)
    for event in events:
        ctx.out.write_output(
            PSCustomObject(
                Id=PSInt(event.event_id),
                LogName=event.log_name,
                ProviderName=event.provider_name,
                RecordId=PSInt64(event.record_id),
                Level=PSInt(int(event.level)),
                LevelDisplayName=lab.text(ctx.host, f"level_{int(event.level)}"),
                MachineName=event.machine_name,
                TimeCreated=pstypes.host_datetime(event.time_created_ns, utc_offset=offset),
                Message=event.message,
                Xml=event_xml(event),
            )
        )


EVENTS_SCRIPT = scripts.register_shipped(
    SCRIPT_RESOURCE,
    cmdlets.Cmdlet(
        SCRIPT_NAME,
        SCRIPT_NAME,
        (
            cmdlets.Parameter("LogName", position=0, mandatory=True),
            cmdlets.Parameter("Id", position=1, mandatory=True),
            cmdlets.Parameter("StartTime", position=2, mandatory=True),
        ),
        _events_script,
    ),
)

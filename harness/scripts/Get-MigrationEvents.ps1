<#
.SYNOPSIS
    Hyper-V's own records of a migration: events of one log with the given IDs
    since a time, each with its event data as XML.

.DESCRIPTION
    Runs on a Hyper-V host. Reads the events of LogName whose ID is one of Id
    and that were written at or after StartTime, newest first.

    Why a script and not Get-WinEvent -FilterHashtable sent from the client:
    a list sent over PowerShell remoting arrives as an ArrayList, and
    Get-WinEvent's hashtable query builder expands IDs only from an Array; an
    ArrayList is pasted with ToString() into "(System/EventID=20415 20417)",
    which matches nothing (PowerShell's GetEventCommand.cs,
    HandleEventIdHashValue). Here Id is bound to [int[]] and the XPath is
    built from integers and a UTC time only.

    Why ToXml(): an event's Properties lie below the remoting serialisation
    depth and would arrive as the text "System.Diagnostics.Eventing.Reader.
    EventProperty"; the event's XML carries the figures (for 20415 the VM's
    name, its id and the blackout in seconds, as UserData/VmlEventLog
    Parameter0..2), independent of the host's display language. Message is
    the rendered text, in the host's language (or empty when the session's
    language has no resources there).

    Output: one object per event with Id, LogName, ProviderName, RecordId,
    Level, LevelDisplayName, MachineName, TimeCreated, Message and Xml. No
    events is no output and no error. Other failures of Get-WinEvent (no
    such log, access denied) are written as non-terminating errors.

    The harness sends this file unchanged (harness/psrp_session.py); the emulated
    lab recognises it by its text (lab/hyperv_emulator/eventlog.py).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$LogName,

    [Parameter(Mandatory)]
    [int[]]$Id,

    [Parameter(Mandatory)]
    [datetime]$StartTime
)

$ids = ($Id | ForEach-Object { 'EventID={0}' -f $_ }) -join ' or '
$since = $StartTime.ToUniversalTime().ToString(
    'yyyy-MM-ddTHH:mm:ss.fffZ', [System.Globalization.CultureInfo]::InvariantCulture)
$xpath = "*[System[($ids) and TimeCreated[@SystemTime>='$since']]]"

$failures = @()
$events = @(
    Get-WinEvent -LogName $LogName -FilterXPath $xpath -ErrorAction SilentlyContinue `
        -ErrorVariable failures
)
foreach ($failure in $failures) {
    # No matching events is an answer, not a failure.
    if ($failure.FullyQualifiedErrorId -notlike 'NoMatchingEventsFound*') {
        Write-Error -ErrorRecord $failure
    }
}

foreach ($event in $events) {
    [PSCustomObject]@{
        Id               = $event.Id
        LogName          = $event.LogName
        ProviderName     = $event.ProviderName
        RecordId         = $event.RecordId
        Level            = [int]$event.Level
        LevelDisplayName = $event.LevelDisplayName
        MachineName      = $event.MachineName
        TimeCreated      = $event.TimeCreated
        Message          = $event.Message
        Xml              = $event.ToXml()
    }
}

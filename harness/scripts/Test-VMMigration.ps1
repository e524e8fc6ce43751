<#
.SYNOPSIS
    Whether a VM could be live-migrated to a destination now, without moving it.

.DESCRIPTION
    Runs on the VM's source host. Compare-VM -Name VMName -DestinationHost
    DestinationHost (with -IncludeStorage and -DestinationStoragePath when
    given) reaches the destination exactly as Move-VM does: the second hop
    (CredSSP or Kerberos constrained delegation), migration being enabled on
    both hosts and the destination's Hyper-V version are all exercised, and
    its failures are Move-VM's failures (written as non-terminating errors,
    with their FullyQualifiedErrorId and text).

    Output: one object with VMName, DestinationHost, OperationType and
    Incompatibilities: one string per incompatibility, "<MessageId>: <Message>".
    A compatibility report's incompatibilities lie below the remoting
    serialisation depth and would arrive as type names; flattened here they
    arrive as text. No incompatibilities: an empty list.

    The harness sends this file unchanged (harness/psrp_session.py); the emulated
    lab recognises it by its text (lab/hyperv_emulator/preflight.py).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$VMName,

    [Parameter(Mandatory)]
    [string]$DestinationHost,

    [switch]$IncludeStorage,

    [string]$DestinationStoragePath
)

$arguments = @{ Name = $VMName; DestinationHost = $DestinationHost }
if ($IncludeStorage) {
    $arguments.IncludeStorage = $true
    if ($DestinationStoragePath) {
        $arguments.DestinationStoragePath = $DestinationStoragePath
    }
}

foreach ($report in @(Compare-VM @arguments)) {
    [PSCustomObject]@{
        VMName            = $VMName
        DestinationHost   = $DestinationHost
        OperationType     = [string]$report.OperationType
        Incompatibilities = [string[]]@(
            $report.Incompatibilities | ForEach-Object { '{0}: {1}' -f $_.MessageId, $_.Message }
        )
    }
}

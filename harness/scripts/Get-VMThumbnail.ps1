<#
.SYNOPSIS
    The console screen of one virtual machine, as Hyper-V renders its thumbnail.

.DESCRIPTION
    Runs on the Hyper-V host that holds the VM. Finds the VM's
    Msvm_ComputerSystem by ElementName (a literal, case-insensitive match:
    wildcard characters in the name mean themselves, and no query text is
    built from it), takes its realized Msvm_VirtualSystemSettingData and asks
    Msvm_VirtualSystemManagementService.GetVirtualSystemThumbnailImage for the
    screen, scaled to Width x Height.

    Output: one object per VM of that name with VMName, VMId, ComputerName,
    Width, Height, ImageData (byte[]: raw RGB565, Width*Height*2 bytes, rows
    top to bottom, each pixel a little-endian 16-bit word with red in the top
    five bits, green in the middle six and blue in the low five, as
    System.Drawing's Format16bppRgb565) and HostTime (the host's clock just
    after the image was taken).

    A host that does not hold the VM writes a non-terminating error worded as
    Hyper-V's own cmdlets word it ('Hyper-V was unable to find a virtual
    machine with name "<name>".') and no output. Failures of WMI itself
    (access denied, the service not running) terminate the script.

    The harness sends this file unchanged (harness/console.py); the emulated
    lab recognises it by its text (lab/hyperv_emulator/thumbnail.py).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [string]$VMName,

    [ValidateRange(1, 4096)]
    [int]$Width = 320,

    [ValidateRange(1, 4096)]
    [int]$Height = 240
)

$ErrorActionPreference = 'Stop'
$namespace = 'root\virtualization\v2'

# Msvm_ComputerSystem lists the host itself too; a VM's Name is its GUID,
# the host's is its computer name.
$computerSystems = @(
    Get-CimInstance -Namespace $namespace -ClassName Msvm_ComputerSystem |
        Where-Object { $_.ElementName -eq $VMName -and $null -ne ($_.Name -as [guid]) }
)
if ($computerSystems.Count -eq 0) {
    $message = 'Hyper-V was unable to find a virtual machine with name "{0}".' -f $VMName
    Write-Error -Message $message -Category ObjectNotFound -TargetObject $VMName `
        -ErrorId 'VMNotFound' -ErrorAction Continue
    return
}

$service = Get-CimInstance -Namespace $namespace -ClassName Msvm_VirtualSystemManagementService

foreach ($computerSystem in $computerSystems) {
    # The realized settings: the running VM's own, not a checkpoint's.
    $settings = Get-CimAssociatedInstance -InputObject $computerSystem `
        -Association Msvm_SettingsDefineState -ResultClassName Msvm_VirtualSystemSettingData |
        Where-Object { $_.VirtualSystemType -eq 'Microsoft:Hyper-V:System:Realized' } |
        Select-Object -First 1
    if ($null -eq $settings) {
        $message = 'Virtual machine "{0}" has no realized settings (is it being migrated?).' -f $VMName
        Write-Error -Message $message -Category ObjectNotFound -TargetObject $VMName `
            -ErrorId 'VMSettingsNotFound' -ErrorAction Continue
        continue
    }

    $result = Invoke-CimMethod -InputObject $service -MethodName GetVirtualSystemThumbnailImage `
        -Arguments @{
            TargetSystem = $settings
            WidthPixels  = [uint16]$Width
            HeightPixels = [uint16]$Height
        }
    $hostTime = Get-Date

    # 0: Completed with No Error. The method documents 4096 (job started), but
    # the thumbnail comes back synchronously; anything else is a failure.
    if ($result.ReturnValue -ne 0) {
        $message = 'GetVirtualSystemThumbnailImage returned {0} for virtual machine "{1}".' -f `
            $result.ReturnValue, $VMName
        Write-Error -Message $message -Category InvalidResult -TargetObject $VMName `
            -ErrorId 'ThumbnailFailed' -ErrorAction Continue
        continue
    }

    [PSCustomObject]@{
        VMName       = $computerSystem.ElementName
        VMId         = $computerSystem.Name
        ComputerName = $env:COMPUTERNAME
        Width        = $Width
        Height       = $Height
        ImageData    = [byte[]]$result.ImageData
        HostTime     = $hostTime
    }
}

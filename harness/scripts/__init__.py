"""PowerShell scripts the harness sends to Hyper-V hosts (package data).

Loaded with ``pkgutil.get_data`` and sent unchanged with ``AddScript``; every
value travels as a parameter bound to the script's ``param()`` block, never
as script text. The emulated lab recognises each by its text.

- ``Get-VMThumbnail.ps1``: the VM's console screen (harness/console.py).
- ``Get-MigrationEvents.ps1``: Hyper-V's migration events with their event
  data as XML (the harvest, harness/psrp_session.py).
- ``Test-VMMigration.ps1``: Compare-VM on the source, flattened (preflight).
"""

from __future__ import annotations

import functools
import pkgutil


@functools.cache
def load(name: str) -> str:
    """The text of ``scripts/<name>`` as shipped."""
    data = pkgutil.get_data("migration_blackout.harness", f"scripts/{name}")
    if data is None:
        raise FileNotFoundError(f"harness/scripts/{name} is not installed")
    return data.decode("utf-8-sig")

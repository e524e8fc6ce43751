"""The scripts the harness ships, as the emulated hosts know them.

The lab does not interpret PowerShell. The harness sends a few scripts
(``harness/scripts/*.ps1``, package data) unchanged with ``AddScript``, their
values as parameters; the lab recognises each by its text, compared with the
file shipped in the harness package (line ends aside), binds the parameters
as the script's ``param()`` block would, and answers what the script answers
on a real host. Any other script text is refused.

The module that answers a script registers it here with the cmdlet layer
(``register_shipped``): ``eventlog``, ``preflight`` and ``thumbnail``.
"""

from __future__ import annotations

import functools
import pkgutil

from migration_blackout.lab.hyperv_emulator import cmdlets

SCRIPT_PACKAGE = "migration_blackout.harness"


@functools.cache
def shipped_text(resource: str) -> str:
    """A script as the harness ships it (``resource``: ``scripts/<name>.ps1``)."""
    data = pkgutil.get_data(SCRIPT_PACKAGE, resource)
    if data is None:
        raise FileNotFoundError(f"{SCRIPT_PACKAGE}/{resource} is not installed")
    return cmdlets.normalise_script(data.decode("utf-8-sig"))


def register_shipped(resource: str, script: cmdlets.Cmdlet) -> cmdlets.Cmdlet:
    """Answer the harness's script ``resource`` with ``script``."""
    return cmdlets.register_script(shipped_text(resource), script)

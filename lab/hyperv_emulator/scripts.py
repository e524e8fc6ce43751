"""The scripts the harness ships, as the emulated hosts answer them.

The lab does not interpret PowerShell. The harness sends a few scripts
(``harness/scripts/*.ps1``, package data) unchanged with ``AddScript``, their
values as parameters; the lab recognises each by its text, compared with the
file shipped in the harness package (line ends aside), binds the parameters
as the script's ``param()`` block would, and answers what the script answers
on a real host. Any other script text is refused.
"""

from __future__ import annotations

import functools
import pkgutil
from collections.abc import Awaitable, Callable

from psrpcore import Command

from migration_blackout.lab.hyperv_emulator import cmdlets

SCRIPT_PACKAGE = "migration_blackout.harness"

Runner = Callable[[cmdlets.CmdletContext, list[Command]], Awaitable[None]]


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


@functools.cache
def shipped_text(resource: str) -> str:
    """A script as the harness ships it (``resource``: ``scripts/<name>.ps1``)."""
    data = pkgutil.get_data(SCRIPT_PACKAGE, resource)
    if data is None:
        raise FileNotFoundError(f"{SCRIPT_PACKAGE}/{resource} is not installed")
    return normalise(data.decode("utf-8-sig"))


def script_runner(script: cmdlets.Cmdlet) -> Runner:
    """Bind a statement to ``script``'s parameters and run its handler."""

    async def run(ctx: cmdlets.CmdletContext, commands: list[Command]) -> None:
        command = cmdlets.one_command(commands, script.name)
        await script.handler(ctx, cmdlets.bind_parameters(script, command))

    return run


@functools.cache
def _registry() -> dict[str, Runner]:
    # Imported here: these modules build on the cmdlet layer.
    from migration_blackout.lab.hyperv_emulator import eventlog, preflight, thumbnail

    return {
        thumbnail.shipped_script(): script_runner(thumbnail.THUMBNAIL_SCRIPT),
        shipped_text(eventlog.SCRIPT_RESOURCE): script_runner(eventlog.EVENTS_SCRIPT),
        shipped_text(preflight.SCRIPT_RESOURCE): script_runner(preflight.COMPARE_SCRIPT),
    }


def find(text: str) -> Runner | None:
    """The runner of a shipped script, or None for any other script text."""
    return _registry().get(normalise(text))

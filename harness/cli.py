"""The ``measure`` command line. Parses arguments and calls the commands' ``run``
functions; all work happens in ``harness.commands``."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__, exitcodes


class UsageError(click.UsageError):
    exit_code = exitcodes.USAGE


def _fail(message: str, code: int = exitcodes.USAGE) -> NoReturn:
    click.echo(f"measure: error: {message}", err=True)
    sys.exit(code)


def _parse_target(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[str]:
    targets = []
    for value in values:
        try:
            targets.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IPv4 or IPv6 address") from None
    if len(set(targets)) != len(targets):
        raise click.BadParameter("the same address is given twice")
    return targets


def _parse_interval(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if value < 1.0:
        raise click.BadParameter(f"{value} ms is below the 1 ms minimum")
    if value > 60_000:
        raise click.BadParameter(f"{value} ms is above the 60 s maximum")
    return value


class _ProgressLine:
    """One line on stderr, rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_printed = -1e9

    def __call__(self, progress: Any) -> None:
        if not self.tty and progress.elapsed_s - self.last_printed < 5.0:
            return
        self.last_printed = progress.elapsed_s
        parts = []
        for target, stats in progress.targets.items():
            parts.append(
                f"{target}: {stats.replies}/{stats.sent} replies, "
                f"loss streak {stats.current_loss_streak} (longest {stats.longest_loss_streak})"
            )
        line = f"{progress.elapsed_s:7.1f} s  " + "; ".join(parts)
        if self.tty:
            click.echo("\r\x1b[2K" + line, err=True, nl=False)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


@click.group(epilog=exitcodes.EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="measure")
def main() -> None:
    """Measure how long a VM is unreachable while it is live-migrated."""


@main.command(epilog=exitcodes.EPILOG)
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    callback=_parse_target,
    help="Guest address to ping (IPv4 or IPv6); repeat for several targets.",
)
@click.option(
    "--interval-ms",
    default=10.0,
    show_default=True,
    type=float,
    callback=_parse_interval,
    help="Probe interval per target, 1 ms or more.",
)
@click.option(
    "--timeout-ms",
    default=None,
    type=click.FloatRange(min=1.0),
    help="A probe with no reply after this long is a timeout [default: max(1000, 3 x interval)].",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Seconds to watch; without it, until Ctrl-C.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Parent folder; the run folder <run-id> is created inside it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary document as JSON.")
def watch(
    targets: list[str],
    interval_ms: float,
    timeout_ms: float | None,
    duration: float | None,
    out: Path,
    as_json: bool,
) -> None:
    """Ping the guest while you migrate it by hand, then analyse the blackout."""
    from .commands import watch as watch_command

    _run_watch(
        watch_command.run,
        as_json,
        targets=targets,
        interval_s=interval_ms / 1000.0,
        timeout_s=None if timeout_ms is None else timeout_ms / 1000.0,
        duration_s=duration,
        out=out,
        command=sys.argv,
    )


def _run_watch(runner: Any, as_json: bool, **kwargs: Any) -> None:
    from analysis.render import format_summary_table
    from probes.icmp import IcmpPermissionError

    from .runfolder import OutputFolderError, RunStatus

    progress = _ProgressLine()
    try:
        result = runner(progress=progress, **kwargs)
    except (OutputFolderError, IcmpPermissionError) as exc:
        progress.close()
        _fail(str(exc))
    except Exception as exc:
        progress.close()
        _fail(f"{type(exc).__name__}: {exc}", exitcodes.MIGRATION_FAILED)
    progress.close()
    _print_summary(result.summary, as_json, format_summary_table)
    click.echo(f"run folder: {result.run_dir}", err=True)
    if result.status is RunStatus.ABORTED:
        sys.exit(exitcodes.INTERRUPTED)


def _print_summary(summary: dict[str, Any], as_json: bool, formatter: Any) -> None:
    import json

    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(formatter(summary))


@main.command(epilog=exitcodes.EPILOG)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print derived/summary.json instead of a table."
)
def analyze(run_dir: Path, as_json: bool) -> None:
    """(Re)build RUN_DIR/derived/ from RUN_DIR/raw/ and show the summary."""
    from analysis.render import format_summary_table
    from analysis.runfolder import RunFormatError

    from .commands import analyze as analyze_command

    try:
        summary = analyze_command.run(run_dir=run_dir)
    except RunFormatError as exc:
        _fail(str(exc))
    _print_summary(summary, as_json, format_summary_table)


if __name__ == "__main__":  # pragma: no cover
    main()

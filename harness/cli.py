"""The ``measure`` command line. Parses arguments and calls the commands' ``run``
functions; all work happens in ``harness.commands``."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from migration_blackout.probes.environment import forget_secrets

from . import __version__, exitcodes

if TYPE_CHECKING:
    from .commands.session import SessionResult
    from .config import HostConfig


def _fail(message: str, code: int = exitcodes.USAGE) -> NoReturn:
    click.echo(f"measure: error: {message}", err=True)
    sys.exit(code)


def _resolve(value: str) -> str:
    """An address as given, or the first address a host name resolves to."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(value, None, type=socket.SOCK_RAW)
    except (socket.gaierror, UnicodeError) as exc:
        raise click.BadParameter(
            f"{value!r} is not an IPv4 or IPv6 address, and as a host name it does not "
            f"resolve ({exc})"
        ) from None
    address = str(found[0][4][0])
    if "%" in address:
        raise click.BadParameter(f"{value!r} resolves to a scoped address {address}")
    return address


def _parse_targets(
    ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[str]:
    """Addresses; a host name is resolved once, here, and kept in ``ctx.meta`` for the run
    folder (``target_names``)."""
    from .config import guest_address_problem

    targets = []
    names: dict[str, str] = {}
    for value in values:
        address = _resolve(value)
        problem = guest_address_problem(address)
        if problem is not None:
            raise click.BadParameter(problem if address == value else f"{value!r}: {problem}")
        if address != value:
            names[address] = value
        targets.append(address)
    if len(set(targets)) != len(targets):
        raise click.BadParameter(f"the same address is given twice ({', '.join(targets)})")
    ctx.meta["target_names"] = names
    return targets


def _parse_vm(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("the VM name is empty")
    return value


_LABEL_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _parse_labels(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key):
            raise click.BadParameter(
                f"{value!r}: expected key=value, the key of letters, digits, _ . -"
            )
        if key in labels:
            raise click.BadParameter(f"the label {key!r} is given twice")
        labels[key] = text
    return labels


LABEL_HELP = "A label key=value kept in the manifest; report and notebooks group by it. Repeat."


def _parse_interval(
    _ctx: click.Context, _param: click.Parameter, value: float | None
) -> float | None:
    if value is None:
        return None
    if value < 1.0:
        raise click.BadParameter(f"{value} ms is below the 1 ms minimum")
    if value > 60_000:
        raise click.BadParameter(f"{value} ms is above the 60 s maximum")
    return value


def _parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for --agent-listen."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        _fail(f"--agent-listen {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class _Terminal:
    """Progress on stderr: rewritten in place on a terminal, sparse otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line = ""
        self.prefix = ""  # "run 2/3 " in a session
        self.new_run()

    def new_run(self, number: int | None = None, total: int | None = None) -> None:
        """Start over for the next run of a session: a header, and progress from 0 s."""
        self.close()
        self.last_printed = -1e9
        self.last_phase: str | None = None
        self.last_message: str | None = None
        if number is not None:
            self.prefix = f"run {number}/{total} "
            click.echo(f"== run {number}/{total} ==", err=True)

    def discard(self) -> None:
        """Remove a transient line (a preflight in progress) from the terminal."""
        if self.tty and self.last_line:
            click.echo("\r\x1b[2K", err=True, nl=False)
            self.last_line = ""

    def line(self, text: str, elapsed_s: float, *, force: bool = False) -> None:
        if self.tty:
            click.echo("\r\x1b[2K" + text, err=True, nl=False)
            self.last_line = text
        elif force or elapsed_s - self.last_printed >= 5.0:
            click.echo(text, err=True)
            self.last_printed = elapsed_s

    def close(self) -> None:
        if self.tty and self.last_line:
            click.echo("", err=True)
            self.last_line = ""

    @staticmethod
    def icmp_text(targets: Any) -> str:
        return "; ".join(
            f"{target}: {s.replies}/{s.sent} replies, loss streak {s.current_loss_streak} "
            f"(longest {s.longest_loss_streak})"
            for target, s in targets.items()
        )

    def watch_progress(self, progress: Any) -> None:
        self.line(
            f"{progress.elapsed_s:7.1f} s  {self.icmp_text(progress.targets)}",
            progress.elapsed_s,
        )

    def run_progress(self, progress: Any) -> None:
        phase = str(progress.phase)
        stamp = f"{self.prefix}[{progress.elapsed_s:6.1f} s] {phase}"
        if phase == "preflight":
            # Transient, on a terminal only: a failed preflight leaves just its error line.
            if self.tty:
                self.line(stamp + (f": {progress.message}" if progress.message else ""), 0.0)
            return
        if phase != self.last_phase or (progress.message and progress.message != self.last_message):
            self.close()
            self.last_phase = phase
            self.last_message = progress.message
            text = stamp
            if progress.message:
                text += f": {progress.message}"
            click.echo(text, err=True)
            return
        parts = [stamp]
        if progress.percent is not None:
            parts.append(f"{progress.percent:3d}%")
        if progress.states:
            parts.append(", ".join(f"{h}: {s}" for h, s in progress.states.items()))
        if progress.icmp:
            parts.append(self.icmp_text(progress.icmp))
        self.line("  ".join(parts), progress.elapsed_s)


def _print_summary(summary: dict[str, Any] | None, as_json: bool, run_dir: Path) -> None:
    """The summary as a table, or with --json as its document plus ``run_dir``."""
    from migration_blackout.analysis.render import format_summary_table

    if summary is None:
        return
    if as_json:
        click.echo(json.dumps({**summary, "run_dir": str(run_dir)}, indent=2))
    else:
        click.echo(format_summary_table(summary))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """A warning about the user's data is one line on stderr, as an error is."""
    click.echo(f"measure: warning: {message}", err=True)


class _MeasureGroup(click.Group):
    """Usage errors as one line (``measure: error: ...``), exit code 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        import warnings

        warnings.showwarning = _show_warning
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # the group's help, as click prints it (exit 2)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "measure"
            path = "measure" + path[path.find(" ") :] if " " in path else "measure"
            message = exc.format_message().replace("\n", " ")
            click.echo(f"measure: error: {message} (see '{path} --help')", err=True)
            sys.exit(exitcodes.USAGE)
        except click.ClickException as exc:
            click.echo(f"measure: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("measure: interrupted", err=True)
            sys.exit(exitcodes.INTERRUPTED)
        if isinstance(result, int):
            sys.exit(result)
        return result


class _SectionedCommand(click.Command):
    """A command whose --help lists its options under headings (``sections``: heading,
    option names); options in no section go under "Other options"."""

    sections: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {
            param.name: record
            for param in self.get_params(ctx)
            if (record := param.get_help_record(ctx)) is not None
        }
        for heading, names in (*self.sections, ("Other options", tuple(records))):
            # (click's help option comes last and lands here, named by click.)
            rows = [records.pop(name) for name in names if name in records]
            if rows:
                with formatter.section(heading):
                    formatter.write_dl(rows)


class _RunCommand(_SectionedCommand):
    sections = (
        ("Target: the VM and where it goes", ("vm", "source", "destination", "targets")),
        ("Hosts and configuration", ("config_path", "hypervisor", "lab", "lab_config", "seed")),
        (
            "Probes",
            (
                *("interval_ms", "poll_ms", "guest_agent"),
                *("agent_listen", "agent_wait", "agent_interval"),
                *("tcp_connect", "witnesses"),
            ),
        ),
        (
            "Migration",
            ("include_storage", "destination_storage_path", "timeout_s", "settle_s"),
        ),
        (
            "QEMU",
            ("downtime_limit_ms", "max_bandwidth_mib_s", "auto_converge", "verify_memory"),
        ),
        ("Session: several migrations", ("repeat", "ping_pong")),
        ("Output", ("out", "labels", "as_json")),
    )


class _ReportCommand(click.Command):
    """``--baseline`` takes every path after it up to the next option (or ``--``), so an
    unquoted glob the shell expanded (``--baseline runs/*``) stays on the baseline side."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _spread_option(args, "--baseline"))


def _spread_option(args: list[str], option: str) -> list[str]:
    """``option A B C`` -> ``option A option B option C``, up to the next option or ``--``."""
    out: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        index += 1
        if token == "--":
            out += [token, *args[index:]]
            break
        if token != option:
            out.append(token)
            continue
        values = []
        while index < len(args) and not args[index].startswith("-"):
            values.append(args[index])
            index += 1
        out += [item for value in values for item in (option, value)] if values else [token]
    return out


@click.group(
    cls=_MeasureGroup,
    epilog=exitcodes.EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="measure")
def main() -> None:
    """Measure how long a VM is unreachable while it is live-migrated."""


# -- measure run -------------------------------------------------------------


@main.command(cls=_RunCommand, epilog=exitcodes.RUN_EPILOG)
@click.option(
    "--vm",
    default=None,
    callback=_parse_vm,
    help="VM to migrate [default: from the config, HVSW10Home].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration [default: ./measure.toml if present].",
)
@click.option("--lab", is_flag=True, help="Measure the emulated lab, whatever is configured.")
@click.option(
    "--hypervisor",
    type=click.Choice(["hyperv", "qemu"]),
    default=None,
    help="Hyper-V over PowerShell remoting, or QEMU over QMP [default: from the config, hyperv].",
)
@click.option(
    "--downtime-limit-ms",
    type=click.IntRange(min=1),
    default=None,
    help="QEMU: migrate-set-parameters downtime-limit.",
)
@click.option(
    "--max-bandwidth-mib-s",
    type=click.FloatRange(min=1),
    default=None,
    help="QEMU: migrate-set-parameters max-bandwidth.",
)
@click.option(
    "--auto-converge",
    is_flag=True,
    default=None,
    help="QEMU: throttle a guest that dirties memory faster than it can be sent.",
)
@click.option(
    "--verify-memory",
    is_flag=True,
    default=None,
    help="QEMU: start the destination paused, compare guest RAM on both sides, then run.",
)
@click.option(
    "--lab-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="lab.toml for a lab started for this run (timing, faults).",
)
@click.option("--seed", type=int, default=None, help="Seed of a lab started for this run.")
@click.option(
    "--auth",
    type=click.Choice(["kerberos", "negotiate", "ntlm", "credssp", "basic"]),
    default=None,
    help="Authentication for every host [default: from the config; the lab: basic].",
)
@click.option("--source", default=None, help="Host that holds the VM [default: found].")
@click.option("--dest", "destination", default=None, help="Destination host [default: the other].")
@click.option(
    "--target",
    "targets",
    multiple=True,
    callback=_parse_targets,
    help="Guest address to ping; repeat for several [default: from the config].",
)
@click.option(
    "--interval-ms",
    type=float,
    default=None,
    callback=_parse_interval,
    help="ICMP probe interval [default: 10].",
)
@click.option(
    "--poll-ms",
    type=click.FloatRange(min=10),
    default=None,
    help="Host-state poll interval per host [default: 100].",
)
@click.option(
    "--include-storage",
    is_flag=True,
    default=None,
    help="Move-VM -IncludeStorage (shared-nothing migration).",
)
@click.option("--destination-storage-path", default=None, help="Move-VM -DestinationStoragePath.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds Move-VM may take before it is stopped [default: 600].",
)
@click.option(
    "--settle",
    "settle_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds to keep probing after Move-VM returns [default: 10].",
)
@click.option(
    "--harvest-timeout",
    "harvest_timeout_s",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds each host has for the clocks and events after the migration [default: 20; "
    "5 after Ctrl-C].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Parent folder of the run folder.",
)
@click.option(
    "--guest-agent",
    is_flag=True,
    help="Receive frames and heartbeats from the in-guest agent (the lab starts it itself).",
)
@click.option(
    "--agent-listen",
    default=None,
    metavar="HOST:PORT",
    help="Where the agent's receiver listens [default: 0.0.0.0:47600; the lab: its link].",
)
@click.option(
    "--agent-wait",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the agent's first frame and heartbeat.",
)
@click.option(
    "--tcp-connect",
    type=click.IntRange(1, 65535),
    multiple=True,
    metavar="PORT",
    help="Connect to this TCP port of the guest every 50 ms (repeatable; e.g. 3389, "
    "Remote Desktop) [default: [probes.tcp_connect] ports].",
)
@click.option(
    "--witnesses/--no-witnesses",
    default=None,
    help="With --guest-agent: the agent's direction probe and TCP stream (what an "
    "application's connection feels) [default: [probes.witnesses] enabled].",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Migrations to run; more than one makes a session folder with per-direction stats.",
)
@click.option(
    "--ping-pong",
    is_flag=True,
    help="With --repeat: each migration goes back the way the previous one came.",
)
@click.option(
    "--agent-interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between the lab agent's screen captures.",
)
@click.option("--label", "labels", multiple=True, callback=_parse_labels, help=LABEL_HELP)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary document as JSON, with run_dir (a session: session.json).",
)
def run(
    vm: str | None,
    config_path: Path | None,
    lab: bool,
    hypervisor: str | None,
    downtime_limit_ms: int | None,
    max_bandwidth_mib_s: float | None,
    auto_converge: bool | None,
    verify_memory: bool | None,
    lab_config: Path | None,
    seed: int | None,
    auth: str | None,
    source: str | None,
    destination: str | None,
    targets: list[str],
    interval_ms: float | None,
    poll_ms: float | None,
    include_storage: bool | None,
    destination_storage_path: str | None,
    timeout_s: float | None,
    settle_s: float | None,
    harvest_timeout_s: float | None,
    guest_agent: bool,
    agent_listen: str | None,
    agent_wait: float,
    agent_interval: float,
    tcp_connect: tuple[int, ...],
    witnesses: bool | None,
    repeat: int,
    ping_pong: bool,
    out: Path,
    labels: dict[str, str],
    as_json: bool,
) -> None:
    """Live-migrate the VM with Move-VM on its source host and measure the blackout.

    With no hosts configured (or --lab), the emulated lab is measured: the one
    started by `measure lab up`, or one started for this run. Passwords come
    from the environment variable each host names (password_env, default
    MEASURE_PASSWORD), or a prompt on a terminal; never from the command line.
    With auth = kerberos and no password, the ticket cache (after kinit) is used.
    """
    from .commands import run as run_command
    from .commands.session import ping_pong_shortfall
    from .config import ConfigError, apply_overrides, load_config

    try:
        config = apply_overrides(
            load_config(config_path),
            vm=vm,
            source=source,
            destination=destination,
            guest_addresses=targets or None,
            target_names=click.get_current_context().meta.get("target_names") or None,
            icmp_interval_s=None if interval_ms is None else interval_ms / 1000,
            host_poll_interval_s=None if poll_ms is None else poll_ms / 1000,
            include_storage=include_storage,
            destination_storage_path=destination_storage_path,
            timeout_s=timeout_s,
            settle_s=settle_s,
            harvest_timeout_s=harvest_timeout_s,
            hypervisor=hypervisor,
            downtime_limit_ms=downtime_limit_ms,
            max_bandwidth_mib_s=max_bandwidth_mib_s,
            auto_converge=auto_converge,
            verify_memory=verify_memory,
            auth=auth,
            tcp_connect_ports=tcp_connect or None,
            witnesses=witnesses,
        )
    except ConfigError as exc:
        _fail(str(exc))
    try:
        request = run_command.RunRequest(
            config=config,
            out=out,
            lab=run_command.LabTarget(lab_config=lab_config, seed=seed, vm=vm)
            if lab or lab_config is not None or seed is not None
            else None,
            guest_agent=guest_agent,
            agent=run_command.AgentSettings(
                listen=None if agent_listen is None else _parse_listen(agent_listen),
                wait_s=agent_wait,
                interval_s=agent_interval,
            ),
            repeat=repeat,
            ping_pong=ping_pong,
            labels=labels,
            command=tuple(sys.argv),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if ping_pong and (shortfall := ping_pong_shortfall(repeat)):
        click.echo(f"measure: warning: {shortfall}", err=True)
    terminal = _Terminal()
    measured = run_command.run(
        request,
        progress=terminal.run_progress,
        on_run_start=terminal.new_run if repeat > 1 else None,
        password_prompt=_prompt_password if sys.stdin.isatty() else None,
    )
    if measured.error is not None:
        if measured.outcome is run_command.Outcome.PREFLIGHT_FAILED:
            terminal.discard()  # only the one line saying what failed
        else:
            terminal.close()
        _fail(measured.error, measured.exit_code)
    if measured.session is not None:
        terminal.close()
        _print_session(measured.session, as_json)
        sys.exit(measured.exit_code)
    (result,) = measured.runs
    if measured.outcome is run_command.Outcome.PREFLIGHT_FAILED:
        terminal.discard()  # only the one line saying what failed
        _fail(
            f"{result.message or 'preflight failed'} (run folder {result.run_dir})",
            measured.exit_code,
        )
    terminal.close()
    _print_summary(result.summary, as_json, result.run_dir)
    if result.message:
        click.echo(f"measure: {result.status}: {result.message}", err=True)
    click.echo(f"run folder: {result.run_dir}", err=True)
    sys.exit(measured.exit_code)


def _prompt_password(host: HostConfig) -> str:
    """A host's password, asked on the terminal (never echoed)."""
    password: str = click.prompt(
        f"Password for {host.username or 'the current user'} on {host.name}",
        hide_input=True,
        err=True,
    )
    return password


def _print_session(result: SessionResult, as_json: bool) -> None:
    if as_json:
        folders = {r.run_dir.name: str(r.run_dir) for r in result.runs}
        document = {
            **result.document,
            "session_dir": str(result.session_dir),
            "runs": [
                {**entry, "run_dir": folders.get(entry.get("run_id", ""))}
                for entry in result.document["runs"]
            ],
        }
        click.echo(json.dumps(document, indent=2))
        click.echo(f"session folder: {result.session_dir}", err=True)
        return
    click.echo(f"session {result.document['session_id']}  {result.document['status']}")
    for run in result.document["runs"]:
        if "run_id" not in run:
            click.echo(f"  #{run['index'] + 1}  preflight failed: {run['preflight_error']}")
            continue
        blackout = (
            next((r.summary or {} for r in result.runs if r.run_dir.name == run["run_id"]), {}).get(
                "blackout"
            )
            or {}
        )
        figure = (
            f"blackout {blackout.get('lower_ms')}..{blackout.get('upper_ms')} ms"
            if blackout
            else "no blackout"
        )
        click.echo(
            f"  #{run['index'] + 1}  {run['source']} -> {run['destination']}  "
            f"{run['status']}  {figure}  ({run['run_id']})"
        )
    click.echo("")
    click.echo(
        "direction                                  runs  median ms  p95 ms   max ms  (upper bound)"
    )
    for stats in result.document["directions"]:
        upper = stats["upper"]

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        click.echo(
            f"{stats['direction']:42} {upper['n']:4}  {fmt(upper['median_ms']):>9}  "
            f"{fmt(upper['p95_ms']):>6}  {fmt(upper['max_ms']):>7}"
        )
    click.echo(f"session folder: {result.session_dir}", err=True)


# -- measure watch -----------------------------------------------------------


@main.command(epilog=exitcodes.WATCH_EPILOG)
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    callback=_parse_targets,
    help="Guest address (IPv4 or IPv6) or host name to ping; repeat for several targets.",
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
@click.option(
    "--guest-agent",
    is_flag=True,
    help="Also receive frames and heartbeats from the in-guest agent (prints how to start it).",
)
@click.option(
    "--agent-listen",
    default="0.0.0.0:47600",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the agent's receiver listens.",
)
@click.option(
    "--agent-wait",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the agent's first frame and heartbeat.",
)
@click.option(
    "--tcp-connect",
    type=click.IntRange(1, 65535),
    multiple=True,
    metavar="PORT",
    help="Connect to this TCP port of the guest every 50 ms (repeatable; e.g. 3389).",
)
@click.option(
    "--witnesses",
    is_flag=True,
    help="With --guest-agent: the agent's direction probe and TCP stream (start the agent "
    "with --witness-port 47601).",
)
@click.option("--label", "labels", multiple=True, callback=_parse_labels, help=LABEL_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary document as JSON, with run_dir."
)
@click.pass_context
def watch(
    ctx: click.Context,
    targets: list[str],
    interval_ms: float,
    timeout_ms: float | None,
    duration: float | None,
    guest_agent: bool,
    agent_listen: str,
    agent_wait: float,
    tcp_connect: tuple[int, ...],
    witnesses: bool,
    out: Path,
    labels: dict[str, str],
    as_json: bool,
) -> None:
    """Ping the guest while you migrate it by hand, then analyse the blackout.

    The watch ends after --duration seconds or when you press Ctrl-C (or send
    SIGTERM): either way the run is complete and counts in reports.
    """
    from migration_blackout.probes.icmp import IcmpPermissionError
    from migration_blackout.runformat import RunStatus

    from .commands import watch as watch_command
    from .config import ProbeConfig
    from .guestagent import GuestAgentSetup, ProbesNotReadyError, address_towards
    from .runwriter import OutputFolderError, describe_error

    if witnesses and not guest_agent:
        raise click.UsageError("--witnesses needs --guest-agent (the agent answers them)")
    probes = ProbeConfig(tcp_connect_ports=tuple(tcp_connect), witnesses=witnesses)
    forget_secrets()  # no password is read here: no child inherits one
    terminal = _Terminal()
    setup = None
    if guest_agent:
        listen_host, listen_port = _parse_listen(agent_listen)
        setup = GuestAgentSetup(
            listen_host=listen_host,
            listen_port=listen_port,
            contact_deadline_s=agent_wait,
            advertise_host=address_towards(targets[0])
            if listen_host in ("0.0.0.0", "::")
            else None,
            witness_port=probes.witness_port if witnesses else None,
        )

    def announce(message: str) -> None:
        terminal.close()
        click.echo(message, err=True)

    try:
        result = watch_command.run(
            guest_agent=setup,
            announce=announce,
            targets=targets,
            interval_s=interval_ms / 1000.0,
            timeout_s=None if timeout_ms is None else timeout_ms / 1000.0,
            duration_s=duration,
            out=out,
            command=sys.argv,
            progress=terminal.watch_progress,
            labels=labels,
            extra_config={"target_names": ctx.meta.get("target_names") or {}},
            witness_probes=probes,
        )
    except (OutputFolderError, IcmpPermissionError) as exc:
        terminal.close()
        _fail(str(exc))
    except ProbesNotReadyError as exc:
        terminal.close()
        _fail(str(exc), exitcodes.MIGRATION_FAILED)
    except ValueError as exc:
        terminal.close()
        _fail(str(exc))
    except OSError as exc:  # the run folder could not even be finalised (a full disk)
        terminal.close()
        _fail(describe_error(exc), exitcodes.MIGRATION_FAILED)
    terminal.close()
    _print_summary(result.summary, as_json, result.run_dir)
    if result.error:
        click.echo(f"measure: {result.status}: {result.error}", err=True)
    click.echo(f"run folder: {result.run_dir}", err=True)
    if result.status is RunStatus.ABORTED:
        sys.exit(exitcodes.INTERRUPTED)
    if result.status is RunStatus.FAILED:
        sys.exit(exitcodes.MIGRATION_FAILED)


# -- measure analyze ----------------------------------------------------------


@main.command(epilog=exitcodes.ANALYZE_EPILOG)
@click.argument(
    "paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary document (derived/summary.json, with run_dir) instead of a "
    "table; a JSON list of them unless PATH is one run folder.",
)
def analyze(paths: tuple[Path, ...], as_json: bool) -> None:
    """(Re)build derived/ from raw/ in each run folder and show the summaries.

    PATH is a run folder, a session folder (measure run --repeat), a folder
    holding run folders, a glob ('results/*') or a text file listing any of
    these, one per line.
    """
    from migration_blackout.analysis.report.runs import is_run_folder
    from migration_blackout.runformat import RunFormatError

    from .commands import analyze as analyze_command

    try:
        analysed = analyze_command.run_many(paths=list(paths))
    except RunFormatError as exc:
        _fail(str(exc))
    good = [a for a in analysed if a.summary is not None]
    if as_json:  # the table shows them; a script reading the JSON gets them on stderr too
        for entry in good:
            for warning in (entry.summary or {}).get("warnings", []):
                click.echo(f"measure: warning: {entry.run_dir}: {warning}", err=True)
        documents = [{**a.summary, "run_dir": str(a.run_dir)} for a in good if a.summary]
        one = len(paths) == 1 and is_run_folder(paths[0])
        if documents:
            click.echo(json.dumps(documents[0] if one else documents, indent=2))
    else:
        for index, entry in enumerate(good):
            if index:
                click.echo("")
            _print_summary(entry.summary, False, entry.run_dir)
    failed = [a for a in analysed if a.error is not None]
    for entry in failed:
        click.echo(f"measure: error: {entry.error}", err=True)
    if failed:
        sys.exit(exitcodes.USAGE)


# -- measure report -------------------------------------------------------------


@main.command(cls=_ReportCommand, epilog=exitcodes.REPORT_EPILOG)
@click.argument("run_dirs", metavar="PATH...", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--baseline",
    "baseline_dirs",
    multiple=True,
    metavar="PATH...",
    type=click.Path(path_type=Path),
    help="The baseline: every path after it up to the next option (or --), each a run "
    "folder, session, parent folder, glob or list file.",
)
@click.option(
    "--group-by",
    "group_by",
    multiple=True,
    metavar="LABEL",
    help="Also group (and compare) runs by this label's values; repeat for several.",
)
@click.option(
    "--html",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML report here.",
)
@click.option(
    "--markdown",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write a Markdown summary here (- for standard output).",
)
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write JUnit XML here, one test case per threshold.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report as a JSON document instead of the table.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take [thresholds] from this measure.toml.",
)
@click.option(
    "--max-blackout-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Fail a run whose blackout upper bound exceeds this.",
)
@click.option(
    "--max-timeouts",
    type=click.IntRange(min=0),
    default=None,
    help="Fail a run with more timeouts than this inside its blackout.",
)
@click.option(
    "--max-regression-pct",
    type=click.FloatRange(min=0),
    default=None,
    help="Median rise over the baseline that counts as a regression [default: 10].",
)
@click.option(
    "--max-tcp-stall-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Fail a run whose TCP stream stalled longer than this (upper bound; --witnesses runs).",
)
def report(
    run_dirs: tuple[Path, ...],
    baseline_dirs: tuple[Path, ...],
    group_by: tuple[str, ...],
    html: Path | None,
    markdown: Path | None,
    junit: Path | None,
    as_json: bool,
    config_path: Path | None,
    max_blackout_ms: float | None,
    max_timeouts: int | None,
    max_regression_pct: float | None,
    max_tcp_stall_ms: float | None,
) -> None:
    """Compare runs (against a baseline) and judge them against thresholds.

    Prints the comparison table (--json: the same as a document) and writes
    the HTML, Markdown and JUnit outputs asked for. PATH is a run folder, a
    session folder (measure run --repeat), a folder holding run folders, a
    glob ('results/*') or a text file listing any of these, one per line:

    \b
      measure report results/nightly-*/ --baseline results/release-1.2/
      measure report --baseline base/* -- new/*
    """
    from migration_blackout.runformat import Thresholds

    from .commands import report as report_command
    from .config import ConfigError, load_config

    try:
        configured = load_config(config_path).thresholds
    except ConfigError as exc:
        _fail(str(exc))
    try:
        thresholds = Thresholds(
            max_blackout_ms=max_blackout_ms
            if max_blackout_ms is not None
            else configured.max_blackout_ms,
            max_timeouts=max_timeouts if max_timeouts is not None else configured.max_timeouts,
            max_regression_pct=max_regression_pct
            if max_regression_pct is not None
            else configured.max_regression_pct,
            max_tcp_stall_ms=max_tcp_stall_ms
            if max_tcp_stall_ms is not None
            else configured.max_tcp_stall_ms,
        )
    except ValueError as exc:
        _fail(str(exc))
    if not run_dirs:
        raise click.UsageError(
            "no run folder given: put the runs before --baseline, or end the baseline "
            "with -- (measure report --baseline BASE... -- RUN...)"
        )
    to_stdout = markdown is not None and str(markdown) == "-"
    result = report_command.run(
        run_dirs=list(run_dirs),
        baseline_dirs=list(baseline_dirs),
        html=html,
        markdown=None if to_stdout else markdown,
        junit=junit,
        thresholds=thresholds,
        group_by=group_by,
    )
    if result.error:
        _fail(result.error, result.exit_code)
    if to_stdout:
        click.echo(result.markdown, nl=False)
    elif as_json:
        click.echo(result.document, nl=False)
    else:
        click.echo(result.text, nl=False)
    for path in result.written:
        click.echo(f"wrote {path}", err=True)
    sys.exit(result.exit_code)


# -- measure import -------------------------------------------------------------


@main.group(name="import")
def import_() -> None:
    """Turn logs of other tools into run folders that `measure analyze` reads."""


@import_.command("ping-log", epilog=exitcodes.IMPORT_EPILOG)
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["windows", "iputils", "fping"]),
    required=True,
    help="windows: ping.exe lines with a timestamp prefix; iputils: ping -D; fping: fping -D -l.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Parent folder of the new run folder.",
)
@click.option("--target", default=None, help="The pinged address, when the log does not say.")
@click.option(
    "--timezone",
    default=None,
    help="Zone of local timestamps: +09:00, UTC, Asia/Tokyo [default: this machine's].",
)
@click.option(
    "--date",
    "start_date",
    default=None,
    metavar="YYYY-MM-DD",
    help="Date for logs stamped with the time of day only.",
)
@click.option(
    "--interval-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The ping interval (ping -i, fping -p) when the log does not show it.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary document as JSON, with run_dir."
)
def import_ping_log(
    file: Path,
    fmt: str,
    out: Path,
    target: str | None,
    timezone: str | None,
    start_date: str | None,
    interval_ms: float | None,
    as_json: bool,
) -> None:
    """Import a ping log (Windows, in English or Japanese; iputils; fping)."""
    from migration_blackout.harness.importers import ImportFormatError

    from .commands import analyze as analyze_command
    from .commands import import_ping_log as import_command
    from .runwriter import OutputFolderError

    try:
        run_dir = import_command.run(
            file=file,
            fmt=fmt,
            out=out,
            command=sys.argv,
            target=target,
            timezone=timezone,
            start_date=start_date,
            interval_s=None if interval_ms is None else interval_ms / 1000,
        )
    except (ImportFormatError, OutputFolderError) as exc:
        _fail(str(exc))
    _print_summary(analyze_command.run(run_dir=run_dir), as_json, run_dir)
    click.echo(f"run folder: {run_dir}", err=True)


# -- measure quickstart ----------------------------------------------------------


@main.command(epilog=exitcodes.QUICKSTART_EPILOG)
@click.argument(
    "directory", default=".", type=click.Path(file_okay=False, path_type=Path), required=False
)
def quickstart(directory: Path) -> None:
    """Write the commented example configuration (measure.example.toml) and the two
    notebooks (notebooks/) into DIRECTORY [default: here]; files already there are kept.

    For an installed package, where there is no checkout to copy them from.
    """
    from .commands import quickstart as quickstart_command

    try:
        files = quickstart_command.run(directory=directory)
    except OSError as exc:
        _fail(f"cannot write into {directory}: {exc.strerror or exc}")
    for entry in files:
        click.echo(f"{'wrote' if entry.written else 'kept '} {entry.path}")


# -- measure lab ---------------------------------------------------------------


class _LabGroup(click.Group):
    """``measure lab``: the commands the lab plug-in hands over (``harness.labseam``),
    loaded when they are asked for. Without the lab: one line, exit 2."""

    def _lab_commands(self) -> click.Group:
        from .labseam import LabUnavailableError, load_lab

        try:
            return load_lab().commands()
        except LabUnavailableError as exc:
            _fail(str(exc))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not ctx.resilient_parsing:  # completion asks quietly (list_commands)
            self._lab_commands()
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .labseam import LabUnavailableError, load_lab

        try:
            return load_lab().commands().list_commands(ctx)
        except LabUnavailableError:
            return []

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._lab_commands().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        from .labseam import LabError

        try:
            return super().invoke(ctx)
        except (LabError, PermissionError) as exc:
            _fail(str(exc))


@main.group(cls=_LabGroup)
def lab() -> None:
    """The emulated Hyper-V lab: two hosts speaking WinRM/PSRP and a guest in a
    network namespace (needs root; the [lab] extra)."""


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(prog_name="measure")

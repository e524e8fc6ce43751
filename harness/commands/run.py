"""``measure run``: live-migrate a VM and measure its blackout, once or as a
session of ``repeat`` migrations.

:func:`run` is what the CLI calls, and what a notebook or a CI script can
call: a :class:`RunRequest` says what to measure (the configuration, the
emulated lab or real hosts, the guest agent, how many migrations, where the
folders go), and the :class:`Measurement` it returns says how it ended (an
:class:`Outcome` with its exit code) and holds the runs it made. Nothing is
printed; a request that cannot work is an outcome too (``REFUSED``, with one
line saying why), never an exception.

Where the measurement happens is decided here, once for every kind of host:
the emulated lab (plugged in through ``harness.labseam``) when it is asked
for or nothing real is configured, a user's two QEMUs (``[qemu]``), or
Hyper-V hosts over PowerShell remoting with their passwords. The guest
agent's set-up (and the port its witnesses answer on) is made by one
function for real Hyper-V hosts and real QEMUs alike. One migration is
``harness.measurement``; a session ``harness.commands.session``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from migration_blackout.probes.environment import forget_secrets

from ..backends import PreflightError, PreparedRun
from ..config import HostConfig, RunConfig, password_from_env, password_from_keyring
from ..deadlines import Interrupt
from ..guestagent import GuestAgentSetup, address_towards
from ..labseam import LabError, LabRequest, load_lab
from ..measurement import (
    Outcome,
    ProgressCallback,
    RunEnvironment,
    RunResult,
    measure_run,
    with_environment,
)
from ..runwriter import OutputFolderError, describe_error
from .session import SessionResult, measure_session

__all__ = [
    "AgentSettings",
    "LabTarget",
    "Measurement",
    "Outcome",
    "PasswordPrompt",
    "RequestRefused",
    "RunRequest",
    "prepare",
    "run",
]

# Where the guest agent's receiver listens on a real network (the lab: its link).
DEFAULT_AGENT_LISTEN = ("0.0.0.0", 47600)


@dataclass(frozen=True)
class LabTarget:
    """The emulated lab, measured instead of real hosts: the one ``measure lab
    up`` started, or one started for the run when ``lab_config`` (a lab.toml:
    timing, faults) or ``seed`` is given. ``vm`` names another VM than the
    lab's own."""

    lab_config: Path | None = None
    seed: int | None = None
    vm: str | None = None


@dataclass(frozen=True)
class AgentSettings:
    """The in-guest agent's receiver (``--agent-listen``, ``--agent-wait``,
    ``--agent-interval``)."""

    listen: tuple[str, int] | None = None  # host, port [default: 0.0.0.0:47600; the lab: its link]
    wait_s: float = 60.0  # for the agent's first frame and heartbeat
    interval_s: float = 1.0  # between the lab agent's screen captures


@dataclass(frozen=True)
class RunRequest:
    """What to measure. ``config`` is the configuration with the flags applied
    (``config.load_config`` then ``config.apply_overrides``): the VM, the
    hosts or QEMUs, the hypervisor, the probes and witnesses, the
    migration's limits. ``lab``: measure the emulated lab (also when
    ``config`` names nothing real). ``guest_agent``: receive the in-guest
    agent's frames and heartbeats (the QEMU lab's guest sends its own).
    ``repeat`` > 1 makes a session folder inside ``out`` (``ping_pong``:
    each migration goes back the way the previous one came). ``labels`` go
    to every manifest; ``command`` is recorded in it as what was run.

    A request that cannot be measured is refused when it is made
    (``ValueError``, one line naming the flag).
    """

    config: RunConfig
    out: Path = Path("results")
    lab: LabTarget | None = None
    guest_agent: bool = False
    agent: AgentSettings = field(default_factory=AgentSettings)
    repeat: int = 1
    ping_pong: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"--repeat {self.repeat}: at least one migration")
        if self.ping_pong and self.repeat == 1:
            raise ValueError("--ping-pong needs --repeat N (N >= 2 migrations)")
        qemu_lab = self.config.hypervisor == "qemu" and self.uses_lab
        if self.config.probes.witnesses and not self.guest_agent and not qemu_lab:
            # (The QEMU lab's guest answers them itself.)
            raise ValueError("--witnesses needs --guest-agent (the agent answers them)")

    @property
    def uses_lab(self) -> bool:
        return self.lab is not None or self.config.uses_lab


@dataclass(frozen=True)
class Measurement:
    """What :func:`run` returns: how it ended, and the runs it made in order
    (each a finalised run folder). ``session``: the session folder and its
    ``session.json`` when ``repeat`` > 1. ``error``: one line when no run
    folder says why it ended (a refused request, a preflight that failed
    before the folder existed, a folder that could not be finalised)."""

    outcome: Outcome
    runs: tuple[RunResult, ...] = ()
    session: SessionResult | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


# Asked for a host's password when neither its environment variable nor the
# keyring has one; None: there is none (the CLI prompts on a terminal only).
PasswordPrompt = Callable[[HostConfig], str | None]


class RequestRefused(Exception):
    """The request cannot be measured (a user's mistake); the message says why."""


def run(
    request: RunRequest,
    *,
    progress: ProgressCallback | None = None,
    on_run_start: Callable[[int, int], None] | None = None,
    password_prompt: PasswordPrompt | None = None,
) -> Measurement:
    """Measure what ``request`` asks, synchronously; never prints, never exits.

    ``progress`` gets every phase and tick of each run; ``on_run_start(number,
    repeat)`` is called before each migration of a session.
    ``password_prompt`` is asked for a Hyper-V host's password that neither
    its environment variable (``password_env``) nor the keyring holds
    (Kerberos without a password uses the ticket cache). Passwords are read
    once: the variables are then removed from this process's environment, so
    that nothing the run starts inherits one.

    SIGINT and SIGTERM are handled for the whole measurement (the handlers
    before it are restored afterwards): the run in progress ends ``aborted``
    (``Outcome.INTERRUPTED``).
    """
    try:
        with prepare(request, password_prompt=password_prompt) as (target, environment):
            return _measure(request, target, environment, progress, on_run_start)
    except (RequestRefused, LabError, PermissionError, OutputFolderError) as exc:
        return Measurement(Outcome.REFUSED, error=str(exc))
    except PreflightError as exc:  # before the run folder exists (no guest address)
        return Measurement(Outcome.PREFLIGHT_FAILED, error=str(exc))
    except OSError as exc:  # the run folder could not even be finalised (a full disk)
        return Measurement(Outcome.MIGRATION_FAILED, error=describe_error(exc))


def _measure(
    request: RunRequest,
    target: PreparedRun,
    environment: RunEnvironment | None,
    progress: ProgressCallback | None,
    on_run_start: Callable[[int, int], None] | None,
) -> Measurement:
    """One run folder, or (``repeat`` > 1) a session folder of them."""

    async def measure(interrupt: Interrupt) -> Measurement:
        if request.repeat == 1:
            result = await measure_run(
                target=target,
                environment=environment,
                out=request.out,
                command=request.command,
                interrupt=interrupt,
                progress=progress,
                labels=request.labels,
            )
            return Measurement(result.outcome, runs=(result,))
        session = await measure_session(
            target=target,
            environment=environment,
            repeat=request.repeat,
            ping_pong=request.ping_pong,
            out=request.out,
            command=request.command,
            interrupt=interrupt,
            progress=progress,
            on_run_start=on_run_start,
            labels=request.labels,
        )
        return Measurement(session.outcome, runs=session.runs, session=session)

    return asyncio.run(with_environment(measure, environment))


@contextlib.contextmanager
def prepare(
    request: RunRequest, *, password_prompt: PasswordPrompt | None = None
) -> Iterator[tuple[PreparedRun, RunEnvironment | None]]:
    """What the runs of ``request`` measure, and the lab they run in (None: real
    hosts), while the ``with`` block lasts: the one place that decides it for
    the emulated lab, a user's QEMUs and Hyper-V hosts. Raises LabError, or
    :class:`RequestRefused` (a password missing). Nothing is started: a lab's
    environment starts when the first run prepares it, and the caller closes it."""
    config = request.config
    witness_port = config.probes.witness_port if config.probes.witnesses else None
    if request.uses_lab:
        forget_secrets()  # no Hyper-V password is read: nothing the run starts inherits one
        lab = request.lab or LabTarget()
        # The lab plugs in from above (harness.labseam); a lab.toml that cannot
        # work, or no lab installed, is one line before anything starts.
        environment = load_lab().environment_for_run(
            LabRequest(
                config=config,
                lab_config=lab.lab_config,
                seed=lab.seed,
                vm=lab.vm,
                guest_agent=request.guest_agent,
                agent_listen=request.agent.listen,
                agent_wait_s=request.agent.wait_s,
                agent_interval_s=request.agent.interval_s,
                witness_port=witness_port,
            )
        )
        yield PreparedRun(config=config), environment
        return
    agent = _agent_setup(request, witness_port)
    if config.hypervisor == "qemu":
        from ..backends.qemu import configured_run

        forget_secrets()
        with configured_run(config) as target:
            yield replace(target, guest_agent=agent), None
        return
    passwords = _passwords(config, password_prompt)
    yield PreparedRun(config=config, passwords=passwords, guest_agent=agent), None


def _agent_setup(request: RunRequest, witness_port: int | None) -> GuestAgentSetup | None:
    """The receiver of an agent the user starts in the guest (real Hyper-V hosts
    and real QEMUs alike); the announced command names ``witness_port``."""
    if not request.guest_agent:
        return None
    host, port = request.agent.listen or DEFAULT_AGENT_LISTEN
    addresses = request.config.guest_addresses
    return GuestAgentSetup(
        listen_host=host,
        listen_port=port,
        contact_deadline_s=request.agent.wait_s,
        interval_s=request.agent.interval_s,
        witness_port=witness_port,
        advertise_host=address_towards(addresses[0])
        if host in ("0.0.0.0", "::") and addresses
        else None,
    )


def _passwords(
    config: RunConfig, password_prompt: PasswordPrompt | None
) -> Mapping[str, str | None]:
    """Each host's password: its environment variable, the keyring, or the
    prompt; then no variable of this process holds one any more."""
    passwords: dict[str, str | None] = {}
    for host in config.hosts:
        password = password_from_env(host) or password_from_keyring(host)
        # Kerberos without a password uses the ticket cache (kinit).
        if password is None and password_prompt is not None and host.auth != "kerberos":
            password = password_prompt(host)
        if password is None and host.auth != "kerberos":
            raise RequestRefused(
                f"{host.name}: no password: set the environment variable {host.password_env}"
            )
        passwords[host.name] = password
    for host in config.hosts:
        os.environ.pop(host.password_env, None)
    forget_secrets()
    return passwords

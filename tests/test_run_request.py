"""``harness.commands.run``: what a request measures, decided in one place, and the
requests that cannot work, refused as values before anything starts (in-process,
no host and no lab needed)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_netns import wait_until

from migration_blackout.harness.commands.run import (
    AgentSettings,
    LabTarget,
    Outcome,
    RunRequest,
    prepare,
    run,
)
from migration_blackout.harness.config import HostConfig, RunConfig, parse_config
from migration_blackout.harness.deadlines import use_abandonable_threads

GUEST = "198.18.0.9"
WITNESSES = {"witnesses": {"enabled": True, "port": 47700}}


@pytest.fixture
def environ_restored() -> Iterator[None]:
    """The product removes password variables (and every secret-looking one) from
    its process once read; a test that runs it in-process gives them back."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def hyperv_config(**probes: object) -> RunConfig:
    return parse_config(
        {
            "guest": {"addresses": [GUEST]},
            "probes": probes,
            "hosts": [
                {"name": "one", "address": "198.18.0.1", "password_env": "Q14_ONE_PW"},
                {"name": "two", "address": "198.18.0.2", "password_env": "Q14_TWO_PW"},
            ],
        },
        origin="measure.toml",
    )


def qemu_config(tmp_path: Path, **probes: object) -> RunConfig:
    return parse_config(
        {
            "hypervisor": "qemu",
            "guest": {"addresses": [GUEST]},
            "probes": probes,
            "qemu": {
                "sides": [
                    {"name": "left", "qmp": str(tmp_path / "left.qmp")},
                    {"name": "right", "qmp": str(tmp_path / "right.qmp")},
                ]
            },
        },
        origin="measure.toml",
    )


@pytest.mark.usefixtures("environ_restored")
def test_real_qemus_get_the_guest_agent_and_its_witness_port_as_hyperv_hosts_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--guest-agent --witnesses`` against a user's own QEMUs: the agent's receiver
    and the port its witnesses answer on come from the same code as for Hyper-V
    hosts (before, the QEMU path passed no agent and no witness port)."""
    monkeypatch.setenv("Q14_ONE_PW", "secret-one")
    monkeypatch.setenv("Q14_TWO_PW", "secret-two")
    agent = AgentSettings(listen=("127.0.0.1", 0), wait_s=5.0)
    agents = {}
    for config in (qemu_config(tmp_path, **WITNESSES), hyperv_config(**WITNESSES)):
        request = RunRequest(config=config, guest_agent=True, agent=agent)
        with prepare(request) as (target, environment):
            assert environment is None
            assert target.config is config
            agents[config.hypervisor] = target.guest_agent
            if config.hypervisor == "qemu":
                assert target.backend is not None and target.backend.kind == "qemu"
            else:
                assert target.backend is None  # Hyper-V over PSRP with the passwords
                assert target.passwords == {"one": "secret-one", "two": "secret-two"}
    assert agents["qemu"] is not None and agents["qemu"].witness_port == 47700
    assert agents["qemu"] == agents["hyperv"]
    # Read once: nothing the run starts inherits a password.
    assert "Q14_ONE_PW" not in os.environ and "Q14_TWO_PW" not in os.environ


@pytest.mark.usefixtures("environ_restored")
def test_the_prompt_is_asked_for_a_password_no_variable_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("Q14_ONE_PW", "from-the-environment")
    monkeypatch.delenv("Q14_TWO_PW", raising=False)
    asked: list[str] = []

    def prompt(host: HostConfig) -> str:
        asked.append(host.name)
        return "typed"

    with prepare(RunRequest(config=hyperv_config()), password_prompt=prompt) as (target, _):
        assert target.passwords == {"one": "from-the-environment", "two": "typed"}
    assert asked == ["two"]


@pytest.mark.usefixtures("environ_restored")
def test_a_missing_password_is_refused_in_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("Q14_ONE_PW", raising=False)
    monkeypatch.delenv("Q14_TWO_PW", raising=False)
    out = tmp_path / "results"
    measured = run(RunRequest(config=hyperv_config(), out=out))
    assert measured.outcome is Outcome.REFUSED and measured.exit_code == 2
    assert measured.error == "one: no password: set the environment variable Q14_ONE_PW"
    assert measured.runs == () and measured.session is None
    assert not out.exists()


@pytest.mark.usefixtures("environ_restored")
def test_a_lab_toml_with_an_unknown_timing_key_is_refused_in_one_line(tmp_path: Path) -> None:
    lab_toml = tmp_path / "lab.toml"
    lab_toml.write_text("[timing]\nunlisted = 1.0\nblackout_sss = 2\n", encoding="utf-8")
    out = tmp_path / "results"
    measured = run(RunRequest(config=RunConfig(), lab=LabTarget(lab_config=lab_toml), out=out))
    assert measured.outcome is Outcome.REFUSED and measured.exit_code == 2
    assert measured.error is not None and "\n" not in measured.error
    assert measured.error.endswith("[timing]: unknown setting(s) blackout_sss")
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ping_pong": True}, "--ping-pong needs --repeat N"),
        ({"repeat": 0}, "at least one migration"),
        ({"config": hyperv_config(**WITNESSES)}, "--witnesses needs --guest-agent"),
    ],
)
def test_a_request_that_cannot_work_cannot_be_made(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunRequest(**{"config": hyperv_config(), **changes})


def test_the_qemu_lab_needs_no_agent_for_its_witnesses(tmp_path: Path) -> None:
    """Its guest answers them itself; a user's QEMU guest needs the agent."""
    config = parse_config({"hypervisor": "qemu", "probes": WITNESSES})
    assert config.uses_lab
    assert RunRequest(config=config).uses_lab
    with pytest.raises(ValueError, match="--witnesses needs --guest-agent"):
        RunRequest(config=qemu_config(tmp_path, **WITNESSES))


def test_a_finished_loop_keeps_no_idle_worker_and_an_abandoned_one_ends_with_its_call() -> None:
    """run() called from Python (a notebook) leaves no thread of its run: the
    loop's worker threads end when the loop shuts its executor down, not
    ``idle_s`` later; one still blocked (a hung host's call) is abandoned and
    ends when its call returns."""
    release = threading.Event()
    before = set(threading.enumerate())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        use_abandonable_threads(loop)
        await asyncio.to_thread(time.monotonic)  # its worker is idle afterwards
        loop.run_in_executor(None, release.wait)  # blocked past the loop's end

    asyncio.run(main())
    started = set(threading.enumerate()) - before
    wait_until(
        lambda: len(set(threading.enumerate()) - before) == 1,
        timeout_s=2.0,  # idle workers otherwise wait idle_s (10 s) for more work
        what="the idle worker to end",
    )
    assert started  # (the blocked worker at least)
    release.set()
    wait_until(
        lambda: not set(threading.enumerate()) - before,
        timeout_s=2.0,
        what="the abandoned worker to end after its call",
    )

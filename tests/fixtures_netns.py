"""Fixtures for tests on real sockets: a guest in a network namespace, its
blackout injector, and temporary root-namespace sysctls.

Registered from ``tests/conftest.py`` (``pytest_plugins``). Every fixture
here needs root; the tests that use them carry ``@pytest.mark.root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from migration_blackout.lab.injector import BlackoutInjector
from migration_blackout.lab.netns import GuestNamespace

PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")
TEST_PREFIX = "mbot-"  # tests use their own prefix; the demo and lab use "mbo-"


@pytest.fixture(scope="module")
def guest() -> Iterator[GuestNamespace]:
    """One guest namespace per test module (torn down even if tests fail)."""
    with GuestNamespace(prefix=TEST_PREFIX) as namespace:
        yield namespace


@pytest.fixture
def injector(guest: GuestNamespace) -> Iterator[BlackoutInjector]:
    """A blackout injector inside ``guest``; the guest answers again afterwards."""
    helper = guest.start_injector()
    try:
        yield helper
    finally:
        helper.close()


@contextlib.contextmanager
def ping_group_range(value: str) -> Iterator[None]:
    """Set the root namespace's ``net.ipv4.ping_group_range``; restore it on exit."""
    saved = PING_GROUP_RANGE.read_text()
    PING_GROUP_RANGE.write_text(value + "\n")
    try:
        yield
    finally:
        PING_GROUP_RANGE.write_text(saved)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll ``condition`` (every 5 ms) until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


async def until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """``wait_until`` for coroutines: yields to the event loop between checks."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.002)

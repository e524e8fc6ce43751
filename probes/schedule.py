"""A drift-free polling schedule shared by the probes that poll a host.

Poll k is due at ``t0 + k * interval`` on the monotonic clock. A poll that
takes longer than the interval delays the next one, and the slots it overran
are skipped (and counted), never silently lost and never bunched up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any


async def poll_on_schedule(
    interval_s: float,
    stop: asyncio.Event,
    poll_once: Callable[[int], Coroutine[Any, Any, None]],
    on_skipped: Callable[[int], None],
    *,
    stop_grace_s: float | None = None,
) -> None:
    """Call ``poll_once(k)`` for slot k until ``stop`` is set; the poll in
    flight completes. ``on_skipped(n)`` hears of every run of overrun slots.

    With ``stop_grace_s``, a poll still in flight that long after ``stop`` is
    cancelled (``poll_once`` sees ``CancelledError`` and records the poll as
    abandoned): a host that hangs cannot hold the end of the run.
    """
    interval_ns = int(interval_s * 1e9)
    start_ns = time.monotonic_ns()
    k = 0
    while not stop.is_set():
        if stop_grace_s is None:
            await poll_once(k)
        else:
            await _poll_with_grace(poll_once(k), stop, stop_grace_s)
        k += 1
        now = time.monotonic_ns()
        due = start_ns + k * interval_ns
        if now > due:
            missed = (now - due) // interval_ns
            if missed:
                on_skipped(missed)
            k += missed
            due = start_ns + k * interval_ns
        wait_s = max(0.0, (due - time.monotonic_ns()) / 1e9)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await stop.wait()


async def send_on_schedule(
    interval_ns: int, stop: asyncio.Event, send: Callable[[int, int], None]
) -> None:
    """Call ``send(k, due_ns)`` for slot k, due at ``t0 + k * interval_ns`` on the
    monotonic clock, until ``stop`` is set. A slot the loop reached late is
    still sent, at once (the send stamps show the lateness), so the number of
    sends always matches the schedule. Waits ride on the event loop's timer
    (about 1 ms of lateness; the send stamps are the record).

    ``t0`` is the first multiple of ``interval_ns`` from now: probes with the
    same interval send together, so the guest agent answering two of them
    wakes once for both (a wake-up is most of its cost)."""
    start_ns = -(-time.monotonic_ns() // interval_ns) * interval_ns
    k = 0
    while not stop.is_set():
        send(k, start_ns + k * interval_ns)
        k += 1
        wait_s = (start_ns + k * interval_ns - time.monotonic_ns()) / 1e9
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await stop.wait()


async def _poll_with_grace(
    poll: Coroutine[Any, Any, None], stop: asyncio.Event, grace_s: float
) -> None:
    task = asyncio.ensure_future(poll)  # owned here: awaited or cancelled below
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_s)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if not task.cancelled():
        task.result()

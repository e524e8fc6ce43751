"""The ICMP probe in a process of its own.

``measure run`` does a lot besides pinging: pypsrp parses XML in worker
threads, the console probe decodes images, the guest receiver checks frames.
In one process all of that competes with the prober for the interpreter
lock and the event loop, and its sends bunch up (seen: send-interval jitter
p99 of ~10 ms at a 10 ms interval). Here the same :class:`IcmpProbe` runs in
a child process (``python -m migration_blackout.probes.icmp_process``) that does nothing else,
writes ``raw/icmp.csv`` itself, and reports readiness and live counters to
the parent as JSON lines on its stdout. Same shape as every probe: ``ready``,
``run(stop)``, ``stats()``.

Protocol: the child prints ``{"ready": {...meta...}}`` once its sockets are
open and the first probes out, then ``{"stats": {...}}`` every 100 ms, and
``{"done": true}`` after its last row is flushed; on a failure
``{"error": "...", "type": "..."}``. A line ``stop`` on its stdin (or end of
input, if the parent dies) ends the probing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import migration_blackout

from .environment import child_environment
from .icmp import IcmpPermissionError, IcmpProbe, IcmpTargetStats

# The folder that holds the migration_blackout package (not resolved: in a
# checkout the package's folders are symbolic links).
IMPORT_ROOT = Path(migration_blackout.__file__).parent.parent
STATS_PERIOD_S = 0.1
START_DEADLINE_S = 20.0


class IcmpProbeProcess:
    """An :class:`IcmpProbe` run by a child process; the parent's view of it."""

    def __init__(
        self,
        path: Path,
        *,
        targets: Sequence[str],
        interval_s: float,
        timeout_s: float | None = None,
        privileged: bool | None = None,
        realtime_priority: int | None = None,
    ) -> None:
        # Absolute: the child runs in another folder (never the caller's).
        self.path = Path(os.path.abspath(path))
        self.targets = list(targets)
        self.interval_s = interval_s
        self.requested_timeout_s = timeout_s
        self.privileged = privileged
        self.realtime_priority = realtime_priority
        self.ready = asyncio.Event()
        self.meta: dict[str, Any] = {}
        self._stats: dict[str, IcmpTargetStats] = {}
        self._process: asyncio.subprocess.Process | None = None

    @property
    def timeout_s(self) -> float | None:
        return self.meta.get("timeout_s", self.requested_timeout_s)

    def stats(self) -> dict[str, IcmpTargetStats]:
        return dict(self._stats)

    def _argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "migration_blackout.probes.icmp_process",
            "--path",
            str(self.path),
            "--interval",
            repr(self.interval_s),
        ]
        for target in self.targets:
            argv += ["--target", target]
        if self.requested_timeout_s is not None:
            argv += ["--timeout", repr(self.requested_timeout_s)]
        if self.privileged is not None:
            argv += ["--privileged" if self.privileged else "--unprivileged"]
        if self.realtime_priority is not None:
            argv += ["--realtime-priority", str(self.realtime_priority)]
        return argv

    async def start(self) -> None:
        """Start the child and wait until it probes (or raise its error).

        The child runs in ``/`` with an environment without secrets, in a
        process group of its own: a terminal's Ctrl-C (SIGINT to the
        foreground group) reaches the harness, which stops the child through
        its stdin once the last attempts are resolved.
        """
        python_path = os.pathsep.join(
            p for p in (str(IMPORT_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self._process = await asyncio.create_subprocess_exec(
            *self._argv(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
            env=child_environment({"PYTHONPATH": python_path}),
            process_group=0,
        )
        async with asyncio.timeout(START_DEADLINE_S):
            message = await self._next_message()
        if "ready" not in message:
            await self._process.wait()
            raise _error(message)
        self.meta = message["ready"]
        self.ready.set()

    async def _next_message(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            stderr = b""
            if self._process.stderr is not None:
                stderr = await self._process.stderr.read()
            return {
                "error": stderr.decode(errors="replace").strip() or "the prober exited",
                "type": "RuntimeError",
            }
        document: dict[str, Any] = json.loads(line)
        return document

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the child's counters until ``stop``, then end it and wait
        until its last row is written (its timeout plus a margin at most)."""
        if self._process is None:
            await self.start()
        process = self._process
        assert process is not None and process.stdin is not None
        try:
            async with asyncio.TaskGroup() as tasks:
                follower = tasks.create_task(self._follow())
                stopped = tasks.create_task(stop.wait())
                await asyncio.wait({follower, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not follower.done():
                    with contextlib.suppress(ConnectionError):
                        process.stdin.write(b"stop\n")
                        await process.stdin.drain()
                    tasks.create_task(self._watchdog((self.timeout_s or 1.0) + 10.0))
                else:
                    stopped.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def close(self) -> None:
        """Kill a child that is still running (after a failure elsewhere)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def _follow(self) -> None:
        """Read the child's messages until it is done; raise its error."""
        while True:
            message = await self._next_message()
            if "stats" in message:
                self._stats = {k: IcmpTargetStats(**v) for k, v in message["stats"].items()}
            elif "error" in message:
                raise _error(message)
            elif message.get("done"):
                assert self._process is not None
                await self._process.wait()
                return

    async def _watchdog(self, deadline_s: float) -> None:
        """A child that does not finish in time is killed (its rows so far stay)."""
        assert self._process is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self._process.wait()
                return
        self._process.kill()


def _error(message: dict[str, Any]) -> Exception:
    text = str(message.get("error"))
    if message.get("type") == "IcmpPermissionError":
        return IcmpPermissionError(text)
    if message.get("type") == "ValueError":
        return ValueError(text)
    return RuntimeError(f"the ICMP prober failed: {text}")


# -- the child ----------------------------------------------------------------


def _emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def _child(args: argparse.Namespace) -> int:
    privileged = True if args.privileged else False if args.unprivileged else None
    try:
        probe = IcmpProbe.create(
            Path(args.path),
            targets=args.target,
            interval_s=args.interval,
            timeout_s=args.timeout,
            privileged=privileged,
            realtime_priority=args.realtime_priority,
        )
    except (IcmpPermissionError, ValueError) as exc:
        _emit({"error": str(exc), "type": type(exc).__name__})
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            stop.set()
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    async def report() -> None:
        await probe.ready.wait()
        _emit(
            {"ready": {**probe.meta, "timeout_s": probe.timeout_s, "privileged": probe.privileged}}
        )
        while not stop.is_set():
            _emit({"stats": {k: asdict(v) for k, v in probe.stats().items()}})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATS_PERIOD_S):
                    await stop.wait()

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(probe.run(stop))
            tasks.create_task(report())
    except ExceptionGroup as group:
        _emit({"error": "; ".join(str(e) for e in group.exceptions), "type": "RuntimeError"})
        return 1
    finally:
        probe.sink.close()
    _emit({"stats": {k: asdict(v) for k, v in probe.stats().items()}})
    _emit({"done": True})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # The parent ends the probing (a line "stop", or end of input when it is
    # gone): signals meant for it must not cut the record short.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="python -m migration_blackout.probes.icmp_process")
    parser.add_argument("--path", required=True)
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--timeout", type=float, default=None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--privileged", action="store_true")
    mode.add_argument("--unprivileged", action="store_true")
    parser.add_argument("--realtime-priority", type=int, default=None)
    return asyncio.run(_child(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

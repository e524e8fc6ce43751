"""Interrupts and deadlines: no host, guest or worker thread can hold a run.

Three pieces that ``measure run`` (and ``measure watch``) build on:

* :class:`Interrupt`: SIGINT and SIGTERM become one flag that threads read
  (``flag``, a ``threading.Event``) and coroutines await (``event``). The
  handlers are installed for the whole command, lab start and analysis
  included, and the previous handlers are restored afterwards.
* :func:`within`: await something with a deadline, and give up at once
  when the interrupt is set. Whatever it awaited is cancelled; a worker
  thread blocked on a host is left behind (see below), never waited for.
* :class:`AbandonableThreads`: the event loop's default executor
  (``asyncio.to_thread``) made of daemon threads that nobody joins: a thread
  stuck in a read from a hung host neither holds the run nor keeps the
  process alive at exit. pypsrp 0.9 is blocking and cannot be cancelled, so
  abandoning the thread is the only way to honour a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was interrupted (SIGINT or SIGTERM) while waiting for something."""

    def __init__(self, what: str, signal_name: str | None) -> None:
        by = signal_name or "a signal"
        super().__init__(f"interrupted by {by} during {what}")
        self.what = what
        self.signal_name = signal_name


class DeadlineExceeded(TimeoutError):
    """Something did not finish within its deadline; the message says what and how long."""


class Interrupt:
    """SIGINT / SIGTERM as a flag for threads and an event for coroutines.

    ``with interrupt.handling(loop):`` installs the handlers on the loop and
    restores the previous ones on exit. A signal before the loop runs (or
    after) is not seen here: callers install it first thing.
    """

    def __init__(self) -> None:
        self.flag = threading.Event()
        self.event = asyncio.Event()
        self.signal_name: str | None = None
        self.count = 0
        self._linked: set[threading.Event] = set()

    def is_set(self) -> bool:
        return self.flag.is_set()

    def set(self, signal_name: str | None = None) -> None:
        self.count += 1
        if self.signal_name is None:
            self.signal_name = signal_name
        self.flag.set()
        for linked in list(self._linked):
            linked.set()
        self.event.set()

    def link(self, flag: threading.Event) -> None:
        """Set ``flag`` too when the interrupt comes (at once, if it came already):
        a worker thread that must not start something irreversible reads it."""
        self._linked.add(flag)
        if self.flag.is_set():
            flag.set()

    def unlink(self, flag: threading.Event) -> None:
        self._linked.discard(flag)

    @contextlib.contextmanager
    def handling(self, loop: asyncio.AbstractEventLoop) -> Iterator[Interrupt]:
        previous: dict[signal.Signals, Any] = {}
        for sig in INTERRUPT_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                previous[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self.set, sig.name)
        try:
            yield self
        finally:
            for old_sig, handler in previous.items():
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(old_sig)
                    # remove_signal_handler resets to the default (SIGTERM: die).
                    signal.signal(old_sig, handler if handler is not None else signal.SIG_DFL)

    def check(self, what: str) -> None:
        """Raise :class:`Interrupted` if the interrupt is set."""
        if self.flag.is_set():
            raise Interrupted(what, self.signal_name)


async def within(
    awaitable: Awaitable[T],
    *,
    deadline_s: float,
    what: str,
    interrupt: Interrupt | None = None,
) -> T:
    """``await awaitable``, at most ``deadline_s`` seconds and not past an interrupt.

    Raises :class:`DeadlineExceeded` ("<what>: no answer within N s") or
    :class:`Interrupted`; the awaitable is cancelled either way.
    """
    work: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    waiters: set[asyncio.Future[Any]] = {work}
    stop: asyncio.Future[Any] | None = None
    if interrupt is not None:
        if interrupt.is_set():
            work.cancel()
            await _settle_cancelled(work)
            raise Interrupted(what, interrupt.signal_name)
        stop = asyncio.ensure_future(interrupt.event.wait())
        waiters.add(stop)
    try:
        done, _ = await asyncio.wait(waiters, timeout=deadline_s, return_when="FIRST_COMPLETED")
    except BaseException:
        work.cancel()
        raise
    finally:
        if stop is not None:
            stop.cancel()
    if work in done:
        return work.result()
    work.cancel()
    await _settle_cancelled(work)
    if stop is not None and stop in done:
        raise Interrupted(what, interrupt.signal_name if interrupt else None)
    raise DeadlineExceeded(f"{what}: no answer within {deadline_s:g} s")


async def _settle_cancelled(work: asyncio.Future[Any]) -> None:
    """Let a cancelled task run its cleanup (it must not await a host: it has none left)."""
    with contextlib.suppress(BaseException):
        await asyncio.wait({work}, timeout=1.0)
    if work.done() and not work.cancelled():
        work.exception()  # retrieved: an error raised while cancelling is not news


class AbandonableThreads(ThreadPoolExecutor):
    """An executor of daemon worker threads that nobody joins.

    Idle workers are reused (a poll every 100 ms does not start a thread each
    time) and end after ``idle_s``. ``shutdown`` never waits for a worker that
    is still blocked: it is abandoned, and as a daemon thread it ends with the
    process. (A ThreadPoolExecutor only in name, which asyncio requires of a
    default executor: none of its own threads, which the interpreter joins
    at exit, is ever started.)
    """

    def __init__(self, *, name: str = "worker", idle_s: float = 10.0) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)
        self._name = name
        self._idle_s = idle_s
        self._work: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0
        self._shut_down = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot submit work after shutdown")
            call = (lambda: fn(*args, **kwargs)) if kwargs else fn
            self._work.put((future, call, () if kwargs else args))
            if self._idle > 0:
                self._idle -= 1
            else:
                self._started += 1
                threading.Thread(
                    target=self._serve, name=f"{self._name}-{self._started}", daemon=True
                ).start()
        return future

    def _serve(self) -> None:
        while True:
            try:
                item = self._work.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    # An item may have been queued for the idle worker we were.
                    if self._work.empty():
                        self._idle -= 1
                        return
                continue
            if item is None:  # shut down: an idle worker ends now
                return
            future, call, args = item
            if future.set_running_or_notify_cancel():
                try:
                    result = call(*args)
                except BaseException as error:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del future, call, args, item
            with self._lock:
                if self._shut_down:
                    return  # an abandoned call that came back: nothing more will come
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Idle workers end at once (a caller that goes on, a notebook, keeps no
        thread of a finished run); nothing is waited for: a worker still blocked
        is abandoned on purpose, and ends when its call returns."""
        with self._lock:
            self._shut_down = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._work.put(None)


_CONFIGURED_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def use_abandonable_threads(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``asyncio.to_thread`` on ``loop`` use :class:`AbandonableThreads`
    (once per loop; call it before anything runs in a thread)."""
    if loop not in _CONFIGURED_LOOPS:
        loop.set_default_executor(AbandonableThreads())
        _CONFIGURED_LOOPS.add(loop)

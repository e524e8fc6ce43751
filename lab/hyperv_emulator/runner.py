"""Starting and stopping the emulated hosts.

``async with LabHosts(config) as lab:`` runs every host of ``config`` on
127.0.0.1 in the current event loop. ``with LabThread(config) as lab:`` does
the same in a background thread with its own loop, for blocking clients such
as pypsrp 0.9 (tests call pypsrp from their own thread).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import secrets
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from aiohttp import web

from migration_blackout.lab.hyperv_emulator import groundtruth as gt
from migration_blackout.lab.hyperv_emulator.auth import Credentials, NtlmUserFile
from migration_blackout.lab.hyperv_emulator.gss import KerberosAcceptor, SecondHop, require_gssapi
from migration_blackout.lab.hyperv_emulator.model import GuestControl, InMemoryGuest, Lab, LabConfig
from migration_blackout.lab.hyperv_emulator.server import HostServer
from migration_blackout.lab.hyperv_emulator.tls import make_self_signed
from migration_blackout.lab.kerberos import HostAccount, LabKdc, LabRealm, ProcessKrb5Config

T = TypeVar("T")


@dataclass(frozen=True)
class HostEndpoint:
    name: str
    address: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.address}:{self.port}/wsman"


class LabHosts:
    """The emulated hosts of one lab run, serving in the running event loop.

    Attributes after entering: ``hosts`` (name -> :class:`HostEndpoint`),
    ``credentials``, ``ground_truth_path``, ``lab`` (the model), ``guest``,
    ``realm`` (the lab's Kerberos realm, None when ``config.kerberos`` is off).
    The KDC starts before the hosts and stops after them.
    """

    def __init__(
        self,
        config: LabConfig | None = None,
        *,
        guest: GuestControl | None = None,
        shutdown_timeout_s: float = 2.0,
    ) -> None:
        self.config = config or LabConfig()
        self.guest: GuestControl = guest or InMemoryGuest()
        self._shutdown_timeout_s = shutdown_timeout_s
        password = self.config.password or secrets.token_urlsafe(18)
        self.credentials = Credentials(self.config.domain, self.config.username, password)
        self.hosts: dict[str, HostEndpoint] = {}
        self._servers: list[HostServer] = []
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task_group: asyncio.TaskGroup | None = None
        self._workdir: Path | None = None
        self._ntlm_file: NtlmUserFile | None = None
        self._ground_truth: gt.GroundTruthLog | None = None
        self._lab: Lab | None = None
        self.ca_path: Path | None = None  # with config.tls: the certificate to trust
        self._key_path: Path | None = None
        self.realm: LabRealm | None = None
        self._kdc: LabKdc | None = None
        self._krb5_config: ProcessKrb5Config | None = None

    @property
    def lab(self) -> Lab:
        if self._lab is None:
            raise RuntimeError("the lab is not running")
        return self._lab

    @property
    def ground_truth_path(self) -> Path:
        if self._ground_truth is None:
            raise RuntimeError("the lab is not running")
        return self._ground_truth.path

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        if self._task_group is None:
            coro.close()
            raise RuntimeError("the lab is not running")
        task = self._task_group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def __aenter__(self) -> LabHosts:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        config = self.config
        self._workdir = Path(tempfile.mkdtemp(prefix="hyperv-lab-"))
        self._ntlm_file = NtlmUserFile(self._workdir / "ntlm_users", self.credentials)
        gt_path = config.ground_truth_path or self._workdir / "ground_truth.jsonl"
        self._ground_truth = gt.GroundTruthLog(
            gt_path,
            lab_description={
                "seed": config.seed,
                "hosts": [dataclasses.asdict(h) for h in config.hosts],
                "vm": {"name": config.vm.name, "host": config.vm.host},
                "faults": repr(config.faults),
                "timing": repr(config.timing),
            },
        )
        if config.kerberos.enabled:
            require_gssapi()
            self._kdc = LabKdc(
                config.kerberos_dir or self._workdir / "kerberos",
                domain=config.domain,
                username=config.username,
                password=self.credentials.password,
                hosts=[
                    HostAccount(
                        host.name,
                        delegates_to=tuple(h.name for h in config.hosts if h is not host)
                        if host.delegation and host.migration_auth == "kerberos"
                        else (),
                    )
                    for host in config.hosts
                ],
                settings=config.kerberos,
            )
            self.realm = await asyncio.to_thread(self._kdc.start)
            self._krb5_config = ProcessKrb5Config(self.realm.krb5_config)
        second_hop = None if self.realm is None else SecondHop(self.realm)
        self._task_group = asyncio.TaskGroup()
        await self._task_group.__aenter__()
        self._lab = Lab(
            config, guest=self.guest, ground_truth=self._ground_truth, spawn=self._spawn
        )
        ports = dict((name.lower(), port) for name, port in config.ports)
        for host in config.hosts:
            server = HostServer(
                lab=self._lab,
                host_name=host.name,
                credentials=self.credentials,
                auth_methods=config.auth_methods,
                spawn=self._spawn,
                receive_timeout_cap_s=config.receive_timeout_cap_s,
                kerberos=None
                if self.realm is None
                else KerberosAcceptor(self.realm.host(host.name)),
                second_hop=second_hop,
            )
            runner = web.AppRunner(
                server.app, access_log=None, shutdown_timeout=self._shutdown_timeout_s
            )
            await runner.setup()
            self._runners.append(runner)
            self._servers.append(server)
            site = web.TCPSite(
                runner,
                config.bind_address,
                ports.get(host.name.lower(), 0),
                ssl_context=self._tls_context(),
            )
            await site.start()
            port = int(runner.addresses[0][1])
            endpoint = HostEndpoint(host.name, config.bind_address, port, tls=config.tls)
            server.address = endpoint.url
            self.hosts[host.name] = endpoint

    def _tls_context(self) -> ssl.SSLContext | None:
        """With ``config.tls``: HTTPS with a certificate made for this lab
        (``self.ca_path`` is what a client trusts)."""
        if not self.config.tls:
            return None
        assert self._workdir is not None
        if self.ca_path is None:
            self.ca_path, self._key_path = make_self_signed(self._workdir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca_path, self._key_path)
        return context

    async def _stop(self) -> None:
        for server in self._servers:
            await server.shutdown()
        if self._lab is not None:
            self._lab.release_all()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._task_group is not None:
            group, self._task_group = self._task_group, None
            await group.__aexit__(None, None, None)
        if self._ground_truth is not None:
            self._ground_truth.close()
        if self._ntlm_file is not None:
            self._ntlm_file.close()
            self._ntlm_file = None
        if self._krb5_config is not None:
            self._krb5_config.close()
            self._krb5_config = None
        if self._kdc is not None:
            await asyncio.to_thread(self._kdc.stop)
            self._kdc = None
        if self._workdir is not None and self.config.ground_truth_path is None:
            # The default ground truth lives here too; a caller who needs it
            # after the run passes ground_truth_path.
            shutil.rmtree(self._workdir, ignore_errors=True)
        elif self._workdir is not None:
            (self._workdir / "ntlm_users").unlink(missing_ok=True)
            self._workdir.rmdir()
        self._workdir = None

    def set_unresponsive(self, host: str, mode: Literal["hang", "close"]) -> None:
        self.lab.set_unresponsive(host, mode)


class LabThread:
    """:class:`LabHosts` in a background thread with its own event loop.

    ``with LabThread(config) as lab:`` returns once every host listens.
    ``lab.call(fn, *args)`` runs ``fn`` on the lab's loop and returns its
    result (the way to touch the model from another thread).
    """

    def __init__(
        self,
        config: LabConfig | None = None,
        *,
        guest: GuestControl | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.hosts_runtime = LabHosts(config, guest=guest)
        self._start_timeout_s = start_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def hosts(self) -> dict[str, HostEndpoint]:
        return self.hosts_runtime.hosts

    @property
    def credentials(self) -> Credentials:
        return self.hosts_runtime.credentials

    @property
    def ground_truth_path(self) -> Path:
        return self.hosts_runtime.ground_truth_path

    @property
    def ca_path(self) -> Path | None:
        return self.hosts_runtime.ca_path

    @property
    def guest(self) -> GuestControl:
        return self.hosts_runtime.guest

    @property
    def realm(self) -> LabRealm | None:
        return self.hosts_runtime.realm

    def __enter__(self) -> LabThread:
        self._thread = threading.Thread(target=self._run, name="hyperv-lab", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise TimeoutError(f"lab did not start within {self._start_timeout_s} s")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("lab failed to start") from self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()
        if self._error is not None and exc is None:
            raise RuntimeError("lab failed while stopping") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to the caller's thread
            self._error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.hosts_runtime:
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the lab's loop thread and return its result
        (awaited, when ``fn`` is a coroutine function such as ``Lab.compare_vm``)."""
        if self._loop is None:
            raise RuntimeError("the lab is not running")

        async def invoke() -> Any:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

        future: Future[Any] = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        return future.result(timeout=10)

    @property
    def lab(self) -> Lab:
        return self.hosts_runtime.lab

    def set_unresponsive(self, host: str, mode: Literal["hang", "close"]) -> None:
        self.call(self.hosts_runtime.set_unresponsive, host, mode)

    def set_responsive(self, host: str) -> None:
        self.call(self.lab.set_responsive, host)

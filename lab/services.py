"""What runs inside the lab's guest besides the agent: its services and its workload.

Started inside the guest's network namespace (``ip netns exec <ns> python -I
lab/services.py ...``), so they are guest processes: the lab's freeze stops
them with the rest of the guest. Standard library only.

* ``listen PORT...``: TCP listeners that complete the handshake and close,
  as a Windows guest's Remote Desktop (3389) answers the harness's TCP
  connect probe. The kernel completes a handshake for a listening socket
  even while this process is stopped; the guest's link filter is what makes
  connects fail while the guest is dark.
* ``dirty --mib N``: the guest's dirtying workload during pre-copy: between
  a line ``go`` and a line ``stop`` on its standard input it writes one byte
  into every 4 KiB page of an N MiB buffer (allocated at the start), round
  and round, as fast as the guest's CPU lets it; otherwise it waits.

Each prints one JSON line ``{"op": "hello", "pid": ...}`` when it is ready
and runs until SIGTERM or end of its standard input.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Sequence

PAGE_BYTES = 4096


def _hello(**fields: object) -> None:
    sys.stdout.write(json.dumps({"op": "hello", "pid": os.getpid(), **fields}) + "\n")
    sys.stdout.flush()


def _stop_on_eof_or_signal(dirtying: threading.Event | None = None) -> threading.Event:
    """Set at SIGTERM or end of input; the lines ``go`` / ``stop`` set and
    clear ``dirtying``."""
    stop = threading.Event()

    def on_sigterm(*_: object) -> None:
        # Raised in the main thread: ends a select or a wait at once (the lab's
        # teardown waits for this process).
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)

    def watch_stdin() -> None:
        for line in sys.stdin:
            if dirtying is not None and line.strip() == "go":
                dirtying.set()
            elif dirtying is not None and line.strip() == "stop":
                dirtying.clear()
        stop.set()  # end of input: the lab went away
        if dirtying is not None:
            dirtying.set()  # wake the workload so that it sees the stop

    threading.Thread(target=watch_stdin, daemon=True).start()
    return stop


def listen(ports: Sequence[int]) -> int:
    selector = selectors.DefaultSelector()
    for port in ports:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen(128)
        server.setblocking(False)
        selector.register(server, selectors.EVENT_READ)
    stop = _stop_on_eof_or_signal()
    _hello(listening=list(ports))
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connection.close()
    return 0


def dirty(mib: int) -> int:
    buffer = bytearray(mib * 1024 * 1024)
    pages = len(buffer) // PAGE_BYTES
    dirtying = threading.Event()
    stop = _stop_on_eof_or_signal(dirtying)
    _hello(mib=mib)
    value = 0
    while not stop.is_set():
        if not dirtying.is_set():
            dirtying.wait(0.5)
            continue
        value = (value + 1) & 0xFF
        for offset in range(0, PAGE_BYTES, 512):
            buffer[offset::PAGE_BYTES] = bytes((value,)) * pages
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "listen":
        return listen([int(port) for port in args[1:]])
    if len(args) == 3 and args[0] == "dirty" and args[1] == "--mib":
        return dirty(int(args[2]))
    sys.stderr.write("usage: services.py listen PORT... | dirty --mib N\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())

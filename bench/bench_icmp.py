"""Benchmark of the ICMP prober (probes/icmp.py) against a guest in a network namespace.

Run as root: ``.venv/bin/python bench/bench_icmp.py [--quick] [--json out.json]``.
Prints Markdown tables:

(a) 1 ms to one target for 10 s: achieved rate, send lateness behind the
    drift-free schedule (p50/p99/max), inter-send interval (p50, p99 - p50),
    CPU of the process (user and system; system includes the kernel work for
    the guest's replies, which runs in the prober's context on a veth pair).
    Once with default scheduling, once with ``realtime_priority``.
(b) 5, 10, 20 kHz to one target for 5 s each: achieved rate, loss, CPU.
(c) 100 targets (100 addresses in the guest) at 10 ms for 10 s: CPU, loss.
(d) Accuracy beside ``fping -D -l -p 1 -i 1`` on the same 20 injected
    blackouts (random 50 ms .. 1 s plus a random fraction of 1 ms), both tools
    probing the same guest at 1 ms at the same time. A capture inside the guest
    (AF_PACKET on its interface, kernel timestamps) records when every echo
    request of either tool arrived and whether it was answered, so both tools
    are judged on the same clock; for our probe the estimates from its own
    rows are shown too. Errors are estimate minus the injected length (ms):
    A upper bound (last answered send before -> first after), B lower bound
    (first lost send -> last lost send), C lost count x 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migration_blackout.lab.injector import BlackoutInjector, InjectedBlackout
from migration_blackout.lab.netns import GuestNamespace
from migration_blackout.probes.icmp import IcmpProbe
from migration_blackout.runformat import ICMP_ATTEMPT_OUTCOMES

MS = 1_000_000
PREFIX = "mbob-"


# --------------------------------------------------------------------------
# Machine conditions
# --------------------------------------------------------------------------


def cpu_times() -> dict[str, int]:
    """System-wide jiffies from /proc/stat (to report steal and load during a run)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return {name: int(value) for name, value in zip(names, fields, strict=False)}


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "cpus": os.cpu_count(),
        "model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


@dataclass
class Window:
    """CPU of this process and of the machine over a measured window."""

    wall_s: float = 0.0
    user_s: float = 0.0
    system_s: float = 0.0
    # Fraction of all CPUs busy (any process), from tick-sampled /proc/stat:
    # it misses short bursts like the prober's, so read it as "other load".
    machine_busy: float = 0.0
    steal: float = 0.0  # fraction of all CPU time stolen by the hypervisor

    @property
    def cpu_pct(self) -> float:
        return 100 * (self.user_s + self.system_s) / self.wall_s

    @property
    def user_pct(self) -> float:
        return 100 * self.user_s / self.wall_s

    @property
    def system_pct(self) -> float:
        return 100 * self.system_s / self.wall_s


class Meter:
    def __enter__(self) -> Meter:
        self._t = time.monotonic()
        self._r = resource.getrusage(resource.RUSAGE_SELF)
        self._c = cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        c = cpu_times()
        total = sum(c.values()) - sum(self._c.values()) or 1
        idle = (c["idle"] + c["iowait"]) - (self._c["idle"] + self._c["iowait"])
        self.window = Window(
            wall_s=time.monotonic() - self._t,
            user_s=r.ru_utime - self._r.ru_utime,
            system_s=r.ru_stime - self._r.ru_stime,
            machine_busy=1 - idle / total,
            steal=(c["steal"] - self._c["steal"]) / total,
        )


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------


def load_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        handle.readline()
        rows = []
        for row in csv.DictReader(handle):
            for key in ("n", "send_mono_ns", "recv_mono_ns", "rtt_ns"):
                row[key] = int(row[key]) if row[key] else None
            rows.append(row)
    return rows


def own_rows(rows: Sequence[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    own = [r for r in rows if r["target"] == target and r["outcome"] in ICMP_ATTEMPT_OUTCOMES]
    return sorted(own, key=lambda r: r["n"])


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------
# (a) (b) (c): rate, jitter, CPU
# --------------------------------------------------------------------------


@dataclass
class RateResult:
    label: str
    targets: int
    interval_s: float
    achieved_hz: float  # per target
    sent: int
    lost: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    step_p50_ms: float
    step_p99_minus_p50_ms: float
    window: Window


async def _probe_for(probe: IcmpProbe, seconds: float, warmup_s: float = 0.5) -> Window:
    stop = asyncio.Event()
    meter = Meter()

    async def drive() -> None:
        try:
            await probe.ready.wait()
            await asyncio.sleep(warmup_s)
            with meter:
                await asyncio.sleep(seconds)
        finally:
            stop.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(probe.run(stop))
        group.create_task(drive())
    return meter.window


def bench_rate(
    label: str,
    targets: Sequence[str],
    interval_s: float,
    seconds: float,
    workdir: Path,
    realtime_priority: int | None = None,
) -> RateResult:
    path = workdir / f"{label}.csv"
    probe = IcmpProbe.create(
        path, targets=targets, interval_s=interval_s, realtime_priority=realtime_priority
    )
    try:
        window = asyncio.run(_probe_for(probe, seconds))
    finally:
        probe.sink.close()
    rows = load_rows(path)
    interval_ns = round(interval_s * 1e9)
    lateness: list[float] = []
    steps: list[float] = []
    rates: list[float] = []
    sent = lost = 0
    for target in targets:
        own = own_rows(rows, target)
        sent += len(own)
        lost += sum(r["outcome"] != "reply" for r in own)
        sends = [r["send_mono_ns"] for r in own]
        origin = min(s - i * interval_ns for i, s in enumerate(sends))
        lateness += [(s - i * interval_ns - origin) / MS for i, s in enumerate(sends)]
        steps += [(b - a) / MS for a, b in itertools.pairwise(sends)]
        rates.append((len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9))
    step_p50 = percentile(steps, 0.5)
    return RateResult(
        label=label,
        targets=len(targets),
        interval_s=interval_s,
        achieved_hz=statistics.fmean(rates),
        sent=sent,
        lost=lost,
        late_p50_ms=percentile(lateness, 0.5),
        late_p99_ms=percentile(lateness, 0.99),
        late_max_ms=max(lateness),
        step_p50_ms=step_p50,
        step_p99_minus_p50_ms=percentile(steps, 0.99) - step_p50,
        window=window,
    )


# --------------------------------------------------------------------------
# (d) accuracy beside fping
# --------------------------------------------------------------------------

# Runs inside the guest namespace: records every ICMP echo request arriving on
# the interface and every echo reply leaving it, with kernel timestamps.
CAPTURE = r"""
import json, os, select, socket, struct, sys
interface, out_path = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
sock.bind((interface, 3))
sock.setsockopt(socket.SOL_SOCKET, 35, 1)
sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)
out = open(out_path, "w")
print("ready", flush=True)
while True:
    ready, _, _ = select.select([sock, sys.stdin], [], [])
    if sys.stdin in ready:
        break
    while True:
        try:
            data, anc, _, addr = sock.recvmsg(256, 256, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if addr[1] != 0x0800 or len(data) < 28 or data[9] != 1:
            continue
        ihl = (data[0] & 15) * 4
        kind = data[ihl]
        if kind not in (0, 8):
            continue
        sec, nsec = struct.unpack_from("@ll", anc[0][2])
        ident, seq = struct.unpack_from("!HH", data, ihl + 4)
        out.write(f"{kind} {ident} {seq} {sec * 1000000000 + nsec} {addr[2]}\n")
out.close()
"""


@dataclass
class Estimates:
    upper_ns: int
    lower_ns: int
    lost: int


def estimate(
    sends: Sequence[tuple[int, int]], answered: set[int], blackout: InjectedBlackout, slack_ns: int
) -> Estimates | None:
    """``sends``: (attempt key, time ns) in send order; the lost run around ``blackout``."""
    start, end = blackout.start_utc_ns - slack_ns, blackout.end_utc_ns + slack_ns
    lost = [i for i, (key, t) in enumerate(sends) if key not in answered and start <= t <= end]
    if not lost:
        return None
    first, last = lost[0], lost[-1]
    if first == 0 or last + 1 >= len(sends):
        return None
    return Estimates(
        upper_ns=sends[last + 1][1] - sends[first - 1][1],
        lower_ns=sends[last][1] - sends[first][1],
        lost=last - first + 1,
    )


def errors_ms(
    found: Sequence[Estimates | None], truth: Sequence[InjectedBlackout], interval_ns: int
) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {"A": [], "B": [], "C": []}
    for estimate_, blackout in zip(found, truth, strict=True):
        if estimate_ is None:
            continue
        injected = blackout.duration_ns
        result["A"].append((estimate_.upper_ns - injected) / MS)
        result["B"].append((estimate_.lower_ns - injected) / MS)
        result["C"].append((estimate_.lost * interval_ns - injected) / MS)
    return result


def bench_accuracy(
    guest: GuestNamespace, injector: BlackoutInjector, workdir: Path, count: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    lengths = [rng.uniform(0.05, 1.0) + rng.random() * 0.001 for _ in range(count)]
    target = guest.guest_address
    capture_path = workdir / "capture.txt"
    capture = subprocess.Popen(
        guest.exec_argv(sys.executable, "-I", "-c", CAPTURE, guest.guest_if, str(capture_path)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
    # fping writes a line per packet: to a file, so a full pipe cannot stall it.
    fping_log = (workdir / "fping.txt").open("w")
    fping = subprocess.Popen(
        ["fping", "-D", "-l", "-p", "1", "-i", "1", target],
        stdout=fping_log,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = workdir / "accuracy.csv"
    probe = IcmpProbe.create(path, targets=[target], interval_s=0.001)
    ident = probe.identifiers[target]
    truth: list[InjectedBlackout] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def drive() -> None:
            try:
                await probe.ready.wait()
                await asyncio.sleep(0.5)
                truth.extend(await injector.run_schedule_async([(0.3, x) for x in lengths]))
                await asyncio.sleep(0.3)
            finally:
                stop.set()

        async with asyncio.TaskGroup() as group:
            group.create_task(probe.run(stop))
            group.create_task(drive())

    try:
        with Meter() as meter:
            asyncio.run(scenario())
    finally:
        probe.sink.close()
        fping.send_signal(2)
        _, fping_err = fping.communicate(timeout=10)
        fping_log.close()
        assert capture.stdin is not None
        capture.stdin.close()
        capture.wait(timeout=10)
        capture.stdout.close()

    # Capture: requests in (kind 8, PACKET_HOST), replies out (kind 0, PACKET_OUTGOING).
    requests: dict[int, list[tuple[int, int]]] = {}
    replies: dict[int, set[int]] = {}
    for line in capture_path.read_text().splitlines():
        kind, pkt_ident, seq, stamp, _pkttype = (int(x) for x in line.split())
        if kind == 8:
            requests.setdefault(pkt_ident, []).append((seq, stamp))
        else:
            replies.setdefault(pkt_ident, set()).add(seq)
    fping_ident = max((i for i in requests if i != ident), key=lambda i: len(requests[i]))
    slack = 20 * MS
    interval_ns = MS
    found = {
        name: [estimate(requests[i], replies.get(i, set()), b, slack) for b in truth]
        for name, i in (("ours (capture)", ident), ("fping (capture)", fping_ident))
    }
    # Our own rows, in our monotonic domain; the window is matched by the
    # guest's monotonic stamps (the same clock), lengths compared.
    rows = own_rows(load_rows(path), target)
    sends = [(r["n"], r["send_mono_ns"]) for r in rows]
    answered = {r["n"] for r in rows if r["outcome"] == "reply"}
    mono_truth = [
        InjectedBlackout(
            b.start_mono_ns,
            b.end_mono_ns,
            b.start_mono_ns,
            b.end_mono_ns,
            b.requested_s,
            b.dark_write_ns,
            b.light_write_ns,
        )
        for b in truth
    ]
    found["ours (own rows)"] = [estimate(sends, answered, b, slack) for b in mono_truth]
    span_s = (truth[-1].end_utc_ns - truth[0].start_utc_ns) / 1e9
    rates = {}
    for name, i in (("ours (capture)", ident), ("fping (capture)", fping_ident)):
        inside = [t for _, t in requests[i] if truth[0].start_utc_ns <= t <= truth[-1].end_utc_ns]
        rates[name] = len(inside) / span_s
    rates["ours (own rows)"] = rates["ours (capture)"]
    return {
        "lengths_s": lengths,
        "seed": seed,
        "errors_ms": {name: errors_ms(f, truth, interval_ns) for name, f in found.items()},
        "judged": {name: sum(e is not None for e in f) for name, f in found.items()},
        "rates_hz": rates,
        "fping_summary": fping_err.strip().splitlines()[-1:] if fping_err else [],
        "fping_lines": len((workdir / "fping.txt").read_text().splitlines()),
        "window": asdict(meter.window),
    }


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def rate_table(results: Sequence[RateResult]) -> str:
    head = (
        "| run | targets | requested | achieved (per target) | sent | lost | lateness p50 / p99 / "
        "max (ms) | interval p50, p99-p50 (ms) | CPU % of a core (user + sys) | machine busy "
        "(ticks), steal |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for r in results:
        w = r.window
        lines.append(
            f"| {r.label} | {r.targets} | {1 / r.interval_s:,.0f} Hz | {r.achieved_hz:,.1f} Hz "
            f"({r.achieved_hz * r.interval_s:.4f}x) | {r.sent:,} | {r.lost} | "
            f"{r.late_p50_ms:.3f} / {r.late_p99_ms:.3f} / {r.late_max_ms:.3f} | "
            f"{r.step_p50_ms:.3f}, {r.step_p99_minus_p50_ms:.3f} | "
            f"{w.cpu_pct:.1f} ({w.user_pct:.1f} + {w.system_pct:.1f}) | "
            f"{100 * w.machine_busy:.0f} %, {100 * w.steal:.1f} % |"
        )
    return head + "\n".join(lines)


def accuracy_table(result: dict[str, Any]) -> str:
    head = (
        "| tool (send times from) | achieved rate | judged | A upper: mean [min, max] | "
        "B lower: mean [min, max] | C count x 1 ms: mean [min, max] |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for name, errs in result["errors_ms"].items():
        cells = []
        for key in ("A", "B", "C"):
            values = errs[key]
            cells.append(
                f"{statistics.fmean(values):+.2f} [{min(values):+.2f}, {max(values):+.2f}]"
                if values
                else "-"
            )
        lines.append(
            f"| {name} | {result['rates_hz'][name] / 1000:.3f}x | {result['judged'][name]} | "
            + " | ".join(cells)
            + " |"
        )
    return head + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seed", type=int, default=20261125)
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    conditions = machine()
    results: dict[str, Any] = {"machine": conditions}
    with (
        tempfile.TemporaryDirectory(prefix="bench-icmp-") as tmp,
        GuestNamespace(prefix=PREFIX) as guest,
    ):
        workdir = Path(tmp)
        target = [guest.guest_address]
        rate_results = [
            bench_rate("a: 1 kHz", target, 0.001, 10 * scale, workdir),
            bench_rate("a: 1 kHz, SCHED_FIFO", target, 0.001, 10 * scale, workdir, 10),
        ]
        for hz in (5_000, 10_000, 20_000):
            rate_results.append(
                bench_rate(f"b: {hz // 1000} kHz", target, 1 / hz, 5 * scale, workdir)
            )
        many = guest.extra_guest_addresses(100)
        rate_results.append(bench_rate("c: 100 targets", many, 0.01, 10 * scale, workdir))
        with guest.start_injector() as injector:
            accuracy = bench_accuracy(guest, injector, workdir, 5 if args.quick else 20, args.seed)
    results["rates"] = [asdict(r) for r in rate_results]
    results["accuracy"] = accuracy
    print(f"Machine: {conditions}\n")
    print(rate_table(rate_results) + "\n")
    print(
        f"Accuracy: {len(accuracy['lengths_s'])} blackouts, seed {accuracy['seed']}, "
        f"fping {accuracy['fping_summary']}\n"
    )
    print(accuracy_table(accuracy))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``measure analyze`` of a big run against pandas reading its ICMP file.

    .venv/bin/python bench/bench_timeline.py --keep DIR      # writes the hour-long run once
    .venv/bin/python bench/bench_derive.py DIR [--repeat 3] [--tree PATH ...]

Each measurement is a fresh process, timed from its start to its exit, with
its peak RSS (``wait4``'s ``ru_maxrss``):

* ``read``: ``pandas.read_csv`` of ``raw/icmp.csv`` (all columns, pandas'
  own type inference), the plain read the issue measures against;
* ``analyze``: ``python -m migration_blackout.harness.cli analyze DIR``, the
  whole command (summary.json, decomposition, plots, contact sheet), for
  each ``--tree`` (a checkout with its own ``.venv`` from its
  ``bootstrap.sh``, whose interpreter runs it: the same run, before and
  after a change, side by side on one machine), started in the tree (``-m``
  puts the working folder first on ``sys.path``). Not ``PYTHONPATH``: the
  working folder comes before it, so every tree ran the code of the folder
  the bench was started in; the bench checks which code each tree's
  interpreter imports.

Prints a Markdown table with the medians and each analyze's time as a ratio
of the read's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

READ = (
    "import sys, pandas as pd; "
    "pd.read_csv(sys.argv[1], skiprows=1, keep_default_na=False, na_values=[''])"
)


def measure(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS MiB of one process running ``command`` in ``cwd``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed ({status})")
    return wall, usage.ru_maxrss / 1024


def _tree_python(tree: Path) -> str:
    """The interpreter of ``tree``'s venv, once it is checked to import ``tree``'s code."""
    python = tree.resolve() / ".venv" / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"{tree} has no .venv: run its bootstrap.sh first")
    where = subprocess.run(
        [str(python), "-c", "import migration_blackout.analysis.rebuild as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        cwd=tree,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{python} imports {where}, not the code of {tree}")
    return str(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, action="append", default=[])
    args = parser.parse_args()
    trees = args.tree or [REPO]
    icmp = args.run / "raw" / "icmp.csv"
    rows: dict[str, list[tuple[float, float]]] = {"read": []}
    pythons = {tree: _tree_python(tree) for tree in trees}
    for tree in trees:
        rows[f"analyze ({tree})"] = []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for _ in range(args.repeat):  # interleaved: load on the machine hits every row alike
        rows["read"].append(measure([sys.executable, "-c", READ, str(icmp)], env, REPO))
        for tree in trees:
            command = [pythons[tree], "-m", "migration_blackout.harness.cli", "analyze"]
            # In the tree: `-m` puts the working folder first on sys.path.
            rows[f"analyze ({tree})"].append(measure([*command, str(args.run)], env, tree))
    read_s = statistics.median(wall for wall, _ in rows["read"])
    print(f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{icmp.stat().st_size / 2**20:.0f} MiB raw/icmp.csv, {args.repeat} runs each\n")
    print("| process | wall s (median, range) | x read | peak MiB (median) |")
    print("|---|---|---|---|")
    for name, samples in rows.items():
        walls = [wall for wall, _ in samples]
        wall = statistics.median(walls)
        peak = statistics.median(rss for _, rss in samples)
        print(
            f"| {name} | {wall:.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
            f"{wall / read_s:.1f}x | {peak:.0f} |"
        )


if __name__ == "__main__":
    main()

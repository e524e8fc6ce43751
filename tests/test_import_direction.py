"""The house's import direction: the product (harness, probes, analysis) stands on its
own, the lab plugs in from above (harness/labseam.py), and no module is on an import
circle.

Two ways of looking, because each misses what the other sees: every product module is
imported in a fresh interpreter in which the lab package and psrpcore cannot be
imported (a module that needs them at import time fails there), and every import
statement of the source, those inside functions included, is read and resolved (a
lazy import fails only when its line runs). Without the lab, the lab's commands and
``measure run --lab`` say what to install, in one line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from migration_blackout.harness.labseam import LAB_NEEDS

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "migration_blackout"
ROOMS = ("harness", "probes", "analysis", "lab")

# What each room may never import: the lab (and what only the lab needs), or a room
# above its own (lab > harness > analysis > probes).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "harness": (f"{PACKAGE}.lab", "psrpcore"),
    "analysis": (f"{PACKAGE}.lab", f"{PACKAGE}.harness", "psrpcore"),
    "probes": (f"{PACKAGE}.lab", f"{PACKAGE}.harness", f"{PACKAGE}.analysis", "psrpcore"),
}

# Run in a fresh interpreter: the lab and psrpcore unimportable, then every product
# module imported. Prints the modules it imported, one per line; given arguments, it
# then runs `measure` with them.
WITHOUT_THE_LAB = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import pkgutil
    import sys

    BLOCKED = ("migration_blackout.lab", "psrpcore")


    class NoLab(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, NoLab())
    import migration_blackout

    for room in ("harness", "probes", "analysis"):
        package = importlib.import_module(f"migration_blackout.{room}")
        print(package.__name__)
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
            print(module.name)
    if len(sys.argv) > 1:
        from migration_blackout.harness.cli import main

        sys.argv = ["measure", *sys.argv[1:]]
        main()
    """
)


def _without_the_lab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_LAB, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every module an import statement of ``path`` (the module ``module``) names,
    resolved to its absolute name, with its line; ``from X import name`` counts as X and
    as X.name (the name may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this package it imports (itself left out)."""
    paths = {_module_name(p): p for room in ROOMS for p in (REPO / room).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        statements: dict[int, list[str]] = {}
        for line, name in _imports(path, module):
            statements.setdefault(line, []).append(name)
        graph[module] = set()
        for base, *names in statements.values():
            # ``from package import module`` imports the module, not a name of the
            # package's __init__ (which commonly imports its modules in turn).
            graph[module] |= {name for name in names if name in paths}
            if not names or any(
                name not in paths or not name.startswith(base + ".") for name in names
            ):
                graph[module].add(base)
        graph[module] &= paths.keys()
        graph[module].discard(module)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative): each is a set of modules that import each other in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_static_check_resolves_what_the_rooms_write(tmp_path: Path) -> None:
    """Relative imports at any depth, inside functions too, are resolved to the module
    they name (``..lab`` would otherwise read as harmless)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from . import MigrationOutcome\n"
        "from ..qemu.migration import migrate\n"
        "def later():\n"
        "    from ...lab import plugin\n"
        "    import psrpcore.types\n"
    )
    names = {name for _, name in _imports(sample, "migration_blackout.harness.backends.sample")}
    assert {
        "migration_blackout.harness.backends.MigrationOutcome",
        "migration_blackout.harness.qemu.migration",
        "migration_blackout.lab.plugin",
        "psrpcore.types",
    } <= names


def test_the_rooms_import_only_downwards() -> None:
    """No import statement anywhere in a product module (lazy ones included) reaches the
    lab, psrpcore, or a room above its own."""
    broken = []
    checked = set()
    for room, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / room).rglob("*.py")):
            checked.add(path.relative_to(REPO).as_posix())
            for line, name in _imports(path, _module_name(path)):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    broken.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert {"harness/cli.py", "harness/backends/qemu.py", "probes/icmp.py"} <= checked
    assert len(checked) > 40
    assert not broken, "\n".join(broken)


def test_every_product_module_imports_without_the_lab() -> None:
    imported = _without_the_lab().stdout.split()
    product = [
        _module_name(path)
        for room in ("harness", "probes", "analysis")
        for path in (REPO / room).rglob("*.py")
    ]
    assert len(product) > 40
    assert sorted(set(imported) & set(product)) == sorted(product)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("lab", "up"), id="lab-up"),
        pytest.param(("lab", "status", "--json"), id="lab-status"),
        pytest.param(("lab",), id="lab"),
        pytest.param(("run", "--lab", "--out", "/nonexistent/never-written"), id="run-lab"),
    ],
)
def test_without_the_lab_its_commands_say_what_to_install(args: tuple[str, ...]) -> None:
    proc = _without_the_lab(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"measure: error: {LAB_NEEDS} (")
    assert not Path("/nonexistent/never-written").exists()


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_module_is_on_an_import_circle() -> None:
    """No two modules of the package import each other, directly or around a circle
    (lazy imports counted): each module can be read, and imported, on its own."""
    graph = _import_graph()
    assert "migration_blackout.lab.hyperv_emulator.screen" in graph
    assert len(graph) > 80
    assert _circles(graph) == []

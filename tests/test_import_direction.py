"""The house's imports, read from the source: every import statement (those inside
functions included, since a lazy import is still a dependency) resolved to the module
it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "migration_blackout"
ROOMS = ("harness", "probes", "analysis", "lab")


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

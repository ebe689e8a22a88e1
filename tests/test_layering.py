"""The control plane's layering, read from the imports themselves (ast), so it cannot drift.

As in go-control-plane: the translator is a pure function of policy; the cache holds what each
proxy group should have and knows nothing of where it comes from; the xDS server knows only a
cache interface; the controller (the publisher) is what joins store, translator and cache.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("controlplane", "inference")

# (importer, imported): module-name prefixes; an edge from the first to the second is refused.
FORBIDDEN = [
    ("controlplane.translate", "controlplane.store"),
    ("controlplane.translate", "controlplane.xds"),
    ("controlplane.translate", "controlplane.cache"),
    ("controlplane.translate", "controlplane.controller"),
    ("controlplane.translate", "controlplane.geo"),  # the table format is controlplane.geotable
    ("controlplane.geo", "controlplane.translate"),
    ("controlplane.cache", "controlplane.store"),
    ("controlplane.cache", "controlplane.translate"),
    ("controlplane.cache", "controlplane.controller"),
    ("controlplane.cache", "controlplane.policy"),
    ("controlplane.xds", "controlplane.controller"),
    ("controlplane.xds", "controlplane.store"),
    ("controlplane.xds", "controlplane.translate"),
    ("controlplane.xds", "controlplane.policy"),
    ("controlplane.canary", "controlplane.admin"),
    ("controlplane.geo", "controlplane.admin"),
    ("controlplane.quota", "controlplane.admin"),
    ("controlplane.replica", "controlplane.admin"),
    ("controlplane.web", "controlplane.admin"),
    ("inference", "controlplane"),
    ("controlplane", "inference"),
]
# Modules that import nothing of ours but what is listed.
LEAVES = {
    "controlplane.policy": ("controlplane.policy",),
    "controlplane.resources": (),
    "controlplane.groups": (),
    "controlplane.geotable": ("controlplane.geotable", "controlplane.policy"),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """Every module name `path` imports (relative imports resolved), with its line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from controlplane import resources` names a module
                if _is_module(f"{base}.{alias.name}"):
                    yield f"{base}.{alias.name}", node.lineno


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def edges() -> list[tuple[str, str, str]]:
    """(importer, imported, where) for every import of one of our modules by another."""
    found = []
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = _module(path)
            for name, line in _imported(path, module):
                if any(_within(name, t) for t in OURS):
                    found.append((module, name, f"{path.relative_to(ROOT)}:{line}"))
    return found


def test_the_parser_sees_imports() -> None:
    """The rules below would pass vacuously if no import were found."""
    found = {(a, b) for a, b, _ in edges()}
    assert ("controlplane.main", "controlplane.xds") in found
    assert ("controlplane.controller.publisher", "controlplane.store") in found
    assert ("controlplane.xds.server", "controlplane.cache") in found


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_no_forbidden_edge(importer: str, imported: str) -> None:
    bad = [f"{where}: {a} imports {b}" for a, b, where in edges() if _within(a, importer) and _within(b, imported)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_nothing_of_ours(leaf: str) -> None:
    allowed = LEAVES[leaf]
    bad = [f"{where}: {a} imports {b}" for a, b, where in edges()
           if _within(a, leaf) and not any(_within(b, x) for x in allowed)]
    assert not bad, "\n".join(bad)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_packages_form_no_cycle() -> None:
    """Between the control plane's packages (controlplane.X), imports go one way only."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges():
        if _package(a) != _package(b) and a.startswith("controlplane.") and b.startswith("controlplane."):
            graph.setdefault(_package(a), set()).add(_package(b))
    cycles = [f"{a} <-> {b}" for a, b in itertools.combinations(sorted(graph), 2)
              if _reaches(graph, a, b) and _reaches(graph, b, a)]
    assert not cycles, cycles


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False

"""The import graph of gateway/: no circle anywhere, and imports point one way (issue 13).

Every module of gateway/ is read with `ast` (no import runs): each `import` and `from ... import`
counts, at module level, inside functions and under `TYPE_CHECKING` alike. An edge goes to the
deepest gateway module named (`from gateway.channels import sms` is an edge to
`gateway.channels.sms`). Imports of the bare `gateway` package (its `__version__`) are left out:
its `__init__` imports nothing.

The rules are the table `RULES`. A rule names its importers (a package stands for itself and its
submodules) and either what they must not import or the only gateway modules they may import.
The leaf helpers that values may lean on are `LEAVES`: `exceptions` (the one exception tree,
which imports nothing of gateway), `text`, `yamlfile`, `townships`, `release_list` and `service`
(the async-with lifecycle base), which import nothing but each other.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

WEB = ("gateway.web", "gateway.console", "gateway.app")
ENTRY = ("gateway.cli", "gateway.__main__", "gateway.drill")
LEAVES = (
    "gateway.exceptions",
    "gateway.text",
    "gateway.yamlfile",
    "gateway.townships",
    "gateway.release_list",
    "gateway.service",
)
VALUES = ("gateway.model", "gateway.values")


@dataclass(frozen=True)
class Rule:
    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    """None: any gateway module not `forbidden`; else nothing of gateway but these."""
    exempt: tuple[str, ...] = ()
    """Importers the rule leaves out."""


RULES = [
    Rule(
        "policies-are-pure",
        ("gateway.policies",),
        forbidden=("gateway.channels", "gateway.store", *WEB),
    ),
    Rule(
        "channels-are-transports",
        ("gateway.channels",),
        forbidden=("gateway.store", "gateway.policies", "gateway.config", *WEB),
    ),
    Rule(
        "store-is-storage",
        ("gateway.store",),
        forbidden=("gateway.channels", "gateway.policies", *WEB),
    ),
    Rule("exceptions-import-nothing", ("gateway.exceptions",), only=()),
    Rule("leaves-import-leaves", LEAVES, only=LEAVES),
    Rule("values-import-leaves", VALUES, only=(*LEAVES, *VALUES)),
    Rule("only-the-cli-imports-web", ("gateway",), forbidden=WEB, exempt=(*WEB, *ENTRY)),
    # Several processes (gateway/coord) sit on top of the one-process flow: the dispatcher
    # knows only its `Relay` protocol, and only the app wires coordination in (the console
    # shares its sessions through the same Redis, gateway.redis_link).
    Rule(
        "coordination-is-on-top",
        ("gateway",),
        forbidden=("gateway.coord",),
        exempt=("gateway.coord", "gateway.app"),
    ),
    Rule("coordination-is-not-web", ("gateway.coord",), forbidden=(*WEB, "gateway.channels")),
]


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The gateway modules `module` imports, anywhere in its file."""

    def deepest(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(deepest(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                found.add(deepest(f"{source}.{alias.name}"))
    return {m for m in found if m.startswith("gateway.") and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, path, modules) for m, path in modules.items()}


GRAPH = _graph()


def _tangles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(group) > 1:
                groups.append(frozenset(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _circle(graph: Mapping[str, set[str]], group: frozenset[str]) -> list[str]:
    """One circle through `group`, from its first member in sorted order back to it."""
    try:
        graphlib.TopologicalSorter({m: graph[m] & group for m in group}).prepare()
    except graphlib.CycleError as exc:
        circle = list(reversed(exc.args[1]))[:-1]
        start = circle.index(min(circle))
        return [*circle[start:], *circle[:start], circle[start]]
    raise AssertionError(f"no circle in {sorted(group)}")


def test_the_walk_sees_every_kind_of_import() -> None:
    assert "gateway.policies.retry" in GRAPH
    assert "gateway.channels.base" in GRAPH["gateway.channels.sms"]  # from ... import (...)
    assert "gateway.cli" in GRAPH["gateway.__main__"]


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    [group] = _tangles(graph)
    assert group == {"a", "b", "c"}
    assert _circle(graph, group) == ["a", "b", "c", "a"]


def _packages(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The graph with each subpackage of gateway/ (channels, policies, store ...) as one node."""

    def node(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        packages.setdefault(node(module), set()).update(node(m) for m in imported)
    for name, imported in packages.items():
        imported.discard(name)
    return packages


@pytest.mark.parametrize(
    "graph",
    [
        pytest.param(GRAPH, id="modules"),
        pytest.param(_packages(GRAPH), id="packages"),
    ],
)
def test_no_import_circle(graph: Mapping[str, set[str]]) -> None:
    circles = [" -> ".join(_circle(graph, group)) for group in _tangles(graph)]
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("rule", [pytest.param(rule, id=rule.name) for rule in RULES])
def test_imports_point_one_way(rule: Rule) -> None:
    wrong = []
    for module, imported in sorted(GRAPH.items()):
        if not _within(module, rule.importers) or _within(module, rule.exempt):
            continue
        for target in sorted(imported):
            if _within(target, rule.forbidden) or (
                rule.only is not None and not _within(target, rule.only)
            ):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "forbidden imports:\n" + "\n".join(wrong)

"""The package's modules import each other in one direction: no import cycle (imports inside functions
included; ``if TYPE_CHECKING:`` blocks are not imports), and the layers point one way: search -> train ->
(methods, protocols, data) -> the method contract and the base modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pointtune": ROOT / "platform", "pointtune.methods": ROOT / "methods"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its body."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_imports_inside_functions(graph):
    """A guard for the analysis itself: ``cli`` imports ``search.sweep`` only inside functions."""
    assert "pointtune.search.sweep" in graph["pointtune.cli"]
    assert "pointtune.methods.finetune" in graph["pointtune.methods.seg"]


def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_the_cycle_check_fails_on_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# (importer prefix, imported prefixes it must not reach)
FORBIDDEN = [
    ("pointtune.train", ("pointtune.search", "pointtune.cli", "pointtune.preflight")),
    ("pointtune.protocols", ("pointtune.train", "pointtune.search", "pointtune.cli", "pointtune.config")),
    ("pointtune.methods", ("pointtune.train", "pointtune.search", "pointtune.cli", "pointtune.config",
                           "pointtune.tracking", "pointtune.cluster", "pointtune.layout", "pointtune.protocols")),
    ("pointtune.method", ("pointtune.methods", "pointtune.config", "pointtune.train", "pointtune.search")),
    ("pointtune.data", ("pointtune.train", "pointtune.search", "pointtune.config", "pointtune.protocols",
                        "pointtune.methods")),
    ("pointtune.layout", ("pointtune.",)),
]


@pytest.mark.parametrize("importer, forbidden", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_layers_point_one_way(graph, importer, forbidden):
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix if prefix.endswith(".") else prefix + ".")

    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items() if under(name, importer)
                   for target in targets if any(under(target, f) and not under(target, importer) for f in forbidden))
    assert wrong == []

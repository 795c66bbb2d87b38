"""The project's import graph, read from the source (every import, module-level or inside a
function; ``if TYPE_CHECKING:`` blocks left out):

* it has no cycle: no import, at module level or deferred into a function, closes a loop
  (importing ``a.b.c`` runs ``a`` and ``a.b`` first, so those count as imported too, except
  the importer's own packages);
* the base app never imports the app built on it: nothing in ``annotation`` imports
  ``training`` (the training dashboard adds its panels through ``DASHBOARD_PANELS``);
* ``training.ml`` imports neither Django nor the apps.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("accounts", "annotation", "training", "config")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


class _Imports(ast.NodeVisitor):
    """Every name a module imports, with where (module level or in a function)."""

    def __init__(self, module: str, is_package: bool, modules: set[str]) -> None:
        self.module, self.is_package, self.modules = module, is_package, modules
        self.names: list[tuple[str, str, bool]] = []
        """(module, where, explicit): explicit when its own names are imported"""
        self.depth = 0

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def _add(self, name: str, *, explicit: bool) -> None:
        self.names.append((name, "function" if self.depth else "module", explicit))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, explicit=False)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".")
            keep = len(parts) - node.level + (1 if self.is_package else 0)
            base = ".".join(parts[:keep] + ([node.module] if node.module else []))
        # ``from X import n``: n is a submodule (X runs first) or a name of X itself, which
        # then must be defined when the import runs: an explicit import of X.
        submodules = [f"{base}.{alias.name}" for alias in node.names]
        self._add(base, explicit=not all(name in self.modules for name in submodules))
        for name in submodules:
            self._add(name, explicit=False)


def _graph() -> dict[str, dict[str, str]]:
    """``{module: {imported project module: "module" or "function"}}``. The module an import
    names is a target; so are the packages above it, which Python runs first, except the
    importer's own (already running)."""
    modules = _modules()
    graph: dict[str, dict[str, str]] = {name: {} for name in modules}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", set(modules))
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for imported, where, explicit in visitor.names:
            if imported not in modules:
                continue
            parts = imported.split(".")
            above = {".".join(parts[:i]) for i in range(1, len(parts))} - own
            for target in {imported, *above} if explicit else above | {imported} - own:
                if target != name and graph[name].get(target) != "module":
                    graph[name][target] = where
    return graph


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_deferred_imports():
    graph = _graph()
    assert graph["training.jobs.lifecycle"]["training.jobs"] == "module"
    assert "training.ml.reward_model" in graph["training.jobs.acquisition"]  # inside run()
    assert graph["training.jobs.acquisition"]["training.ml.reward_model"] == "function"


def test_no_import_closes_a_cycle():
    assert not _cycles(_graph())


def test_annotation_never_imports_training():
    imports = [
        (module, target)
        for module, targets in _graph().items()
        if module.startswith("annotation")
        for target in targets
        if target == "training" or target.startswith("training.")
    ]
    assert not imports


def test_ml_code_imports_no_django_and_no_app():
    offenders = []
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("training.ml"):
            continue
        visitor = _Imports(name, path.name == "__init__.py", set(modules))
        visitor.visit(ast.parse(path.read_text()))
        for imported, _, _ in visitor.names:
            top = imported.split(".")[0]
            inside_ml = imported.startswith("training.ml")
            if top in ("django", "rest_framework", "celery", "annotation", "config") or (
                top == "training" and not inside_ml and imported != "training"
            ):
                offenders.append((name, imported))
    assert not offenders

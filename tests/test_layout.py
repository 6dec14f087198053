"""The import structure: entry points -> engine -> models, without circles (lazy imports inside functions count)."""
from __future__ import annotations

import ast

from helpers import REPO

PACKAGES = ("engine", "models", "data")
ENTRY_POINTS = {"train", "val", "detect", "export", "compare", "hubconf"}


def module_imports() -> dict[str, set[str]]:
    """Each library module's dotted name -> the project modules it imports anywhere in its file."""
    files = {".".join(path.relative_to(REPO).with_suffix("").parts): path
             for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    known = set(files) | ENTRY_POINTS
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name.removesuffix(".__init__")] = {t for t in targets if t in known and t != name}
    return graph


def test_no_library_module_imports_an_entry_point():
    offenders = {name: sorted(targets & ENTRY_POINTS) for name, targets in module_imports().items()
                 if targets & ENTRY_POINTS}
    assert not offenders


def test_there_are_no_import_circles():
    graph = module_imports()
    state: dict[str, str] = {}
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles


def test_the_model_side_never_imports_the_engine():
    """models/ is the bottom layer: the engine builds on it, never the other way round."""
    offenders = {name: sorted(t for t in targets if t.split(".")[0] == "engine")
                 for name, targets in module_imports().items() if name.split(".")[0] == "models"}
    assert not {name: targets for name, targets in offenders.items() if targets}

"""The layers of docs/architecture.md, read from the import graph (components.imports): no upward
import, no cycle, no stage module importing another, no private name taken from another module.
Each rule is also run on a small synthetic tree that breaks it, so a passing check means something."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.imports import PACKAGES, Import, imports_of, module_name
from tests.conftest import PROJECT

# Each layer and what it may import (itself included).
MAY_IMPORT = {
    "cli": {"cli", "console", "flows", "services", "registry", "components"},
    "console": {"console", "flows", "services", "registry", "components"},
    "flows": {"flows", "components", "registry", "services"},
    "services": {"services", "components"},
    "components": {"components"},
    "registry": {"registry"},
}
STAGES = "components.stages"

Graph = dict[str, tuple[Path, list[Import]]]


def import_graph(root: Path) -> Graph:
    """Every module of the project's packages under `root`: its file and its imports of project modules."""
    return {
        module_name(root, path): (path, imports_of(root, path))
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def _where(root: Path, path: Path, imp: Import) -> str:
    return f"{path.relative_to(root)}:{imp.line}"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def upward_imports(root: Path) -> list[str]:
    """Imports of a layer the importer's layer may not use."""
    found = []
    for module, (path, imports) in import_graph(root).items():
        layer = module.split(".")[0]
        for imp in imports:
            if imp.module.split(".")[0] not in MAY_IMPORT[layer]:
                found.append(f"{_where(root, path, imp)}: {layer}/ imports {imp.module} (allowed: {', '.join(sorted(MAY_IMPORT[layer]))})")
    return found


def stage_imports(root: Path) -> list[str]:
    """A stage module (components/stages/*) importing another stage module, or the stages package."""
    found = []
    for module, (path, imports) in import_graph(root).items():
        if not module.startswith(f"{STAGES}."):
            continue
        for imp in imports:
            if (imp.module == STAGES or imp.module.startswith(f"{STAGES}.")) and imp.module != module:
                found.append(f"{_where(root, path, imp)}: stage {module} imports {imp.module}; shared code belongs outside stages/")
    return found


def private_imports(root: Path) -> list[str]:
    """A `_private` name (or module) taken from another module."""
    found = []
    for module, (path, imports) in import_graph(root).items():
        for imp in imports:
            if imp.module == module:
                continue
            private = [n for n in imp.names if _is_private(n)]
            if _is_private(imp.module.rsplit(".", 1)[-1]):
                private.append(imp.module)
            if private:
                found.append(f"{_where(root, path, imp)}: {module} imports private {', '.join(private)} from {imp.module}")
    return found


def import_cycles(root: Path) -> list[str]:
    """One cycle per strongly connected group of modules (imports inside functions count), each edge
    named by file and line."""
    graph = import_graph(root)
    edges: dict[str, dict[str, str]] = {}  # module -> imported module -> where
    for module, (path, imports) in graph.items():
        edges[module] = {}
        for imp in imports:
            if imp.module in graph:
                edges[module].setdefault(imp.module, _where(root, path, imp))
    found = []
    for group in _strongly_connected(edges):
        start = min(group)
        if len(group) == 1 and start not in edges[start]:
            continue
        cycle = _path_back(edges, group, start)
        found.append("import cycle: " + "; ".join(f"{edges[a][b]} {a} -> {b}" for a, b in zip(cycle, cycle[1:])))
    return found


def _strongly_connected(edges: dict[str, dict[str, str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def _path_back(edges: dict[str, dict[str, str]], group: set[str], start: str) -> list[str]:
    """The shortest path start -> ... -> start inside `group` (breadth first)."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node]):
                if nxt == start:
                    path = [node]
                    while (before := previous[path[-1]]) is not None:
                        path.append(before)
                    return [*reversed(path), start]
                if nxt in group and nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


RULES = [upward_imports, import_cycles, stage_imports, private_imports]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_project_keeps_its_layers(rule) -> None:
    found = rule(PROJECT)
    assert not found, "\n".join(found)


# -- each rule catches what it is for ---------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    """A project under `root`: `files` (path -> source) with an `__init__.py` in every package folder."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in Path(rel).parents[:-1]:
            (root / folder / "__init__.py").touch()
        path.write_text(text)
    return root


def test_an_upward_import_is_named_by_file_and_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "flows/pipeline.py": "def run():\n    pass\n",
        "components/stages/train.py": "import os\n\nfrom flows.pipeline import run\n",
        "cli/main.py": "from flows.pipeline import run\nfrom registry.db import url\n",
        "registry/db.py": "url = 'sqlite://'\n\n\ndef f():\n    from services.service import app\n",
        "services/service.py": "app = None\n",
    })
    found = upward_imports(root)
    assert len(found) == 2, found
    assert found[0].startswith("components/stages/train.py:3: components/ imports flows.pipeline")
    assert found[1].startswith("registry/db.py:5: registry/ imports services.service")


def test_an_import_cycle_is_found_through_a_function_level_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "flows/a.py": "from flows import b\n",
        "flows/b.py": "def f():\n    from flows.c import g\n",
        "flows/c.py": "import flows.a\n\n\ndef g():\n    pass\n",
        "flows/d.py": "from flows.a import b\n",  # into the cycle, not part of it
    })
    assert import_cycles(root) == [
        "import cycle: flows/a.py:1 flows.a -> flows.b; flows/b.py:2 flows.b -> flows.c; flows/c.py:1 flows.c -> flows.a"
    ]
    (root / "flows/b.py").write_text("def f():\n    pass\n")
    assert import_cycles(root) == []


def test_a_stage_importing_another_stage_is_caught(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "components/ml/metrics.py": "def auc():\n    pass\n",
        "components/stages/train.py": "from components.ml.metrics import auc\n",
        "components/stages/evaluate.py": "from components.ml.metrics import auc\n\n\ndef f():\n    from components.stages import train\n",
    })
    assert stage_imports(root) == [
        "components/stages/evaluate.py:5: stage components.stages.evaluate imports components.stages.train; shared code belongs outside stages/"
    ]


def test_a_private_name_from_another_module_is_caught(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "components/documents/report.py": "def _svg():\n    pass\n\n\ndef html():\n    pass\n",
        "components/stages/validate.py": "from components.documents.report import _svg, html\n",
        "components/stages/gate.py": "from components.documents.report import html\nfrom components import __doc__\n",
    })
    assert private_imports(root) == [
        "components/stages/validate.py:1: components.stages.validate imports private _svg from components.documents.report"
    ]

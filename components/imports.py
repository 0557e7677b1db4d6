"""The project's own import graph, read from source (never by importing it).

One reading serves three needs: the layer test (no upward import, no cycle), the test that each
`dvc.yaml` stage lists every module its code reads, and the Bento, which ships only the modules
the service imports and pins the distributions they import from outside.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("cli", "components", "console", "flows", "registry", "services")


@dataclass(frozen=True)
class Import:
    """One `import` statement's target inside the project: the module and the names taken from it."""

    module: str
    names: tuple[str, ...]
    line: int


def module_path(root: Path, module: str) -> Path | None:
    """The source file of dotted `module` under `root` (a package's `__init__.py`), or None."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(root: Path, path: Path) -> str:
    """The dotted name of the source file `path` under `root`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """Every import of a project module in `path`, at any depth (function-level imports included).

    `from a.b import c` counts as an import of `a.b.c` when that is a module, else of `a.b` taking `c`.
    """
    found: list[Import] = []
    for node in _absolute_imports(path):
        if isinstance(node, ast.Import):
            found += [Import(a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] in packages]
        elif node.module.split(".")[0] in packages:
            names: list[str] = []
            for alias in node.names:
                if module_path(root, f"{node.module}.{alias.name}") is not None:
                    found.append(Import(f"{node.module}.{alias.name}", (), node.lineno))
                else:
                    names.append(alias.name)
            if names or not node.names:
                found.append(Import(node.module, tuple(names), node.lineno))
    return found


def external_imports(paths: Iterable[Path], packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Top-level names of the modules outside the project and the standard library that the source
    files `paths` import, at any depth (function-level and optional imports included)."""
    found = {
        name.split(".")[0]
        for path in paths
        for node in _absolute_imports(path)
        for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])
    }
    return {name for name in found if name not in packages and name not in sys.stdlib_module_names}


def _absolute_imports(path: Path) -> Iterator[ast.Import | ast.ImportFrom]:
    """The `import` and absolute `from ... import` statements of the source file `path`, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            yield node


def import_closure(root: Path, modules: list[str], packages: tuple[str, ...] = PACKAGES) -> set[Path]:
    """The source files of `modules` and of every project module they import, transitively,
    with the `__init__.py` of each package on the way (Python runs those too)."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            path = module_path(root, ".".join(parts[:depth]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += [i.module for i in imports_of(root, path, packages)]
    return seen

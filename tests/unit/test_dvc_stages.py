"""Each dvc.yaml stage lists every source file and params key its code reads, so that a change to
either re-runs the stage (a missed one leaves stale outputs that `dvc repro` calls up to date)."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from components.imports import import_closure, module_path

PROJECT = Path(__file__).resolve().parents[2]
STAGES: dict = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    found = re.search(r"\bpython -m (\S+)", stage["cmd"])
    assert found, f"{stage['cmd']!r}: no `python -m MODULE`"
    return found.group(1)


def is_empty(path: Path) -> bool:
    """An `__init__.py` with no statement but a docstring runs nothing a stage's result depends on."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def covered(entry: str, listed: list[str]) -> bool:
    """`entry` (a path or a dotted params key) is one of `listed` or lies under one of them."""
    sep = "/" if "/" in entry else "."
    return any(entry == item or entry.startswith(item.rstrip(sep) + sep) for item in listed)


def params_read(source: Path) -> set[str]:
    """The params keys `main()` reads: attribute chains on the value of `load_params(...)`, whether
    bound to a name (`params.orchestration.train_processes`) or used at once (`load_params(p).evaluate`)."""
    tree = ast.parse(source.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")

    def is_load(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load_params"

    bound = {t.id for n in ast.walk(main) if isinstance(n, ast.Assign) and is_load(n.value) for t in n.targets if isinstance(t, ast.Name)}
    inner = {id(n.value) for n in ast.walk(main) if isinstance(n, ast.Attribute)}
    keys = set()
    for node in ast.walk(main):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue  # only whole chains: `a.b.c`, not its `a.b`
        chain, root = [], node
        while isinstance(root, ast.Attribute):
            chain.insert(0, root.attr)
            root = root.value
        if is_load(root) or (isinstance(root, ast.Name) and root.id in bound):
            keys.add(".".join(chain))
    return keys


def listed_params(stage: dict) -> list[str]:
    keys: list[str] = []
    for entry in stage.get("params", []):
        keys += [entry] if isinstance(entry, str) else [k for values in entry.values() for k in values]
    return keys


def test_the_checks_see_what_they_should():
    assert covered("components/ml/models.py", ["components/ml"]) and not covered("components/ml2.py", ["components/ml"])
    assert covered("train.model.width", ["train"]) and not covered("training", ["train"])
    assert "orchestration.train_processes" in params_read(PROJECT / "components/stages/train.py")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_its_import_closure(name):
    stage = STAGES[name]
    module = stage_module(stage)
    assert module_path(PROJECT, module) is not None, f"{name}: {module} not found"
    files = sorted(p.relative_to(PROJECT).as_posix() for p in import_closure(PROJECT, [module]) if not is_empty(p))
    missing = [f for f in files if not covered(f, stage.get("deps", []))]
    assert not missing, f"dvc.yaml stage {name} runs {module}, which reads {missing}: add them to its deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_list_the_keys_main_reads(name):
    stage = STAGES[name]
    read = params_read(module_path(PROJECT, stage_module(stage)))
    assert read, f"{name}: main() reads no params (is `load_params` still how it reads them?)"
    missing = sorted(k for k in read if not covered(k, listed_params(stage)))
    assert not missing, f"dvc.yaml stage {name} reads params {missing}: add them to its params"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_no_code_it_does_not_read(name):
    """A listed source file the stage never imports re-runs it for nothing when that file changes."""
    stage = STAGES[name]
    files = [p.relative_to(PROJECT).as_posix() for p in import_closure(PROJECT, [stage_module(stage)])]
    code = [d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py") or (PROJECT / d).is_dir() and d.startswith("components")]
    stale = [d for d in code if not any(covered(f, [d]) for f in files)]
    assert not stale, f"dvc.yaml stage {name} lists {stale}, which {stage_module(stage)} does not import"

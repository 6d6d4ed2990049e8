"""Dependencies point one way: config/data/models -> train/tasks/hub -> cli (STYLE.md rule 1).

Checks module-level imports only: a few convenience methods on the model (``save_pretrained``,
``zero_shot``, ``ground``) import their task lazily, inside the method, by design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "maco_cxr"

FORBIDDEN = {
    "config": ("maco_cxr.models", "maco_cxr.data", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub",
               "maco_cxr.cli"),
    "errors": ("maco_cxr.",),
    "metrics": ("maco_cxr.models", "maco_cxr.data", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub",
                "maco_cxr.cli"),
    "models": ("maco_cxr.data", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.cli"),
    "data": ("maco_cxr.models", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.cli"),
    "train": ("maco_cxr.tasks", "maco_cxr.cli"),
    "tasks": ("maco_cxr.cli",),
    "hub": ("maco_cxr.train", "maco_cxr.tasks", "maco_cxr.cli"),
    "plots": ("maco_cxr.models", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.cli"),
}


def _module_level_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at run time
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _files(part: str) -> list[Path]:
    target = SRC / part
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(part):
    for path in _files(part):
        for name in _module_level_imports(path):
            bad = [prefix for prefix in FORBIDDEN[part] if name.startswith(prefix)]
            assert not bad, f"{path.relative_to(SRC)} imports {name} (layer {part!r} must not)"


def test_only_cli_and_distributed_read_environment_variables():
    allowed = {SRC / "cli", SRC / "train" / "distributed.py"}
    for path in SRC.rglob("*.py"):
        if any(path == a or a in path.parents for a in allowed):
            continue
        text = path.read_text()
        assert "os.environ" not in text and "getenv(" not in text, f"{path.relative_to(SRC)} reads env vars"


def test_library_never_prints():
    for path in SRC.rglob("*.py"):
        if SRC / "cli" in path.parents or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                pytest.fail(f"{path.relative_to(SRC)}:{node.lineno} calls print(); use logging or return values")

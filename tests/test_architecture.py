"""Dependencies point one way: config -> data/models -> hub/inference/train -> tasks -> cli.

Every import counts, also those inside functions (a lazy import is still a dependency); only
``if TYPE_CHECKING:`` blocks, which never run, are left out.
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
    "models": ("maco_cxr.data", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.inference",
               "maco_cxr.cli"),
    "inference": ("maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.cli"),
    "data": ("maco_cxr.models", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.inference",
             "maco_cxr.cli"),
    "train": ("maco_cxr.tasks", "maco_cxr.cli"),
    "tasks": ("maco_cxr.cli",),
    "hub": ("maco_cxr.train", "maco_cxr.tasks", "maco_cxr.inference", "maco_cxr.cli"),
    "plots": ("maco_cxr.models", "maco_cxr.train", "maco_cxr.tasks", "maco_cxr.hub", "maco_cxr.cli"),
}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth, except inside ``if TYPE_CHECKING:``."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args \
                and isinstance(node.args[0], ast.Constant):
            names.append(str(node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def _files(part: str) -> list[Path]:
    target = SRC / part
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(part):
    for path in _files(part):
        for name in _imports(path):
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


def test_imports_inside_functions_are_found(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import maco_cxr.hub\n"
                      "def f():\n    from maco_cxr.tasks.zeroshot import zero_shot\n    import maco_cxr.data.io\n"
                      "    importlib.import_module('maco_cxr.cli')\n")
    assert _imports(source) == ["typing", "maco_cxr.tasks.zeroshot", "maco_cxr.data.io", "maco_cxr.cli"]

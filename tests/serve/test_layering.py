"""The viewer sits between tasks and cli: it imports no CLI code, and only the CLI imports it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "maco_cxr"


def _imports(path: Path) -> list[str]:
    """Every absolute module name ``path`` imports, at any depth (lazy imports count)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_serve_does_not_import_the_cli():
    files = sorted((SRC / "serve").rglob("*.py"))
    assert files
    for path in files:
        assert not [n for n in _imports(path) if n.startswith("maco_cxr.cli")], path.name


def test_only_the_cli_imports_serve():
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] in ("serve", "cli"):
            continue
        assert not [n for n in _imports(path) if n.startswith("maco_cxr.serve")], path


def test_the_page_ships_with_the_package():
    from importlib import resources

    assert resources.files("maco_cxr.serve").joinpath("static/index.html").is_file()

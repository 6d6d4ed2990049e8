"""Dependencies point one way, layer by layer (a layer may import the ones below it, never up):

    errors, _version  ->  _atomic  ->  config  ->  data | models | metrics  ->  plots (metrics)
    ->  inference (data, models) | hub (data, models)  ->  runtime (inference)  ->  train (hub, runtime)
    ->  tasks | export (hub, models; neither imports the other)  ->  serve (tasks)  ->  cli  ->  __main__

Every package and top-level module under ``src/maco_cxr`` has a rule in :data:`FORBIDDEN` (one
without a rule fails), and no module inside the package imports the package root, whose lazy
re-exports reach every layer. Every import counts: absolute and relative (``from .x import y``,
resolved against the importing module), inside functions (a lazy import is still a dependency)
and ``importlib.import_module("maco_cxr.x")`` with a literal or f-string prefix; only
``if TYPE_CHECKING:`` bodies, which never run, are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "maco_cxr"
PACKAGE = SRC.name
NOT_LAYERS = ("__init__",)  # the package root: its rule is test_nothing_imports_the_package_root


def _parts() -> list[str]:
    """The layers: each top-level module and each folder holding Python code."""
    names = {path.stem for path in SRC.glob("*.py")}
    names |= {path.name for path in SRC.iterdir() if path.is_dir() and any(path.rglob("*.py"))}
    return sorted(names - set(NOT_LAYERS))


def _every(*but: str) -> tuple[str, ...]:
    """Every layer but ``but``: the rule of a bottom layer, so a new package is forbidden to it too."""
    return tuple(part for part in _parts() if part not in but)


_TOP = ("cli", "__main__")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "errors": _every("errors"),
    "_version": _every("_version"),
    "_atomic": _every("_atomic", "errors", "_version"),
    "config": _every("config", "_atomic", "errors", "_version"),
    "cache": _every("cache", "errors", "_version"),
    "cards": _every("cards", "errors", "_version"),
    "push": _every("push", "cards", "_atomic", "errors", "_version"),
    "data": (
        "families",
        "models",
        "metrics",
        "plots",
        "inference",
        "hub",
        "runtime",
        "pretraining",
        "tasks",
        "export",
        "serve",
        *_TOP,
    ),
    "models": (
        "families",
        "data",
        "metrics",
        "plots",
        "inference",
        "hub",
        "runtime",
        "pretraining",
        "tasks",
        "export",
        "serve",
        *_TOP,
    ),
    "metrics": (
        "families",
        "data",
        "models",
        "plots",
        "inference",
        "hub",
        "runtime",
        "pretraining",
        "tasks",
        "export",
        "serve",
        *_TOP,
    ),
    "plots": ("models", "families", "inference", "hub", "runtime", "pretraining", "tasks", "export", "serve", *_TOP),
    "families": ("inference", "runtime", "pretraining", "tasks", "export", "serve", *_TOP),
    "inference": ("hub", "runtime", "pretraining", "tasks", "export", "serve", *_TOP),
    "hub": ("families", "inference", "runtime", "pretraining", "tasks", "export", "serve", *_TOP),
    "runtime": ("families", "pretraining", "tasks", "hub", "export", "serve", *_TOP),
    "pretraining": ("tasks", "export", "serve", *_TOP),
    "tasks": ("export", "serve", *_TOP),
    "export": ("runtime", "pretraining", "tasks", "serve", *_TOP),
    "serve": ("runtime", "pretraining", "export", *_TOP),
    "cli": ("__main__",),
    "__main__": _every("__main__", "cli"),
}


def _module_name(path: Path) -> str:
    """``maco_cxr.tasks.predict`` for ``src/maco_cxr/tasks/predict.py`` (a package: its folder)."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """True when ``name`` (``maco_cxr.x.y``) is a module or package of the source tree."""
    target = SRC.parent.joinpath(*name.split("."))
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def _resolve_from(node: ast.ImportFrom, module: str | None, path: Path) -> list[str]:
    """What ``from ... import a, b`` imports: ``base.a`` where that is a module, else ``base``."""
    base = node.module or ""
    if node.level:
        if module is None:
            raise AssertionError(f"{path}: a relative import outside the package")
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        if node.level > len(package):
            raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top of {PACKAGE}")
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base for alias in node.names]


def _import_module_target(node: ast.Call) -> str | None:
    """The module of ``import_module("x")``, or the literal prefix of ``import_module(f"x.{y}")``."""
    if not (ast.unparse(node.func).endswith("import_module") and node.args):
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    if isinstance(first, ast.JoinedStr) and first.values and isinstance(first.values[0], ast.Constant):
        return str(first.values[0].value).rstrip(".") or None
    return None


def _imports(path: Path, module: str | None = None) -> list[str]:
    """Every module ``path`` imports, at any depth, except inside ``if TYPE_CHECKING:``.

    ``module`` (default: the name ``path`` has under ``src``) anchors relative imports.
    """
    if module is None and SRC in path.parents:
        module = _module_name(path)
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.extend(_resolve_from(node, module, path))
        elif isinstance(node, ast.Call) and (target := _import_module_target(node)) is not None:
            names.append(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def _layer(name: str) -> str | None:
    """The layer an imported name belongs to (``None``: outside the package, or its root)."""
    parts = name.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def _files(part: str) -> list[Path]:
    target = SRC / part
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


def test_every_layer_has_a_rule():
    parts = _parts()
    assert {"cli", "data", "export", "runtime", "serve", "tasks", "errors"} <= set(parts)
    missing = sorted(set(parts) - set(FORBIDDEN))
    assert not missing, (
        f"{missing} under src/{PACKAGE} have no rule in FORBIDDEN: add one (the layers they must not import)"
    )
    stale = sorted(set(FORBIDDEN) - set(parts))
    assert not stale, f"FORBIDDEN has rules for {stale}, which no longer exist: remove or rename them"
    unknown = sorted({name for rule in FORBIDDEN.values() for name in rule} - set(parts))
    assert not unknown, f"FORBIDDEN names {unknown}, which are not layers (a typo forbids nothing)"
    assert all(part not in FORBIDDEN[part] for part in FORBIDDEN), "a layer may import its own modules"


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(part):
    for path in _files(part):
        for name in _imports(path):
            assert _layer(name) not in FORBIDDEN[part], (
                f"{path.relative_to(SRC)} imports {name} (layer {part!r} must not import {_layer(name)!r})"
            )


def test_nothing_imports_the_package_root():
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "__init__.py":
            continue
        roots = [name for name in _imports(path) if name == PACKAGE]
        assert not roots, (
            f"{path.relative_to(SRC)} imports the package root `{PACKAGE}`; import the "
            f"module that defines the name (e.g. `from {PACKAGE}.data.io import read_image`)"
        )


def test_only_cli_distributed_and_the_cache_read_environment_variables():
    allowed = {SRC / "cli", SRC / "runtime" / "distributed.py", SRC / "cache.py"}
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
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import maco_cxr.hub\n"
        "else:\n    import json\n"
        "def f():\n    from maco_cxr.tasks.zeroshot import zero_shot\n"
        "    import maco_cxr.data.io\n"
        "    importlib.import_module('maco_cxr.cli')\n"
        "    importlib.import_module(f'maco_cxr.metrics.{name}')\n"
    )
    assert _imports(source) == [
        "typing",
        "json",
        "maco_cxr.tasks.zeroshot",
        "maco_cxr.data.io",
        "maco_cxr.cli",
        "maco_cxr.metrics",
    ]


def test_relative_imports_are_resolved(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from . import zeroshot, helper\nfrom .finetune import engine\n"
        "from ..data.io import read_image\nfrom .. import cli, zero_shot\n"
    )
    assert _imports(source, "maco_cxr.tasks.m") == [
        "maco_cxr.tasks.zeroshot",
        "maco_cxr.tasks",
        "maco_cxr.tasks.finetune.engine",
        "maco_cxr.data.io",
        "maco_cxr.cli",
        "maco_cxr",
    ]
    package = tmp_path / "__init__.py"
    package.write_text("from . import zeroshot\nfrom .. import errors\n")
    assert _imports(package, "maco_cxr.tasks") == ["maco_cxr.tasks.zeroshot", "maco_cxr.errors"]
    (tmp_path / "deep.py").write_text("from ... import x\n")
    with pytest.raises(AssertionError, match="beyond the top"):
        _imports(tmp_path / "deep.py", "maco_cxr.tasks.m")


def test_a_relative_upward_import_breaks_its_layers_rule(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..tasks import zeroshot\n")
    assert [_layer(name) for name in _imports(source, "maco_cxr.models.m")] == ["tasks"]
    assert "tasks" in FORBIDDEN["models"]


def test_a_module_without_a_rule_is_a_failure(monkeypatch):
    monkeypatch.setattr(f"{__name__}._parts", lambda: [*sorted(FORBIDDEN), "newpackage"])
    with pytest.raises(AssertionError, match=r"\['newpackage'\] under src/maco_cxr have no rule"):
        test_every_layer_has_a_rule()


def test_the_root_import_rule_sees_both_spellings(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import maco_cxr\nfrom maco_cxr import read_image, errors\n")
    assert [name for name in _imports(source) if name == PACKAGE] == ["maco_cxr", "maco_cxr"]

"""The built wheel carries the recipes: installed into a bare folder and run from outside the
source tree, ``demo --quick`` and ``pretrain --config tiny-synthetic`` (a recipe by name) work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from maco_cxr.config import recipe_names

REPO = Path(__file__).resolve().parents[1]
MICRO = [
    "model.vision.img_size=64",
    "model.vision.embed_dim=32",
    "model.vision.depth=1",
    "model.vision.num_heads=2",
    "model.decoder.embed_dim=32",
    "model.decoder.num_heads=2",
    "model.text.hidden_size=32",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "model.text.intermediate_size=64",
    "model.text.max_length=16",
]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{command}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_and_a_named_recipe_outside_the_tree(tmp_path: Path) -> None:
    # build from a copy, so the shared checkout gets no build/ or egg-info folder
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "dist").glob("maco_cxr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(
            n.removeprefix("maco_cxr/recipes/").removesuffix(".yaml")
            for n in archive.namelist()
            if n.startswith("maco_cxr/recipes/")
        )
    assert shipped == recipe_names() and len(shipped) == 21

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], tmp_path, env)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env["PYTHONPATH"] = str(site)
    probe = (
        "import maco_cxr, maco_cxr.config as c; print(maco_cxr.__file__); "
        "print(c.resolve_recipe('tiny-synthetic', 'pretrain'))"
    )
    where = _run([sys.executable, "-c", probe], outside, env).stdout.split()
    assert where == [
        str(site / "maco_cxr" / "__init__.py"),
        str(site / "maco_cxr" / "recipes" / "pretrain" / "tiny-synthetic.yaml"),
    ]

    demo = _run([sys.executable, "-m", "maco_cxr", "demo", "--quick", "--out", "report", "--no-progress"], outside, env)
    assert "(a --quick run: its numbers mean nothing)" in demo.stdout
    assert (outside / "report" / "index.html").is_file() and (outside / "report" / "summary.json").is_file()

    # the installed console script, a recipe by name, with the few overrides that make it short
    pretrain = _run(
        [
            str(site / "bin" / "maco-cxr"),
            "pretrain",
            "--config",
            "tiny-synthetic",
            "--synthetic",
            "12",
            "--output-dir",
            "run",
            "--no-progress",
            "data.workers=0",
            "optim.batch_size=2",
            "optim.max_steps=3",
            "optim.warmup_steps=1",
            "runtime.device=cpu",
            *MICRO,
        ],
        outside,
        env,
    )
    assert "model written to" in pretrain.stdout and (outside / "run" / "final" / "model.safetensors").is_file()
    assert len((outside / "run" / "metrics.csv").read_text().splitlines()) == 4  # header + 3 steps

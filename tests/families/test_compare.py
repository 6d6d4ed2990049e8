"""`compare` on phantoms with MaCo and tiny models of the peer families in their authors' layouts: zero-shot,
grounding, linear probe and fine-tuning write compare.csv / .md / .png with intervals and paired tests."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from maco_cxr.cli import main
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import ConfigError
from maco_cxr.metrics import delong_test
from maco_cxr.tasks.compare import COLUMNS, compare
from maco_cxr.tasks.zeroshot import evaluate_zero_shot

MACO = str(Path(__file__).resolve().parents[1] / "assets" / "official-maco-tiny" / "maco.pth")
FINETUNE = ["optim.steps=2", "optim.batch_size=8", "optim.warmup_steps=1", "data.workers=0", "evaluation.batch_size=16"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(out, 24, seed=0, size=64, split_fractions=(0.5, 0.25, 0.25))
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "compare.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def _run(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined AUCs of tiny phantom splits
        return compare(*args, **kwargs)


def test_zero_shot_compares_three_families_with_delong_against_the_first(
    phantoms: Path, tmp_path: Path, chexzero_file: Path, mrm_spec: str, biovil_spec: tuple[str, Path]
) -> None:
    biovil, tokenizer = biovil_spec
    models = [MACO, f"chexzero:{chexzero_file}", mrm_spec, biovil]
    result = _run(models, "zeroshot", "manifest", phantoms, tmp_path, tokenizers={"biovil": tokenizer}, n_bootstrap=50)
    rows = _rows(tmp_path)
    assert {p.name for p in result.files} == {"compare.csv", "compare.md", "compare.png", "summary.json"}
    refused = [r for r in rows if r["model"] == "mrm:MRM.pth"]
    assert len(refused) == 1 and refused[0]["note"] == "the mrm family cannot do zeroshot (it can: finetune)"
    macro = {r["model"]: r for r in rows if r["metric"] == "auc_macro"}
    assert set(macro) == {"maco:maco.pth", "chexzero:chexzero_tiny.pt", "biovil:biovil"}
    for row in macro.values():
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]) and row["n"] == "24"
    assert macro["chexzero:chexzero_tiny.pt"]["vs"] == "maco:maco.pth"
    assert macro["chexzero:chexzero_tiny.pt"]["test"].startswith("paired bootstrap")
    # a class row's paired test is DeLong's on the two models' own scores of the same images
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.families import load_family

    dataset = build_dataset("manifest", phantoms)
    a = evaluate_zero_shot(load_family(MACO, "maco"), dataset)
    b = evaluate_zero_shot(load_family(chexzero_file, "chexzero"), dataset)
    k = list(a.classes).index("pleural effusion")
    expected = delong_test(a.labels[:, k], a.scores[:, k], b.scores[:, k])
    row = next(r for r in rows if r["model"].startswith("chexzero") and r["metric"] == "auc:pleural effusion")
    assert float(row["delta"]) == pytest.approx(expected.delta, abs=1e-5)
    assert float(row["p_value"]) == pytest.approx(expected.p_value, rel=1e-4)
    assert row["test"] == "delong (n=24)"
    assert "| chexzero:chexzero_tiny.pt | auc_macro |" in (tmp_path / "compare.md").read_text()


def test_common_protocol_letterboxes_every_model_and_uses_one_prompt_set(
    phantoms: Path, tmp_path: Path, chexzero_file: Path
) -> None:
    own = _run([f"chexzero:{chexzero_file}"], "zeroshot", "manifest", phantoms, tmp_path / "own", n_bootstrap=0)
    common = _run(
        [f"chexzero:{chexzero_file}"],
        "zeroshot",
        "manifest",
        phantoms,
        tmp_path / "common",
        protocol="common",
        n_bootstrap=0,
    )
    value = {r.metric: r.value for r in own.rows}
    assert any(not math.isclose(value[r.metric], r.value) for r in common.rows if r.metric.startswith("auc"))
    assert common.summary["protocol"] == "common"
    with pytest.raises(ConfigError, match="protocol 'ours'"):
        compare([MACO], "zeroshot", "manifest", phantoms, tmp_path / "bad", protocol="ours")


def test_grounding_pairs_the_same_items_of_maco_and_biovil(
    phantoms: Path, tmp_path: Path, chexzero_file: Path, biovil_spec: tuple[str, Path]
) -> None:
    biovil, tokenizer = biovil_spec
    _run(
        [MACO, biovil, f"chexzero:{chexzero_file}"],
        "grounding",
        "manifest",
        phantoms,
        tmp_path,
        tokenizers={"biovil": tokenizer},
        n_bootstrap=50,
    )
    rows = _rows(tmp_path)
    cnr = {r["model"]: r for r in rows if r["metric"] == "cnr"}
    assert set(cnr) == {"maco:maco.pth", "biovil:biovil"}
    paired = cnr["biovil:biovil"]
    assert paired["vs"] == "maco:maco.pth" and paired["test"].startswith("paired bootstrap")
    assert float(paired["delta"]) == pytest.approx(
        float(paired["value"]) - float(cnr["maco:maco.pth"]["value"]), abs=1e-5
    )
    assert np.isfinite(float(paired["p_value"])) and paired["n"] == cnr["maco:maco.pth"]["n"] != "0"
    assert any("chexzero family cannot do grounding" in r["note"] for r in rows)


@pytest.mark.slow
def test_linear_probe_and_fine_tuning_through_the_engine(
    phantoms: Path, tmp_path: Path, chexzero_file: Path, mrm_spec: str
) -> None:
    for task in ("linear", "finetune"):
        out = tmp_path / task
        result = _run(
            [MACO, mrm_spec, f"chexzero:{chexzero_file}"],
            task,
            "manifest",
            phantoms,
            out,
            finetune_overrides=FINETUNE,
            n_bootstrap=20,
        )
        macro = {r.model: r for r in result.rows if r.metric == "auc_macro"}
        assert set(macro) == {"maco:maco.pth", "mrm:MRM.pth", "chexzero:chexzero_tiny.pt"}
        assert macro["mrm:MRM.pth"].vs == "maco:maco.pth" and macro["mrm:MRM.pth"].n == 5
        for label in macro:
            run = Path(result.summary["runs"][label]["run"])
            assert (run / "best" / "config.json").is_file() and (run / "predictions.csv").is_file()
        assert result.summary["runs"]["mrm:MRM.pth"]["mode"] == ("linear_probe" if task == "linear" else "finetune")


def test_published_numbers_stand_beside_ours_on_their_dataset() -> None:
    from maco_cxr.tasks.compare import PUBLISHED, _rows

    rsna = {(f, m): v for f, m, v, _ in PUBLISHED[("finetune", "rsna")]}
    assert rsna[("maco", "auc_macro@1%")] == pytest.approx(0.915)
    assert rsna[("mrm", "auc_macro@100%")] == pytest.approx(0.933)
    refused = {"maco:m.pth": "not run", "mrm:MRM.pth": "not run"}
    rows = _rows("finetune", "rsna", list(refused), refused, 0, 0)
    published = [r for r in rows if r.source == "published"]
    assert {r.model for r in published} == {"maco (published)", "mrm (published)"} and len(published) == 6
    assert all("Table 1" in r.note for r in published)
    assert not [r for r in _rows("finetune", "manifest", list(refused), refused, 0, 0) if r.source == "published"]


def test_cli_writes_the_report(phantoms: Path, tmp_path: Path, chexzero_file: Path, capsys) -> None:
    code = main(
        [
            "compare",
            "--models",
            MACO,
            f"chexzero:{chexzero_file}",
            "--task",
            "zeroshot",
            "--dataset",
            "manifest",
            "--root",
            str(phantoms),
            "--bootstrap",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| chexzero:chexzero_tiny.pt | auc_macro |" in printed and "compare.csv" in printed
    assert len(_rows(tmp_path)) == 14

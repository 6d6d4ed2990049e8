"""`maco-cxr ablate`: variants reach the pre-training config, runs are reused, the table is right."""

from __future__ import annotations

import csv
import json
import math

import pytest

from maco_cxr.cli import main
from maco_cxr.errors import ConfigError
from maco_cxr.tasks import ablate
from maco_cxr.tasks.ablate import VARIANTS, AblationConfig, _markdown, _verdict


def test_verdict_needs_disjoint_seed_ranges() -> None:
    assert _verdict([0.70, 0.74], [0.75, 0.80]) == "higher"
    assert _verdict([0.70, 0.74], [0.60, 0.69]) == "lower"
    assert _verdict([0.70, 0.74], [0.73, 0.90]) == "within seed spread"
    assert _verdict([0.70, math.nan], [math.nan]) == "n/a"


def test_markdown_reports_mean_range_and_difference() -> None:
    metrics = {key: {"maco": [0.5, 0.7], "no-weighting": [0.8, 0.9]} for key in ablate.METRICS}
    table = _markdown(metrics, ["maco", "no-weighting"], [0, 1], "test machine")
    rows = table.strip().splitlines()
    assert rows[0].startswith("Seeds 0, 1;") and "test machine" in rows[0]
    assert rows[4].startswith("| `maco` | 0.600 [0.500, 0.700] |")
    assert "| `no-weighting` | 0.850 [0.800, 0.900] (+0.250*) |" in rows[5]


def test_every_variant_builds_a_valid_pretraining_config(tmp_path) -> None:
    from maco_cxr.tasks.demo import _pretrain_config, demo_model_config

    config = AblationConfig(out_dir=tmp_path)
    seen = {}
    for variant in VARIANTS:
        demo = config.demo_config(variant, seed=1)
        assert demo.seed == 1 and demo.out_dir == tmp_path / "runs" / variant.name / "seed1"
        pretrain = _pretrain_config(demo, demo_model_config(tmp_path / "tok.json", 100), tmp_path)
        seen[variant.name] = pretrain
    assert seen["maco"].model.correlation_weighting and seen["maco"].model.mask_ratio == 0.5
    assert seen["no-weighting"].model.correlation_weighting is False
    assert seen["paper-loss"].model.loss_weighting == "paper"
    assert seen["mask-0.75"].model.mask_ratio == 0.75
    assert seen["official-text"].data.text == "sentences"
    assert seen["negations"].data.text == "full" and seen["official-text+batch-64"].data.text == "sentences"
    assert seen["official-text+batch-64"].optim.batch_size == 2 * seen["official-text"].optim.batch_size == 64
    assert seen["official-text+negation-negatives"].data.negation_negatives is True
    assert seen["maco"].data.negation_negatives is False
    assert seen["maco"].model.text.vocab_size == 100  # the demo's model survives the override round trip
    with pytest.raises(ConfigError, match="unknown variant"):
        AblationConfig(out_dir=tmp_path, variants=("maco", "nope"))


@pytest.mark.slow
def test_quick_ablation_writes_the_table_and_reuses_finished_runs(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "ablation"
    args = [
        "ablate",
        "--quick",
        "--out",
        str(out),
        "--variants",
        "maco",
        "official-text+negation-negatives",
        "--seeds",
        "0",
        "--no-progress",
    ]
    assert main(args) == 0
    with open(out / "ablation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["seed"]) for r in rows] == [("maco", "0"), ("official-text+negation-negatives", "0")]
    assert all(0.0 <= float(r["zeroshot_macro_auc"]) <= 1.0 for r in rows)
    for name in ("ablation.md", "ablation.png", "index.html", "summary.json"):
        assert (out / name).is_file()
    run = json.loads((out / "runs" / "official-text+negation-negatives" / "seed0" / "summary.json").read_text())
    assert run["pretrain_overrides"] == ["data.negation_negatives=true"] and run["data"]["report_negations"]
    printed = capsys.readouterr().out
    assert "| `official-text+negation-negatives` |" in printed
    assert "the numbers mean nothing" in printed
    assert (out / "ablation.md").read_text().startswith("**A --quick run")

    def no_new_runs(config):
        raise AssertionError(f"{config.out_dir} should have been reused")

    monkeypatch.setattr("maco_cxr.tasks.demo.run_demo", no_new_runs)
    assert main(args) == 0
    with pytest.raises(AssertionError, match="should have been reused"):
        main([*args[:-2], "1", "--no-progress"])

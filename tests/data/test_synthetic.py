"""Synthetic phantoms: determinism, labels, boxes and masks, visible findings, reports, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maco_cxr.cli import main
from maco_cxr.data.synthetic import (
    FINDINGS,
    Finding,
    cardiothoracic_ratio,
    generate_phantom,
    write_synthetic_dataset,
)
from maco_cxr.data.synthetic import writer as writer_module
from maco_cxr.data.synthetic.reports import write_report
from maco_cxr.errors import ConfigError

LATERAL = ("pleural effusion", "pneumothorax", "consolidation", "nodule")
BRIGHTER = ("pleural effusion", "consolidation", "nodule", "edema")


def _phantom(seed: int, findings: list[str] | None, size: int = 224):
    return generate_phantom(np.random.default_rng(seed), size, findings)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_gives_identical_phantom() -> None:
    first, second = _phantom(11, None, 160), _phantom(11, None, 160)
    assert first.image.dtype == np.uint8 and first.image.shape == (160, 160)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.report == second.report
    np.testing.assert_array_equal(first.labels, second.labels)
    assert [f.box_xyxy for f in first.findings] == [f.box_xyxy for f in second.findings]
    assert _phantom(12, None, 160).image.tobytes() != first.image.tobytes()


@pytest.mark.parametrize("kind", FINDINGS)
def test_each_class_gets_exactly_its_label(kind: str) -> None:
    phantom = _phantom(3, [kind])
    expected = np.zeros(len(FINDINGS), dtype=np.float32)
    expected[FINDINGS.index(kind)] = 1.0
    np.testing.assert_array_equal(phantom.labels, expected)
    assert phantom.label_names == [kind]
    assert {finding.kind for finding in phantom.findings} == {kind}
    for finding in phantom.findings:
        assert (finding.side in ("left", "right")) == (kind in LATERAL)


@pytest.mark.parametrize("request_", [[], ["normal"]])
def test_normal_has_no_findings(request_: list[str]) -> None:
    phantom = _phantom(4, request_)
    assert phantom.findings == [] and not phantom.labels.any()
    assert phantom.label_names == []


def test_sampled_findings_cover_every_class_and_normal() -> None:
    seen = {tuple(_phantom(seed, None, 96).label_names) for seed in range(60)}
    assert () in seen
    assert {kind for names in seen for kind in names} == set(FINDINGS)
    assert max(len(names) for names in seen) >= 2


@pytest.mark.parametrize(("p_normal", "p_extra", "counts"), [(1.0, 0.0, {0}), (0.0, 0.0, {1}), (0.0, 1.0, {3})])
def test_finding_count_follows_the_probabilities(p_normal: float, p_extra: float, counts: set[int]) -> None:
    got = {
        len(generate_phantom(np.random.default_rng(seed), 96, p_normal=p_normal, p_extra=p_extra).label_names)
        for seed in range(8)
    }
    assert got == counts


def test_masks_are_non_empty_and_boxes_tight() -> None:
    count = 0
    for seed in range(25):
        phantom = _phantom(seed, None, 160)
        for finding in phantom.findings:
            rows = np.flatnonzero(finding.mask.any(axis=1))
            cols = np.flatnonzero(finding.mask.any(axis=0))
            assert rows.size > 0, finding.phrase
            x_min, y_min, x_max, y_max = finding.box_xyxy
            assert (x_min, y_min) == (cols[0], rows[0])
            assert (x_max, y_max) == (cols[-1] + 1, rows[-1] + 1)
            count += 1
    assert count >= 20


@pytest.mark.parametrize("kind", [kind for kind in FINDINGS if kind != "cardiomegaly"])
def test_finding_changes_intensity_inside_its_mask(kind: str) -> None:
    """At 224 px, the mean grey level inside the mask moves clearly in the expected direction.

    (Cardiomegaly moves the heart border instead; see the CTR test.)
    """
    for seed in range(3):
        with_it, without = _phantom(seed, [kind]), _phantom(seed, [])
        mask = np.logical_or.reduce([f.mask for f in with_it.findings])
        change = with_it.image[mask].astype(float).mean() - without.image[mask].mean()
        if kind in BRIGHTER:
            assert change > 20, (seed, change)
        else:
            assert change < -15, (seed, change)
        outside = ~mask
        outside_change = np.abs(with_it.image[outside].astype(float) - without.image[outside])
        assert outside_change.mean() < abs(change) / 4


def test_cardiomegaly_ratio_above_normal() -> None:
    for seed in range(6):
        enlarged = _phantom(seed, ["cardiomegaly"])
        assert enlarged.ctr > 0.55
        assert _phantom(seed, []).ctr < 0.5
        heart = enlarged.findings[0]
        np.testing.assert_array_equal(heart.mask, enlarged.heart)
        assert heart.phrase.endswith("cardiomegaly")


def test_cardiothoracic_ratio_of_hand_made_masks() -> None:
    heart = np.zeros((8, 20), dtype=bool)
    lungs = np.zeros((8, 20), dtype=bool)
    heart[4:6, 7:13] = True
    lungs[1:7, 2:8] = True
    lungs[1:7, 12:18] = True
    assert cardiothoracic_ratio(heart, lungs) == pytest.approx(6 / 16)


@pytest.mark.parametrize("side", ["left", "right"])
def test_patient_side_maps_to_the_opposite_image_half(side: str) -> None:
    """Radiology convention: the patient's left is on the image right."""
    for seed in range(12):
        for finding in _phantom(seed, list(LATERAL[:2]) if seed % 2 else ["nodule"]).findings:
            if finding.side != side:
                continue
            centre = np.flatnonzero(finding.mask.any(axis=0)).mean()
            assert (centre > 112) == (side == "left"), finding.phrase


def test_pneumothorax_and_effusion_never_share_a_side() -> None:
    for seed in range(15):
        phantom = _phantom(seed, ["pneumothorax", "pleural effusion", "nodule"], 160)
        sides = {f.kind: f.side for f in phantom.findings if f.kind != "pleural effusion"}
        effusion_sides = [f.side for f in phantom.findings if f.kind == "pleural effusion"]
        assert effusion_sides and sides["pneumothorax"] not in effusion_sides
        assert (np.sum([f.mask for f in phantom.findings], axis=0) <= 1).all()


def test_report_names_findings_with_side_severity_and_a_negation() -> None:
    phantom = _phantom(5, ["pneumothorax", "cardiomegaly"])
    report = phantom.report.lower()
    pneumothorax = next(f for f in phantom.findings if f.kind == "pneumothorax")
    heart = next(f for f in phantom.findings if f.kind == "cardiomegaly")
    assert "pneumothorax" in report and pneumothorax.side in report
    assert pneumothorax.severity in report
    assert heart.severity[:4] in report and ("cardiomegaly" in report or "enlarged" in report)
    sentences = [s.strip() for s in phantom.report.rstrip(".").split(". ")]
    assert all(sentences)
    absent = ("effusion", "consolidation", "nodule", "edema")
    assert any(s.lower().startswith(("no ", "there is no")) and any(a in s for a in absent) for s in sentences)
    assert report.endswith(".")


def test_normal_report_says_so_and_negates_classes() -> None:
    report = _phantom(8, []).report.lower()
    assert "lungs are clear" in report or "no acute cardiopulmonary" in report
    assert report.count("no ") + report.count("normal") >= 3


@pytest.mark.parametrize("kind", FINDINGS)
def test_class_name_appears_in_most_positive_reports(kind: str) -> None:
    """Zero-shot prompts "There is {class}." need the class name in the positive sentences."""
    mask = np.ones((4, 4), dtype=bool)
    finding = Finding(
        kind,
        "left" if kind in LATERAL else None,
        {"pleural effusion": "small", "pneumothorax": "large", "cardiomegaly": "mild", "edema": "moderate"}.get(kind),
        "lower" if kind in ("consolidation", "nodule") else None,
        (0.0, 0.0, 4.0, 4.0),
        mask,
        f"left {kind}",
        2.0,
    )
    rng = np.random.default_rng(0)
    reports = [write_report([finding], rng).lower() for _ in range(200)]
    with_name = np.mean([kind in report for report in reports])
    assert with_name >= 0.7, with_name
    assert all(f"no {kind}" not in report for report in reports)
    assert all("left" in report for report in reports) == (kind in LATERAL)


def test_negation_free_report_is_the_same_report_minus_its_negations() -> None:
    from maco_cxr.data.synthetic.reports import _NEGATIONS

    denials = {sentence for options in _NEGATIONS.values() for sentence in options}
    for seed, kinds in ((5, ["pneumothorax", "cardiomegaly"]), (8, []), (3, ["cardiomegaly"]), (11, None)):
        with_negations = generate_phantom(np.random.default_rng(seed), 128, kinds)
        without = generate_phantom(np.random.default_rng(seed), 128, kinds, negations=False)
        assert np.array_equal(with_negations.image, without.image)
        assert np.array_equal(with_negations.labels, without.labels)
        full = with_negations.report.rstrip(".").split(". ")
        kept = without.report.rstrip(".").split(". ")
        assert any(sentence in denials for sentence in full)
        assert kept == [sentence for sentence in full if sentence not in denials]


def test_bad_requests_raise_config_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="unknown"):
        generate_phantom(rng, 128, ["pneumonia"])
    with pytest.raises(ConfigError, match="twice"):
        generate_phantom(rng, 128, ["nodule", "nodule"])
    with pytest.raises(ConfigError, match="unknown"):
        generate_phantom(rng, 128, ["normal", "nodule"])
    with pytest.raises(ConfigError, match="split_fractions"):
        write_synthetic_dataset(Path("unused"), 2, 0, 96, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="n=0"):
        write_synthetic_dataset(Path("unused"), 0, 0, 96)
    with pytest.raises(ConfigError, match="p_extra"):
        write_synthetic_dataset(Path("unused"), 2, 0, 96, p_extra=1.5)


def test_written_dataset_round_trips(tmp_path: Path) -> None:
    manifest = write_synthetic_dataset(tmp_path / "ds", 10, seed=4, size=96)
    root = manifest.parent
    rows = _read_csv(manifest)
    assert list(rows[0]) == ["image_path", "report", "labels", "patient_id", "split"]
    assert len(rows) == 10 and {row["split"] for row in rows} <= {"train", "val", "test"}
    boxes, masks = _read_csv(root / "boxes.csv"), _read_csv(root / "masks.csv")
    expected_boxes = expected_masks = 0
    for index, row in enumerate(rows):
        phantom = generate_phantom(np.random.default_rng([4, index]), 96)
        image = np.asarray(Image.open(root / row["image_path"]))
        np.testing.assert_array_equal(image, phantom.image)
        assert row["report"] == phantom.report
        assert row["labels"] == ("|".join(phantom.label_names) or "No Finding")
        expected_boxes += len(phantom.findings)
        expected_masks += len(phantom.label_names)
    assert len(boxes) == expected_boxes and len(masks) == expected_masks
    extents: dict[tuple[str, str], list[float]] = {}
    for box in boxes:
        assert box["category"] in FINDINGS and box["label"]
        x0, y0, x1, y1 = (float(box[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        old = extents.get((box["image_path"], box["category"]), [96.0, 96.0, 0.0, 0.0])
        extents[(box["image_path"], box["category"])] = [
            min(old[0], x0),
            min(old[1], y0),
            max(old[2], x1),
            max(old[3], y1),
        ]
    for mask_row in masks:
        assert (root / mask_row["image_path"]).is_file()
        pixels = np.asarray(Image.open(root / mask_row["mask_path"]))
        assert pixels.shape == (96, 96) and set(np.unique(pixels)) == {0, 255}
        ys, xs = np.nonzero(pixels)
        union = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert union == extents[(mask_row["image_path"], mask_row["label"])]
    config = json.loads((root / "phantom_config.json").read_text())
    assert (config["seed"], config["n"], config["size"]) == (4, 10, 96)
    assert (root / "README.md").read_text().startswith("# Synthetic chest-radiograph phantoms")
    assert not list(root.rglob("*.partial"))


def test_item_depends_only_on_seed_and_index(tmp_path: Path) -> None:
    short = write_synthetic_dataset(tmp_path / "short", 3, seed=9, size=96)
    long = write_synthetic_dataset(tmp_path / "long", 5, seed=9, size=96)
    assert _read_csv(long)[:3] == _read_csv(short)
    for row in _read_csv(short):
        a = (short.parent / row["image_path"]).read_bytes()
        assert a == (long.parent / row["image_path"]).read_bytes()


def test_interrupted_write_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ds"
    write_synthetic_dataset(root, 2, seed=1, size=96)
    real = writer_module._write_item

    def dies_on_third(job, index):  # type: ignore[no-untyped-def]
        if index == 2:
            raise KeyboardInterrupt
        return real(job, index)

    monkeypatch.setattr(writer_module, "_write_item", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(root, 4, seed=2, size=96)
    assert not (root / "manifest.csv").exists()


def test_cli_writes_dataset_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["synth", "--out", str(out), "--n", "6", "--seed", "2", "--size", "96", "--workers", "2"])
    assert code == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    rows = _read_csv(out / "manifest.csv")
    assert summary.startswith(f"wrote 6 phantoms to {out}:")
    for kind in (*FINDINGS, "No Finding"):
        count = sum(kind in row["labels"].split("|") for row in rows)
        assert f"{kind} {count}" in summary
    for index, row in enumerate(rows):
        image = np.asarray(Image.open(out / row["image_path"]))
        expected = generate_phantom(np.random.default_rng([2, index]), 96).image
        np.testing.assert_array_equal(image, expected)


def test_cli_no_negations_writes_reports_without_them(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    assert main(["synth", "--out", str(out), "--n", "4", "--seed", "2", "--size", "96", "--no-negations"]) == 0
    for index, row in enumerate(_read_csv(out / "manifest.csv")):
        assert row["report"] == generate_phantom(np.random.default_rng([2, index]), 96, negations=False).report
    assert json.loads((out / "phantom_config.json").read_text())["negations"] is False


def test_a_finding_with_no_room_on_a_small_image_is_neither_drawn_nor_labelled():
    # seed (2, 768) at 128 px plans a left lower consolidation behind a severely enlarged heart:
    # its region is empty, so the phantom must not claim it (labels, boxes and report agree).
    phantom = generate_phantom(np.random.default_rng([2, 768]), size=128)
    kinds = [finding.kind for finding in phantom.findings]
    assert "consolidation" not in kinds
    assert phantom.labels[FINDINGS.index("consolidation")] == 0
    assert all(phantom.labels[FINDINGS.index(kind)] == 1 for kind in kinds)
    assert "no focal consolidation" in phantom.report.lower()

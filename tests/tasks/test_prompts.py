"""Prompt sets: the official templates, class sets, and prompt files with their errors."""

from __future__ import annotations

import json

import pytest

from maco_cxr.errors import ConfigError
from maco_cxr.tasks.prompts import (
    CLASS_SETS,
    DEFAULT_PROMPTS,
    SIIM_PROMPTS,
    ClassPrompts,
    PromptTemplates,
    resolve_prompts,
)


def test_default_set_lower_cases_the_class_into_the_official_templates():
    table = resolve_prompts(["Lung Opacity"])
    assert table["Lung Opacity"] == ClassPrompts(
        ("There is lung opacity. ",),
        ("the lung is clear.", "There is no lung opacity. ", "no lung opacity. ", "no evidence of lung opacity. "),
    )


def test_siim_set_adds_the_official_extra_prompts():
    prompts = resolve_prompts(["Pneumothorax"], "siim")["Pneumothorax"]
    assert prompts.positive == (
        "Abnormal collection of air in the pleural space between the lung and the chest wall. ",
        "There is pneumothorax. ",
    )
    assert len(prompts.negative) == 5
    assert prompts.negative[-1].startswith("The lung parenchyma is homogeneous")
    assert SIIM_PROMPTS.negative[:4] == DEFAULT_PROMPTS.negative


def test_class_sets_follow_the_official_evaluations():
    assert len(CLASS_SETS["nih"]) == 14 and CLASS_SETS["nih"][0] == "Atelectasis"
    assert CLASS_SETS["nih"][12] == "Pleural Thickening"
    assert CLASS_SETS["rsna"] == ("Lung Opacity",) and CLASS_SETS["siim"] == ("Pneumothorax",)
    assert {c.lower() for c in CLASS_SETS["chexpert"]} == {
        "cardiomegaly",
        "edema",
        "consolidation",
        "atelectasis",
        "pleural effusion",
    }


def test_template_file_applies_to_every_class(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text('pos: ["Findings of {c}. "]\nneg: ["no {c}. ", "normal chest. "]\n')
    table = resolve_prompts(["Edema", "Mass"], path)
    assert table["Mass"] == ClassPrompts(("Findings of mass. ",), ("no mass. ", "normal chest. "))


def test_per_class_json_file_matches_names_case_insensitively(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"pneumothorax": {"pos": "air in the pleura. ", "neg": ["no {c}. "]}}))
    table = resolve_prompts(["Pneumothorax"], str(path))
    assert table["Pneumothorax"] == ClassPrompts(("air in the pleura. ",), ("no pneumothorax. ",))


def test_mapping_and_templates_objects_are_accepted():
    table = resolve_prompts(["A"], {"A": ClassPrompts(("a",), ("b",))})
    assert table["A"].positive == ("a",)
    assert resolve_prompts(["B"], PromptTemplates(("{c}!",), ("not {c}",)))["B"].negative == ("not b",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('Edema: {pos: ["x"]}\n', r"Edema\.neg: is missing or empty"),
        ('Edema: {pos: [], neg: ["y"]}\n', r"Edema\.pos: is missing or empty"),
        ('Edema: {pos: ["x"], neg: [""]}\n', r"Edema\.neg: holds"),
        ('Edema: {pos: ["x"], neg: ["y"], extra: 1}\n', r"Edema\.extra: unknown key; valid keys here: "),
        ('Edema: {pos: ["x"], nge: ["y"]}\n', r"Edema\.nge: unknown key; did you mean Edema\.neg\?"),
        ('pos: ["There is {c}."]\nnge: ["no {c}."]\n', r"nge: unknown key; did you mean neg\?"),
        ('Edema: {pos: ["x"], neg: [[1]]}\n', r"Edema\.neg\[0\]: expected text"),
        ('Edema: "There is edema"\n', r"Edema: must map to"),
        ('Mass: {pos: ["x"], neg: ["y"]}\n', r"no prompts for class 'Edema'; the file has classes \['Mass'\]"),
        ('Edemma: {pos: ["x"], neg: ["y"]}\n', r"no prompts for class 'Edema'; did you mean 'Edemma'\?"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("Edema: {pos: [x\n", "not valid YAML"),
    ],
)
def test_prompt_file_errors_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        resolve_prompts(["Edema"], path)
    assert str(path) in str(info.value)


def test_unknown_set_name_and_bad_classes_are_errors():
    with pytest.raises(ConfigError, match="neither a prompt set"):
        resolve_prompts(["Edema"], "covid")
    with pytest.raises(ConfigError, match="appear more than once"):
        resolve_prompts(["Edema", "Edema"])
    with pytest.raises(ConfigError, match="non-empty list of class names"):
        resolve_prompts("Edema")

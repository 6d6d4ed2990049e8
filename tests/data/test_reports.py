"""Report sections, sentence splitting and the official MaCo text processing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from maco_cxr.data.reports import (
    extract_sections,
    grounding_phrase,
    negate_sentence,
    negation_counterfactual,
    report_text,
    sample_report_sentences,
    split_sentences,
    whole_report_text,
)
from maco_cxr.errors import ConfigError

# MIMIC-CXR style reports (invented text, real layout: leading space, wrapped lines, ___).
REPORT_STANDARD = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

REPORT_COMBINED = """                                 FINAL REPORT
 HISTORY:  Shortness of breath.

 FINDINGS AND IMPRESSION:  Moderate right pleural effusion with adjacent
 atelectasis.  Heart size is mildly enlarged.

 NOTIFICATION:  The findings were discussed with Dr. ___ by telephone.
"""

REPORT_VARIANTS = """ WET READ: ___ ___ 3:45 PM
  No pneumothorax.

 Findings:  Endotracheal tube terminates 4 cm above the carina.  Lungs are
 clear.
 RECOMMENDATION(S):  Follow-up radiograph in 6 weeks.

 IMPRESSIONS:
 1.  Appropriately positioned endotracheal tube.
 CONCLUSION:  No acute change.
"""

REPORT_NO_SECTIONS = """                                 FINAL REPORT
 INDICATION:  Fever.
 COMPARISON:  ___.
 PA and lateral chest radiographs were obtained.
"""


def test_standard_report_sections() -> None:
    sections = extract_sections(REPORT_STANDARD)
    assert sections == {
        "findings": "There is no focal consolidation, pleural effusion or pneumothorax. "
        "Bilateral nodular opacities that most likely represent nipple shadows. "
        "The cardiomediastinal silhouette is normal.",
        "impression": "No acute cardiopulmonary process.",
    }


def test_findings_and_impression_counts_as_impression_and_ends_at_notification() -> None:
    assert extract_sections(REPORT_COMBINED) == {
        "impression": "Moderate right pleural effusion with adjacent atelectasis. Heart size is mildly enlarged.",
    }


def test_mixed_case_headers_plural_and_conclusion() -> None:
    sections = extract_sections(REPORT_VARIANTS)
    assert sections["findings"] == ("Endotracheal tube terminates 4 cm above the carina. Lungs are clear.")
    # IMPRESSIONS and CONCLUSION are both impression, joined in order; RECOMMENDATION(S) ends
    # the findings; the WET READ text before them belongs to no section
    assert sections["impression"] == ("1. Appropriately positioned endotracheal tube. No acute change.")


def test_report_text_order_choice_and_missing() -> None:
    assert report_text(REPORT_STANDARD) == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
        "nodular opacities that most likely represent nipple shadows. The "
        "cardiomediastinal silhouette is normal. No acute cardiopulmonary process."
    )
    assert report_text(REPORT_STANDARD, sections=("impression",)) == ("No acute cardiopulmonary process.")
    assert report_text(REPORT_STANDARD, sections=("impression", "findings")).startswith(
        "No acute cardiopulmonary process. There is no focal"
    )
    assert report_text(REPORT_COMBINED, sections=("findings",)) == ""
    assert report_text(REPORT_NO_SECTIONS) == ""
    with pytest.raises(ConfigError, match="'history'"):
        report_text(REPORT_STANDARD, sections=("history",))


def test_split_sentences() -> None:
    text = "Nodule measures 1.5 cm.  Is there effusion?\n No!  Heart size normal"
    assert split_sentences(text) == ["Nodule measures 1.5 cm.", "Is there effusion?", "No!", "Heart size normal"]
    assert split_sentences(" . ..  ") == []


def test_grounding_phrase_official_examples() -> None:
    assert grounding_phrase("Right pleural effusion") == "right pleural effusion. "
    assert grounding_phrase("Small left apical pneumothorax.") == ("small left apical pneumothorax. ")
    # "RLL. " has length 5 -> dropped; the "_" piece and the "," piece are dropped
    assert grounding_phrase("RLL. Consolidation in the right lower lobe") == ("consolidation in the right lower lobe. ")
    assert grounding_phrase("Opacity in the ___ lobe. , with effusion. Left base opacity") == ("left base opacity. ")
    # length 6 with the suffix ("Edema" + ". ") is kept
    assert grounding_phrase("Edema") == "edema. "
    assert grounding_phrase("") == ""


SAMPLING_REPORT = "Moderate right pleural effusion. None. Heart size is normal. . NONE. No pneumothorax."
SAMPLING_SENTENCES = ["moderate right pleural effusion", "heart size is normal", "no pneumothorax"]


def _sampled_pieces(text: str) -> list[str]:
    assert text.endswith(". ")
    return text[:-2].split(". ")


def test_whole_report_keeps_every_sentence_in_order() -> None:
    expected = "moderate right pleural effusion. heart size is normal. no pneumothorax. "
    assert whole_report_text(SAMPLING_REPORT) == expected
    assert whole_report_text("None. .") == ""


def test_sampling_deterministic_under_seed() -> None:
    first = [sample_report_sentences(SAMPLING_REPORT, random.Random(seed)) for seed in range(20)]
    again = [sample_report_sentences(SAMPLING_REPORT, random.Random(seed)) for seed in range(20)]
    assert first == again
    assert len(set(first)) > 3


def test_sampling_hand_traced_against_random() -> None:
    rng = random.Random(123)
    expected = ["a", "b", "c", "d"]
    rng.shuffle(expected)
    keep = rng.randint(1, 4)
    text = sample_report_sentences("A. B. None. C.  D.", random.Random(123))
    assert text == "".join(piece + ". " for piece in expected[:keep])


def test_sampling_statistics() -> None:
    counts: Counter[int] = Counter()
    firsts: Counter[str] = Counter()
    for seed in range(3000):
        text = sample_report_sentences(SAMPLING_REPORT, random.Random(seed))
        pieces = _sampled_pieces(text)
        assert text == text.lower()
        assert "none" not in pieces and "" not in pieces
        assert len(set(pieces)) == len(pieces)
        assert set(pieces) <= set(SAMPLING_SENTENCES)
        counts[len(pieces)] += 1
        firsts[pieces[0]] += 1
    # k ~ U{1..3}: every count occurs, each about a third of the time
    assert set(counts) == {1, 2, 3}
    assert all(800 < counts[k] < 1200 for k in (1, 2, 3))
    # shuffled: every sentence leads about a third of the time
    assert set(firsts) == set(SAMPLING_SENTENCES)
    assert all(800 < firsts[s] < 1200 for s in SAMPLING_SENTENCES)


def test_sampling_edge_cases() -> None:
    rng = random.Random(0)
    assert sample_report_sentences("", rng) == ""
    assert sample_report_sentences("None.  . ", rng) == ""
    assert sample_report_sentences("No acute process", rng) == "no acute process. "
    # the official split on "." also splits decimals
    assert sorted(_sampled_pieces(sample_report_sentences("Nodule 1.5 cm", random.Random(1)))) in (
        ["1"],
        ["5 cm"],
        ["1", "5 cm"],
    )


def test_sampling_of_section_text() -> None:
    text = report_text(REPORT_STANDARD)
    pieces = _sampled_pieces(sample_report_sentences(text, random.Random(7)))
    full = {piece.strip().lower() for piece in text.split(".") if piece.strip()}
    assert pieces and set(pieces) <= full


def test_negate_sentence_flips_polarity_in_prompt_phrasing() -> None:
    assert negate_sentence("no pneumothorax") == "there is pneumothorax"
    assert negate_sentence("there is no pleural effusion") == "there is pleural effusion"
    assert negate_sentence("there are no nodules") == "there are nodules"
    assert negate_sentence("no evidence of edema") == "there is edema"
    assert negate_sentence("without focal opacity") == "there is focal opacity"
    assert negate_sentence("there is a small right pleural effusion") == "there is no small right pleural effusion"
    assert negate_sentence("there are bilateral effusions") == "there are no bilateral effusions"
    assert negate_sentence("mild cardiomegaly") == "no mild cardiomegaly"
    assert negate_sentence(negate_sentence("there is edema")) == "there is edema"


def test_negation_counterfactual_changes_exactly_one_sentence() -> None:
    text = "mild cardiomegaly. no pneumothorax. the trachea is midline. "
    for seed in range(20):
        out = negation_counterfactual(text, random.Random(seed))
        before, after = text.split(". ")[:-1], out.split(". ")[:-1]
        assert out.endswith(". ") and len(after) == 3
        changed = [k for k in range(3) if before[k] != after[k]]
        assert len(changed) == 1 and after[changed[0]] == negate_sentence(before[changed[0]])
    picks = {negation_counterfactual(text, random.Random(seed)) for seed in range(40)}
    assert len(picks) == 3
    assert negation_counterfactual("", random.Random(0)) == ""

"""Report text: MIMIC-CXR sections, sentence splitting and the official MaCo text processing.

Two official recipes (SZUHvern/MaCo, ``util/pretrain_datasets.py`` and
``Phrase Grounding.py``) are reproduced here because the released weights were trained and
evaluated on text shaped exactly this way: pieces split on ``"."``, each piece stripped and
given the suffix ``". "``, lower-cased and concatenated (``"a. b. "``, trailing space included).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Literal

from maco_cxr.errors import ConfigError

__all__ = [
    "extract_sections",
    "grounding_phrase",
    "negate_sentence",
    "negation_counterfactual",
    "report_text",
    "sample_report_sentences",
    "whole_report_text",
    "split_sentences",
]

Section = Literal["findings", "impression"]

# Header names (upper-case, single spaces) that start the sections we extract.
_SECTION_HEADERS: dict[str, Section] = {
    "FINDINGS": "findings",
    "FINDING": "findings",
    "IMPRESSION": "impression",
    "IMPRESSIONS": "impression",
    "CONCLUSION": "impression",
    "CONCLUSIONS": "impression",
    "FINDINGS AND IMPRESSION": "impression",
    "FINDINGS AND IMPRESSIONS": "impression",
    "FINDINGS/IMPRESSION": "impression",
}
# Other headers recognised in any letter case; any ALL-CAPS "NAME:" line starts a section too.
_OTHER_HEADERS = frozenset(
    {
        "ADDENDUM",
        "CLINICAL HISTORY",
        "COMPARISON",
        "COMPARISONS",
        "EXAM",
        "EXAMINATION",
        "HISTORY",
        "INDICATION",
        "INDICATIONS",
        "NOTIFICATION",
        "PROCEDURE",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "RECOMMENDATION",
        "RECOMMENDATION(S)",
        "RECOMMENDATIONS",
        "TECHNIQUE",
        "TYPE OF EXAMINATION",
        "WET READ",
    }
)
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z0-9 /()&,'-]*?)[ \t]*:", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def extract_sections(text: str) -> dict[str, str]:
    """The FINDINGS and IMPRESSION sections of a MIMIC-CXR style report.

    A header is a line that starts with ``NAME:``: an all-caps name, or a known name in any
    case (``Findings:``). ``FINDINGS AND IMPRESSION``, ``IMPRESSIONS`` and ``CONCLUSION`` count
    as impression. A section runs to the next header; repeated sections are joined in order.
    Whitespace is collapsed to single spaces. Returns only sections with text, keyed
    ``"findings"`` / ``"impression"``.
    """
    headers = [(match, _header_kind(match.group("name"))) for match in _HEADER.finditer(text)]
    headers = [(match, kind) for match, kind in headers if kind is not None]
    found: dict[str, list[str]] = {}
    for index, (match, kind) in enumerate(headers):
        if kind == "other":
            continue
        end = headers[index + 1][0].start() if index + 1 < len(headers) else len(text)
        body = " ".join(text[match.end() : end].split())
        if body:
            found.setdefault(kind, []).append(body)
    return {kind: " ".join(bodies) for kind, bodies in found.items()}


def report_text(text: str, sections: Sequence[str] = ("findings", "impression")) -> str:
    """The chosen sections (``"findings"``, ``"impression"``) joined by a space, in order.

    Returns ``""`` when none of them exists; deciding what that means (skip the study, use
    the whole report) is the caller's job.
    """
    unknown = [name for name in sections if name not in ("findings", "impression")]
    if unknown or not sections:
        raise ConfigError(
            f"report sections must be a non-empty choice of 'findings' and 'impression', got {list(sections)}"
        )
    extracted = extract_sections(text)
    return " ".join(extracted[name] for name in sections if name in extracted)


def split_sentences(text: str) -> list[str]:
    """Sentences ending in ``.``, ``?`` or ``!`` followed by whitespace, whitespace collapsed.

    Unlike the official split on every ``"."``, decimals such as ``1.5 cm`` stay whole;
    terminal punctuation is kept and pieces without letters or digits are dropped.
    """
    pieces = (" ".join(piece.split()) for piece in _SENTENCE_END.split(text))
    return [piece for piece in pieces if any(char.isalnum() for char in piece)]


def sample_report_sentences(text: str, rng: random.Random) -> str:
    """The official training-time text: a random 1..n of the shuffled sentences, lower-cased.

    Split on ``"."``, strip each piece, drop empty and ``"none"`` pieces (any case), shuffle,
    keep the first ``k ~ U{1..n}``, and join as the official code does (``piece + ". "`` each).
    Two defects of the released code are not repeated: it counted the dropped pieces in ``n``
    (so ``k`` could select only empty pieces) and then returned ``". "`` or ``"None. "`` as the
    text. Here every draw has at least one real sentence; a report with none gives ``""``.
    """
    pieces = [piece.strip() for piece in text.split(".")]
    pieces = [piece for piece in pieces if piece and piece.lower() != "none"]
    if not pieces:
        return ""
    rng.shuffle(pieces)
    keep = rng.randint(1, len(pieces))
    return "".join(piece.lower() + ". " for piece in pieces[:keep])


def whole_report_text(text: str) -> str:
    """Every sentence of the report, in order, lower-cased and joined as the official sampling
    joins its draw: the ``text: full`` alternative to :func:`sample_report_sentences`, for
    reports short and complete enough that dropping sentences only adds label noise."""
    pieces = (piece.strip() for piece in text.split("."))
    return "".join(piece.lower() + ". " for piece in pieces if piece and piece.lower() != "none")


_DENIAL = re.compile(r"^(?:there (?P<verb>is|are) no|no evidence of|no|without)\s+(?P<rest>.+)$")
_ASSERTION = re.compile(r"^there (?P<verb>is|are)(?: (?:a|an))?\s+(?P<rest>.+)$")


def negate_sentence(sentence: str) -> str:
    """One lower-cased training sentence with its polarity flipped, in the zero-shot prompts'
    phrasing: ``"no pneumothorax"`` / ``"there is no X"`` / ``"no evidence of X"`` ->
    ``"there is X"``; ``"there is a X"`` -> ``"there is no X"``; anything else ``S`` -> ``"no S"``.

    Rule-based on purpose: the counterfactual only has to differ from the true sentence in its
    negation, so that telling them apart forces the text tower to read "no".
    """
    denial = _DENIAL.match(sentence)
    if denial:
        return f"there {denial['verb'] or 'is'} {denial['rest']}"
    assertion = _ASSERTION.match(sentence)
    if assertion:
        return f"there {assertion['verb']} no {assertion['rest']}"
    return f"no {sentence}"


def negation_counterfactual(text: str, rng: random.Random) -> str:
    """``text`` (a training text as :func:`sample_report_sentences` joins it) with one randomly
    chosen sentence negated (:func:`negate_sentence`): a report the image contradicts, used as
    a hard negative so that the contrastive loss rewards reading negation."""
    pieces = [piece.strip() for piece in text.split(". ") if piece.strip()]
    if not pieces:
        return text
    flip = rng.randrange(len(pieces))
    pieces[flip] = negate_sentence(pieces[flip].removesuffix("."))
    return "".join(piece.removesuffix(".") + ". " for piece in pieces)


def grounding_phrase(text: str) -> str:
    """A grounding query processed as the official evaluation does.

    Split on ``"."``, each piece stripped plus ``". "``; pieces of length <= 5 (with that
    suffix), containing ``"_"`` or starting with ``","`` are dropped; the rest lower-cased and
    concatenated: ``"Right pleural effusion"`` -> ``"right pleural effusion. "``. The official
    code also shuffles the pieces with the global RNG; the order is kept here so a phrase
    always gives the same query (MS-CXR phrases are almost always a single piece).
    """
    pieces = (piece.strip() + ". " for piece in text.split("."))
    return "".join(
        piece.lower() for piece in pieces if len(piece) > 5 and "_" not in piece and not piece.startswith(",")
    )


def _header_kind(name: str) -> Section | Literal["other"] | None:
    normalised = " ".join(name.upper().split())
    if normalised in _SECTION_HEADERS:
        return _SECTION_HEADERS[normalised]
    if normalised in _OTHER_HEADERS:
        return "other"
    letters = [char for char in name if char.isalpha()]
    if len(letters) >= 2 and name == name.upper():
        return "other"
    return None

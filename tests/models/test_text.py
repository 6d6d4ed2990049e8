"""Report tokenizers built from a corpus: the whole-word vocabulary is reproducible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from maco_cxr.data.tokenizer import SPECIAL_TOKENS, ReportTokenizer

CORPUS = (
    "Moderate left pleural effusion. No pneumothorax.",
    "Small right pleural effusion. The lungs are clear.",
    "Left pleural effusion, 2.6 cm.",
)

BUILD = (
    "import sys; from maco_cxr.data.tokenizer import ReportTokenizer; "
    "ReportTokenizer.from_corpus_words(sys.argv[2:]).save(sys.argv[1])"
)


def test_word_vocabulary_ids_follow_frequency_then_alphabet() -> None:
    tokenizer = ReportTokenizer.from_corpus_words(CORPUS)
    vocab = tokenizer.tokenizer.get_vocab()
    assert [vocab[token] for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    chars = sorted(set("".join(CORPUS).lower()) - {" "})
    assert [vocab[char] for char in chars] == list(range(4, 4 + len(chars)))
    assert [vocab[f"##{char}"] for char in chars] == list(range(4 + len(chars), 4 + 2 * len(chars)))
    first = 4 + 2 * len(chars)
    # "effusion" and "pleural" appear 3 times, "left" twice; ties go alphabetically
    assert (vocab["effusion"], vocab["pleural"], vocab["left"]) == (first, first + 1, first + 2)
    assert tokenizer.vocab_size == len(vocab)


def test_words_are_single_tokens_and_unseen_words_fall_back_to_characters() -> None:
    tokenizer = ReportTokenizer.from_corpus_words(CORPUS)
    encoding = tokenizer.tokenizer.encode("[CLS] Moderate left pleural effusion. Pneumo")
    assert encoding.tokens == [
        "[CLS]",
        "moderate",
        "left",
        "pleural",
        "effusion",
        ".",
        "p",
        "##n",
        "##e",
        "##u",
        "##m",
        "##o",
    ]
    ids = tokenizer(["no pneumothorax."])["input_ids"][0]
    assert ids[0] == 2 and tokenizer.tokenizer.id_to_token(int(ids[1])) == "no"


def test_word_vocabulary_is_identical_in_other_processes(tmp_path: Path) -> None:
    """The tokenizers trainer is not (hash-map order); this builder must be, hash seed or not."""
    files = []
    for seed in ("1", "2"):
        out = tmp_path / f"tok{seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", BUILD, str(out), *CORPUS], check=True, env=env)
        files.append(out.read_bytes())
    in_process = tmp_path / "here.json"
    ReportTokenizer.from_corpus_words(CORPUS).save(in_process)
    assert files[0] == files[1] == in_process.read_bytes()


def test_saved_word_vocabulary_round_trips(tmp_path: Path) -> None:
    tokenizer = ReportTokenizer.from_corpus_words(CORPUS, max_length=12)
    tokenizer.save(tmp_path / "tok.json")
    loaded = ReportTokenizer.from_file(tmp_path / "tok.json", max_length=12)
    texts = ["small right pleural effusion.", "unseen words here"]
    assert (loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]).all()

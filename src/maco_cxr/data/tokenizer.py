"""The report tokenizer: the official WordPiece vocabulary, new vocabularies, and ids.

The official pipeline prepends the literal ``"[CLS] "`` to the text (the vocabulary has no
[SEP] and no post-processor), lower-cases through the tokenizer's normaliser, and truncates or
pads to 100 ids with [PAD] = 0. Text goes through here before it reaches the model, which only
sees id tensors and never reads a file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from maco_cxr._atomic import write_text
from maco_cxr.errors import ConfigError

__all__ = ["CLS_PREFIX", "SPECIAL_TOKENS", "ReportTokenizer", "official_tokenizer_path"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
CLS_PREFIX = "[CLS] "


def _untrained_tokenizer() -> Tokenizer:
    """An empty WordPiece tokenizer with the official normaliser and pre-tokeniser."""
    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.NFKD(), normalizers.StripAccents()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=False)]
    )
    return tokenizer


def official_tokenizer_path() -> Path:
    """The packaged official MIMIC-CXR WordPiece vocabulary (30,000 tokens)."""
    return Path(str(resources.files("maco_cxr") / "assets" / "tokenizers" / "mimic_wordpiece.json"))


class ReportTokenizer:
    """Turns report strings into fixed-length id tensors exactly as the official code does."""

    def __init__(self, tokenizer: Tokenizer, max_length: int = 100) -> None:
        for token_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != token_id:
                raise ConfigError(
                    f"tokenizer: {token} must have id {token_id} (found "
                    f"{tokenizer.token_to_id(token)}); train vocabularies with `maco-cxr tokenizer train`"
                )
        self.tokenizer = tokenizer
        self.max_length = max_length
        tokenizer.no_truncation()
        tokenizer.no_padding()

    @classmethod
    def from_file(cls, path: str | Path | None = None, max_length: int = 100) -> ReportTokenizer:
        """Load a ``tokenizers`` JSON file; None loads the official vocabulary."""
        path = Path(path) if path is not None else official_tokenizer_path()
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist; give a tokenizer JSON file or leave it empty for the official vocabulary",
                key="text.tokenizer",
            )
        return cls(Tokenizer.from_file(str(path)), max_length)

    @classmethod
    def train(
        cls, corpus: Iterable[str], vocab_size: int = 30000, min_frequency: int = 2, max_length: int = 100
    ) -> ReportTokenizer:
        """Learn a WordPiece vocabulary from report texts with the official special tokens,
        normaliser (lower-case, NFKD, strip accents) and pre-tokeniser (whitespace, digits).

        Not reproducible across processes: the ``tokenizers`` trainer breaks ties between
        equally frequent merges in hash-map order (huggingface/tokenizers#1794), so the same
        corpus can give another vocabulary in another run. Keep the saved ``tokenizer.json``
        with the model, or use :meth:`from_corpus_words` for small closed vocabularies.
        """
        tokenizer = _untrained_tokenizer()
        trainer = WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            continuing_subword_prefix="##",
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        return cls(tokenizer, max_length)

    @classmethod
    def from_corpus_words(cls, corpus: Iterable[str], min_frequency: int = 1, max_length: int = 100) -> ReportTokenizer:
        """A deterministic WordPiece vocabulary of whole words, for template-like corpora.

        Ids: the special tokens, every character of the corpus alone and as a continuation
        (``##c``), then every word seen ``min_frequency`` times or more, most frequent first
        (ties in alphabetical order). Same normaliser and pre-tokeniser as :meth:`train`; an
        unseen word falls back to characters. The same corpus always gives the same ids.
        """
        tokenizer = _untrained_tokenizer()
        counts: Counter[str] = Counter()
        for text in corpus:
            normalised = tokenizer.normalizer.normalize_str(text)
            counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalised))
        chars = sorted({char for word in counts for char in word})
        words = sorted(
            (word for word, count in counts.items() if count >= min_frequency and len(word) > 1),
            key=lambda word: (-counts[word], word),
        )
        tokens = [*SPECIAL_TOKENS, *chars, *(f"##{char}" for char in chars), *words]
        model = WordPiece(
            {token: index for index, token in enumerate(tokens)},
            unk_token="[UNK]",
            continuing_subword_prefix="##",
            max_input_chars_per_word=100,
        )
        built = Tokenizer(model)
        built.normalizer, built.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
        built.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(built, max_length)

    def save(self, path: str | Path) -> None:
        write_text(path, self.tokenizer.to_str(pretty=True))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``token_type_ids``: int64 ``[N, max_length]``."""
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.tokenizer.encode_batch([CLS_PREFIX + text for text in texts])
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, encoding in enumerate(encodings):
            tokens = encoding.ids[: self.max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return {
            "input_ids": ids,
            "attention_mask": (ids != 0).long(),
            "token_type_ids": torch.zeros_like(ids),
        }

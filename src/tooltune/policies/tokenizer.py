"""Byte-level BPE tokenizer for the built-in model, trained with the `tokenizers` library.

Byte-level means every string round-trips exactly (``decode(encode(s)) == s``), including JSON,
code and unicode never seen in training. Before BPE, text is split so that a capitalised word
never carries the space before it and every digit stands alone: a name or a number then has
the same tokens in a question (" Laheith"), a JSON argument ("\"Laheith\"") and an SQL string
("'Laheith'"), so copying it means copying tokens (GPT-2's split would give " Laheith" and
"Laheith" different tokens, which a small model must learn to map one by one). The chat-format markers are special tokens: each
encodes to one id wherever it appears in text, and decodes back to its text (they are never
skipped, since the tool-call parser needs to see them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tooltune.chat_format import END_OF_TEXT, IM_END, PAD, SPECIAL_TOKENS

# Capitalised word | all-caps run | lower-case word with its space | one digit | punctuation
# with its space | any other white space character.
PRE_SPLIT = r"[A-Z][a-z]+|[A-Z]+|\s?[a-z]+|[0-9]|\s?[^\sA-Za-z0-9]+|\s"


class BPETokenizer:
    """A trained byte-level BPE with tooltune's special tokens at ids 0..9."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.pad_token_id = self.token_id(PAD)
        # A chat model's "end of sequence" is the end of its turn.
        self.eos_token_id = self.token_id(IM_END)
        self.endoftext_id = self.token_id(END_OF_TEXT)

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
    ) -> BPETokenizer:
        """Train on ``texts``. The vocabulary may come out smaller than ``vocab_size`` when the
        texts are too small to support that many merges."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # Special tokens are split out before pre-tokenisation, so chat markers in the training
        # texts never get merged into ordinary tokens.
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise KeyError(f"unknown token {token!r}")
        return idx

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls(Tokenizer.from_file(str(path)))

"""Caption vocabulary and tokenizer (torch-free; shared by training and the runtime).

Rule (DESIGN §3): words of all captions' `tokens` in the annotation file, kept when
their count is > 5; PAD 0, START 1, UNK 2, END 3, then the kept words by descending
count (ties alphabetical). On disk it is the `levir_vocab.json` shape: {word: id}.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsicrc.errors import VocabularyError

PAD, START, UNK, END = 0, 1, 2, 3
SPECIAL_TOKENS: tuple[str, ...] = ("<NULL>", "<START>", "<UNK>", "<END>")
MIN_COUNT = 5  # a word is kept when it occurs more than this many times

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case words of a caption or query; punctuation is dropped."""
    return _WORD.findall(text.lower())


def normalize_caption(text: str) -> str:
    """Canonical form used to compare captions (false-negative detection at threshold 1.0)."""
    return " ".join(tokenize(text))


@dataclass(frozen=True)
class Vocabulary:
    """Bidirectional word <-> id mapping; index in `words` is the id."""

    words: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise VocabularyError(
                f"vocabulary must start with {', '.join(SPECIAL_TOKENS)} (ids 0-3)"
            )
        ids = {w: i for i, w in enumerate(self.words)}
        if len(ids) != len(self.words):
            raise VocabularyError("vocabulary has duplicate words")
        object.__setattr__(self, "_ids", ids)

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = MIN_COUNT) -> Vocabulary:
        """Count words over captions and keep those seen more than `min_count` times."""
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        kept = sorted((w for w, n in counts.items() if n > min_count and w not in SPECIAL_TOKENS),
                      key=lambda w: (-counts[w], w))
        return cls(SPECIAL_TOKENS + tuple(kept))

    def id(self, word: str) -> int:
        return self._ids.get(word, UNK)

    def encode(self, tokens: Sequence[str], max_len: int) -> list[int]:
        """[START, w1..wn, END], truncated so the whole fits in `max_len` ids."""
        body = [self.id(w) for w in tokens][: max(0, max_len - 2)]
        return [START, *body, END]

    def unknown_words(self, tokens: Sequence[str]) -> list[str]:
        return [w for w in tokens if w not in self._ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first END; START and PAD are skipped."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else SPECIAL_TOKENS[UNK])
        return " ".join(out)

    def to_dict(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_dict(cls, mapping: dict[str, int]) -> Vocabulary:
        """Read the {word: id} form; ids must be exactly 0..n-1."""
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in mapping.items()
        ):
            raise VocabularyError("vocabulary must be a JSON object of word -> integer id")
        by_id = sorted(mapping.items(), key=lambda kv: kv[1])
        if [v for _, v in by_id] != list(range(len(by_id))):
            raise VocabularyError("vocabulary ids must be exactly 0..n-1")
        return cls(tuple(w for w, _ in by_id))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=0) + "\n")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise VocabularyError(f"cannot read vocabulary {path}: {e}") from None


def pad_ids(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Id lists -> ids int64 [B, L] PAD-padded to the longest, and mask int64 [B, L] (1 on ids)."""
    longest = max((len(i) for i in ids), default=2)
    tokens = np.full((len(ids), longest), PAD, dtype=np.int64)  # [B, L]
    mask = np.zeros((len(ids), longest), dtype=np.int64)  # [B, L]
    for row, i in enumerate(ids):
        tokens[row, : len(i)], mask[row, : len(i)] = i, 1
    return tokens, mask


def text_batch(vocab: Vocabulary, captions: Sequence[Sequence[str]], max_len: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> the text encoder's inputs: ids int64 [B, L] ([START, words, END], PAD-padded
    to the longest) and attention mask int64 [B, L] (1 up to and including END). The one place
    captions become text-encoder inputs (training, export validation, the runtime)."""
    return pad_ids([vocab.encode(list(c), max_len) for c in captions])

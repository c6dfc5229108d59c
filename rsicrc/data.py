"""Training/evaluation data: LEVIR-CC records -> tensors (preprocessing shared with the runtime)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsicrc.levircc import PairRecord
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess
from rsicrc.vocab import Vocabulary, pad_ids, text_batch


@dataclass(frozen=True)
class Sample:
    pair: int  # index into the dataset's records
    caption: int  # index into that record's captions


@dataclass
class Batch:
    before: Tensor  # [B, 3, S, S] float32
    after: Tensor  # [B, 3, S, S] float32
    tokens: Tensor  # [B, L] int64, START ... END, PAD after
    lengths: Tensor  # [B] int64, tokens up to and including END
    labels: Tensor  # [B] int64: imgid for a changed pair, -1 for no change
    captions: list[str]  # [B] the caption text of each sample (false-negative detection)
    imgids: list[int]  # [B]

    def to(self, device: torch.device) -> Batch:
        return Batch(self.before.to(device, non_blocking=True), self.after.to(device, non_blocking=True),
                     self.tokens.to(device), self.lengths.to(device), self.labels.to(device),
                     self.captions, self.imgids)


class PairDataset(Dataset):
    """Samples of a split. Training: every caption that fits max_len is a sample (5 per pair);
    evaluation: the first caption of every pair. Preprocessed images are cached in memory."""

    def __init__(self, root: Path, records: Sequence[PairRecord], vocab: Vocabulary, max_len: int,
                 spec: PreprocessSpec, all_captions: bool, cache_images: bool = True) -> None:
        self.root, self.records, self.vocab = Path(root), list(records), vocab
        self.max_len, self.spec = max_len, spec
        self.samples = [
            Sample(i, k)
            for i, r in enumerate(self.records)
            for k, c in enumerate(r.captions if all_captions else r.captions[:1])
            if len(c) <= max_len - 2 or not all_captions
        ]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def images(self, pair: int) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed (before, after): float32 [3, S, S] each."""
        if self._cache is not None and pair in self._cache:
            return self._cache[pair]
        a, b = read_pair(*self.records[pair].image_paths(self.root))
        out = preprocess(a, self.spec), preprocess(b, self.spec)
        if self._cache is not None:
            self._cache[pair] = out
        return out

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int], int, str, int]:
        s = self.samples[index]
        rec = self.records[s.pair]
        before, after = self.images(s.pair)
        words = rec.captions[s.caption]
        return before, after, self.vocab.encode(words, self.max_len), rec.label, " ".join(words), rec.imgid


def collate(items: list[tuple[np.ndarray, np.ndarray, list[int], int, str, int]]) -> Batch:
    tokens, mask = pad_ids([it[2] for it in items])
    return Batch(
        before=torch.from_numpy(np.stack([it[0] for it in items])),
        after=torch.from_numpy(np.stack([it[1] for it in items])),
        tokens=torch.from_numpy(tokens),
        lengths=torch.from_numpy(mask.sum(axis=1)),
        labels=torch.tensor([it[3] for it in items], dtype=torch.int64),
        captions=[it[4] for it in items],
        imgids=[it[5] for it in items],
    )


def encode_captions(vocab: Vocabulary, captions: Sequence[Sequence[str]],
                    max_len: int) -> tuple[Tensor, Tensor]:
    """Token lists -> padded ids [B, L] and lengths [B] (text-encoder input; `text_batch`'s ids)."""
    ids, mask = text_batch(vocab, captions, max_len)
    return torch.from_numpy(ids), torch.from_numpy(mask.sum(axis=1))

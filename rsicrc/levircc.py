"""The LEVIR-CC dataset layout (torch-free; shared by training, evaluation and the runtime).

    DIR/LevirCCcaptions.json
    DIR/images/{train,val,test}/{A,B}/<filename>      A = before, B = after

Each JSON entry: filepath, filename, imgid, split, changeflag (0/1), sentences
[{raw, tokens, imgid, sentid}] x5, sentids. Synthetic datasets add `changes`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsicrc.errors import DataError
from rsicrc.vocab import Vocabulary

ANNOTATION_FILE = "LevirCCcaptions.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")
NO_CHANGE_LABEL = -1
NO_CHANGE_SENTENCES: tuple[str, ...] = (
    "there is no difference",
    "the two scenes seem identical",
    "the scene is the same as before",
    "no change has occurred",
    "almost nothing has changed",
)


@dataclass(frozen=True)
class PairRecord:
    """One before/after pair and its reference captions."""

    imgid: int
    split: str
    filename: str
    changed: bool
    captions: tuple[tuple[str, ...], ...]  # token lists, usually 5
    changes: tuple[dict[str, Any], ...] = ()  # synthetic change events, if any

    @property
    def label(self) -> int:
        """Contrastive label: a changed pair is its own class; all no-change pairs share -1."""
        return self.imgid if self.changed else NO_CHANGE_LABEL

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(" ".join(t) for t in self.captions)

    def image_paths(self, root: Path) -> tuple[Path, Path]:
        base = Path(root) / "images" / self.split
        return base / "A" / self.filename, base / "B" / self.filename


def _record(entry: dict[str, Any], where: str) -> PairRecord:
    try:
        sentences = entry["sentences"]
        captions = tuple(tuple(str(w) for w in s["tokens"]) for s in sentences)
        split = str(entry.get("split", entry.get("filepath")))
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if "changeflag" in entry:
            changed = bool(int(entry["changeflag"]))
        else:  # older files: a pair is unchanged when all its captions are the fixed sentences
            changed = not all(" ".join(c) in NO_CHANGE_SENTENCES for c in captions)
        return PairRecord(
            imgid=int(entry["imgid"]),
            split=split,
            filename=str(entry["filename"]),
            changed=changed,
            captions=captions,
            changes=tuple(entry.get("changes", ())),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: malformed entry ({type(e).__name__}: {e})") from None


def load_annotations(path: Path) -> list[PairRecord]:
    """Parse a LevirCCcaptions.json file into records, in file order."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read annotation file {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: expected a JSON object with an 'images' list")
    return [_record(e, f"{path} entry {i}") for i, e in enumerate(doc["images"])]


@dataclass(frozen=True)
class LevirCC:
    """A dataset folder in the LEVIR-CC layout."""

    root: Path
    records: tuple[PairRecord, ...]

    @classmethod
    def open(cls, root: Path | str) -> LevirCC:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"dataset folder not found: {root}")
        ann = root / ANNOTATION_FILE
        if not ann.is_file():
            raise DataError(f"{root} is not a LEVIR-CC folder: {ANNOTATION_FILE} is missing")
        return cls(root, tuple(load_annotations(ann)))

    def split(self, name: str) -> list[PairRecord]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == name]

    def build_vocabulary(self) -> Vocabulary:
        """The vocabulary rule over every caption of the annotation file (LEVIR-CC: 468)."""
        return vocabulary_from_records(self.records)


def vocabulary_from_records(records: Sequence[PairRecord]) -> Vocabulary:
    return Vocabulary.build(c for r in records for c in r.captions)

"""Many before/after pairs: list them from a folder, a LEVIR-CC dataset or a CSV, and caption
them all into a JSON Lines file (`rsicrc caption --pairs`).

Three sources are understood:
- a folder with A/ (before) and B/ (after) subfolders, files matched by name;
- a LEVIR-CC dataset folder (it has LevirCCcaptions.json), optionally one split;
- a CSV file whose header names the columns before,after and optionally id (other columns
  are ignored); relative paths are resolved against the CSV's folder.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from rsicrc.checks import positive_int
from rsicrc.errors import DataError
from rsicrc.files import write_atomic
from rsicrc.levircc import ANNOTATION_FILE, LevirCC
from rsicrc.runtime.captioner import Captioner, CaptionResult
from rsicrc.runtime.cluster import ClusterOptions
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions

SHOWN = 3  # how many offending entries an error message lists
_FORMS = ("a folder with A/ and B/ subfolders, a LEVIR-CC folder (with LevirCCcaptions.json) "
          "or a .csv file with the columns before,after[,id]")


@dataclass(frozen=True)
class PairItem:
    """One pair to caption."""

    id: str  # unique within its listing; written to the output
    before: Path  # the earlier image
    after: Path  # the later image


def _few(items: Sequence[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _visible_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def _from_folder(source: Path) -> list[PairItem]:
    before, after = _visible_files(source / "A"), _visible_files(source / "B")
    lonely = [f"A/{n} (no B/{n})" for n in sorted(set(before) - set(after))]
    lonely += [f"B/{n} (no A/{n})" for n in sorted(set(after) - set(before))]
    if lonely:
        raise DataError(f"{source}: {len(lonely)} image(s) without a partner: {_few(lonely)}")
    if not before:
        raise DataError(f"{source}: A/ and B/ hold no image files")
    return [PairItem(n, before[n], after[n]) for n in sorted(before)]


def _check_exist(items: list[PairItem], where: str) -> list[PairItem]:
    missing = [f"{i.id}: {p}" for i in items for p in (i.before, i.after) if not p.is_file()]
    if missing:
        raise DataError(f"{where}: {len(missing)} image file(s) not found: {_few(missing)}")
    return items


def _from_levircc(source: Path, split: str | None) -> list[PairItem]:
    dataset = LevirCC.open(source)
    records = dataset.split(split) if split is not None else list(dataset.records)
    if not records:
        raise DataError(f"{source}: no pairs" + (f" in split {split!r}" if split else ""))
    names = [r.filename for r in records]
    unique = len(set(names)) == len(names)
    items = [PairItem(r.filename if unique else f"{r.split}/{r.filename}", *r.image_paths(source))
             for r in records]
    return _check_exist(items, str(source))


def _from_csv(source: Path) -> list[PairItem]:
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read pairs CSV {source}: {e}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines do not count
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "before" not in header or "after" not in header:
        raise DataError(f"{source}: the first line must be a header naming the columns before,after[,id]; "
                        f"found {header}")
    col = {name: header.index(name) for name in ("before", "after", "id") if name in header}
    items: list[PairItem] = []
    for line, row in enumerate(rows[1:], start=2):
        cells = {k: (row[i].strip() if i < len(row) else "") for k, i in col.items()}
        for key in ("before", "after"):
            if not cells[key]:
                raise DataError(f"{source} line {line}: the {key} column is empty")
        ident = cells.get("id") or str(line - 1)
        paths = [source.parent / Path(cells[k]).expanduser() for k in ("before", "after")]
        items.append(PairItem(ident, paths[0], paths[1]))
    if not items:
        raise DataError(f"{source}: the CSV lists no pairs (only a header)")
    ids = [i.id for i in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"{source}: duplicate ids {_few(duplicates)}; each pair needs its own id")
    return _check_exist(items, str(source))


def list_pairs(source: Path, split: str | None = None) -> list[PairItem]:
    """Every pair of a folder, LEVIR-CC dataset or CSV (see the module docstring), in a fixed order.

    `split` picks one LEVIR-CC split (default: all); it is an error for the other forms.
    Listing fails with a DataError when an image file is missing or has no partner.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"pairs source not found: {source}; give {_FORMS}")
    is_levircc = source.is_dir() and (source / ANNOTATION_FILE).is_file()
    if split is not None and not is_levircc:
        raise DataError(f"--split applies only to a LEVIR-CC folder (with {ANNOTATION_FILE}); "
                        f"{source} is not one")
    if is_levircc:
        return _from_levircc(source, split)
    if source.is_dir() and (source / "A").is_dir() and (source / "B").is_dir():
        return _from_folder(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _from_csv(source)
    raise DataError(f"cannot list pairs from {source}; give {_FORMS}")


def read_item(ident: str, before: Path, after: Path, bands: Sequence[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """read_pair, with the pair's id in front of any error (one of many pairs failed: which?)."""
    try:
        return read_pair(before, after, bands)
    except DataError as e:
        raise type(e)(f"pair {ident}: {e}") from None


def _check_run(out: Path, batch_size: int) -> None:
    positive_int(batch_size, "batch size")
    if not Path(out).parent.is_dir():
        raise DataError(f"output folder does not exist: {Path(out).parent}")
    if Path(out).is_dir():
        raise DataError(f"--out {out} is a folder; give a file name such as captions.jsonl")


def caption_items(captioner: Captioner, items: Sequence[PairItem], options: DecodingOptions,
                  bands: Sequence[int] | None = None) -> list[CaptionResult]:
    """Read one batch of pairs and caption it: one result per item."""
    arrays = [read_item(i.id, i.before, i.after, bands) for i in items]
    return captioner.caption_arrays([a[0] for a in arrays], [a[1] for a in arrays], options)


def jsonl_line(item: PairItem, caption: str, score: float) -> bytes:
    """One line of the `caption --pairs` output: id, before, after (as listed), caption, score."""
    line = {"id": item.id, "before": str(item.before), "after": str(item.after), "caption": caption,
            "score": score}
    return (json.dumps(line) + "\n").encode("utf-8")


def caption_to_jsonl(captioner: Captioner, items: Sequence[PairItem], out: Path, options: DecodingOptions,
                     batch_size: int = 8, bands: Sequence[int] | None = None, progress: bool = True) -> int:
    """Caption `items` in batches into `out`, one JSON object per line (id, before, after,
    caption, score). Written to a temporary file renamed at the end: a failure leaves no `out`."""
    _check_run(out, batch_size)
    from tqdm import tqdm

    def write(f: BinaryIO) -> None:
        with tqdm(total=len(items), unit="pair", file=sys.stderr, disable=not progress,
                  desc="captioning") as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start: start + batch_size]
                results = caption_items(captioner, batch, options, bands)
                for item, result in zip(batch, results, strict=True):
                    f.write(jsonl_line(item, result.caption, result.score))
                bar.update(len(batch))

    write_atomic(Path(out), write)
    return len(items)


def caption_pairs(source: Path, out: Path, options: DecodingOptions, model_dir: Path | None = None,
                  runtime: RuntimeOptions = RuntimeOptions(), split: str | None = None, batch_size: int = 8,
                  bands: Sequence[int] | None = None, progress: bool = True,
                  cluster: ClusterOptions | None = None) -> int:
    """List the pairs of `source`, load the model and caption them all into `out` (JSONL).
    Returns the number of pairs written. The listing is checked before the model loads.
    `cluster` (default: this process) may send the batches to Ray workers
    (`rsicrc.runtime.distributed`); this process still writes the file, once complete."""
    if cluster is not None and not cluster.is_local:
        from rsicrc.runtime.distributed import caption_on_cluster

        return caption_on_cluster(source, out, options, model_dir, runtime, cluster, split, batch_size, bands,
                                  progress)
    items = list_pairs(source, split)
    _check_run(out, batch_size)
    captioner = Captioner(ModelFolder.open(model_dir), runtime)
    return caption_to_jsonl(captioner, items, out, options, batch_size, bands, progress)

"""`rsicrc index` and `rsicrc caption --pairs` on a Ray cluster (`--cluster ray[:ADDRESS]`), over
the executor of `rsicrc.runtime.cluster`. Torch-free; Ray is imported only once there is work.

The driver (this process) lists the pairs, checks the model folder, the output and the options,
and alone writes; the workers (Ray actors) each load the one graph set their job needs once and
read their own batches of pairs from the paths they are sent (pixels never travel):
- index: the driver holds the one IndexWriter (its lock, its atomic shard commits) and sends only
  the ids the index does not hold yet, in batches of --batch-size; embeddings are committed in the
  order the batches come back, every --commit-every pairs. An interrupted or crashed run leaves
  the index as of its last commit and the next run computes only the missing ids, as locally.
  Rows may be in another order than a local run's; ids, embeddings (within float rounding: the
  workers run other thread counts) and metadata are the same.
- caption --pairs: results are kept in the driver (about 100 bytes a pair) and the JSON Lines
  file is written once every batch is back, atomically, in the listing's order: the same file as a
  local run's.

Every node must see the model folder and the images at the driver's absolute paths (a shared
file system) and have rsicrc installed with the same version.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.checks import positive_int
from rsicrc.files import write_atomic
from rsicrc.runtime.captioner import Captioner
from rsicrc.runtime.cluster import ClusterOptions, chunks, execute, preflight, worker_runtime
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.encoders import ImageEncoder
from rsicrc.runtime.index import IndexWriter
from rsicrc.runtime.index_format import INDEX_FILE, Entry, model_identity, read_header
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.pairs import PairItem, _check_run, caption_items, jsonl_line, list_pairs
from rsicrc.runtime.retriever import IndexReport, _entries, embed_entries


@dataclass(frozen=True)
class EmbedPairs:
    """Job: the visual embeddings of index entries, one image-encoder load per worker."""

    model_dir: str  # absolute model folder, as the driver resolved it (every node sees it there)
    runtime: RuntimeOptions  # precision resolved by the driver; threads = the worker's threads
    bands: tuple[int, ...] | None  # 1-based bands of multiband images; None = the default

    def open(self) -> Callable[[list[Entry]], list[np.ndarray]]:
        encoder = ImageEncoder(ModelFolder.open(Path(self.model_dir)), self.runtime)
        return lambda entries: list(embed_entries(encoder, entries, self.bands))


@dataclass(frozen=True)
class CaptionPairs:
    """Job: (caption, score) of pairs, one image-encoder + decoder-step load per worker."""

    model_dir: str  # absolute model folder, as the driver resolved it (every node sees it there)
    runtime: RuntimeOptions  # precision resolved by the driver; threads = the worker's threads
    decoding: DecodingOptions  # beam size, length penalty: as a local run's
    bands: tuple[int, ...] | None  # 1-based bands of multiband images; None = the default

    def open(self) -> Callable[[list[PairItem]], list[tuple[str, float]]]:
        captioner = Captioner(ModelFolder.open(Path(self.model_dir)), self.runtime)
        return lambda items: [(r.caption, r.score)
                              for r in caption_items(captioner, items, self.decoding, self.bands)]


def _resolved(cluster: ClusterOptions, model_dir: Path | None, runtime: RuntimeOptions
              ) -> tuple[ModelFolder, RuntimeOptions]:
    """The model folder (manifest read and checked here, graphs loaded only by the workers) and the
    workers' runtime options, its precision fixed so that every worker loads the same graphs."""
    runtime = worker_runtime(cluster, runtime)
    folder = ModelFolder.open(model_dir)
    return folder, folder.resolve(runtime)


def _bar(total: int, desc: str, progress: bool) -> Any:
    """A progress bar in pairs on stderr (tqdm)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="pair", file=sys.stderr, disable=not progress, desc=desc)


def index_on_cluster(source: Path, index_dir: Path, model_dir: Path | None, runtime: RuntimeOptions,
                     cluster: ClusterOptions, split: str | None, batch_size: int, dtype: str | None,
                     bands: Sequence[int] | None, commit_every: int, progress: bool) -> IndexReport:
    """`index_pairs` with the batches embedded by Ray workers (module docstring). Ray is started
    or joined only when the index lacks some of the listed ids."""
    positive_int(batch_size, "batch size")
    worker_runtime(cluster, runtime)  # bad option combinations fail before any listing
    preflight(cluster)  # and a missing Ray or a dead address before the index folder is created
    entries = _entries(source, split)
    index_dir = Path(index_dir)
    if runtime.precision is None and (index_dir / INDEX_FILE).is_file():
        runtime = replace(runtime, precision=read_header(index_dir).model.precision)  # append alike
    folder, runtime = _resolved(cluster, model_dir, runtime)
    identity = model_identity(folder.path, folder.manifest, str(runtime.precision))
    job = EmbedPairs(str(folder.path.resolve()), runtime, tuple(bands) if bands is not None else None)
    with IndexWriter.open(index_dir, identity, folder.dims.d_model, dtype, commit_every) as writer:
        todo = writer.pending(entries)
        units = chunks(todo, batch_size)
        with _bar(len(todo), "indexing", progress) as bar:
            for seq, vectors in execute(units, job, cluster):
                writer.add(units[seq], np.stack(vectors))
                bar.update(len(units[seq]))
        total = writer.count
    return IndexReport(added=len(todo), skipped=len(entries) - len(todo), total=total, index_dir=index_dir)


def caption_on_cluster(source: Path, out: Path, options: DecodingOptions, model_dir: Path | None,
                       runtime: RuntimeOptions, cluster: ClusterOptions, split: str | None, batch_size: int,
                       bands: Sequence[int] | None, progress: bool) -> int:
    """`caption_pairs` with the batches captioned by Ray workers; the JSONL is written in the
    listing's order once all are back (module docstring). Returns the number of pairs written."""
    worker_runtime(cluster, runtime)
    preflight(cluster)
    items = list_pairs(source, split)
    _check_run(out, batch_size)
    folder, runtime = _resolved(cluster, model_dir, runtime)
    job = CaptionPairs(str(folder.path.resolve()), runtime, options,
                       tuple(bands) if bands is not None else None)
    # Workers read absolute paths (their working folder is not the driver's); lines keep the listing's.
    units = chunks([PairItem(i.id, i.before.resolve(), i.after.resolve()) for i in items], batch_size)
    lines: list[bytes] = [b""] * len(items)
    with _bar(len(items), "captioning", progress) as bar:
        for seq, results in execute(units, job, cluster):
            for k, (caption, score) in enumerate(results):
                lines[seq * batch_size + k] = jsonl_line(items[seq * batch_size + k], caption, score)
            bar.update(len(results))
    write_atomic(Path(out), b"".join(lines))
    return len(items)

"""Text-to-image-pair retrieval (DESIGN §7): fill an index folder (`rsicrc.runtime.index`) with an
exported model's image encoder (`index_pairs`, the `rsicrc index` call) and search it with the same
model's text encoder (`Retriever`, the `rsicrc search` call). Torch-free.

Identity. An index records the sha256 of the image- and text-encoder graphs (of one precision)
that made it; appending with, or searching with, any other model is an IndexFolderError naming
both. The model folder for search defaults to the one recorded in the index while it still has a
manifest, else default_model_dir(); the precision is always the index's.

Queries are tokenized with the model's vocabulary (unknown words become UNK and are named in a
warning), embedded by the text-encoder graph alone (the image encoder and decoder are not loaded)
and L2-normalised; a hit's score is the cosine similarity with the pair's visual embedding.

Exact search (backend "exact"). The stored rows are multiplied with the float32 queries [q, C] in
chunks of CHUNK_BYTES of float32 (float16 rows are cast chunk by chunk, exactly, by ONNX Runtime's
vectorised Cast when it is installed; every product accumulates in float32 in numpy's BLAS),
keeping a running top-k per query: the rows scoring above the k-th best so far (argpartition plus
every row tied with the k-th while that is not known, or when too many are above it), merged with
the best so far by (score descending, row ascending). The result equals sorting the brute force
`stored.astype(float32) @ q` by (-score, row). Memory: the memory-mapped shards plus one chunk;
1,000,000 x 2048 float16 rows are 4 GB. Nothing is built at load: the backend for one-off searches.

Quantized (backend "quantized", `rsicrc.runtime.scan`): the same results as exact search, from an
int8 copy of the rows built at load (~2.5 s and ~2 bytes per stored value for 100,000 x 2048 rows)
that is scanned at close to memory speed, then exact rescoring of the rows it cannot rule out. For
a process that answers many queries (100,000 x 2048: 13-19 ms a query against 75-130 ms exact).

FAISS (backend "faiss", needs faiss-cpu: `pip install 'rsicrc[faiss]'`): an IndexFlatIP built at
load from the stored rows as float32 (twice the memory of float16 storage, held in RAM). Its scores
equal exact search within float32 rounding, its ids too except where scores tie.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.checks import one_of, positive_int
from rsicrc.errors import ConfigError, DataError, DependencyError, IndexFolderError
from rsicrc.levircc import ANNOTATION_FILE, LevirCC
from rsicrc.runtime import onnx_proto
from rsicrc.runtime.backend import import_onnxruntime, session_options
from rsicrc.runtime.cluster import ClusterOptions
from rsicrc.runtime.encoders import ImageEncoder, TextEncoder
from rsicrc.runtime.index import DEFAULT_COMMIT_ROWS, IndexWriter, StoredIndex, normalize_rows, open_index
from rsicrc.runtime.index_format import INDEX_FILE, Entry, model_identity, read_header
from rsicrc.runtime.manifest import MANIFEST_FILE, default_model_dir
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.pairs import list_pairs, read_item
from rsicrc.vocab import tokenize

SEARCHES: tuple[str, ...] = ("exact", "quantized", "faiss")  # how the stored rows are searched
DEFAULT_TOP_K = 10
# float32 bytes of stored rows per matrix product: 16 MiB lets BLAS use every core and keeps the
# per-chunk overhead small (idle 2-core machine, 1M x 128 / 100k x 2048: 2-2.5x faster than 1 MiB).
CHUNK_BYTES = 16 << 20
SCORE_BYTES = 64 << 20  # bytes of one chunk's [q, rows] score matrix
log = logging.getLogger(__name__)

TopK = tuple[np.ndarray, np.ndarray, np.ndarray]  # flat (query, score, row), grouped by query
TopRows = tuple[np.ndarray, np.ndarray]  # scores float32 [q, k], rows int64 [q, k], best first


def check_top_k(top_k: Any) -> int:
    return positive_int(top_k, "top-k")


def check_queries(queries: Any, dim: int) -> np.ndarray:
    """Query embeddings as C-contiguous float32 [q, dim], finite."""
    array = np.ascontiguousarray(queries, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise DataError(f"query embeddings must be [q, {dim}], got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError("query embeddings contain NaN or infinity")
    return array


def _where_true(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) int64 of the True entries of a 2-D mask (np.nonzero is ~10x slower in 2-D)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def candidates(scores: np.ndarray, first_row: int, k: int, floor: np.ndarray | None = None) -> TopK:
    """Every entry of `scores` [q, n] that can still enter its query's top k, as flat (query, score,
    global row). With `floor` [q], the k-th best score so far (earlier rows win ties), the entries
    above it, when few; else the k largest of each row and every entry tied with the k-th."""
    n = scores.shape[1]
    if floor is not None:
        above = scores > floor[:, None]
        if np.count_nonzero(above) <= 4 * k * scores.shape[0]:  # the usual case: no argpartition
            qi, ri = _where_true(above)
            return qi, scores[qi, ri], ri + first_row
    if n > k:
        kth = np.take_along_axis(scores, np.argpartition(scores, n - k, axis=1)[:, n - k: n - k + 1], 1)
        qi, ri = _where_true(scores >= kth)
    else:
        qi, ri = (a.ravel().astype(np.int64) for a in np.indices(scores.shape))
    return qi, scores[qi, ri], ri + first_row


def merge_top_k(a: TopK, b: TopK, k: int) -> TopK:
    """The k best of each query over two candidate sets, by (score descending, row ascending)."""
    qi, s, r = (np.concatenate(pair) for pair in zip(a, b, strict=True))
    order = np.lexsort((r, -s, qi))
    qi, s, r = qi[order], s[order], r[order]
    keep = np.arange(len(qi)) - np.searchsorted(qi, qi, side="left") < k
    return qi[keep], s[keep], r[keep]


def cast_model() -> bytes:
    """A one-node ONNX model: y float32 [n, c] = Cast(x float16 [n, c]) (no `onnx` package needed)."""
    p = onnx_proto
    node = p.node("Cast", ["x"], ["y"], [p.int_attribute("to", p.FLOAT)])
    inputs, outputs = [p.value_info("x", p.FLOAT16, ["n", "c"])], [p.value_info("y", p.FLOAT, ["n", "c"])]
    return p.model([node], inputs, outputs, {"": 17}, name="cast")


@functools.lru_cache(maxsize=4)
def float16_caster(threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """float16 [n, c] -> float32. ONNX Runtime's Cast kernel is vectorised (measured 4-5x faster than
    numpy's cast here, which dominates a float16 search; 2 threads ~1.7x faster than 1); without ONNX
    Runtime, numpy. Both are exact, so search results do not depend on which one runs."""
    try:
        ort = import_onnxruntime()
    except DependencyError:
        return lambda block: block.astype(np.float32)
    options = session_options(ort, threads)
    session = ort.InferenceSession(cast_model(), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda block: session.run(None, {"x": np.ascontiguousarray(block)})[0]


def caster(index: StoredIndex, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Stored rows -> float32, exactly (the one conversion every backend reads rows through)."""
    return float16_caster(threads) if index.header.dtype == "float16" else np.asarray


def exact_search(index: StoredIndex, queries: np.ndarray, top_k: int, threads: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product (module docstring): scores float32 [q, k'] and rows int64 [q, k'],
    best first, ties by lower row; k' = min(top_k, len(index)). Queries: [q, C], used as given."""
    queries, k = check_queries(queries, index.dim), check_top_k(top_k)
    q = queries.shape[0]
    best: TopK = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    step = max(16, min(CHUNK_BYTES // (4 * index.dim), SCORE_BYTES // (4 * max(q, 1))))
    cast = caster(index, threads)
    floor = None  # [q] the k-th best score so far, once every query has k
    for first, array in index.blocks():
        for a in range(0, array.shape[0], step):
            block = cast(array[a: a + step])  # float32 [n, C]
            found = candidates(queries @ block.T, first + a, k, floor)
            if len(found[0]):  # usually empty once the top k is good
                best = merge_top_k(best, found, k)
                if len(best[0]) == q * k:
                    floor = best[1].reshape(q, k)[:, -1]
    width = min(k, len(index))
    return best[1].reshape(q, width), best[2].reshape(q, width)


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise DependencyError("the faiss backend needs faiss-cpu: pip install 'rsicrc[faiss]' "
                              "(or use --backend exact)") from None
    return faiss


class FaissSearch:
    """A FAISS flat inner-product index over the stored rows, as float32 in RAM."""

    def __init__(self, index: StoredIndex) -> None:
        faiss = import_faiss()
        self.flat = faiss.IndexFlatIP(index.dim)
        step = max(1, CHUNK_BYTES // (4 * index.dim))
        for _, array in index.blocks():
            for a in range(0, array.shape[0], step):
                self.flat.add(np.ascontiguousarray(array[a: a + step], dtype=np.float32))

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        queries, k = check_queries(queries, self.flat.d), min(check_top_k(top_k), self.flat.ntotal)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, rows = self.flat.search(queries, k)
        return scores, rows.astype(np.int64)


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int  # 1 = best
    score: float  # cosine similarity of the query and the pair's visual embedding
    id: str  # the pair's id in the index
    before: str  # path of the earlier image
    after: str  # path of the later image
    metadata: dict[str, Any] = field(default_factory=dict)  # as stored (LEVIR-CC: split, changeflag)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "id": self.id, "before": self.before,
                "after": self.after, "metadata": dict(self.metadata)}


class Retriever:
    """An index folder and the model that made it, loaded once, answering text queries."""

    def __init__(self, index_dir: Path, model_dir: Path | None = None,
                 runtime: RuntimeOptions = RuntimeOptions(), search: str = "exact",
                 verify: bool = True) -> None:
        one_of(search, SEARCHES, "search")
        self.index = open_index(index_dir, verify)
        stored = self.index.model
        if model_dir is None:
            recorded = Path(stored.model_dir)
            model_dir = recorded if (recorded / MANIFEST_FILE).is_file() else default_model_dir()
        folder = ModelFolder.open(model_dir)
        if stored.precision not in folder.manifest.graphs:
            have = ", ".join(sorted(folder.manifest.graphs))
            raise IndexFolderError(f"{index_dir} was made with {stored.precision} graphs, which "
                                   f"{folder.path} does not have ({have}); use the model that built it")
        ours = model_identity(folder.path, folder.manifest, stored.precision)
        if not ours.same_model(stored):
            raise IndexFolderError(f"{index_dir} was made with another model ({stored.describe()}), not "
                                   f"{ours.describe()}; search with that model or index again with this one")
        self.encoder = TextEncoder(folder, replace(runtime, precision=stored.precision))  # the index's
        self.search_kind = search
        self._search = self._searcher(search, runtime.threads)

    def _searcher(self, search: str, threads: int | None) -> Callable[[np.ndarray, int], TopRows]:
        """The search(queries [q, C], top_k) -> (scores, rows) of its kind; built here, once."""
        if search == "faiss":
            return FaissSearch(self.index).search
        if search == "quantized":
            from rsicrc.runtime.scan import QuantizedScan

            return QuantizedScan(self.index, caster(self.index, threads), threads).search
        return functools.partial(exact_search, self.index, threads=threads)

    def __len__(self) -> int:
        return len(self.index)

    def unknown_words(self, queries: Sequence[str]) -> list[list[str]]:
        """Per query, its words that are not in the model's vocabulary (they become UNK)."""
        return [self.encoder.model.vocab.unknown_words(tokenize(q)) for q in queries]

    def embed(self, queries: Sequence[str]) -> np.ndarray:
        """L2-normalised query embeddings float32 [q, C]."""
        texts = list(queries)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not tokenize(text):
                raise ConfigError(f"query {i + 1} has no words: {text!r}")
        return normalize_rows(self.encoder.embed(texts))

    def search(self, queries: Sequence[str], top_k: int = DEFAULT_TOP_K, warn: bool = True
               ) -> list[list[Hit]]:
        """The top_k pairs for each query, best first (fewer when the index is smaller); `warn`
        logs unknown words and words past the model's length."""
        texts, k = list(queries), check_top_k(top_k)
        vectors = self.embed(texts)
        if warn:
            for line in self.warnings(texts):
                log.warning("%s", line)
        return self.search_vectors(vectors, k)

    def warnings(self, queries: Sequence[str]) -> list[str]:
        """One line per query with unknown words or more words than the model reads."""
        limit = self.encoder.model.max_len - 2
        lines = []
        for i, (text, unknown) in enumerate(zip(queries, self.unknown_words(queries), strict=True)):
            label = f"query {i + 1}" if len(queries) > 1 else "the query"
            if unknown:
                lines.append(f"warning: {label} has word(s) not in the model's vocabulary, read as <UNK>: "
                             f"{', '.join(dict.fromkeys(unknown))}")
            if len(tokenize(text)) > limit:
                lines.append(f"warning: {label} has more than {limit} words; the rest are ignored")
        return lines

    def search_vectors(self, vectors: np.ndarray, top_k: int = DEFAULT_TOP_K) -> list[list[Hit]]:
        """Search with query embeddings [q, C] (normalised here)."""
        queries = normalize_rows(check_queries(vectors, self.index.dim))
        scores, rows = self._search(queries, check_top_k(top_k))
        records = self.index.records(rows.ravel().tolist())
        hits: list[list[Hit]] = []
        for q in range(rows.shape[0]):
            row = records[q * rows.shape[1]: (q + 1) * rows.shape[1]]
            hits.append([Hit(r + 1, float(scores[q, r]), e.id, e.before, e.after, dict(e.metadata))
                         for r, e in enumerate(row)])
        return hits


@dataclass(frozen=True)
class IndexReport:
    """What one `index_pairs` run did."""

    added: int  # pairs embedded and committed by this run
    skipped: int  # listed pairs already in the index (append, resume)
    total: int  # entries in the index now
    index_dir: Path  # the index folder

    def to_dict(self) -> dict[str, Any]:
        """The `rsicrc index --json` form."""
        return {"added": self.added, "skipped": self.skipped, "total": self.total,
                "index": str(self.index_dir)}


def _entries(source: Path, split: str | None) -> list[Entry]:
    """The pairs of `source` as index entries with absolute paths; LEVIR-CC pairs carry their
    split and changeflag as metadata."""
    items = list_pairs(source, split)
    meta: dict[Path, dict[str, Any]] = {}
    if Path(source).is_dir() and (Path(source) / ANNOTATION_FILE).is_file():
        for r in LevirCC.open(source).records:
            meta[r.image_paths(source)[0]] = {"split": r.split, "changeflag": int(r.changed)}
    return [Entry(i.id, str(i.before.resolve()), str(i.after.resolve()), meta.get(i.before, {}))
            for i in items]


def embed_entries(encoder: ImageEncoder, entries: Sequence[Entry], bands: Sequence[int] | None = None
                  ) -> np.ndarray:
    """Read one batch of pairs and embed it: float32 [len(entries), C], not normalised."""
    arrays = [read_item(e.id, Path(e.before), Path(e.after), bands) for e in entries]
    return encoder.embed([a[0] for a in arrays], [a[1] for a in arrays])


def index_pairs(source: Path, index_dir: Path, model_dir: Path | None = None,
                runtime: RuntimeOptions = RuntimeOptions(), split: str | None = None, batch_size: int = 8,
                dtype: str | None = None, bands: Sequence[int] | None = None,
                commit_every: int = DEFAULT_COMMIT_ROWS, progress: bool = True,
                cluster: ClusterOptions | None = None) -> IndexReport:
    """Embed the pairs of `source` (a LEVIR-CC folder, a folder with A/ and B/, or a CSV) into the
    index folder, creating it or appending: ids already committed are skipped (resume), every
    `commit_every` pairs are committed. The listing is checked before the model loads; only the
    image encoder is loaded. `cluster` (default: this process) may send the batches to Ray workers
    (`rsicrc.runtime.distributed`); this process still writes the index."""
    if cluster is not None and not cluster.is_local:
        from rsicrc.runtime.distributed import index_on_cluster

        return index_on_cluster(source, index_dir, model_dir, runtime, cluster, split, batch_size, dtype,
                                bands, commit_every, progress)
    positive_int(batch_size, "batch size")
    entries = _entries(source, split)
    index_dir = Path(index_dir)
    if runtime.precision is None and (index_dir / INDEX_FILE).is_file():
        runtime = replace(runtime, precision=read_header(index_dir).model.precision)  # append alike
    encoder = ImageEncoder(ModelFolder.open(model_dir), runtime)
    folder = encoder.model
    identity = model_identity(folder.path, folder.manifest, encoder.precision)
    from tqdm import tqdm

    with IndexWriter.open(index_dir, identity, folder.dims.d_model, dtype, commit_every) as writer:
        todo = writer.pending(entries)
        with tqdm(total=len(todo), unit="pair", file=sys.stderr, disable=not progress,
                  desc="indexing") as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start: start + batch_size]
                writer.add(batch, embed_entries(encoder, batch, bands))
                bar.update(len(batch))
        total = writer.count
    return IndexReport(added=len(todo), skipped=len(entries) - len(todo), total=total, index_dir=index_dir)

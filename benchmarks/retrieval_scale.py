"""Retrieval at archive scale without a model: build indexes of N random unit vectors through the
index writer, then measure load time, query latency and peak memory (DESIGN §7, §9).

    python benchmarks/retrieval_scale.py --dim 128 --sizes 10000 100000 1000000
    python benchmarks/retrieval_scale.py --dim 2048 --dtype float16 --faiss --out /tmp/bench

Per size, building and searching each run in a fresh process (so each peak RSS is its own):
- build_s: time spent in IndexWriter.add/commit (normalise, cast, write, fsync, sha256), not in
  drawing the random vectors (gen_s); build_rss_mb: the writer's peak RSS;
- load_s / load_noverify_s: open_index with and without the sha256 pass (warm page cache: the
  index was just written);
- query_ms: median of 20 single-query searches (top-k, exact) incl. reading the hits' records;
  batch100_ms: one search of 100 queries; faiss_* likewise when --faiss (IndexFlatIP build time
  and median single-query latency); quantized_* likewise when --quantized (the int8 pre-scan's
  build time at load, query latency, share of top-k ids equal to exact search);
- self_top1: share of noisy copies of stored rows whose top hit is that row; brute_force_equal
  (N <= --check-max): exact search equals a float32 numpy brute force (rows and scores, bit for bit);
- search_rss_mb: peak RSS of loading and searching (mapped index pages included), before the
  brute-force check; faiss_rss_mb: after building the FAISS index as well.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FAKE_SHA = ("0" * 64, "1" * 64)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=128, help="embedding width C (tiny 128..., paper 2048)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20, help="single queries timed per size")
    p.add_argument("--faiss", action="store_true", help="also time the FAISS flat backend")
    p.add_argument("--quantized", action="store_true", help="also time the quantized backend (int8 pre-scan)")
    p.add_argument("--check-max", type=int, default=100_000, help="brute-force check up to this size")
    p.add_argument("--out", type=Path, default=None, help="where to build (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the built indexes")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _build(n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Stage 1 (own process): write N random rows through IndexWriter."""
    import numpy as np

    from rsicrc.runtime.index import IndexWriter
    from rsicrc.runtime.index_format import Entry, ModelIdentity

    folder, dim = root / f"index-{n}", args.dim
    model = ModelIdentity(*FAKE_SHA, "fp32", "/benchmark/no-model")
    itemsize = 2 if args.dtype == "float16" else 4
    commit_rows = max(4096, min(262_144, (256 << 20) // (dim * itemsize)))  # shards of ~256 MB
    step = max(1024, (32 << 20) // (dim * 4))
    rng = np.random.default_rng(n)
    gen = 0.0
    start = time.perf_counter()
    with IndexWriter.open(folder, model, dim, args.dtype, commit_rows) as writer:
        for a in range(0, n, step):
            t = time.perf_counter()
            rows = rng.standard_normal((min(step, n - a), dim), dtype=np.float32)
            entries = [Entry(f"p{i:08d}", f"/archive/A/p{i:08d}.tif", f"/archive/B/p{i:08d}.tif")
                       for i in range(a, a + len(rows))]
            gen += time.perf_counter() - t
            writer.add(entries, rows)
    return {"gen_s": gen, "build_s": time.perf_counter() - start - gen, "build_rss_mb": _peak_rss_mb(),
            "index_mb": sum(p.stat().st_size for p in folder.iterdir()) / 2**20}


def _single_queries(search: Any, queries: Any, repeats: int, index: Any = None) -> tuple[float, Any]:
    """Median ms of `repeats` one-query searches (`search(queries [1, C]) -> (scores, rows)`), the
    hits' records read too when `index` is given; and each query's top row, int64 [repeats]."""
    import numpy as np

    times, firsts = [], []
    for i in range(repeats):
        t = time.perf_counter()
        _, rows = search(queries[i: i + 1])
        if index is not None:
            index.records(rows[0].tolist())
        times.append(time.perf_counter() - t)
        firsts.append(int(rows[0, 0]))
    return statistics.median(times) * 1000, np.array(firsts, dtype=np.int64)


def _search(n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Stage 2 (own process): load the index, time queries, check them."""
    import numpy as np

    from rsicrc.runtime.index import open_index
    from rsicrc.runtime.retriever import exact_search

    folder = root / f"index-{n}"
    result: dict[str, Any] = {}
    t = time.perf_counter()
    index = open_index(folder, verify=False)
    result["load_noverify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = open_index(folder, verify=True)
    result["load_s"] = time.perf_counter() - t

    rng = np.random.default_rng(1)
    picks = np.sort(rng.choice(n, size=max(args.repeats, 100), replace=False))
    base = index.vectors(picks)  # [picks, C] stored rows
    queries = base.astype(np.float32) + 0.05 * rng.standard_normal(base.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    exact_search(index, queries[:1], args.top_k)  # first touch of the mapped pages
    result["query_ms"], firsts = _single_queries(lambda q: exact_search(index, q, args.top_k), queries,
                                                 args.repeats, index)
    top1 = firsts == picks[: args.repeats]
    t = time.perf_counter()
    _, rows = exact_search(index, queries[:100], args.top_k)
    result["batch100_ms"] = (time.perf_counter() - t) * 1000
    result["self_top1"] = float(np.mean(np.concatenate([top1, rows[:, 0] == picks[:100]])))
    result["search_rss_mb"] = _peak_rss_mb()
    if n <= args.check_max:
        matrix = np.concatenate([a for _, a in index.blocks()]).astype(np.float32)
        scores = queries[:5] @ matrix.T
        want = np.stack([np.lexsort((np.arange(n), -s))[: args.top_k] for s in scores])
        got_scores, got = exact_search(index, queries[:5], args.top_k)
        result["brute_force_equal"] = bool(np.array_equal(got, want) and np.array_equal(
            got_scores, np.take_along_axis(scores, want, 1)))
        del matrix, scores
    if args.quantized:
        result.update(_quantized(index, queries, rows, args))
    if args.faiss:
        from rsicrc.runtime.retriever import FaissSearch

        t = time.perf_counter()
        flat = FaissSearch(index)
        result["faiss_build_s"] = time.perf_counter() - t
        result["faiss_query_ms"], _ = _single_queries(lambda q: flat.search(q, args.top_k), queries,
                                                      args.repeats)
        _, frows = flat.search(queries[:100], args.top_k)
        result["faiss_equal_ids"] = float(np.mean(frows == rows))
        result["faiss_rss_mb"] = _peak_rss_mb()
    return result


def _quantized(index: Any, queries: Any, exact_rows: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The quantized backend (int8 pre-scan + exact rescoring): build time, single-query median,
    100 queries, share of top-k ids equal to exact search, RSS."""
    import numpy as np

    from rsicrc.runtime.retriever import caster
    from rsicrc.runtime.scan import QuantizedScan

    t = time.perf_counter()
    scan = QuantizedScan(index, caster(index))
    out: dict[str, Any] = {"quantized_build_s": time.perf_counter() - t}
    scan.search(queries[:1], args.top_k)  # warmup
    out["quantized_query_ms"], _ = _single_queries(lambda q: scan.search(q, args.top_k), queries,
                                                   args.repeats, index)
    t = time.perf_counter()
    _, rows = scan.search(queries[:100], args.top_k)
    out["quantized_batch100_ms"] = (time.perf_counter() - t) * 1000
    out["quantized_equal_ids"] = float(np.mean(rows == exact_rows))
    out["quantized_rss_mb"] = _peak_rss_mb()
    return out


def _child(stage: str, n: int, args: argparse.Namespace, root: Path, queue: Any) -> None:
    try:
        queue.put((_build if stage == "build" else _search)(n, args, root))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which prints it
        queue.put({"error": f"{stage}: {type(e).__name__}: {e}"})


def _stage(stage: str, n: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run one stage in a fresh process, so that its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(stage, n, args, root, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['n']:>9}  error: {r['error']}"
    faiss = (f"  faiss build {r['faiss_build_s']:.2f}s query {r['faiss_query_ms']:.1f}ms "
             f"same-ids {r['faiss_equal_ids']:.3f} RSS {r['faiss_rss_mb']:.0f} MB"
             if "faiss_build_s" in r else "")
    check = f"  brute-force-equal {r['brute_force_equal']}" if "brute_force_equal" in r else ""
    if "quantized_build_s" in r:
        check += (f"  quantized build {r['quantized_build_s']:.2f}s query {r['quantized_query_ms']:.2f}ms "
                  f"batch100 {r['quantized_batch100_ms']:.1f}ms same-ids {r['quantized_equal_ids']:.3f} "
                  f"RSS {r['quantized_rss_mb']:.0f} MB")
    return (f"{r['n']:>9}  {r['dim']:>5} {r['dtype']}  index {r['index_mb']:8.1f} MB  "
            f"build {r['build_s']:7.2f}s (+gen {r['gen_s']:.2f}s)  load {r['load_s']:6.2f}s "
            f"({r['load_noverify_s']:.2f}s no-verify)  "
            f"query {r['query_ms']:8.2f}ms  batch100 {r['batch100_ms']:8.1f}ms  top1 {r['self_top1']:.2f}  "
            f"peak RSS build {r['build_rss_mb']:.0f} MB, search {r['search_rss_mb']:.0f} MB{check}{faiss}")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="rsicrc-retrieval-"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in args.sizes:
            result: dict[str, Any] = {"n": n, "dim": args.dim, "dtype": args.dtype}
            result.update(_stage("build", n, args, root))
            if "error" not in result:
                result.update(_stage("search", n, args, root))
            if not args.keep:
                shutil.rmtree(root / f"index-{n}", ignore_errors=True)
            results.append(result)
            print(_row(result), flush=True)
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Pairs per second of `rsicrc index` here and on Ray (`--cluster ray`), and Ray's fixed start-up
cost, on this machine.

    python -m benchmarks.cluster --model MODEL_DIR --pairs DATA --split test [--precision int8]
                                 [--job index|caption] [--count 400] [--batch-size 8] [--rounds 2]
                                 [--json out.json]

Every case runs the job `rsicrc index` runs (read a batch of pairs, embed it with the image-encoder
graph: `rsicrc.runtime.distributed.EmbedPairs`), or with --job caption the one `rsicrc caption
--pairs` runs (`CaptionPairs`, beam 3), through `rsicrc.runtime.cluster.execute`, over the same
batches; the writer in the driver (the same in both) is left out. Cases:
- local/T: this process, ONNX Runtime with T intra-op threads (T = 2: the whole 2-core machine);
- ray/WxT: W Ray workers (actors) of T threads each, on a local Ray instance started once
  beforehand (`ray_init_s`: what `--cluster ray` adds on top of every run when it starts its own).
Per case: wall time from the call to the last result, the time to the first result (`first_s`:
model load, and on Ray actor start-up, plus one batch), the steady rate (pairs after the first
batch / time after it) and the fixed cost = wall - pairs / steady rate. Cases take turns `--rounds`
times (the machine is shared and drifts); every record carries the 1-minute load average before and
after. RSICRC_CACHE_DIR is pointed at a private folder when unset (model folders may be read-only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import load_average, machine_info


def _cases(spec: str) -> list[tuple[str, int, int]]:
    """'local/2,ray/2x1' -> [("local", 1, 2), ("ray", 2, 1)]: (kind, workers, threads)."""
    out = []
    for part in spec.split(","):
        kind, _, shape = part.strip().partition("/")
        if kind == "local":
            out.append(("local", 1, int(shape)))
        else:
            workers, _, threads = shape.partition("x")
            out.append(("ray", int(workers), int(threads)))
    return out


def run_case(kind: str, workers: int, threads: int, units: list[list[Any]], model: Path,
             precision: str | None, job_name: str = "index") -> dict[str, Any]:
    from rsicrc.runtime.cluster import ClusterOptions, execute
    from rsicrc.runtime.decoding import DecodingOptions
    from rsicrc.runtime.distributed import CaptionPairs, EmbedPairs
    from rsicrc.runtime.model_folder import ModelFolder
    from rsicrc.runtime.options import RuntimeOptions

    folder = ModelFolder.open(model)
    runtime = folder.resolve(RuntimeOptions(device="cpu", precision=precision, threads=threads))
    cluster = (ClusterOptions() if kind == "local"
               else ClusterOptions("ray", workers=workers, worker_threads=threads))
    job: Any = (EmbedPairs(str(folder.path.resolve()), runtime, None) if job_name == "index"
                else CaptionPairs(str(folder.path.resolve()), runtime, DecodingOptions(), None))
    pairs = sum(len(u) for u in units)
    load = load_average()[0]
    start = time.perf_counter()
    arrivals = []
    for _, vectors in execute(units, job, cluster):
        arrivals.append((time.perf_counter() - start, len(vectors)))
    wall = time.perf_counter() - start
    first_s, first_n = arrivals[0]
    steady = (pairs - first_n) / max(wall - first_s, 1e-9)
    return {"case": f"{kind}/{workers}x{threads}" if kind == "ray" else f"local/{threads}", "pairs": pairs,
            "wall_s": round(wall, 3), "pairs_per_s": round(pairs / wall, 2), "first_s": round(first_s, 3),
            "steady_pairs_per_s": round(steady, 2), "fixed_s": round(wall - pairs / steady, 3),
            "load_1m": [round(load, 2), round(load_average()[0], 2)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--job", choices=("index", "caption"), default="index")
    parser.add_argument("--pairs", type=Path, required=True, help="a LEVIR-CC folder, A/B folder or CSV")
    parser.add_argument("--split", default=None)
    parser.add_argument("--count", type=int, default=400, help="first N pairs of the listing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cases", default="local/2,local/1,ray/1x1,ray/1x2,ray/2x1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("RSICRC_CACHE_DIR", tempfile.mkdtemp(prefix="rsicrc-bench-cache-"))

    from rsicrc.runtime.cluster import chunks
    from rsicrc.runtime.pairs import PairItem
    from rsicrc.runtime.retriever import _entries

    entries: list[Any] = _entries(args.pairs, args.split)[: args.count]
    if args.job == "caption":
        entries = [PairItem(e.id, Path(e.before), Path(e.after)) for e in entries]
    units = chunks(entries, args.batch_size)
    cases = _cases(args.cases)
    record: dict[str, Any] = {"machine": machine_info(), "model": str(args.model),
                              "precision": args.precision, "job": args.job, "pairs": len(entries),
                              "batch_size": args.batch_size, "cases": {}}
    if any(kind == "ray" for kind, _, _ in cases):
        import logging

        import ray

        load = load_average()[0]
        start = time.perf_counter()
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        record["ray_init_s"] = round(time.perf_counter() - start, 3)
        record["ray_init_load_1m"] = [round(load, 2), round(load_average()[0], 2)]
        record["ray_version"] = ray.__version__
    for round_ in range(args.rounds):
        order = cases if round_ % 2 == 0 else cases[::-1]  # take turns: drift hits every case
        for kind, workers, threads in order:
            result = run_case(kind, workers, threads, units, args.model, args.precision, args.job)
            print(json.dumps(result), file=sys.stderr, flush=True)
            record["cases"].setdefault(result["case"], []).append(result)
    summary = {}
    for name, runs in record["cases"].items():
        summary[name] = {key: statistics.median(r[key] for r in runs)
                         for key in ("pairs_per_s", "steady_pairs_per_s", "first_s", "fixed_s", "wall_s")}
    record["median"] = summary
    record["load_average_end"] = [round(x, 2) for x in load_average()]
    text = json.dumps(record, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

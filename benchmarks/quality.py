"""Quality next to speed: the demo model's metrics per backend/precision, and text-query cost.

    python -m benchmarks.quality --checkpoint CKPT --model MODEL_DIR --data DATA --json out.json
    python -m benchmarks.quality --text-query MODEL_DIR --precision fp32 --json out.json

Quality: captioning (BLEU-4, METEOR, ROUGE-L, CIDEr) and retrieval (R@k, k = 1, 5, 10) on a
split of a synthetic (LEVIR-CC layout) dataset, for PyTorch (the checkpoint; the reference loop
computes the same function, without a cache), ONNX Runtime fp32 and int8 (the exported folder),
all with one METEOR JVM. Text query: tokenize + text-encoder graph for one query (the part of a
retrieval query that does not depend on the archive), median over repeats after a warmup.
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

QUERIES = ("a road is built through the trees", "two houses are built at the top of the scene",
           "the scene is the same as before", "many buildings appear on the bare land on the left")
CAPTION_KEYS = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
RETRIEVAL_KEYS = ("R@1", "R@5", "R@10")


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation's metrics JSON."""
    out: dict[str, Any] = {}
    for subset in ("all", "changed"):
        cap = metrics.get("captioning", {}).get(subset, {})
        ret = metrics.get("retrieval", {}).get(subset, {})
        out[subset] = {**{k: cap.get(k) for k in CAPTION_KEYS}, **{k: ret.get(k) for k in RETRIEVAL_KEYS}}
    return out


def subset(data: Path, split: str, pairs: int, out: Path) -> Path:
    """A LEVIR-CC layout folder at `out` whose `split` keeps its first pairs/2 changed and pairs/2
    unchanged pairs (other splits whole; images linked, not copied): a bounded-time evaluation."""
    annotation = json.loads((Path(data) / "LevirCCcaptions.json").read_text())
    kept, count = [], {0: 0, 1: 0}
    for entry in annotation["images"]:
        if entry["split"] == split:
            flag = int(entry.get("changeflag", 0))
            if count[flag] >= pairs // 2:
                continue
            count[flag] += 1
        kept.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    (out / "LevirCCcaptions.json").write_text(json.dumps({**annotation, "images": kept}))
    (out / "images").symlink_to(Path(data).resolve() / "images")
    return out


def evaluate_all(ckpt: Path, model_dir: Path, data: Path, split: str = "test", beam: int = 3,
                 threads: int | None = None, pairs: int | None = None) -> list[dict[str, Any]]:
    """PyTorch, ORT fp32 and ORT int8 metrics on `split` (or `pairs` of it), each with its wall time."""
    from rsicrc.evaluate import evaluate_checkpoint
    from rsicrc.metrics import CaptionScorer
    from rsicrc.report import EvalOptions
    from rsicrc.runtime.evaluate import evaluate_model_folder
    from rsicrc.runtime.manifest import load_manifest
    from rsicrc.runtime.options import RuntimeOptions

    threads = threads or len(os.sched_getaffinity(0))
    precisions = [p for p in ("fp32", "int8") if p in load_manifest(model_dir).graphs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsicrc-quality-") as tmp, CaptionScorer() as scorer:
        if pairs is not None:
            data = subset(data, split, pairs, Path(tmp) / "data")
        runs: list[tuple[str, str, Any]] = [
            ("pytorch", "fp32", lambda o, p: evaluate_checkpoint(ckpt, o, "cpu", scorer))]
        for precision in precisions:
            runs.append(("onnxruntime", precision, lambda o, p: evaluate_model_folder(
                model_dir, o, RuntimeOptions(device="cpu", precision=p, threads=threads), scorer)))
        for backend, precision, fn in runs:
            opts = EvalOptions(data=data, split=split, beam=beam, progress=False,
                               out=Path(tmp) / f"{backend}-{precision}.json")
            start = time.perf_counter()
            metrics = fn(opts, precision)
            seconds = time.perf_counter() - start
            pairs = metrics.get("pairs", {})
            rows.append({"name": f"quality/{backend}-{precision}", "backend": backend,
                         "precision": precision, "split": split, "beam": beam, "pairs": pairs,
                         "eval_seconds": round(seconds, 2), **_summary(metrics)})
    return rows


def text_query_ms(model_dir: Path, precision: str = "fp32", repeats: int = 50,
                  threads: int | None = None) -> dict[str, Any]:
    """Median/min/max ms of tokenize + text encoder for one query (after a warmup)."""
    from rsicrc.runtime.encoders import TextEncoder
    from rsicrc.runtime.model_folder import ModelFolder
    from rsicrc.runtime.options import RuntimeOptions

    threads = threads or len(os.sched_getaffinity(0))
    runtime = RuntimeOptions(device="cpu", precision=precision, threads=threads)
    encoder = TextEncoder(ModelFolder.open(model_dir), runtime)
    encoder.embed([QUERIES[0]])  # warmup: session already loaded, first-run allocations
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        encoder.embed([QUERIES[i % len(QUERIES)]])
        times.append((time.perf_counter() - start) * 1e3)
    return {"model": str(model_dir), "precision": precision, "dim": encoder.model.dims.d_model,
            "median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
            "max_ms": round(max(times), 3), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Quality per backend/precision, or text-query encoder cost.")
    p.add_argument("--checkpoint", type=Path, default=None, help="trained checkpoint folder")
    p.add_argument("--model", type=Path, default=None, help="its exported model folder (fp32 + int8)")
    p.add_argument("--data", type=Path, default=None, help="LEVIR-CC layout dataset (synthetic)")
    p.add_argument("--split", default="test")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--pairs", type=int, default=None, help="only this many pairs of the split (half changed)")
    p.add_argument("--text-query", type=Path, default=None, help="time the text encoder of this model")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.text_query is not None:
        result: Any = text_query_ms(args.text_query, args.precision)
    elif args.checkpoint is not None and args.model is not None and args.data is not None:
        result = evaluate_all(args.checkpoint, args.model, args.data, args.split, args.beam,
                              pairs=args.pairs)
    else:
        p.error("give --text-query MODEL, or all of --checkpoint, --model and --data")
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

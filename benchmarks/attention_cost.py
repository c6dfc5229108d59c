"""What the decoder step's `cross_attention` output costs per step (issue #15), with vs without.

    python -m benchmarks.attention_cost MODEL_DIR [MODEL_DIR ...] [--rows 1 16] [--rounds 12]

For each exported model folder (format 2), the same decoder-step graph runs twice through the
runtime's own IO-bound step (`BoundDecoderStep`, ONNX Runtime CPU): as exported ("with": the output
bound, and read after every step as the beam search does with DecodingOptions.attention) and with
the output pruned ("without": `drop_output` removes it and the two nodes only it needed, i.e. the
graph of a format-1 export). Random cross K/V, 20 steps per run (step 0..19, caches carried over);
the two variants run in lockstep, taking turns at every step (which goes first alternates), so the
shared machine's drift hits both alike. Prints per-step medians, their ratio with / without, the
median of the paired per-step ratios, and the load average before and after.
`--control` measures the noise instead: "with" is then a second session of the pruned graph (A/A).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STEPS = 20


def _variants(model_dir: Path, work: Path, control: bool = False) -> dict[str, tuple[Path, Any]]:
    """{"with": (graph, manifest), "without": (pruned graph, manifest with format 1's contract)};
    with `control`, "with" is the pruned graph too."""
    import onnx

    from rsicrc.export.onnx_export import drop_output
    from rsicrc.runtime.contract import CROSS_ATTENTION, DECODER_STEP, contract
    from rsicrc.runtime.manifest import load_manifest

    manifest = load_manifest(model_dir, verify=False)
    graph = model_dir / manifest.graphs["fp32"][DECODER_STEP].file
    proto = onnx.load(str(graph))
    drop_output(proto, CROSS_ATTENTION)
    pruned = work / f"{model_dir.name}-without.onnx"
    onnx.save(proto, str(pruned))
    old = dataclasses.replace(manifest, format_version=1, contract=contract(manifest.dims, attention=False))
    return {"with": (pruned, old) if control else (graph, manifest), "without": (pruned, old)}


def _lockstep(steps: dict[str, Any], rows: int) -> dict[str, list[float]]:
    """One 20-step greedy decode per variant on fresh caches, the variants taking turns at every
    step; seconds per step. "with" also reads its attention, as the search does when asked."""
    tokens = {name: np.full(rows, 1, dtype=np.int64) for name in steps}  # START at step 0
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for t in range(STEPS):
        for name in names if t % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            logits = steps[name].logits(tokens[name], t)  # [R, V]
            if name == "with":
                steps[name].attention()
            times[name].append(time.perf_counter() - start)
            tokens[name] = np.argmax(logits, axis=1).astype(np.int64)  # [R]
    return times


def measure(model_dir: Path, rows_list: list[int], rounds: int, threads: int | None,
            control: bool = False) -> list[dict[str, Any]]:
    from rsicrc.runtime.backend import BoundDecoderStep, import_onnxruntime, session_options
    from rsicrc.runtime.contract import cross_names

    ort = import_onnxruntime()
    records = []
    with tempfile.TemporaryDirectory(prefix="attention-cost-") as tmp:
        variants = _variants(model_dir, Path(tmp), control)
        sessions = {name: ort.InferenceSession(str(path), sess_options=session_options(ort, threads),
                                               providers=["CPUExecutionProvider"])
                    for name, (path, _) in variants.items()}
        dims = variants["with"][1].dims
        for rows in rows_list:
            rng = np.random.default_rng(rows)
            shape = (rows, dims.num_heads, dims.visual_tokens, dims.head_dim)  # [R, H, N, dh]
            cross = {n: rng.standard_normal(shape, dtype=np.float32) for kv in cross_names(dims) for n in kv}
            steps: dict[str, list[float]] = {name: [] for name in variants}
            for round_ in range(rounds + 1):  # round 0 warms up and is not counted
                bound = {name: BoundDecoderStep(ort, sessions[name], manifest, cross, "cpu")
                         for name, (_, manifest) in variants.items()}  # fresh caches
                times = _lockstep(bound, rows)
                if round_ == 0:
                    load_before = os.getloadavg()[0]
                    continue
                for name in variants:
                    steps[name] += times[name]
            medians = {name: statistics.median(v) * 1000 for name, v in steps.items()}
            paired = statistics.median(a / b for a, b in zip(steps["with"], steps["without"], strict=True))
            records.append({"model": str(model_dir), "control": control, "d_model": dims.d_model,
                            "visual_tokens": dims.visual_tokens, "rows": rows,
                            "steps_each": len(steps["with"]),
                            "median_ms_with": medians["with"], "median_ms_without": medians["without"],
                            "ratio": medians["with"] / medians["without"], "paired_ratio": paired,
                            "load_before": load_before, "load_after": os.getloadavg()[0]})
            print(json.dumps(records[-1]), flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported model folders (format 2)")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16], help="decoder rows (pairs x beams)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of 20 lockstep steps per variant")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all)")
    parser.add_argument("--control", action="store_true", help="A/A: the pruned graph against itself")
    args = parser.parse_args(argv)
    for model in args.models:
        measure(model, args.rows, args.rounds, args.threads, args.control)


if __name__ == "__main__":
    main()

"""ONNX Runtime's own profile of the exported graphs: which operators the time goes to (one batch-1
greedy caption: the encoder once, `tokens` decoder steps), on sessions made like the runtime's own.

    python -m benchmarks.captioning --config paper --profile int8
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.contenders import SEED


def profile_ort(model_dir: Path, precision: str, threads: int, tokens: int = 20, top: int = 8
                ) -> dict[str, Any]:
    """Kernel time per operator type of one batch-1 greedy caption (encoder once, `tokens` steps)
    from ONNX Runtime's profiler, on sessions made like the runtime's own (all optimizations)."""
    import numpy as np
    import onnxruntime as ort

    from rsicrc.runtime.backend import session_options
    from rsicrc.runtime.contract import AFTER, BEFORE, DECODER_STEP, IMAGE_ENCODER, cross_names
    from rsicrc.runtime.decoding import DecodingOptions, beam_search
    from rsicrc.runtime.manifest import load_manifest
    from rsicrc.runtime.task import HostStepModel

    manifest = load_manifest(model_dir)
    out: dict[str, Any] = {"precision": precision, "threads": threads, "tokens": tokens}
    with tempfile.TemporaryDirectory(prefix="rsicrc-profile-") as tmp:
        sessions = {}
        for graph in (IMAGE_ENCODER, DECODER_STEP):
            options = session_options(ort, threads)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / graph)
            path = Path(model_dir) / manifest.graphs[precision][graph].file
            sessions[graph] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(graph: str, feed: dict[str, Any]) -> dict[str, Any]:  # over the profiling sessions
            session = sessions[graph]
            names = [o.name for o in session.get_outputs()]
            return dict(zip(names, session.run(names, feed), strict=True))

        size = manifest.preprocess.size
        x = np.random.default_rng(SEED).standard_normal((1, 3, size, size), dtype=np.float32)
        for _ in range(2):  # the second run is the one that counts (the first one warms up)
            enc = run(IMAGE_ENCODER, {BEFORE: x, AFTER: x})
            cross = {n: enc[n] for kv in cross_names(manifest.dims) for n in kv}
            step = HostStepModel(run, manifest.dims, cross)
            beam_search(step, 1, DecodingOptions(beam_size=1, max_tokens=tokens, ignore_eos=True))
        for graph, session in sessions.items():
            events = json.loads(Path(session.end_profiling()).read_text())
            nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
            calls = 2 if graph == IMAGE_ENCODER else 2 * tokens
            per_op: dict[str, float] = {}
            for e in nodes:
                op = e["args"].get("op_name", "?")
                per_op[op] = per_op.get(op, 0.0) + e["dur"]
            total = sum(per_op.values())
            ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
            out[graph] = {"kernel_ms_per_call": round(total / 1e3 / calls, 3),
                          "ops": [{"op": op, "ms_per_call": round(us / 1e3 / calls, 3),
                                   "share": round(us / total, 3)} for op, us in ranked]}
    return out

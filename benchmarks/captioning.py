"""Captioning speed and memory: four contenders side by side, each in its own process (DESIGN §9).

    python -m benchmarks.captioning --config paper --contenders reference ort-fp32 ort-int8 \
        --batches 1 --beams 1 --tokens 20 --json out.json

Contenders (`benchmarks.contenders`: the reference loop, PyTorch with a KV cache, ONNX Runtime
fp32 and int8; same weights, same preprocessed inputs, decoding forced to exactly `tokens` tokens
with END ignored, so every contender does the same work). All four are CaptionModels driven by
the one CaptionTask and its numpy beam search, so only the model differs; greedy is beam 1.
Per batch size, one encoder run feeds every beam width (the encoder's work does not depend on the
beam), and each beam's record counts it in full.

Times exclude image reading and preprocessing (the inputs are preprocessed tensors) and the
first (warmup) run. Per case, repeats run until `min_repeats` are done and either
`max_repeats` are done or `case_budget_s` is spent; median/min/max are over those repeats.
peak_rss_mb is the contender process's own peak (VmHWM), over all its cases.
"""


from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.contenders import (
    BACKEND,
    CACHE,
    CONTENDERS,
    LABELS,
    REPO,
    SEED,
    Contender,
    paper_artefacts,
    tiny_artefacts,
)


@dataclass(frozen=True)
class BenchSpec:
    """One contender's run: what to load and which cases to time."""

    config: str  # "paper" | "tiny": the label in the records
    contender: str  # one of CONTENDERS
    ckpt_dir: str  # checkpoint folder (PyTorch contenders)
    model_dir: str  # exported model folder with fp32 and int8 graphs (ONNX Runtime contenders)
    batches: tuple[int, ...]  # pairs per run
    beams: tuple[int, ...]  # beam widths (1 = greedy)
    tokens: int  # tokens generated per pair, END ignored
    threads: int  # torch intra-op threads / ORT intra-op threads
    min_repeats: int = 1  # timed runs per case at least
    max_repeats: int = 5  # timed runs per case at most
    case_budget_s: float = 8.0  # stop repeating once a case has taken this long
    reference_beam_max_batch: int = 1  # the reference loop runs beam > 1 only up to this batch
    weights: str = "random"  # "random (seed 0)" or the checkpoint it came from: for the records


class TimedStep:
    """A StepModel wrapper that adds up the time spent in the model's own step calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def logits(self, tokens: Any, step: int) -> Any:
        start = time.perf_counter()
        out = self.inner.logits(tokens, step)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def reorder(self, source: Any) -> None:
        self.inner.reorder(source)


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class TimedModel:
    """A CaptionModel wrapper whose step models add up the time spent in their step calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.steps = inner, TimedStep(None)

    def encode(self, before: Any, after: Any) -> Any:
        return self.inner.encode(before, after)

    def step_model(self, state: Any, beams: int) -> TimedStep:
        self.steps = TimedStep(self.inner.step_model(state, beams))
        return self.steps


class Engine:
    """A loaded contender and the CaptionTask over it (its step calls timed)."""

    def __init__(self, spec: BenchSpec) -> None:
        from rsicrc.runtime.task import CaptionTask
        from rsicrc.vocab import END, START

        self.spec = spec
        self.contender = Contender(spec.contender, spec.ckpt_dir, spec.model_dir, spec.threads)
        self.size, self.meta = self.contender.size, self.contender.meta
        self.timed = TimedModel(self.contender.model)
        self.task = CaptionTask(self.timed, START, END, self.contender.max_len)

    def encode(self, before: Any, after: Any) -> Any:
        """Preprocessed pairs -> Encoded (visual embeddings and the decoder state)."""
        return self.timed.encode(before, after)

    def tile(self, encoded: Any, n: int) -> Any:
        """One pair's Encoded repeated for n pairs (a cheap warmup at a larger batch)."""
        import numpy as np

        from rsicrc.runtime.task import Encoded

        return Encoded(np.repeat(encoded.visual, n, axis=0), self.contender.tile(encoded.state, n))


def _decode(engine: Engine, state: Any, batch: int, beams: int, tokens: int) -> tuple[float, float]:
    """(decode seconds, seconds inside the model's step calls) of one forced-length search."""
    from rsicrc.runtime.decoding import DecodingOptions

    options = DecodingOptions(beam_size=beams, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    results = engine.task.decode(state, options)
    seconds = time.perf_counter() - start
    if any(len(r.best.tokens) != tokens for r in results):
        raise RuntimeError(f"{engine.spec.contender}: a caption is not exactly {tokens} tokens long")
    return seconds, engine.timed.steps.seconds


def _beams_for(spec: BenchSpec, batch: int) -> list[int]:
    if spec.contender == "reference" and batch > spec.reference_beam_max_batch:
        return [k for k in spec.beams if k == 1]
    return list(spec.beams)


def run_contender(spec: BenchSpec) -> dict[str, Any]:
    """Load one contender, warm it up, time every case; records plus the contender's meta."""
    import numpy as np

    load_avg = [os.getloadavg()[0]]
    start = time.perf_counter()
    engine = Engine(spec)
    load_s = time.perf_counter() - start
    rss_loaded = _rss_mb()
    rng = np.random.default_rng(SEED)
    size = engine.size
    inputs = {b: (rng.standard_normal((b, 3, size, size), dtype=np.float32),
                  rng.standard_normal((b, 3, size, size), dtype=np.float32)) for b in spec.batches}
    one = inputs[1] if 1 in inputs else (inputs[min(inputs)][0][:1], inputs[min(inputs)][1][:1])
    state = engine.encode(*one)  # warmup: a full run at batch 1, then decode-only at larger batches
    for k in spec.beams:
        _decode(engine, state, 1, k, spec.tokens)
    for b in spec.batches:
        if b > 1:
            for k in _beams_for(spec, b):
                _decode(engine, engine.tile(state, b), b, k, min(spec.tokens, 2))
    records = []
    for b in spec.batches:
        beams = _beams_for(spec, b)
        runs: dict[int, list[tuple[float, ...]]] = {k: [] for k in beams}  # (total, enc, dec, step)
        case_start = time.perf_counter()
        repeat = 0
        while repeat < spec.min_repeats or (repeat < spec.max_repeats
                                            and time.perf_counter() - case_start < spec.case_budget_s):
            t = time.perf_counter()
            state = engine.encode(*inputs[b])
            enc = time.perf_counter() - t
            for k in beams:
                dec, step = _decode(engine, state, b, k, spec.tokens)
                runs[k].append((enc + dec, enc, dec, step))
            repeat += 1
        for k in beams:
            records.append(_record(spec, b, k, runs[k]))
    load_avg.append(os.getloadavg()[0])
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent
    peak = _rss_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for r in records:
        r.update(peak_rss_mb=round(peak, 1), rss_after_load_mb=round(rss_loaded, 1),
                 load_s=round(load_s, 2), load_average_1m=[round(x, 2) for x in load_avg])
    return {"spec": asdict(spec), "meta": engine.meta, "records": records}


def _timings(runs: list[list[float]], batch: int, tokens: int) -> dict[str, Any]:
    """Median/min/max and derived rates of repeats [(total, encoder, decoder, step calls) s]."""
    totals = [r[0] for r in runs]
    median = statistics.median(totals)
    decoder = statistics.median(r[2] for r in runs)  # the whole search, numpy included
    step = statistics.median(r[3] for r in runs) / tokens  # the model's step call only
    return {
        "repeats": len(runs), "median_ms": round(median * 1e3, 3), "min_ms": round(min(totals) * 1e3, 3),
        "max_ms": round(max(totals) * 1e3, 3), "per_pair_ms": round(median * 1e3 / batch, 3),
        "pairs_per_s": round(batch / median, 4),
        "encoder_ms": round(statistics.median(r[1] for r in runs) * 1e3, 3),
        "decoder_ms": round(decoder * 1e3, 3), "step_ms": round(step * 1e3, 3),
        "decoder_tokens_per_s": round(batch * tokens / decoder, 2) if decoder > 0 else None,
        "runs_s": [[round(x, 6) for x in r] for r in runs],
    }


def _record(spec: BenchSpec, batch: int, beam: int, runs: list[tuple[float, ...]]) -> dict[str, Any]:
    backend, precision = BACKEND[spec.contender]
    return {
        "name": f"{spec.config}/{spec.contender}/b{batch}/k{beam}", "config": spec.config,
        "contender": spec.contender, "label": LABELS[spec.contender], "backend": backend,
        "precision": precision, "batch": batch, "beam": beam, "tokens": spec.tokens,
        "threads": spec.threads, "weights": spec.weights, "rounds": 1,
        **_timings([list(r) for r in runs], batch, spec.tokens),
    }


def merge_rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of one case from several rounds (contender processes run in turn, so that drift in
    the machine's speed hits every contender alike) -> one record over all their repeats, in
    first-seen order; peak RSS is the largest of the rounds'."""
    cases: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        cases.setdefault(r["name"], []).append(r)
    merged = []
    for group in cases.values():
        first = group[0]
        runs = [run for r in group for run in r["runs_s"]]
        merged.append({**first, **_timings(runs, first["batch"], first["tokens"]), "rounds": len(group),
                       "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in group)})
    return merged


# --- the parent: one subprocess per contender ----------------------------------------------------

def run_in_subprocess(spec: BenchSpec, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run one contender in a fresh Python process (its own peak RSS); errors come back as data."""
    with tempfile.TemporaryDirectory(prefix="rsicrc-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.captioning", "--child", json.dumps(asdict(spec)),
               "--child-out", str(out)]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"spec": asdict(spec), "error": f"timed out after {timeout_s:.0f} s", "records": []}
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"spec": asdict(spec), "error": " | ".join(tail) or f"exit {proc.returncode}",
                    "records": []}
        return json.loads(out.read_text())


def _child(spec_json: str, out: Path) -> int:
    data = json.loads(spec_json)
    spec = BenchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    result = run_contender(spec)
    out.write_text(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Captioning speed/memory of the four contenders.")
    p.add_argument("--config", default="paper", choices=["paper", "tiny"])
    p.add_argument("--tiny-checkpoint", type=Path, default=None, help="trained tiny checkpoint folder")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3])
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--max-repeats", type=int, default=5)
    p.add_argument("--case-budget-s", type=float, default=8.0)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--profile", default=None, choices=["fp32", "int8"],
                   help="instead: ONNX Runtime's per-operator profile of this precision")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return _child(args.child, args.child_out)
    if args.config == "paper":
        ckpt, model = paper_artefacts(args.cache)
        weights = f"random (seed {SEED})"
    else:
        ckpt, model, weights = tiny_artefacts(args.tiny_checkpoint, args.cache)
    if args.profile is not None:
        from benchmarks.profile import profile_ort

        profile = profile_ort(model, args.profile, args.threads, args.tokens)
        print(json.dumps(profile, indent=1))
        if args.json is not None:
            args.json.write_text(json.dumps(profile, indent=1) + "\n")
        return 0
    results = []
    for contender in args.contenders:
        spec = BenchSpec(args.config, contender, str(ckpt), str(model), tuple(args.batches),
                         tuple(args.beams), args.tokens, args.threads, max_repeats=args.max_repeats,
                         case_budget_s=args.case_budget_s, weights=weights)
        result = run_in_subprocess(spec)
        results.append(result)
        for r in result["records"]:
            print(f"{r['name']:32} {r['median_ms']:10.1f} ms  enc {r['encoder_ms']:8.1f}  "
                  f"step {r['step_ms']:7.2f} ms  {r['pairs_per_s']:7.2f} pairs/s  "
                  f"RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
        if "error" in result:
            print(f"{args.config}/{contender}: ERROR {result['error']}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

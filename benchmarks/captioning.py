"""Captioning speed and memory: four contenders side by side, each in its own process (DESIGN §9).

    python -m benchmarks.captioning --config paper --contenders reference ort-fp32 ort-int8 \
        --batches 1 --beams 1 --tokens 20 --json out.json

Contenders (same weights, same preprocessed inputs, decoding forced to exactly `tokens` tokens
with END ignored, so every contender does the same work):
  reference  (a) the original research code's inference: PyTorch, the image encoder once (the
             trunk and each T1 block once per image: `original_encoder`), then at every step
             the full-sequence decoder forward over the whole prefix, which recomputes every
             self-attention and the cross-attention K/V from the memory;
  torch-kv   (b) our PyTorch model: cross K/V once per pair, self-attention KV cache;
  ort-fp32   (c) the exported graphs in ONNX Runtime (CPU), fp32;
  ort-int8   (d) the same with the int8 graphs.
All four drive the one numpy beam search (`rsicrc.runtime.decoding`) through its StepModel seam,
so only the model differs; greedy is beam 1. Per batch size, one encoder run feeds every beam
width (the encoder's work does not depend on the beam), and each beam's record counts it in full.

Times exclude image reading and preprocessing (the inputs are preprocessed tensors) and the
first (warmup) run. Per case, repeats run until `min_repeats` are done and either
`max_repeats` are done or `case_budget_s` is spent; median/min/max are over those repeats.
peak_rss_mb is the contender process's own peak (VmHWM), over all its cases.
"""

from __future__ import annotations

import argparse
import hashlib
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

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "benchmarks" / ".cache"
CONTENDERS: tuple[str, ...] = ("reference", "torch-kv", "ort-fp32", "ort-int8")
LABELS = {"reference": "(a) reference loop (PyTorch, no cache)", "torch-kv": "(b) PyTorch + KV cache",
          "ort-fp32": "(c) ONNX Runtime fp32", "ort-int8": "(d) ONNX Runtime int8"}
BACKEND = {"reference": ("pytorch", "fp32"), "torch-kv": ("pytorch", "fp32"),
           "ort-fp32": ("onnxruntime", "fp32"), "ort-int8": ("onnxruntime", "int8")}
SEED = 0  # random weights and inputs
PAPER_VOCAB = 468  # LEVIR-CC's vocabulary size (DESIGN §3)


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


# --- artefacts (built once, cached) --------------------------------------------------------------

def _export(ckpt: Path, model: Path) -> None:
    from rsicrc.export.pipeline import export_model

    export_model(ckpt, model, progress=False, overwrite=True, int8=True)


def random_checkpoint(config: str, folder: Path, seed: int = SEED) -> Path:
    """A random-weight checkpoint of a shipped config (fixed seed), saved once under `folder`."""
    ckpt = folder / "checkpoint"
    if (ckpt / "model.safetensors").is_file():
        return ckpt
    import torch

    from rsicrc.checkpoint import save_checkpoint
    from rsicrc.config import load_config
    from rsicrc.model import RSICRC
    from rsicrc.vocab import SPECIAL_TOKENS, Vocabulary

    cfg = load_config(config)
    vocab = Vocabulary(SPECIAL_TOKENS + tuple(f"w{i}" for i in range(PAPER_VOCAB - len(SPECIAL_TOKENS))))
    torch.manual_seed(seed)
    model = RSICRC(cfg.model, len(vocab)).eval()
    save_checkpoint(ckpt, model, cfg, vocab, meta={"note": f"random weights, seed {seed}, for benchmarks"})
    return ckpt


# The code that decides what the exported graphs compute: an edit here re-exports the cache.
GRAPH_SOURCES = ("rsicrc/model", "export", "runtime/contract.py")


def _graph_code_hash() -> str:
    digest = hashlib.sha256()
    for root in GRAPH_SOURCES:
        path = REPO / root
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(REPO).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def exported(ckpt: Path, model: Path) -> Path:
    """`model` (fp32 + int8 graphs) exported from `ckpt` unless a complete export of the same
    checkpoint by the same graph code is already there."""
    stamp = model / ".bench-source.json"
    source = {"ckpt": str(Path(ckpt).resolve()), "mtime": (Path(ckpt) / "model.safetensors").stat().st_mtime,
              "code": _graph_code_hash()}
    if stamp.is_file() and json.loads(stamp.read_text()) == source:
        return model
    _export(ckpt, model)
    stamp.write_text(json.dumps(source))
    return model


def paper_artefacts(cache: Path = CACHE) -> tuple[Path, Path]:
    """(checkpoint, model folder) of the paper config with random weights, built on first use."""
    folder = cache / "paper"
    ckpt = random_checkpoint("paper", folder)
    return ckpt, exported(ckpt, folder / "model")


def tiny_artefacts(ckpt: Path | None, cache: Path = CACHE) -> tuple[Path, Path, str]:
    """(checkpoint, model folder, weights label) of the tiny model: the trained checkpoint when
    given, else random weights (speed only)."""
    if ckpt is None:
        c = random_checkpoint("tiny", cache / "tiny-random")
        return c, exported(c, cache / "tiny-random" / "model"), f"random (seed {SEED})"
    key = hashlib.sha256(str(Path(ckpt).resolve()).encode()).hexdigest()[:10]
    return ckpt, exported(ckpt, cache / f"tiny-{key}" / "model"), f"trained: {ckpt}"


# --- the contenders (child process) --------------------------------------------------------------

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


class RecomputeStepModel:
    """The reference loop as a StepModel: keeps each row's token prefix and, at every step, runs
    the full-sequence decoder over it (self-attention over the whole prefix, cross-attention K/V
    recomputed from the memory), keeping only the last position's logits. No cache."""

    def __init__(self, model: Any, memory: Any, beams: int) -> None:
        import torch

        self.torch, self.model = torch, model
        self.memory = memory.repeat_interleave(beams, 0)  # [R, N, C]
        self.prefix = torch.zeros(self.memory.shape[0], 0, dtype=torch.int64)  # [R, t]

    def logits(self, tokens: Any, step: int) -> Any:
        torch = self.torch
        with torch.no_grad():
            ids = torch.from_numpy(tokens.astype("int64")).view(-1, 1)
            self.prefix = torch.cat([self.prefix, ids], dim=1)  # [R, step + 1]
            lengths = torch.full((self.prefix.shape[0],), self.prefix.shape[1], dtype=torch.int64)
            logits, _ = self.model.decoder(self.prefix, lengths, self.memory)  # [R, t, V]
            return logits[:, -1].numpy()

    def reorder(self, source: Any) -> None:
        self.prefix = self.prefix[self.torch.from_numpy(source.astype("int64"))]


def original_encoder(encoder: Any, before: Any, after: Any) -> Any:
    """The image encoder as the research code runs it (visual tokens [B, N, C]): the trunk once per
    image and each T1 block once per image. rsicrc's ImageEncoder computes the same function with
    the two images batched through those shared weights (eval mode); tests check the two agree."""
    import torch

    a0, b0 = encoder.positioned(encoder.features(before), encoder.features(after))  # [B, hw, C]
    c = a0.shape[2]
    a, bb = a0, b0
    for t1, t2 in zip(encoder.t1, encoder.t2, strict=True):
        a, bb = t1(a) + a, t1(bb) + bb  # [B, hw, C]
        joint = t2(torch.cat([a, bb], dim=-1))  # [B, hw, 2C]
        a, bb = joint[..., :c] + a0, joint[..., c:] + b0
    return encoder.merge(a, bb)  # [B, hw, C]


class Engine:
    """encode(before, after) -> state; step_model(state, beams) -> StepModel; tile(state, n)."""

    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self.meta: dict[str, Any] = {}
        if spec.contender in ("reference", "torch-kv"):
            import torch

            from rsicrc.checkpoint import load_checkpoint

            torch.set_num_threads(spec.threads)
            ckpt = load_checkpoint(spec.ckpt_dir)
            self.model, self.size = ckpt.model.eval(), ckpt.config.model.image_size
            params = {id(p): p for p in self.model.decoder.parameters()}
            if spec.contender == "torch-kv":  # a cached step never reads the cross K/V projections
                for layer in self.model.decoder.cross:
                    for proj in (layer.cross_attn.k_proj, layer.cross_attn.v_proj):
                        for p in proj.parameters():
                            params.pop(id(p), None)
            self.meta["decoder_weight_bytes"] = sum(p.numel() * p.element_size() for p in params.values())
            self.meta["encoder_gflop"] = self._encoder_gflop()
        else:
            from rsicrc.runtime.captioner import Captioner
            from rsicrc.runtime.contract import DECODER_STEP

            precision = BACKEND[spec.contender][1]
            self.captioner = Captioner(Path(spec.model_dir), device="cpu", precision=precision,
                                       threads=spec.threads)
            self.size = self.captioner.manifest.preprocess.size
            graph = self.captioner.manifest.graphs[precision][DECODER_STEP].file
            self.meta["decoder_weight_bytes"] = (Path(spec.model_dir) / graph).stat().st_size

    def _encoder_gflop(self) -> float:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, self.size, self.size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.model.encode_images(x, x)
        return counter.get_total_flops() / 1e9

    def encode(self, before: Any, after: Any) -> Any:
        if self.spec.contender in ("reference", "torch-kv"):
            import torch

            with torch.no_grad():
                b, a = torch.from_numpy(before), torch.from_numpy(after)
                if self.spec.contender == "reference":
                    return original_encoder(self.model.encoder, b, a)  # memory [B, N, C]
                return self.model.encode_images(b, a)[2]  # cross K/V per multimodal layer
        from rsicrc.runtime.contract import IMAGE_ENCODER, cross_names

        out = self.captioner.backend.run(IMAGE_ENCODER, {"before": before, "after": after})
        return {name: out[name] for kv in cross_names(self.captioner.dims) for name in kv}

    def tile(self, state: Any, n: int) -> Any:
        """The state of one pair repeated for n pairs (cheap warmup at a larger batch)."""
        import numpy as np

        if self.spec.contender == "reference":
            return state.repeat(n, 1, 1)
        if self.spec.contender == "torch-kv":
            return [(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v in state]
        return {name: np.repeat(a, n, axis=0) for name, a in state.items()}

    def step_model(self, state: Any, beams: int) -> Any:
        if self.spec.contender == "reference":
            return RecomputeStepModel(self.model, state, beams)
        if self.spec.contender == "torch-kv":
            from rsicrc.decode import TorchStepModel

            return TorchStepModel(self.model, state, beams)
        return self.captioner.step_model(state, beams)


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _decode(engine: Engine, state: Any, batch: int, beams: int, tokens: int) -> tuple[float, float]:
    """(decode seconds, seconds inside the model's step calls) of one forced-length search."""
    from rsicrc.runtime.decoding import DecodingOptions, beam_search

    options = DecodingOptions(beam_size=beams, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    timed = TimedStep(engine.step_model(state, beams))
    results = beam_search(timed, batch, options)
    seconds = time.perf_counter() - start
    if any(len(r.best.tokens) != tokens for r in results):
        raise RuntimeError(f"{engine.spec.contender}: a caption is not exactly {tokens} tokens long")
    return seconds, timed.seconds


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


# --- ONNX Runtime's own profile: which operators the time goes to ------------------------------

def profile_ort(model_dir: Path, precision: str, threads: int, tokens: int = 20, top: int = 8
                ) -> dict[str, Any]:
    """Kernel time per operator type of one batch-1 greedy caption (encoder once, `tokens` steps)
    from ONNX Runtime's profiler, on sessions made like the runtime's own (all optimizations)."""
    import numpy as np
    import onnxruntime as ort

    from rsicrc.runtime.backend import session_options
    from rsicrc.runtime.captioner import OrtStepModel
    from rsicrc.runtime.contract import DECODER_STEP, IMAGE_ENCODER, cross_names
    from rsicrc.runtime.decoding import DecodingOptions, beam_search
    from rsicrc.runtime.manifest import load_manifest

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

        class _Backend:  # the Backend seam over the profiling sessions
            device = "cpu"

            def run(self, graph: str, feed: dict[str, Any]) -> dict[str, Any]:
                session = sessions[graph]
                names = [o.name for o in session.get_outputs()]
                return dict(zip(names, session.run(names, feed), strict=True))

        size = manifest.preprocess.size
        x = np.random.default_rng(SEED).standard_normal((1, 3, size, size), dtype=np.float32)
        for _ in range(2):  # the second run is the one that counts (the first one warms up)
            enc = _Backend().run(IMAGE_ENCODER, {"before": x, "after": x})
            cross = {n: enc[n] for kv in cross_names(manifest.dims) for n in kv}
            step = OrtStepModel(_Backend(), manifest.dims, cross, 1)
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

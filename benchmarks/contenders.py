"""The benchmark's contenders and what they run on (DESIGN §9): the cached artefacts (random-weight
paper checkpoint and its export, the tiny model's export) and, per contender, the CaptionModel the
one CaptionTask drives:

  reference  (a) the original research code's inference: PyTorch, the image encoder once (the
             trunk and each T1 block once per image: `original_encoder`), then at every step
             the full-sequence decoder forward over the whole prefix, which recomputes every
             self-attention and the cross-attention K/V from the memory (`ReferenceModel`);
  torch-kv   (b) our PyTorch model: cross K/V once per pair, self-attention KV cache
             (`rsicrc.decode.TorchCaptionModel`);
  ort-fp32   (c) the exported graphs in ONNX Runtime (CPU), fp32 (`rsicrc.runtime.task.GraphModel`
             over the Captioner's backend);
  ort-int8   (d) the same with the int8 graphs.
torch and the runtime are imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
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


class ReferenceModel:
    """The research code's inference as a CaptionModel: the state is the decoder memory [B, N, C]
    and each step recomputes the whole prefix (RecomputeStepModel). It computes no pooled visual
    embedding (captioning does not need it): `visual` is [B, 0]."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, before: Any, after: Any) -> Any:
        import numpy as np
        import torch

        from rsicrc.runtime.task import Encoded

        with torch.no_grad():
            memory = original_encoder(self.model.encoder, torch.from_numpy(before), torch.from_numpy(after))
        return Encoded(np.zeros((len(before), 0), np.float32), memory)  # memory [B, N, C]

    def step_model(self, state: Any, beams: int) -> RecomputeStepModel:
        return RecomputeStepModel(self.model, state, beams)


class Contender:
    """One contender loaded: its CaptionModel (`model`), image size, meta for the analysis, and
    `tile` (one pair's decoder state repeated for n pairs: a cheap warmup at larger batches)."""

    def __init__(self, contender: str, ckpt_dir: str, model_dir: str, threads: int) -> None:
        self.contender = contender
        self.meta: dict[str, Any] = {}
        if contender in ("reference", "torch-kv"):
            import torch

            from rsicrc.checkpoint import load_checkpoint
            from rsicrc.decode import TorchCaptionModel

            torch.set_num_threads(threads)
            ckpt = load_checkpoint(ckpt_dir)
            self.torch_model, self.size = ckpt.model.eval(), ckpt.config.model.image_size
            self.max_len = ckpt.config.model.max_len
            self.model: Any = (ReferenceModel(self.torch_model) if contender == "reference"
                               else TorchCaptionModel(self.torch_model))
            params = {id(p): p for p in self.torch_model.decoder.parameters()}
            if contender == "torch-kv":  # a cached step never reads the cross K/V projections
                for layer in self.torch_model.decoder.cross:
                    for proj in (layer.cross_attn.k_proj, layer.cross_attn.v_proj):
                        for p in proj.parameters():
                            params.pop(id(p), None)
            self.meta["decoder_weight_bytes"] = sum(p.numel() * p.element_size() for p in params.values())
            self.meta["encoder_gflop"] = self._encoder_gflop()
        else:
            from rsicrc.runtime.captioner import Captioner
            from rsicrc.runtime.contract import DECODER_STEP
            from rsicrc.runtime.model_folder import ModelFolder
            from rsicrc.runtime.options import RuntimeOptions

            precision = BACKEND[contender][1]
            folder = ModelFolder.open(Path(model_dir))
            captioner = Captioner(folder, RuntimeOptions(device="cpu", precision=precision, threads=threads))
            self.model, self.size, self.max_len = captioner.graphs, folder.preprocess.size, folder.max_len
            graph = folder.manifest.graphs[precision][DECODER_STEP].file
            self.meta["decoder_weight_bytes"] = (Path(model_dir) / graph).stat().st_size

    def _encoder_gflop(self) -> float:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, self.size, self.size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.torch_model.encode_images(x, x)
        return counter.get_total_flops() / 1e9

    def tile(self, state: Any, n: int) -> Any:
        """The decoder state of one pair repeated for n pairs."""
        import numpy as np

        if self.contender == "reference":
            return state.repeat(n, 1, 1)
        if self.contender == "torch-kv":
            return [(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1)) for k, v in state]
        return {name: np.repeat(a, n, axis=0) for name, a in state.items()}

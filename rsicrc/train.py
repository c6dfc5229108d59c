"""`rsicrc-train`: AdamW (warmup, then constant or cosine), CE + lambda * InfoNCE, best by val loss."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from rsicrc.checkpoint import (
    RESUME_DIR,
    load_weights,
    read_config_and_vocab,
    remove_resume_state,
    save_checkpoint,
    save_weights,
)
from rsicrc.config import Config
from rsicrc.data import Batch, PairDataset, collate
from rsicrc.errors import CheckpointError, DataError, DeviceError
from rsicrc.levircc import LevirCC
from rsicrc.loss import caption_loss, contrastive_masks, info_nce
from rsicrc.model import RSICRC
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.textsim import CaptionMatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    data: Path  # LEVIR-CC layout folder
    out: Path  # checkpoint folder to write
    config: Config  # model + training hyper-parameters (CLI overrides already applied)
    max_steps: int | None = None  # stop after this many optimizer steps (None: all epochs)
    max_minutes: float | None = None  # stop after this much wall time, keeping the best
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # model init and sample order
    backbone_weights: Path | None = None  # local open_clip CLIP state dict (RemoteCLIP-RN50)
    resume: bool = False  # continue from OUT/resume
    num_workers: int = 0  # DataLoader workers
    save_every: int = 200  # steps between resume snapshots
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class TrainResult:
    path: Path
    steps: int
    epochs_done: float
    best_val_loss: float
    seconds: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def batch_loss(model: RSICRC, batch: Batch, config: Config, matcher: CaptionMatcher,
               amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> total, caption CE, InfoNCE for one batch."""
    t = config.train
    fmt = torch.channels_last if batch.before.device.type == "cpu" else torch.contiguous_format
    before, after = (x.contiguous(memory_format=fmt) for x in (batch.before, batch.after))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = model(before, after, batch.tokens, batch.lengths)
    ce = caption_loss(out.logits, batch.tokens, t.label_smoothing)
    pos, neg = contrastive_masks(batch.labels, batch.captions, matcher, t.fna)
    nce = info_nce(out.visual, out.text, pos, neg, t.temperature, t.nce_average)
    return ce + t.contrastive_weight * nce, ce, nce


@torch.no_grad()
def validation_loss(model: RSICRC, loader: DataLoader, device: torch.device, config: Config,
                    matcher: CaptionMatcher, amp: bool) -> dict[str, float]:
    model.eval()
    sums, n = [0.0, 0.0, 0.0], 0
    for batch in loader:
        total, ce, nce = batch_loss(model, batch.to(device), config, matcher, amp)
        k = batch.tokens.shape[0]
        sums = [s + v.item() * k for s, v in zip(sums, (total, ce, nce), strict=True)]
        n += k
    model.train()
    return {"loss": sums[0] / n, "ce": sums[1] / n, "nce": sums[2] / n}


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based): linear warmup over
    `warmup` steps, then constant (the paper's) or a cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "cosine" and total > warmup:
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))
    return 1.0


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Deterministic shuffled batches of an epoch (drop the ragged tail when there is a full batch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _batches(ds: PairDataset, batches: list[list[int]], workers: int) -> Iterator[Batch]:
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=workers)
    yield from loader


def train(opts: TrainOptions) -> TrainResult:
    """Train and write the checkpoint folder `opts.out`; returns a summary."""
    started = time.monotonic()
    device = pick_device(opts.device)
    amp = device.type == "cuda"
    dataset = LevirCC.open(opts.data)
    config = opts.config
    resume_dir = opts.out / RESUME_DIR
    if opts.resume:
        if not (resume_dir / "state.pt").is_file():
            raise CheckpointError(f"nothing to resume in {opts.out} (no {RESUME_DIR}/state.pt)")
        config, vocab, _ = read_config_and_vocab(opts.out)
    else:
        if opts.out.exists() and any(opts.out.iterdir()):
            raise CheckpointError(f"output folder {opts.out} is not empty; use --resume or a new folder")
        vocab = dataset.build_vocabulary()
    mc, tc = config.model, config.train
    spec = PreprocessSpec(size=mc.image_size)
    train_ds = PairDataset(dataset.root, dataset.split("train"), vocab, mc.max_len, spec, all_captions=True)
    val_ds = PairDataset(dataset.root, dataset.split("val"), vocab, mc.max_len, spec, all_captions=False)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise DataError(f"{opts.data}: training needs non-empty train and val splits")

    torch.manual_seed(opts.seed)
    model = RSICRC(mc, len(vocab))
    if opts.backbone_weights is not None:
        model.encoder.trunk.load_clip_weights(opts.backbone_weights)
        backbone = str(opts.backbone_weights)
    else:
        log.warning("backbone: random init (no --backbone-weights given)")
        backbone = "random-init"
    model.to(device).train()
    if device.type == "cpu":  # oneDNN convolutions are ~25 % faster channels-last on CPU
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, eps=tc.eps, weight_decay=tc.weight_decay)

    steps_per_epoch = len(_epoch_batches(len(train_ds), tc.batch_size, opts.seed, 0))
    total_steps = tc.epochs * steps_per_epoch
    if opts.max_steps is not None:
        total_steps = min(total_steps, opts.max_steps)
    warmup = max(1, int(tc.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup,
                                                                     total=total_steps, decay=tc.lr_decay))
    matcher = CaptionMatcher(tc.fn_threshold)
    val_loader = DataLoader(val_ds, batch_size=tc.batch_size, collate_fn=collate,
                            num_workers=opts.num_workers)

    step, best, history = 0, math.inf, []
    meta: dict[str, Any] = {}
    if opts.resume:
        state = torch.load(resume_dir / "state.pt", map_location="cpu", weights_only=True)
        load_weights(model, resume_dir / "last.safetensors")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best, history = int(state["step"]), float(state["best"]), list(state["history"])
        log.info("resumed at step %d (best val loss %.4f)", step, best)

    def snapshot() -> None:
        resume_dir.mkdir(parents=True, exist_ok=True)
        save_weights(model, resume_dir / "last.safetensors")
        tmp = resume_dir / ".state.pt.tmp"
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "step": step, "best": best, "history": history}, tmp)
        tmp.replace(resume_dir / "state.pt")

    def validate_and_keep_best() -> None:
        nonlocal best, meta
        val = validation_loss(model, val_loader, device, config, matcher, amp)
        history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), **val,
                        "seconds": round(time.monotonic() - started, 1)})
        log.info("step %d: val loss %.4f (ce %.4f, nce %.4f)", step, val["loss"], val["ce"], val["nce"])
        if val["loss"] < best:
            best = val["loss"]
            meta = {"step": step, "epoch": step / steps_per_epoch, "val": val, "best_val_loss": best,
                    "data": str(opts.data), "seed": opts.seed, "backbone": backbone,
                    "train_pairs": len(train_ds.records), "train_samples": len(train_ds),
                    "total_steps": total_steps, "device": str(device), "history": history}
            save_checkpoint(opts.out, model, config, vocab, meta)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not opts.progress, desc="train", unit="step",
               dynamic_ncols=True)
    stopped_early = False
    try:
        while step < total_steps and not stopped_early:
            epoch, offset = divmod(step, steps_per_epoch)
            batches = _epoch_batches(len(train_ds), tc.batch_size, opts.seed, epoch)[offset:]
            for batch in _batches(train_ds, batches, opts.num_workers):
                total, ce, nce = batch_loss(model, batch.to(device), config, matcher, amp)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update(1)
                bar.set_postfix(ce=f"{ce.item():.3f}", nce=f"{nce.item():.3f}", refresh=False)
                if step % opts.save_every == 0:
                    snapshot()
                out_of_time = opts.max_minutes is not None and (
                    time.monotonic() - started > 60 * opts.max_minutes)
                if step >= total_steps or out_of_time:
                    stopped_early = out_of_time
                    break
            validate_and_keep_best()
            snapshot()
    except KeyboardInterrupt:
        snapshot()
        bar.close()
        raise
    bar.close()
    if step >= total_steps and math.isfinite(best):
        remove_resume_state(opts.out)  # finished: the optimizer snapshot is no longer needed
    return TrainResult(opts.out, step, step / steps_per_epoch, best, time.monotonic() - started)


def override(config: Config, **train_overrides: Any) -> Config:
    """Apply non-None training overrides (from the CLI) to a config."""
    changes = {k: v for k, v in train_overrides.items() if v is not None}
    return replace(config, train=replace(config.train, **changes).validate())



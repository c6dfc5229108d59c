"""Importing original RSICRC research-code checkpoints (DESIGN §10).

The reference below re-implements the ORIGINAL model from DESIGN §3/§10 in the original
layout: a Sequential-numbered trunk, sequence-first nn.MultiheadAttention for the attention
pool and the decoder ([hw, B, C] memory), the [h_embedding[j], w_embedding[i]] position order,
V = to_k(x) in the bi-temporal encoder, and the decoder switches of its config.json: post-norm
or `prenorm` layers, a tied or untied LM head (`tie_embeddings`), a [1, max_len, C] `pe` buffer
or learned positions (`learnable`). Its random weights are saved like the original's, beside
its config.json and levir_vocab.json as their code writes them; after import our model must
reproduce its embeddings, logits and greedy captions, and so must the exported model folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typer.testing import CliRunner

from rsicrc.checkpoint import load_checkpoint
from rsicrc.decode import decoding_options, generate
from rsicrc.errors import CheckpointError, ConfigError
from rsicrc.import_original import (
    HEAD_KEY,
    PE_KEY,
    POS_EMB_KEY,
    convert_state_dict,
    expected_shapes,
    import_original,
    load_original_state_dict,
    model_config_from_original,
    original_key,
    read_original_vocab,
)
from rsicrc.vocab import END, PAD, SPECIAL_TOKENS, START, UNK

# The original repository's config.json, byte for byte.
AUTHORS_CONFIG = """{
  "backbone": "RN50",
  "d_model": 2048,
  "max_len": 41,
  "encoder_layers": 3,
  "decoder_layers": 1,
  "num_heads": 8,
  "h_dim": 512,
  "a_dim": 2048,
  "dropout": 0.1,
  "learnable": false,
  "fine_tune": true,
  "tie_embeddings": true,
  "prenorm": false,
  "s-transformers": "sentence-transformers/msmarco-distilbert-cos-v5",
  "s-threshold": 1.0,
  "fna": true
}"""
PAPER = json.loads(AUTHORS_CONFIG)
TRAINING_ONLY = ["fine_tune", "s-transformers", "s-threshold", "fna"]
SMALL = {  # their keys at test size, plus ours for a small trunk and input
    **PAPER, "backbone_layers": [1, 1, 1, 1], "backbone_width": 8, "image_size": 96,
    "d_model": 64, "max_len": 12, "encoder_layers": 2, "decoder_layers": 2, "num_heads": 4,
    "h_dim": 48, "a_dim": 32,  # d_model 64 != 32 * 8 = 256 trunk channels: the 1x1 projection is covered
}
SWITCHES = ("prenorm", "learnable", "tie_embeddings")  # their decoder's variants
VARIANT = {**SMALL, "prenorm": True, "learnable": True, "tie_embeddings": False}  # the other decoder
WORDS = ["the", "a", "house", "road", "built", "scene", "is", "same", "as", "before", "trees",
         "removed", "two", "houses", "are", "at", "top", "of", "no", "change"]


def authors_vocab(words: list[str]) -> dict[str, int]:
    """levir_vocab.json as the original get_levir_vocabulary writes it: the words by descending
    count (pandas value_counts order) with ids from 4, then PAD 0, START 1, UNK 2, END 3 last."""
    tokens = [w for k, w in enumerate(words) for _ in range(6 + (k * 7) % 11)]  # every count > 5
    vocab = {w: i + 4 for i, (w, _) in enumerate(Counter(tokens).most_common())}
    vocab.update(PAD=0, START=1, UNK=2, END=3)
    return vocab


VOCAB = authors_vocab(WORDS)
OUR_WORDS = (*SPECIAL_TOKENS, *sorted(WORDS, key=VOCAB.__getitem__))  # ours, by the file's ids


# ----------------------------------------------------------------------------- reference model


class RefAttention(nn.Module):
    """The original bi-temporal encoder attention, including its quirk: V is computed with to_k."""

    def __init__(self, width: int, a_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, a_dim, bias=False)
        self.to_k = nn.Linear(width, a_dim, bias=False)
        self.to_v = nn.Linear(width, a_dim, bias=False)  # present, never used
        self.to_out = nn.Sequential(nn.Linear(a_dim, width), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3)  # [B, H, N, dh]

        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_k(x))
        w = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1]), dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", w, v).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out(out)


class RefFeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(hidden, width), nn.Dropout(0.1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RefBlock(nn.Module):
    def __init__(self, width: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.att = RefAttention(width, cfg["a_dim"], cfg["num_heads"])
        self.feedforward = RefFeedForward(width, cfg["h_dim"])
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.att(x) + x)
        return self.norm2(self.feedforward(x) + x)


class RefEncoderTrans(nn.Module):
    def __init__(self, cfg: dict[str, Any], grid: int) -> None:
        super().__init__()
        c = cfg["d_model"]
        self.h_embedding = nn.Embedding(grid, c // 2)
        self.w_embedding = nn.Embedding(grid, c // 2)
        self.selftrans = nn.ModuleList(nn.ModuleList([RefBlock(c, cfg), RefBlock(2 * c, cfg)])
                                       for _ in range(cfg["encoder_layers"]))

    def positions(self, h: int, w: int) -> Tensor:
        """Token i*w + j (row i, column j) -> [h_embedding[j], w_embedding[i]]."""
        rows = [torch.cat([self.h_embedding.weight[j], self.w_embedding.weight[i]])
                for i in range(h) for j in range(w)]
        return torch.stack(rows)  # [hw, C]

    def forward(self, fa: Tensor, fb: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = fa.shape
        pos = self.positions(h, w)
        a0 = fa.permute(0, 2, 3, 1).reshape(b, h * w, c) + pos
        b0 = fb.permute(0, 2, 3, 1).reshape(b, h * w, c) + pos
        a, bb = a0, b0
        for t1, t2 in self.selftrans:
            a, bb = t1(a) + a, t1(bb) + bb
            joint = t2(torch.cat([a, bb], dim=2))
            a, bb = joint[:, :, :c] + a0, joint[:, :, c:] + b0
        return (a.reshape(b, h, w, c).permute(0, 3, 1, 2), bb.reshape(b, h, w, c).permute(0, 3, 1, 2))


class RefTrunk(nn.Module):
    """open_clip's ModifiedResNet children (attention pool left out) in an nn.Sequential."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        width = cfg.get("backbone_width", 64)
        resnet = ModifiedResNet(cfg.get("backbone_layers", [3, 4, 6, 3]), output_dim=32 * width, heads=8,
                                image_size=cfg.get("image_size", 224), width=width)
        self.net = nn.Sequential(*list(resnet.children())[:14])
        self.proj = nn.Conv2d(32 * width, cfg["d_model"], 1) if 32 * width != cfg["d_model"] else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.net(x)
        return self.proj(x) if self.proj is not None else x


class RefBottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(),
                                  nn.Conv2d(c // 2, c // 2, 3, padding=1), nn.BatchNorm2d(c // 2), nn.ReLU(),
                                  nn.Conv2d(c // 2, c, 1), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.left(x) + x)


class RefEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        c = cfg["d_model"]
        self.encoder = RefTrunk(cfg)
        self.encoder_trans = RefEncoderTrans(cfg, cfg.get("image_size", 224) // 32)
        self.Conv1 = nn.Conv2d(2 * c, c, 1)
        self.LN = RefBottleneck(c)
        self.att_pool = nn.MultiheadAttention(c, cfg["num_heads"])  # sequence-first
        self.att_pool_norm = nn.LayerNorm(c)
        self.img_queries = nn.Parameter(torch.randn(1, c))

    def forward(self, before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
        """-> memory [hw, B, C] (the original layout) and visual embedding [B, C]."""
        ma, mb = self.encoder_trans(self.encoder(before), self.encoder(after))
        cos = F.cosine_similarity(ma, mb, dim=1).unsqueeze(1)
        fused = self.LN(self.Conv1(torch.cat([ma, mb], dim=1) + cos))  # [B, C, h, w]
        memory = fused.flatten(2).permute(2, 0, 1)  # [hw, B, C]
        query = self.img_queries.unsqueeze(1).repeat(1, before.shape[0], 1)  # [1, B, C]
        pooled, _ = self.att_pool(query, memory, memory)
        return memory, self.att_pool_norm(pooled[0])


class RefPositionalEncoding(nn.Module):
    def __init__(self, width: int, length: int, learnable: bool = False) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable:
            self.pos_emb = nn.Embedding(length, width)
            return
        position = torch.arange(length).unsqueeze(1).float()
        div = torch.exp(torch.arange(0, width, 2).float() * (-math.log(10000.0) / width))
        pe = torch.zeros(1, length, width)
        pe[0, :, 0::2] = torch.sin(position * div)
        pe[0, :, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)  # [1, L, C], saved in the state dict

    def positions(self, n: int) -> Tensor:
        """The first n positions, sequence-first: [n, 1, C]."""
        table = self.pos_emb.weight if self.learnable else self.pe[0]  # [L, C]
        return table[:n].unsqueeze(1)


class RefDecoderLayer(nn.Module):
    def __init__(self, c: int, heads: int, cross: bool, prenorm: bool) -> None:
        super().__init__()
        self.prenorm = prenorm
        self.self_attn = nn.MultiheadAttention(c, heads, dropout=0.1)
        self.sa_norm = nn.LayerNorm(c)
        if cross:
            self.cross_attn = nn.MultiheadAttention(c, heads, dropout=0.1)
            self.mha_norm = nn.LayerNorm(c)
        self.ff_linear1 = nn.Linear(c, 4 * c)
        self.ff_linear2 = nn.Linear(4 * c, c)
        self.ff_norm = nn.LayerNorm(c)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        """x [L, B, C], memory [hw, B, C]."""
        n = x.shape[0]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # True = masked

        def ff(h: Tensor) -> Tensor:
            return self.ff_linear2(F.gelu(self.ff_linear1(h)))

        if self.prenorm:
            h = self.sa_norm(x)
            x = x + self.self_attn(h, h, h, attn_mask=causal)[0]
            if memory is not None:
                x = x + self.cross_attn(self.mha_norm(x), memory, memory)[0]
            return x + ff(self.ff_norm(x))
        x = self.sa_norm(x + self.self_attn(x, x, x, attn_mask=causal)[0])
        if memory is not None:
            x = self.mha_norm(x + self.cross_attn(x, memory, memory)[0])
        return self.ff_norm(x + ff(x))


class RefDecoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], vocab_size: int) -> None:
        super().__init__()
        c, heads = cfg["d_model"], cfg["num_heads"]
        self.tokens_embed = nn.Embedding(vocab_size, c)
        nn.init.uniform_(self.tokens_embed.weight, -0.1, 0.1)  # as the original initialised it
        self.lm_head = nn.Linear(c, vocab_size, bias=False)
        if cfg["tie_embeddings"]:
            self.lm_head.weight = self.tokens_embed.weight  # tied: both keys in the state dict
        else:
            nn.init.uniform_(self.lm_head.weight, -0.1, 0.1)
        self.position_encoding = RefPositionalEncoding(c, cfg["max_len"], cfg["learnable"])
        prenorm = cfg["prenorm"]
        self.uni_decoder = nn.ModuleList(RefDecoderLayer(c, heads, False, prenorm)
                                         for _ in range(cfg["decoder_layers"]))
        self.cross_decoder = nn.ModuleList(RefDecoderLayer(c, heads, True, prenorm)
                                           for _ in range(cfg["decoder_layers"]))

    def unimodal(self, tokens: Tensor) -> Tensor:
        x = self.tokens_embed(tokens).transpose(0, 1) + self.position_encoding.positions(tokens.shape[1])
        for layer in self.uni_decoder:
            x = layer(x)
        return x  # [L, B, C]

    def text(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.unimodal(tokens)[lengths - 1, torch.arange(tokens.shape[0])]  # [B, C]

    def logits(self, tokens: Tensor, memory: Tensor) -> Tensor:
        x = self.unimodal(tokens)
        for layer in self.cross_decoder:
            x = layer(x, memory)
        return self.lm_head(x).transpose(0, 1)  # [B, L, V]


class RefRSICRC(nn.Module):
    def __init__(self, cfg: dict[str, Any], vocab_size: int) -> None:
        super().__init__()
        self.max_len = cfg["max_len"]
        self.encoder = RefEncoder(cfg)
        self.decoder = RefDecoder(cfg, vocab_size)

    @torch.no_grad()
    def greedy(self, before: Tensor, after: Tensor) -> list[list[int]]:
        """The original loop: recompute the whole prefix at every step; tokens before END. (Theirs
        runs max_len steps, ours max_len - 1: the START slot counts; only a caption that has not
        ended by then differs, by its last word.)"""
        memory, _ = self.encoder(before, after)
        seq = torch.full((before.shape[0], 1), START, dtype=torch.long)
        for _ in range(self.max_len - 1):
            nxt = self.decoder.logits(seq, memory)[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
        out = []
        for row in seq[:, 1:].tolist():
            out.append(row[: row.index(END)] if END in row else row)
        return out


def randomize(model: nn.Module) -> nn.Module:
    """Non-trivial norms, BatchNorm statistics and attention biases, so that every mapping shows;
    feed-forward outputs damped so that positions and the image steer the greedy caption."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)  # type: ignore[union-attr]
                m.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
                m.num_batches_tracked.fill_(7)  # type: ignore[union-attr]
            elif isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.normal_(0, 0.1)  # type: ignore[union-attr]
                m.out_proj.bias.normal_(0, 0.1)
            elif isinstance(m, RefDecoderLayer):
                m.ff_linear2.weight.mul_(0.3)
    return model.eval()


def calibrate_batchnorm(model: RefRSICRC, image_size: int) -> None:
    """Running statistics from a few random images: random ones leave the trunk output almost
    independent of its input (the signal dies, the BN biases remain)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the calibration batch
        model.train()
        model.encoder(torch.randn(8, 3, image_size, image_size), torch.randn(8, 3, image_size, image_size))
        model.eval()


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Original:
    ref: RefRSICRC
    weights: Path
    config: Path
    vocab: Path
    cfg: dict[str, Any]


def write_original(folder: Path, cfg: dict[str, Any], ref: nn.Module | None = None,
                   state: dict[str, Tensor] | None = None) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    weights, config, vocab = folder / "model_best.pt", folder / "config.json", folder / "levir_vocab.json"
    torch.save(state if state is not None else ref.state_dict(), weights)  # type: ignore[union-attr]
    config.write_text(AUTHORS_CONFIG if cfg == PAPER else json.dumps(cfg, indent=2))
    vocab.write_text(json.dumps(VOCAB))
    return weights, config, vocab


def fast_random_init(model: nn.Module) -> nn.Module:
    """Materialize a meta-device model with cheap pseudo-random weights (~1/sqrt(fan_in)).

    Drawing 350 M fresh normals costs seconds on 2 cores; each tensor here copies a window of a
    prime-length random pool at a random offset, which is just as good for finding mapping errors.
    """
    pool = torch.randn(1_000_003)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            n = t.numel()
            start = int(torch.randint(0, pool.numel(), ()))
            reps = (start + n) // pool.numel() + 1
            values = (pool.repeat(reps) if reps > 1 else pool)[start:start + n]
            scale = t.shape[1:].numel() ** -0.5 if t.dim() > 1 else 0.1
            t.copy_(values.view(t.shape) * scale)
    return model


def make_original(folder: Path, cfg: dict[str, Any], seed: int = 2, fast: bool = False) -> Original:
    torch.manual_seed(seed)
    vocab_size = len(SPECIAL_TOKENS) + len(WORDS)
    if fast:
        with torch.device("meta"):
            ref = RefRSICRC(cfg, vocab_size)
        fast_random_init(ref)
        if cfg["tie_embeddings"]:
            ref.decoder.lm_head.weight = ref.decoder.tokens_embed.weight  # to_empty untied them
        if not cfg["learnable"]:
            pe = ref.decoder.position_encoding.pe
            pe.copy_(RefPositionalEncoding(cfg["d_model"], pe.shape[1]).pe)
        randomize(ref)
    else:
        ref = randomize(RefRSICRC(cfg, vocab_size))
        calibrate_batchnorm(ref, cfg.get("image_size", 224))
    return Original(ref, *write_original(folder, cfg, ref), cfg)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Original:
    return make_original(tmp_path_factory.mktemp("original"), SMALL)


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Original:
    return make_original(tmp_path_factory.mktemp("variant"), VARIANT)


@pytest.fixture(scope="module")
def small_ckpt(small: Original, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_original(small.weights, small.config, small.vocab, tmp_path_factory.mktemp("c") / "ckpt")


def close(ours: Tensor, ref: Tensor, tol: float = 1e-5) -> None:
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    assert (ours - ref).abs().max().item() <= tol * scale, (ours - ref).abs().max().item() / scale


def assert_parity(ref: RefRSICRC, model: nn.Module, image_size: int, vocab_size: int) -> None:
    torch.manual_seed(1)
    before, after = torch.randn(2, 3, image_size, image_size), torch.randn(2, 3, image_size, image_size)
    tokens = torch.randint(4, vocab_size, (2, 7))
    tokens[:, 0] = START
    lengths = torch.tensor([7, 4])
    for row, n in enumerate(lengths.tolist()):
        tokens[row, n - 1], tokens[row, n:] = END, 0
    with torch.no_grad():
        ref_memory, ref_visual = ref.encoder(before, after)
        out = model(before, after, tokens, lengths)
        memory, _ = model.encoder(before, after)
        close(memory, ref_memory.transpose(0, 1))
        close(out.visual, ref_visual)
        close(out.text, ref.decoder.text(tokens, lengths))
        close(out.logits, ref.decoder.logits(tokens, ref_memory))
        results, _ = generate(model, before, after, decoding_options(model, beam=1))
    want = ref.greedy(before, after)
    assert [list(r.best.tokens) for r in results] == want
    assert want[0] != want[1] and any(len(set(c)) > 2 for c in want)  # captions that can tell


# ----------------------------------------------------------------------------- parity


def test_small_import_matches_the_original_model(small: Original, small_ckpt: Path) -> None:
    ckpt = load_checkpoint(small_ckpt)
    assert ckpt.model.cfg.value_from_key and ckpt.model.encoder.proj is not None
    assert ckpt.vocab.words == OUR_WORDS and OUR_WORDS[:7] != (*SPECIAL_TOKENS, *WORDS[:3])
    assert_parity(small.ref, ckpt.model, SMALL["image_size"], len(ckpt.vocab))


def test_variant_import_matches_the_original_model(variant: Original, tmp_path: Path) -> None:
    """prenorm, learnable and untied head: the original's other decoder, imported as such."""
    ckpt = load_checkpoint(import_original(variant.weights, variant.config, variant.vocab, tmp_path / "c"))
    cfg = ckpt.model.cfg
    assert (cfg.prenorm, cfg.learned_positions, cfg.tie_embeddings) == (True, True, False)
    assert_parity(variant.ref, ckpt.model, VARIANT["image_size"], len(ckpt.vocab))


def test_the_value_quirk_matters(small: Original, small_ckpt: Path) -> None:
    """Without value_from_key the imported weights give another visual embedding."""
    ckpt = load_checkpoint(small_ckpt)
    before = after = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        _, want = small.ref.encoder(before, after)
        for block in [*ckpt.model.encoder.t1, *ckpt.model.encoder.t2]:
            block.att.value_from_key = False
        _, got = ckpt.model.encoder(before, after)
    assert (got - want).abs().max() > 1e-3 * want.abs().max()


def test_checkpoint_folder_records_the_import(small: Original, small_ckpt: Path) -> None:
    config = json.loads((small_ckpt / "config.json").read_text())["model"]
    assert config["value_from_key"] is True
    assert config["backbone"] == {"layers": [1, 1, 1, 1], "width": 8, "frozen_stages": 2}
    assert (config["d_model"], config["max_len"], config["image_size"]) == (64, 12, 96)
    meta = json.loads((small_ckpt / "training.json").read_text())
    assert meta["training_only_config_keys"] == TRAINING_ONLY
    assert meta["original_config"] == SMALL
    assert not [p for p in small_ckpt.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_paper_config_shapes_convert() -> None:
    """RN50 / d_model 2048: every original tensor finds its place (shapes only, on meta)."""
    cfg, training_only = model_config_from_original(PAPER)
    assert training_only == TRAINING_ONLY and cfg.backbone.layers == (3, 4, 6, 3) and cfg.backbone.width == 64
    assert (cfg.prenorm, cfg.learned_positions, cfg.tie_embeddings) == (False, False, True)
    assert cfg.value_from_key and cfg.grid == 7
    with torch.device("meta"):
        ref = RefRSICRC(PAPER, 468)
    state = {k: v for k, v in ref.state_dict().items() if k != PE_KEY}
    state[PE_KEY] = RefPositionalEncoding(2048, 41).pe  # real tables: checked by value
    state[HEAD_KEY] = state["decoder.tokens_embed.weight"] = torch.zeros(468, 2048)
    assert state["encoder.encoder.net.10.0.conv1.weight"].shape == (64, 64, 1, 1)  # net.10 = layer1
    converted = convert_state_dict(state, cfg)
    ours = expected_shapes(cfg, 468)
    assert {k: v.shape for k, v in converted.items()} == ours
    packed = [k for k in state if k.startswith("decoder.") and ".in_proj_" in k]
    assert len(packed) == 6 and "encoder.proj.weight" not in ours
    assert len(ours) == len(state) - 2 + 2 * len(packed)  # no lm_head, no pe; q/k/v split in three


@pytest.mark.slow
def test_paper_import_round_trips(tmp_path: Path) -> None:
    """Paper size through the files: every reloaded tensor is the original's (forward parity of the
    size-independent mapping is shown at small size above; a paper forward costs too long here)."""
    original = make_original(tmp_path / "original", PAPER, fast=True)
    ckpt = load_checkpoint(import_original(original.weights, original.config, original.vocab,
                                           tmp_path / "ckpt"))
    assert ckpt.model.cfg == model_config_from_original(PAPER)[0]
    state = original.ref.state_dict()
    for key, tensor in ckpt.model.state_dict().items():
        theirs, chunk = original_key(key)
        want = state[theirs] if chunk is None else state[theirs].chunk(3)[chunk]
        assert torch.equal(tensor, want), key


@pytest.mark.slow
def test_imported_model_exports_to_onnx(small: Original, small_ckpt: Path, tmp_path: Path) -> None:
    """ONNX Runtime on the exported graphs gives the original model's embeddings."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rsicrc.export.pipeline import export_model
    from rsicrc.export.validate import open_session
    from rsicrc.runtime.contract import IMAGE_ENCODER, TEXT_ENCODER

    report = export_model(small_ckpt, tmp_path / "model", progress=False)
    files = {g.graph: report.out / g.file for g in report.graphs}
    torch.manual_seed(2)
    before, after = torch.randn(2, 3, 96, 96), torch.randn(2, 3, 96, 96)
    tokens = torch.tensor([[START, 5, 9, 6, END, 0], [START, 11, END, 0, 0, 0]])
    mask = (tokens != 0).long()
    with torch.no_grad():
        _, want_visual = small.ref.encoder(before, after)
        want_text = small.ref.decoder.text(tokens, mask.sum(1))
    visual = open_session(files[IMAGE_ENCODER]).run(
        ["visual_embedding"], {"before": before.numpy(), "after": after.numpy()})[0]
    text = open_session(files[TEXT_ENCODER]).run(
        ["text_embedding"], {"input_ids": tokens.numpy(), "attention_mask": mask.numpy()})[0]
    close(torch.from_numpy(visual), want_visual, tol=1e-4)
    close(torch.from_numpy(text), want_text, tol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["authors", "variant"])
def test_cli_round_trip_captions_like_the_original(which: str, small: Original, variant: Original,
                                                   tmp_path: Path) -> None:
    """Their files as they are -> rsicrc import-original -> rsicrc export -> rsicrc caption (the
    torch-free runtime, greedy): the reference's greedy tokens, spelled with the file's words."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from PIL import Image

    from rsicrc.cli.main import app
    from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch

    original = small if which == "authors" else variant
    runner = CliRunner()

    def run(*args: Any) -> str:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.stdout

    ckpt, model = tmp_path / "ckpt", tmp_path / "model"
    run("import-original", original.weights, "--config", original.config, "--vocab", original.vocab,
        "--out", ckpt)
    run("export", ckpt, "--out", model, "--quiet")
    spec = PreprocessSpec.from_dict(json.loads((model / "manifest.json").read_text())["preprocess"])
    images = np.random.default_rng(5).integers(0, 256, (2, 2, 96, 96, 3), dtype=np.uint8)  # pair, side
    got, captions = [], []
    for k in range(2):
        paths = [tmp_path / f"{k}{side}.png" for side in "AB"]
        for path, image in zip(paths, images[k], strict=True):
            Image.fromarray(image).save(path)
        doc = json.loads(run("caption", *paths, "--model", model, "--json", "--beam", "1", "--device", "cpu",
                             "--precision", "fp32"))
        got.append(doc["tokens"])
        captions.append(doc["caption"])
    before, after = (torch.from_numpy(preprocess_batch(list(images[:, side]), spec)) for side in (0, 1))
    want = original.ref.greedy(before, after)
    assert got == want, (got, want)
    # Their inverse vocabulary spells every id; ours skips PAD and START (random weights emit them,
    # trained ones do not: neither is ever a target) and writes UNK as <UNK>.
    words = {i: w for w, i in json.loads(original.vocab.read_text()).items()} | {UNK: "<UNK>"}
    assert captions == [" ".join(words[t] for t in tokens if t not in (PAD, START)) for tokens in want]
    assert want[0] != want[1] and any(len(set(c)) > 2 for c in want)  # captions that can tell


# ----------------------------------------------------------------------------- state-dict variants


def small_state(small: Original) -> dict[str, Tensor]:
    return dict(small.ref.state_dict())


def small_cfg() -> Any:
    return model_config_from_original(SMALL)[0]


def test_lm_head_key_is_optional_and_pe_layout_free(small: Original) -> None:
    state = small_state(small)
    full = convert_state_dict(state, small_cfg())
    state.pop(HEAD_KEY)
    state[PE_KEY] = state[PE_KEY].transpose(0, 1)  # [L, 1, C]
    without = convert_state_dict(state, small_cfg())
    assert full.keys() == without.keys()
    assert all(torch.equal(full[k], without[k]) for k in full)
    state[PE_KEY] = RefPositionalEncoding(SMALL["d_model"], SMALL["max_len"] + 9).pe  # longer than used
    assert convert_state_dict(state, small_cfg()).keys() == full.keys()
    q, k, v = (full[f"decoder.cross.1.cross_attn.{n}_proj.bias"] for n in "qkv")
    assert torch.equal(torch.cat([q, k, v]), state["decoder.cross_decoder.1.cross_attn.in_proj_bias"])


def test_data_parallel_prefix_is_stripped(small: Original) -> None:
    state = small_state(small)
    prefixed = convert_state_dict({f"module.{k}": v for k, v in state.items()}, small_cfg())
    plain = convert_state_dict(state, small_cfg())
    assert prefixed.keys() == plain.keys() and all(torch.equal(prefixed[k], plain[k]) for k in plain)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict_loads(small: Original, tmp_path: Path, wrapper: str) -> None:
    torch.save({wrapper: small_state(small), "epoch": 3}, tmp_path / "w.pt")
    assert load_original_state_dict(tmp_path / "w.pt").keys() == small_state(small).keys()


def test_an_untied_head_needs_tie_embeddings_false(small: Original) -> None:
    state = small_state(small)
    state[HEAD_KEY] = state[HEAD_KEY] + 1.0
    with pytest.raises(CheckpointError, match="lm_head.weight differs .* has tie_embeddings: true; set it"):
        convert_state_dict(state, small_cfg())
    untied = dataclasses.replace(small_cfg(), tie_embeddings=False)
    converted = convert_state_dict(state, untied)
    assert torch.equal(converted["decoder.head.weight"], state[HEAD_KEY])
    assert torch.equal(converted["decoder.tokens_embed.weight"], state["decoder.tokens_embed.weight"])


def test_positions_must_match_learnable(small: Original) -> None:
    state = small_state(small)
    with pytest.raises(CheckpointError, match=r"sin/cos table .* has learnable: true; set it to false"):
        convert_state_dict(state, dataclasses.replace(small_cfg(), learned_positions=True))
    state[POS_EMB_KEY] = torch.zeros(SMALL["max_len"], SMALL["d_model"])
    with pytest.raises(CheckpointError, match=r"learned positions .* has learnable: false; set it to true"):
        convert_state_dict(state, small_cfg())


def test_missing_unexpected_and_mismatched_keys_are_listed(small: Original) -> None:
    state = small_state(small)
    del state["encoder.LN.left.4.running_var"]
    state["encoder.extra.weight"] = torch.zeros(2)
    state["decoder.uni_decoder.7.ff_norm.bias"] = torch.zeros(64)  # a layer the config lacks
    state["encoder.att_pool.in_proj_weight"] = torch.zeros(3 * 64, 32)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state, small_cfg())
    msg = str(err.value)
    assert "1 missing (encoder.LN.left.4.running_var)" in msg
    assert "2 unexpected (decoder.uni_decoder.7.ff_norm.bias, encoder.extra.weight)" in msg
    assert "1 shape mismatch (encoder.att_pool.in_proj_weight [192, 32] vs [192, 64])" in msg
    assert "\n" not in msg


def test_many_problems_are_counted_and_cut(small: Original) -> None:
    state = {k: v for k, v in small_state(small).items() if not k.startswith("encoder.encoder.")}
    with pytest.raises(CheckpointError, match=r"\d{2} missing \(encoder\.encoder\.[^)]*, \.\.\.\)"):
        convert_state_dict(state, small_cfg())


def test_a_foreign_position_table_is_refused(small: Original) -> None:
    state = small_state(small)
    state[PE_KEY] = torch.zeros_like(state[PE_KEY])
    with pytest.raises(CheckpointError, match="not the standard interleaved sin/cos"):
        convert_state_dict(state, small_cfg())
    state[PE_KEY] = state[PE_KEY][:, :5]
    with pytest.raises(CheckpointError, match="12 or more positions"):
        convert_state_dict(state, small_cfg())


class NotATensor:
    """A custom class instance: a pickle with it needs weights_only=False, which we never use."""


def test_pickles_with_python_objects_are_refused(small: Original, tmp_path: Path) -> None:
    torch.save({"state_dict": small_state(small), "args": NotATensor()}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"refused: it pickles a Python object \(.*NotATensor\)"):
        load_original_state_dict(tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read original weights"):
        load_original_state_dict(tmp_path / "junk.pt")


# ----------------------------------------------------------------------------- config, vocabulary, CLI


def test_config_mapping_errors() -> None:
    with pytest.raises(ConfigError, match=r'backbone "ViT-B-32" is not supported \(valid: RN50;'):
        model_config_from_original({**PAPER, "backbone": "ViT-B-32"})
    with pytest.raises(ConfigError, match="prenorm must be true or false, got \"yes\""):
        model_config_from_original({**PAPER, "prenorm": "yes"})
    with pytest.raises(ConfigError, match="learnable must be true or false, got 1"):
        model_config_from_original({**PAPER, "learnable": 1})
    with pytest.raises(ConfigError, match="missing architecture key.* a_dim"):
        model_config_from_original({k: v for k, v in PAPER.items() if k != "a_dim"})
    with pytest.raises(ConfigError, match="num_heads must be an integer"):
        model_config_from_original({**PAPER, "num_heads": "8"})
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        model_config_from_original({**PAPER, "num_heads": 7})


def test_every_key_of_the_authors_config_is_read() -> None:
    """Their config.json: architecture keys set the model, the rest is training-only; their
    decoder switches map onto ours; keys they never had are refused, all listed, in one line."""
    cfg, training_only = model_config_from_original(json.loads(AUTHORS_CONFIG))
    assert training_only == TRAINING_ONLY
    assert (cfg.d_model, cfg.max_len, cfg.encoder_layers, cfg.decoder_layers) == (2048, 41, 3, 1)
    assert (cfg.num_heads, cfg.h_dim, cfg.a_dim, cfg.dropout, cfg.image_size) == (8, 512, 2048, 0.1, 224)
    variant, _ = model_config_from_original({**PAPER, **{k: VARIANT[k] for k in SWITCHES}})
    assert (variant.prenorm, variant.learned_positions, variant.tie_embeddings) == (True, True, False)
    bare = {k: v for k, v in PAPER.items() if k not in (*SWITCHES, *TRAINING_ONLY)}
    assert model_config_from_original(bare) == (cfg, [])  # ICCModel's defaults
    with pytest.raises(ConfigError) as err:
        model_config_from_original({**PAPER, "learning_rate": 1e-4, "epochs": 50})
    msg = str(err.value)
    assert msg.startswith("config.json: unknown key(s) epochs, learning_rate; the original config.json keys")
    assert "s-transformers" in msg and "\n" not in msg


def test_training_only_keys_are_logged_and_recorded(small: Original, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="rsicrc.import_original"):
        out = import_original(small.weights, small.config, small.vocab, tmp_path / "ckpt")
    lines = [r.getMessage() for r in caplog.records if "only affect training" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(
        "original config: fine_tune, s-transformers, s-threshold, fna only affect training (fine_tune: ")
    meta = json.loads((out / "training.json").read_text())
    assert meta["original_config"]["s-transformers"] == "sentence-transformers/msmarco-distilbert-cos-v5"


def test_authors_vocabulary_keeps_its_ids(tmp_path: Path) -> None:
    """Their file (specials last, words in count order), our spelling and any key order all give
    the same vocabulary: the file's ids, the specials under our names."""
    assert list(VOCAB)[-4:] == ["PAD", "START", "UNK", "END"]  # as their code writes it
    path = tmp_path / "levir_vocab.json"
    path.write_text(json.dumps(VOCAB))
    vocab = read_original_vocab(path)
    assert vocab.words == OUR_WORDS
    assert all(vocab.id(w) == i for w, i in VOCAB.items() if w not in ("PAD", "START", "UNK", "END"))
    ours = {**{w: i for w, i in VOCAB.items() if i >= 4}, **{t: i for i, t in enumerate(SPECIAL_TOKENS)}}
    items = list(ours.items())
    random.Random(0).shuffle(items)
    path.write_text(json.dumps(dict(items)))
    assert read_original_vocab(path).words == OUR_WORDS


def _vocab_text(**changes: Any) -> str:
    vocab = dict(VOCAB)
    for key, value in changes.items():
        if value is None:
            vocab.pop(key)
        else:
            vocab[key] = value
    return json.dumps(vocab)


@pytest.mark.parametrize(("text", "message"), [
    (_vocab_text(END=None), r"END \(or <END>\) is missing"),
    (_vocab_text(**{"<NULL>": 0}), "both PAD and <NULL> are present"),
    (_vocab_text(PAD=5, the=0), "PAD has id 5, expected 0"),
    (_vocab_text(road=VOCAB["house"]), r"duplicate ids: id \d+ \('\w+', '\w+'\)$"),
    (_vocab_text(road=99), r"ids must run 0\.\.23 without gaps; missing \d+; out of range 99"),
    (_vocab_text(road="7"), "ids must be integers; got 'road': '7'"),
    ('{"PAD": 0, "START": 1, "UNK": 2, "END": 3, "the": 4, "the": 5}', "written more than once: the"),
    ('["PAD", "START"]', "expected a JSON object"),
    ('{"PAD": 0,', "invalid JSON"),
])
def test_bad_vocabularies_are_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "v.json"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message) as err:
        read_original_vocab(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_vocabulary_must_fit_the_embedding(small: Original, tmp_path: Path) -> None:
    vocab = tmp_path / "v.json"
    vocab.write_text(json.dumps({"the": 4, "PAD": 0, "START": 1, "UNK": 2, "END": 3}))
    with pytest.raises(CheckpointError, match="has 5 entries but the weights embed 24 tokens"):
        import_original(small.weights, small.config, vocab, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten(small: Original, small_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="already exists"):
        import_original(small.weights, small.config, small.vocab, small_ckpt)


def test_cli_imports_and_reports_errors(small: Original, tmp_path: Path) -> None:
    from rsicrc.cli.main import app

    runner = CliRunner()
    args = ["import-original", str(small.weights), "--config", str(small.config), "--vocab", str(small.vocab)]
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "ckpt")])
    assert ok.exit_code == 0, ok.output
    assert load_checkpoint(tmp_path / "ckpt").model.cfg.value_from_key
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "ckpt")])
    assert bad.exit_code == 2 and "error: output" in bad.output

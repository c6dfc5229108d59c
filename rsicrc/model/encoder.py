"""Image side: ModifiedResNet trunk, bi-temporal transformer encoder, fusion, pooled embedding."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsicrc.config import BackboneConfig, ModelConfig
from rsicrc.errors import CheckpointError
from rsicrc.model.attention import EncoderAttention, QueryPool

log = logging.getLogger(__name__)


class Trunk(nn.Module):
    """open_clip's ModifiedResNet without its attention pool: [B,3,S,S] -> [B, 32w, S/32, S/32]."""

    def __init__(self, cfg: BackboneConfig, image_size: int) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet

        net = ModifiedResNet(list(cfg.layers), output_dim=cfg.feature_dim, heads=8,
                             image_size=image_size, width=cfg.width)
        net.attnpool = None  # type: ignore[assignment]  # we pool with our own encoder
        self.net = net
        self.cfg = cfg
        self.frozen_stages = cfg.frozen_stages
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        n = self.net
        stem = [n.conv1, n.bn1, n.conv2, n.bn2, n.conv3, n.bn3]
        return (stem if self.frozen_stages >= 1 else []) + (
            [n.layer1] if self.frozen_stages >= 2 else [])

    def train(self, mode: bool = True) -> Trunk:
        """Frozen stages keep their BatchNorm statistics fixed as well."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.stem(x)  # [B, w, S/4, S/4]
        x = n.layer1(x)  # [B, 4w, S/4, S/4]
        x = n.layer2(x)  # [B, 8w, S/8, S/8]
        x = n.layer3(x)  # [B, 16w, S/16, S/16]
        return n.layer4(x)  # [B, 32w, S/32, S/32]

    def load_clip_weights(self, path: Path) -> None:
        """Load the `visual.*` trunk of a local open_clip CLIP state dict (e.g. RemoteCLIP-RN50)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"backbone weights not found: {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise CheckpointError(f"cannot read backbone weights {path}: {e}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        visual = {k[len("visual."):]: v for k, v in state.items()
                  if k.startswith("visual.") and not k.startswith("visual.attnpool.")}
        if not visual:
            raise CheckpointError(f"{path}: no 'visual.*' entries; expected an open_clip CLIP state dict")
        own = self.net.state_dict()
        missing = sorted(set(own) - set(visual))
        mismatched = sorted(k for k in own if k in visual and visual[k].shape != own[k].shape)
        if missing or mismatched:
            raise CheckpointError(
                f"{path} does not fit backbone layers={list(self.cfg.layers)} width={self.cfg.width} "
                f"(missing: {', '.join(missing[:5]) or 'none'}; "
                f"shape mismatch: {', '.join(mismatched[:5]) or 'none'})")
        self.net.load_state_dict({k: visual[k] for k in own}, strict=True)
        log.info("backbone: loaded %d tensors from %s", len(own), path)


class Block(nn.Module):
    """Post-norm transformer block: x = LN(MHA(x) + x); x = LN(FF(x) + x)."""

    def __init__(self, width: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.att = EncoderAttention(width, cfg.a_dim, cfg.num_heads, cfg.dropout, cfg.value_from_key)
        self.feedforward = nn.Sequential(
            nn.Linear(width, cfg.h_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.h_dim, width), nn.Dropout(cfg.dropout))
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.att(x) + x)  # [B, N, width]
        return self.norm2(self.feedforward(x) + x)  # [B, N, width]


class Bottleneck(nn.Module):
    """Residual bottleneck after fusion: 1x1 C->C/2, BN, ReLU, 3x3, BN, ReLU, 1x1 ->C, BN, +x, ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        h = c // 2
        self.left = nn.Sequential(
            nn.Conv2d(c, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, c, 1), nn.BatchNorm2d(c))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.left(x) + x)  # [B, C, h, w]


class ImageEncoder(nn.Module):
    """(before, after) -> visual tokens [B, hw, C] and pooled visual embedding [B, C]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, g = cfg.d_model, cfg.grid
        self.trunk = Trunk(cfg.backbone, cfg.image_size)
        feat = cfg.backbone.feature_dim
        self.proj = nn.Conv2d(feat, c, 1) if feat != c else None
        # position vector at (row i, column j) = [pos_col[j], pos_row[i]] (DESIGN §10 order)
        self.pos_col = nn.Parameter(torch.randn(g, c // 2))  # [g, C/2]
        self.pos_row = nn.Parameter(torch.randn(g, c // 2))  # [g, C/2]
        self.t1 = nn.ModuleList(Block(c, cfg) for _ in range(cfg.encoder_layers))
        self.t2 = nn.ModuleList(Block(2 * c, cfg) for _ in range(cfg.encoder_layers))
        self.fuse = nn.Conv2d(2 * c, c, 1)
        self.bottleneck = Bottleneck(c)
        self.pool = QueryPool(c, cfg.num_heads)

    def features(self, image: Tensor) -> Tensor:
        """[B, 3, S, S] -> [B, C, g, g]"""
        x = self.trunk(image)
        return self.proj(x) if self.proj is not None else x

    def position_table(self) -> Tensor:
        g = self.pos_col.shape[0]
        col = self.pos_col.unsqueeze(0).expand(g, g, -1)  # [i, j, C/2] = pos_col[j]
        row = self.pos_row.unsqueeze(1).expand(g, g, -1)  # [i, j, C/2] = pos_row[i]
        return torch.cat([col, row], dim=-1).reshape(g * g, -1)  # [hw, C]

    def paired_features(self, before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
        """Trunk features [B, C, g, g] of both images. In eval mode one pass over a batch of 2B:
        the same weights, read once, in GEMMs twice as tall (at 7x7 the paper trunk's last stage
        runs 49-row GEMMs, which the CPU kernels run at about half the rate of 98-row ones). In
        training two passes, so that BatchNorm's batch statistics stay per image set."""
        if self.training:
            return self.features(before), self.features(after)
        both = self.features(torch.cat([before, after]))  # [2B, C, g, g]
        return both[: before.shape[0]], both[before.shape[0]:]

    def positioned(self, fa: Tensor, fb: Tensor) -> tuple[Tensor, Tensor]:
        """Trunk features [B, C, g, g] of both images -> tokens with positions [B, hw, C] each."""
        pos = self.position_table()  # [hw, C]
        return fa.flatten(2).transpose(1, 2) + pos, fb.flatten(2).transpose(1, 2) + pos

    def merge(self, a: Tensor, bb: Tensor) -> Tensor:
        """The transformer's outputs [B, hw, C] of both images -> fused visual tokens [B, hw, C]."""
        b, _, c = a.shape
        g = self.pos_col.shape[0]
        ma = a.transpose(1, 2).reshape(b, c, g, g)  # [B, C, g, g]
        mb = bb.transpose(1, 2).reshape(b, c, g, g)  # [B, C, g, g]
        cos = F.cosine_similarity(ma, mb, dim=1).unsqueeze(1)  # [B, 1, g, g]
        fused = self.bottleneck(self.fuse(torch.cat([ma, mb], dim=1) + cos))  # [B, C, g, g]
        return fused.flatten(2).transpose(1, 2)  # [B, hw, C]

    def forward(self, before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
        b = before.shape[0]
        a0, b0 = self.positioned(*self.paired_features(before, after))  # [B, hw, C] each
        c = a0.shape[2]
        a, bb = a0, b0
        for t1, t2 in zip(self.t1, self.t2, strict=True):
            pair = torch.cat([a, bb])  # [2B, hw, C]: T1 (per token, shared) sees both images at once
            pair = t1(pair) + pair  # [2B, hw, C]
            a, bb = pair[:b], pair[b:]  # [B, hw, C] each
            joint = t2(torch.cat([a, bb], dim=-1))  # [B, hw, 2C]
            a = joint[..., :c] + a0  # [B, hw, C]
            bb = joint[..., c:] + b0  # [B, hw, C]
        tokens = self.merge(a, bb)  # [B, hw, C]
        return tokens, self.pool(tokens)  # [B, hw, C], [B, C]

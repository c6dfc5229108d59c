"""PyTorch RSICRC model (DESIGN §3)."""

from rsicrc.model.rsicrc import RSICRC, ModelOutput

__all__ = ["RSICRC", "ModelOutput"]

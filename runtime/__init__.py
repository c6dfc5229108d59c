"""rsicrc.runtime: the deployed side, torch-free (DESIGN §7).

    from rsicrc.runtime import Captioner, ModelFolder, RuntimeOptions, DecodingOptions
    captioner = Captioner(ModelFolder.open("model"), RuntimeOptions(device="cpu"))
    captioner.caption_files([("before.tif", "after.tif")], DecodingOptions(beam_size=3))

The public names below are imported on first use (PEP 562), so that importing one small module
of the package (the graph contract, the options) does not load ONNX Runtime, Pillow or rasterio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Captioner": "captioner", "CaptionResult": "captioner", "caption_pair": "captioner",
    "ImageEncoder": "encoders", "TextEncoder": "encoders",
    "ModelFolder": "model_folder", "RuntimeOptions": "options",
    "DecodingOptions": "decoding", "DecodeResult": "decoding",
    "CaptionTask": "task",
    "Retriever": "retriever", "Hit": "retriever", "index_pairs": "retriever", "IndexReport": "retriever",
    "caption_pairs": "pairs", "list_pairs": "pairs",
    "read_image": "images", "read_pair": "images",
    "caption_heatmap": "heatmap", "render_heatmap": "heatmap",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

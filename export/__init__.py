"""Checkpoint -> ONNX graphs + manifest, validated against PyTorch (DESIGN §6).

    from rsicrc.export import export_model
    report = export_model(Path("ckpt"), Path("model"))
"""

from rsicrc.export.pipeline import ExportReport, GraphReport, export_model

__all__ = ["ExportReport", "GraphReport", "export_model"]

"""Checkpoint -> ONNX graphs + manifest, validated against PyTorch (DESIGN §6); int8; TensorRT.

    from rsicrc.export.pipeline import export_model
    report = export_model(Path("ckpt"), Path("model"))

Nothing is imported here: `rsicrc.export.trt` (engine building) must stay usable on a GPU box
without torch, and `rsicrc.export.pipeline` imports torch.
"""

"""How to run an exported model folder: one frozen set of options every runtime entry point takes
(captioning, evaluation, indexing, search, checks), declared once here and once in the CLI.
Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from rsicrc.checks import one_of, optional_positive_int
from rsicrc.errors import ConfigError

ENGINES: tuple[str, ...] = ("onnxruntime", "trt")  # what runs the graphs
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEFAULT_ENGINE = "onnxruntime"


@dataclass(frozen=True)
class RuntimeOptions:
    """Which engine runs the graphs, where, at what precision, with how many threads.
    Invalid values raise ConfigError when the options are built."""

    engine: str = DEFAULT_ENGINE  # onnxruntime | trt (TensorRT engines from `rsicrc build-engines`)
    device: str = "auto"  # auto (CUDA when the engine can really use it, else CPU) | cpu | cuda
    precision: str | None = None  # fp32 | int8 | fp16 (TensorRT); None = the model folder's default
    threads: int | None = None  # ONNX Runtime intra-op threads per graph; None = ONNX Runtime's choice

    def __post_init__(self) -> None:
        one_of(self.engine, ENGINES, "engine")
        one_of(self.device, DEVICES, "device")
        if self.precision is not None and not isinstance(self.precision, str):
            raise ConfigError(f"precision must be a name such as fp32 or int8, got {self.precision!r}")
        optional_positive_int(self.threads, "threads")

"""CUDA through cuda-python (no torch): one device, one stream, device buffers freed when
collected, every call checked (DESIGN §8). Used by the TensorRT backend and engine builder;
cuda-python is imported lazily.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from rsicrc.errors import DependencyError, DeviceError


def import_cudart() -> Any:
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (12.6+) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise DependencyError("cuda-python is not installed: pip install cuda-python") from None
    return runtime


def cuda_check(rt: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, *values): raise DeviceError unless error is cudaSuccess; return
    the single value (or the tuple of values, or None)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        status, message = rt.cudaGetErrorString(err)
        detail = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
        raise DeviceError(f"CUDA {what} failed: {getattr(err, 'name', err)} ({detail})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class DeviceBuffer:
    """cudaMalloc'ed memory, freed with cudaFree when the buffer is collected."""

    def __init__(self, cuda: CudaRuntime, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(cuda.call(cuda.rt.cudaMalloc(self.nbytes), "cudaMalloc"))
        self._free = weakref.finalize(self, cuda.rt.cudaFree, self.ptr)


class CudaRuntime:
    """One device and one stream; every call checked."""

    def __init__(self, device_id: int = 0) -> None:
        self.rt = import_cudart()
        self.call(self.rt.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        self.device_id = device_id
        self.stream = self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        weakref.finalize(self, self.rt.cudaStreamDestroy, self.stream)

    def call(self, result: Any, what: str) -> Any:
        return cuda_check(self.rt, result, what)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def properties(self) -> tuple[str, str]:
        """(GPU name, "major.minor")."""
        prop = self.call(self.rt.cudaGetDeviceProperties(self.device_id), "cudaGetDeviceProperties")
        name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip(), f"{prop.major}.{prop.minor}"

    def to_device(self, buffer: DeviceBuffer, array: np.ndarray, offset: int = 0) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(buffer.ptr + offset, array.ctypes.data, array.nbytes, kind,
                                          self.stream), "cudaMemcpyAsync (host to device)")

    def to_host(self, array: np.ndarray, buffer: DeviceBuffer) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(array.ctypes.data, buffer.ptr, array.nbytes, kind, self.stream),
                  "cudaMemcpyAsync (device to host)")

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.call(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream), "cudaMemcpyAsync (device)")

    def zero(self, buffer: DeviceBuffer) -> None:
        self.call(self.rt.cudaMemsetAsync(buffer.ptr, 0, buffer.nbytes, self.stream), "cudaMemsetAsync")

    def synchronize(self) -> None:
        self.call(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

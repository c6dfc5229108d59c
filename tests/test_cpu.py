"""runtime/cpu.py: the CPU model from /proc/cpuinfo, SIMD features from numpy's own CPUID detection
where numpy knows them (right under an emulator too), the rest from the flags line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rsicrc.runtime.cpu import NUMPY_NAMES, SIMD_FLAGS, _numpy_features, cpu_info

REPO = Path(__file__).resolve().parents[1]


def test_model_and_flags(tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx_vnni amx_int8 avx2 "
                    "avx512f\n\nprocessor\t: 1\nmodel name\t: other\n")
    info = cpu_info(fake)
    detected = _numpy_features()
    assert info.model == "Example CPU 9000"
    assert {"avx_vnni", "amx_int8"} <= set(info.features)  # numpy does not know them: the flags line
    for flag, present in (detected or {}).items():  # numpy knows these: its detection wins
        assert (flag in info.features) == present, flag
    assert list(info.features) == [f for f in SIMD_FLAGS if f in info.features]
    assert info.int8_dot  # avx_vnni
    assert set(NUMPY_NAMES) <= set(SIMD_FLAGS)


def test_standalone_script_prints_one_line() -> None:
    """CI runs it with the system python before any environment exists."""
    out = subprocess.run([sys.executable, str(REPO / "runtime" / "cpu.py")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("CPU: ") and len(out.stdout.splitlines()) == 1

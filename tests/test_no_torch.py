"""The deployed side needs no PyTorch: in a fresh interpreter where `import torch` fails, every
`rsicrc.runtime` module imports, the Captioner captions a real pair, and the `rsicrc caption`
entry point runs; torch never reaches sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_runtime import tiny_model_dir

from conftest import LEVIRCC

SCRIPT = textwrap.dedent('''
    import importlib, json, pkgutil, sys
    from pathlib import Path

    class NoTorch:
        """Meta-path finder that makes torch (and everything under it) unimportable."""
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, NoTorch())
    model, before, after = sys.argv[1:4]

    import rsicrc.runtime
    imported = []
    for info in pkgutil.iter_modules(rsicrc.runtime.__path__):
        importlib.import_module(f"rsicrc.runtime.{info.name}")
        imported.append(info.name)

    from rsicrc.runtime import Captioner, DecodingOptions, ModelFolder, RuntimeOptions
    captioner = Captioner(ModelFolder.open(Path(model)), RuntimeOptions(device="cpu"))
    result = captioner.caption_files([(Path(before), Path(after))], DecodingOptions(beam_size=2))[0]

    from rsicrc.cli.main import main
    sys.argv = ["rsicrc", "caption", before, after, "--model", model, "--device", "cpu", "--beam", "2"]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    print(json.dumps({"caption": result.caption, "tokens": list(result.tokens), "cli_exit": code,
                      "imported": imported, "torch": [m for m in sys.modules if m.split(".")[0] == "torch"]}))
''')


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """A real LEVIR-CC sample pair when the shared data is there, else a synthetic one."""
    real = LEVIRCC / "samples"
    if (real / "A" / "train_000016.png").is_file():
        return real / "A" / "train_000016.png", real / "B" / "train_000016.png"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "before.png")
    image[10:30, 10:30] = 255
    Image.fromarray(image).save(tmp_path / "after.png")
    return tmp_path / "before.png", tmp_path / "after.png"


def test_runtime_and_cli_work_without_torch(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path_factory)
    before, after = _pair(tmp_path)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(before), str(after)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    *cli_lines, report_line = proc.stdout.strip().splitlines()
    report = json.loads(report_line)
    assert report["torch"] == []
    assert report["cli_exit"] == 0
    assert {"backend", "captioner", "pairs", "decoding", "images", "contract"} <= set(report["imported"])
    assert report["tokens"] and report["caption"]
    assert cli_lines == [report["caption"]]  # the CLI printed the same caption
    assert "Traceback" not in proc.stderr


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    """Guard against a test that cannot fail: the same finder makes a torch import fail."""
    install = "sys.meta_path.insert(0, NoTorch())"
    code = SCRIPT.split(install)[0] + install + "\nimport torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr

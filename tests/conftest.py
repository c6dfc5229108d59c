"""Shared fixtures: real LEVIR-CC reference data, tiny configs and a small synthetic dataset."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ../shared beside the checkout (CI lays it there); RSICRC_SHARED overrides.
SHARED = Path(os.environ.get("RSICRC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LEVIRCC = SHARED / "data" / "levircc"


@pytest.fixture(scope="session")
def levircc_dir() -> Path:
    if not (LEVIRCC / "LevirCCcaptions.json").is_file():
        pytest.skip(f"real LEVIR-CC reference data not found at {LEVIRCC}")
    return LEVIRCC


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic synthetic dataset shared by the whole session."""
    from rsicrc.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "data"
    return synthesize(out, pairs=40, seed=7, size=128)


@pytest.fixture(scope="session")
def small_synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 synthetic pairs at 64 px (the tiny model's size): train 14 (7 changed), val 2, test 4."""
    from rsicrc.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("small_synth") / "data", pairs=20, seed=5, size=64,
                      progress=False)


# --- a tiny exported model (random weights, captions that vary) ----------------------------------

WORDS = ("a", "road", "house", "houses", "built", "is", "are", "the", "scene", "same", "as", "before",
         "trees", "removed", "two", "at", "top", "of", "bottom", "left", "right", "new", "some", "near")
_CACHE: dict[str, Path] = {}


def tiny_model_dir(factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint (FACTORY_ROOT/ckpt) exported once per session to
    FACTORY_ROOT/model (shared by the runtime, CLI, no-torch, evaluation and int8 tests)."""
    if "model" not in _CACHE:
        import torch

        from rsicrc.checkpoint import save_checkpoint
        from rsicrc.config import Config, load_config
        from rsicrc.export.pipeline import export_model
        from rsicrc.model import RSICRC
        from rsicrc.vocab import SPECIAL_TOKENS, Vocabulary

        root = factory.mktemp("tiny_model")
        cfg = dataclasses.replace(load_config("tiny").model, image_size=64, max_len=14)
        vocab = Vocabulary(SPECIAL_TOKENS + WORDS)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: extra threads only cost (a lot, on a busy machine)
        try:
            torch.manual_seed(3)
            model = _varied(RSICRC(cfg, len(vocab)), vocab)
            save_checkpoint(root / "ckpt", model, Config(model=cfg), vocab, meta={})
            export_model(root / "ckpt", root / "model", progress=False)
        finally:
            torch.set_num_threads(threads)
        _CACHE["model"] = root / "model"
    return _CACHE["model"]


def _varied(model, vocab):
    """Make a random-weight model's captions differ between pairs and between steps (a fresh
    one says the same word everywhere): calibrate BatchNorm statistics on random pairs so the
    images matter, then fit the decoder for a few steps to one random sentence per pair."""
    import torch

    from rsicrc.data import encode_captions
    from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch

    spec = PreprocessSpec(size=model.cfg.image_size)
    before, after = (torch.from_numpy(preprocess_batch(x, spec)) for x in random_pairs(8, seed=99))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model.encode_images(before, after)
    model.eval()
    rng = np.random.default_rng(0)
    captions = [list(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(8)]
    tokens, lengths = encode_captions(vocab, captions, model.cfg.max_len)
    with torch.no_grad():
        memory, _ = model.encoder(before, after)
    mask = torch.arange(tokens.shape[1] - 1)[None] < (lengths - 1)[:, None]
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=5e-3)
    for _ in range(25):
        logits, _ = model.decoder(tokens, lengths, memory)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask], tokens[:, 1:][mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def random_pairs(n: int, seed: int = 0, size: int = 72) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Varied uint8 before/after pairs: smooth random fields plus noise, after = before + a patch."""
    rng = np.random.default_rng(seed)
    before, after = [], []
    for _ in range(n):
        base = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR))
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
        changed = img.copy()
        y, x = rng.integers(0, size // 2, size=2)
        changed[y: y + size // 3, x: x + size // 3] = rng.integers(0, 256, size=3)
        before.append(img)
        after.append(changed)
    return before, after


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny exported model folder; its checkpoint folder is `tiny_model.parent / "ckpt"`."""
    return tiny_model_dir(tmp_path_factory)


def open_captioner(model_dir: Path, **runtime):
    """A Captioner over an exported model folder; `runtime` are RuntimeOptions fields."""
    from rsicrc.runtime import Captioner, ModelFolder, RuntimeOptions

    return Captioner(ModelFolder.open(model_dir), RuntimeOptions(**runtime))


def open_text_encoder(model_dir: Path, **runtime):
    """The text-encoder graph of a model folder alone; `runtime` are RuntimeOptions fields."""
    from rsicrc.runtime import ModelFolder, RuntimeOptions, TextEncoder

    return TextEncoder(ModelFolder.open(model_dir), RuntimeOptions(**runtime))


def assert_one_line_error(result, *expected: str) -> str:
    """A CLI run failed the way users should see it: exit 2, one `error:` line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, err
    return err


def format1_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of an exported model folder as format 1 wrote it (before attention heatmaps): the
    decoder step without its `cross_attention` output (and the nodes only it needed), the
    manifest at format_version 1 with that contract and the decoder step's new sha256."""
    import shutil

    import onnx

    from rsicrc.export.onnx_export import drop_output
    from rsicrc.runtime.contract import CROSS_ATTENTION, DECODER_STEP, contract
    from rsicrc.runtime.manifest import load_manifest, sha256_file, write_manifest

    shutil.copytree(model_dir, dest)
    manifest = load_manifest(dest)
    path = dest / manifest.graphs["fp32"][DECODER_STEP].file
    proto = onnx.load(str(path))
    assert drop_output(proto, CROSS_ATTENTION) >= 1
    onnx.save(proto, str(path))
    entry = dataclasses.replace(manifest.graphs["fp32"][DECODER_STEP], sha256=sha256_file(path))
    graphs = {**manifest.graphs, "fp32": {**manifest.graphs["fp32"], DECODER_STEP: entry}}
    write_manifest(dest, dataclasses.replace(manifest, format_version=1, graphs=graphs,
                                             contract=contract(manifest.dims, attention=False)))
    return dest


@pytest.fixture(scope="session")
def format1_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model folder as a format-1 export (its decoder step has no cross_attention)."""
    return format1_copy(tiny_model, tmp_path_factory.mktemp("format1") / "model")

"""The torch-free runtime against the PyTorch reference: an exported tiny random-weight model is
captioned with ONNX Runtime and with `rsicrc.decode.generate` on the same preprocessed arrays;
tokens must agree exactly and scores/embeddings within 1e-4. Also: contract checks on loaded
graphs, device selection and listing many pairs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The tiny exported model and its helpers live in conftest.py (shared by several files); they are
# re-exported here because other test files import them from this module.
from conftest import WORDS, open_captioner, open_text_encoder, random_pairs, tiny_model_dir  # noqa: F401
from rsicrc.errors import ContractError, DataError, DeviceError, ModelFolderError
from rsicrc.runtime.contract import BATCH, DECODER_STEP, IMAGE_ENCODER, TensorSpec
from rsicrc.runtime.decoding import DecodingOptions, beam_search
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def captioner(model_dir: Path):
    return open_captioner(model_dir, device="cpu", threads=1)


@pytest.fixture(scope="module")
def torch_model(model_dir: Path):
    import torch

    from rsicrc.checkpoint import load_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and ORT runs with one too
    yield load_checkpoint(model_dir.parent / "ckpt").model
    torch.set_num_threads(threads)


def _torch_captions(torch_model, captioner, before, after, options: DecodingOptions):
    import torch

    from rsicrc.decode import generate

    spec = captioner.manifest.preprocess
    from rsicrc.runtime.preprocess import preprocess_batch

    b, a = preprocess_batch(before, spec), preprocess_batch(after, spec)
    results, visual = generate(torch_model, torch.from_numpy(b), torch.from_numpy(a), options)
    return b, a, results, visual.numpy()


@pytest.mark.parametrize("beam, ignore_eos", [(1, False), (3, False), (3, True)])
def test_ort_equals_pytorch_token_for_token(captioner, torch_model, beam: int, ignore_eos: bool) -> None:
    before, after = random_pairs(5, seed=beam + 10 * ignore_eos)
    options = DecodingOptions(beam_size=beam, ignore_eos=ignore_eos,
                              max_tokens=torch_model.cfg.max_len - 1)
    b, a, reference, _ = _torch_captions(torch_model, captioner, before, after, options)
    ours = captioner.caption_preprocessed(b, a, options)
    assert len(ours) == len(reference) == 5
    for got, ref in zip(ours, reference, strict=True):
        assert got.tokens == ref.best.tokens
        assert got.score == pytest.approx(ref.best.score, abs=1e-4)
        assert [s for _, s in got.beams] == pytest.approx([h.score for h in ref.beams], abs=1e-4)
        assert [c for c, _ in got.beams] == [captioner.model.vocab.decode(h.tokens) for h in ref.beams]
        assert len(got.beams) == beam
    tokens = [t for r in ours for t in r.tokens]
    assert len(set(tokens)) >= 5, "the random model should produce varied tokens"
    assert max(len(r.tokens) for r in ours) >= 4
    assert len({r.tokens for r in ours}) >= 2, "pairs should get different captions"
    if ignore_eos:
        assert all(len(r.tokens) == torch_model.cfg.max_len - 1 for r in ours)
    # caption_arrays (uint8 in) is the same computation as preprocessed-in.
    again = captioner.caption_arrays(before, after, options)
    assert [r.tokens for r in again] == [r.tokens for r in ours]


def test_embeddings_equal_pytorch(captioner, torch_model) -> None:
    import torch

    from rsicrc.data import encode_captions
    from rsicrc.vocab import tokenize

    before, after = random_pairs(3, seed=5)
    _, _, _, visual = _torch_captions(torch_model, captioner, before, after, DecodingOptions(beam_size=1))
    ours = captioner.embed_images(before, after)
    assert ours.shape == visual.shape == (3, torch_model.cfg.d_model)
    assert np.abs(ours - visual).max() <= 1e-4 * np.abs(visual).max()

    texts = ["Two houses are built at the top.", "the scene is the same as before", "a zebra crossing"]
    vocab = captioner.model.vocab
    tokens, lengths = encode_captions(vocab, [tokenize(t) for t in texts], torch_model.cfg.max_len)
    with torch.no_grad():
        reference = torch_model.encode_text(tokens, lengths).numpy()
    encoder = open_text_encoder(captioner.model.path, device="cpu", threads=1)
    text = encoder.embed(texts)
    assert text.shape == reference.shape
    assert np.abs(text - reference).max() <= 1e-4 * np.abs(reference).max()
    assert encoder.embed([]).shape == (0, torch_model.cfg.d_model)


def test_batch_equals_one_by_one(captioner) -> None:
    before, after = random_pairs(4, seed=21)
    options = DecodingOptions(beam_size=3)
    batch = captioner.caption_arrays(before, after, options)
    assert len({r.tokens for r in batch}) >= 2  # else a mix-up of rows could go unnoticed
    for i in range(4):
        (single,) = captioner.caption_arrays([before[i]], [after[i]], options)
        assert single.tokens == batch[i].tokens
        assert single.caption == batch[i].caption
        assert single.score == pytest.approx(batch[i].score, abs=1e-5)
    assert set(batch[0].timing_ms) >= {"load", "preprocess", "encode", "decode", "total"}
    assert batch[0].timing_ms is batch[3].timing_ms  # per batch, shared
    assert captioner.caption_arrays([], [], options) == []


def test_io_binding_step_equals_host_step(captioner) -> None:
    """BoundDecoderStep (the captioner's step, caches in fixed buffers) gives the same search
    as HostStepModel (fresh host arrays every step), beam reordering included."""
    from rsicrc.runtime.backend import BoundDecoderStep
    from rsicrc.runtime.captioner import preprocess_pairs
    from rsicrc.runtime.task import HostStepModel, tile_rows

    before, after = random_pairs(2, seed=8)
    encoded = captioner.graphs.encode(*preprocess_pairs(before, after, captioner.model.preprocess))
    options = captioner.task.options(DecodingOptions(beam_size=3))
    host = beam_search(HostStepModel(captioner.backend.run, captioner.dims, tile_rows(encoded.state, 3)), 2,
                       options)
    step = captioner.graphs.step_model(encoded.state, 3)
    assert isinstance(step, BoundDecoderStep)
    bound = beam_search(step, 2, options)
    assert [r.best.tokens for r in bound] == [r.best.tokens for r in host]
    assert [r.best.score for r in bound] == pytest.approx([r.best.score for r in host], abs=1e-5)
    # with attention: the same history through both (reordered with the beams)
    options = dataclasses.replace(options, attention=True)
    host = beam_search(HostStepModel(captioner.backend.run, captioner.dims, tile_rows(encoded.state, 3)), 2,
                       options)
    bound = beam_search(captioner.graphs.step_model(encoded.state, 3), 2, options)
    for got, want in zip(bound, host, strict=True):
        assert [h.tokens for h in got.beams] == [h.tokens for h in want.beams]
        for g, w in zip(got.beams, want.beams, strict=True):
            np.testing.assert_allclose(g.attention, w.attention, atol=1e-6, rtol=0)


def _teacher_forced_attention(torch_model, before: np.ndarray, after: np.ndarray, pair: int,
                              tokens: tuple[int, ...]) -> np.ndarray:
    """PyTorch's cross-attention for a given caption of one pair, the whole sequence at once
    (no cache, no search): float32 [len(tokens), N], row i while choosing tokens[i]."""
    import torch

    from rsicrc.vocab import START

    with torch.no_grad():
        memory, _, _ = torch_model.encode_images(torch.from_numpy(before[pair: pair + 1]),
                                                 torch.from_numpy(after[pair: pair + 1]))
        ids = torch.tensor([[START, *tokens]])  # [1, T + 1]
        forced = torch_model.decoder.cross_attention(ids, memory)[0].numpy()  # [T + 1, N]
    return forced[: len(tokens)]


@pytest.mark.parametrize("beam", [1, 3])
def test_beam_attention_equals_pytorch_teacher_forced(captioner, torch_model, beam: int) -> None:
    """Every finished beam's attention history from the ONNX Runtime search (IO binding, beams
    reordered) equals PyTorch's teacher-forced cross-attention of the same caption within 1e-5
    (fp32); its rows sum to 1; the caption is the same as without attention."""
    from rsicrc.runtime.captioner import preprocess_pairs

    before, after = random_pairs(4, seed=40 + beam)
    b, a = preprocess_pairs(before, after, captioner.model.preprocess)
    options = DecodingOptions(beam_size=beam, attention=True)
    encoded = captioner.graphs.encode(b, a)
    results = captioner.task.decode(encoded, options)
    plain = captioner.task.decode(encoded, dataclasses.replace(options, attention=False))
    assert results == plain  # attention rides along; tokens and scores unchanged
    n = captioner.dims.visual_tokens
    checked = 0
    for pair, result in enumerate(results):
        for hyp in result.beams:
            assert hyp.attention is not None and hyp.attention.shape == (len(hyp.tokens), n)
            np.testing.assert_allclose(hyp.attention.sum(axis=1), 1.0, atol=1e-5)
            want = _teacher_forced_attention(torch_model, b, a, pair, hyp.tokens)
            np.testing.assert_allclose(hyp.attention, want, atol=1e-5, rtol=0)
            checked += len(hyp.tokens)
    assert checked >= 8 and max(len(r.best.tokens) for r in results) >= 3
    spread = np.concatenate([h.attention for r in results for h in r.beams])
    assert spread.std(axis=1).min() > 0  # not uniform: some tokens get more attention than others
    # the captioner's result carries the best beam's attention
    best = captioner.caption_preprocessed(b, a, options)
    for got, result in zip(best, results, strict=True):
        assert got.tokens == result.best.tokens
        np.testing.assert_array_equal(got.attention, result.best.attention)
        assert len(got.to_dict(attention=True)["attention"]) == len(got.tokens)
        assert "attention" not in got.to_dict()


def test_pytorch_search_gives_the_same_attention(captioner, torch_model) -> None:
    """The PyTorch StepModel (rsicrc.decode) through the same search: same beams and attention."""
    before, after = random_pairs(3, seed=52)
    options = DecodingOptions(beam_size=3, attention=True)
    b, a, reference, _ = _torch_captions(torch_model, captioner, before, after, options)
    ours = captioner.task.decode(captioner.graphs.encode(b, a), options)
    for got, want in zip(ours, reference, strict=True):
        assert [h.tokens for h in got.beams] == [h.tokens for h in want.beams]
        for g, w in zip(got.beams, want.beams, strict=True):
            np.testing.assert_allclose(g.attention, w.attention, atol=1e-5, rtol=0)


def test_format_1_folder_captions_as_before(format1_model: Path, captioner) -> None:
    """A model folder exported before attention (format 1, no cross_attention output) loads and
    captions exactly as the same model exported now; asking it for attention is one clear error."""
    old = open_captioner(format1_model, device="cpu", threads=1)
    assert old.manifest.format_version == 1 and not old.has_attention and captioner.has_attention
    before, after = random_pairs(3, seed=61)
    options = DecodingOptions(beam_size=3)
    got, want = old.caption_arrays(before, after, options), captioner.caption_arrays(before, after, options)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-6)
    with pytest.raises(ModelFolderError, match="predates attention heatmaps.*format 1.*re-export") as info:
        old.caption_arrays(before, after, DecodingOptions(attention=True))
    assert "\n" not in str(info.value)


def test_edited_contract_is_refused(model_dir: Path) -> None:
    from rsicrc.runtime.backend import OrtBackend
    from rsicrc.runtime.manifest import load_manifest

    manifest = load_manifest(model_dir)
    spec = manifest.contract[DECODER_STEP]
    logits = TensorSpec("logits", "float32", (BATCH, manifest.dims.vocab_size + 1))
    edited = dataclasses.replace(spec, outputs=(logits, *spec.outputs[1:]))
    bad = dataclasses.replace(manifest, contract={**manifest.contract, DECODER_STEP: edited})
    backend = OrtBackend(ModelFolder(model_dir, bad), RuntimeOptions(device="cpu"))
    with pytest.raises(ContractError, match=r"decoder_step\.onnx.*logits"):
        backend.session(DECODER_STEP)
    renamed = dataclasses.replace(spec, inputs=(TensorSpec("tokens", "int64", (BATCH, 1)), *spec.inputs[1:]))
    bad = dataclasses.replace(manifest, contract={**manifest.contract, DECODER_STEP: renamed})
    with pytest.raises(ContractError, match=r"decoder_step\.onnx: inputs are"):
        OrtBackend(ModelFolder(model_dir, bad), RuntimeOptions(device="cpu")).session(DECODER_STEP)


def test_swapped_graph_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from rsicrc.runtime.backend import OrtBackend
    from rsicrc.runtime.manifest import load_manifest, sha256_file, write_manifest

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    manifest = load_manifest(copy)
    files = manifest.graphs[manifest.default_precision]
    shutil.copyfile(copy / files["text_encoder"].file, copy / files[IMAGE_ENCODER].file)
    with pytest.raises(ModelFolderError, match=r"image_encoder\.onnx"):  # the sha256 no longer matches
        open_captioner(copy, device="cpu")
    # the manifest edited to match the swapped file: the graph contract still refuses it
    swapped = sha256_file(copy / files[IMAGE_ENCODER].file)
    forged = {**files, IMAGE_ENCODER: dataclasses.replace(files[IMAGE_ENCODER], sha256=swapped)}
    write_manifest(copy, dataclasses.replace(manifest, graphs={manifest.default_precision: forged}))
    with pytest.raises(ContractError, match=r"image_encoder\.onnx: inputs are \['input_ids'"):
        OrtBackend(ModelFolder.open(copy), RuntimeOptions(device="cpu")).session(IMAGE_ENCODER)


def test_unknown_precision_device_and_threads(model_dir: Path) -> None:
    from rsicrc.errors import ConfigError
    from rsicrc.runtime.backend import OrtBackend
    from rsicrc.runtime.manifest import load_manifest

    folder = ModelFolder(model_dir, load_manifest(model_dir))
    with pytest.raises(ModelFolderError, match="available precisions: .*fp32"):
        OrtBackend(folder, RuntimeOptions(precision="fp8", device="cpu"))
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        RuntimeOptions(device="tpu")
    with pytest.raises(ConfigError, match="threads"):
        RuntimeOptions(device="cpu", threads=0)
    with pytest.raises(ConfigError, match="onnxruntime, trt"):
        RuntimeOptions(engine="tensorflow")


def _gpu_usable() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and (
        Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None)


def test_cuda_requested_without_gpu_is_a_device_error(model_dir: Path) -> None:
    if _gpu_usable():
        pytest.skip("a GPU is usable here")
    with pytest.raises(DeviceError, match=r"CUDA requested but ONNX Runtime could not use it .*--device cpu"):
        open_captioner(model_dir, device="cuda")
    assert open_captioner(model_dir, device="auto").device == "cpu"


@pytest.mark.requires_cuda
def test_cuda_captions_equal_cpu(model_dir: Path, captioner) -> None:
    if not _gpu_usable():
        pytest.skip("needs onnxruntime-gpu and an NVIDIA GPU")
    gpu = open_captioner(model_dir, device="cuda")
    assert gpu.device == "cuda"
    before, after = random_pairs(3, seed=4)
    options = DecodingOptions(beam_size=3)
    got = gpu.caption_arrays(before, after, options)
    want = captioner.caption_arrays(before, after, options)
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-3)


def test_missing_model_folder_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rsicrc.runtime import ModelFolder

    with pytest.raises(ModelFolderError, match=r"no model at .*nope; export one with `rsicrc export"):
        ModelFolder.open(tmp_path / "nope")
    monkeypatch.setenv("RSICRC_MODEL", str(tmp_path / "env-model"))
    with pytest.raises(ModelFolderError, match="env-model"):
        ModelFolder.open()


# --- list_pairs -----------------------------------------------------------------------------------

def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_pairs(1, seed, size=16)[0][0]).save(path)
    return path


def test_list_pairs_folder(tmp_path: Path) -> None:
    from rsicrc.runtime.pairs import list_pairs

    for name in ("b.png", "a.png", "c.tif"):
        _png(tmp_path / "A" / name)
        _png(tmp_path / "B" / name)
    (tmp_path / "A" / ".DS_Store").write_text("x")
    items = list_pairs(tmp_path)
    assert [i.id for i in items] == ["a.png", "b.png", "c.tif"]
    assert items[0].before == tmp_path / "A" / "a.png" and items[0].after == tmp_path / "B" / "a.png"
    _png(tmp_path / "A" / "only_a.png")
    _png(tmp_path / "B" / "only_b.png")
    with pytest.raises(DataError, match=r"2 image\(s\) without a partner: A/only_a.png \(no B/only_a.png\), "
                                        r"B/only_b.png"):
        list_pairs(tmp_path)
    with pytest.raises(DataError, match="--split applies only to a LEVIR-CC folder"):
        list_pairs(tmp_path, split="test")
    empty = tmp_path / "empty"
    (empty / "A").mkdir(parents=True)
    (empty / "B").mkdir()
    with pytest.raises(DataError, match="hold no image files"):
        list_pairs(empty)


def test_list_pairs_levircc(tmp_path: Path) -> None:
    from rsicrc.runtime.pairs import list_pairs

    entries = []
    for i, (split, name) in enumerate([("train", "train_000001.png"), ("test", "test_000002.png"),
                                       ("test", "test_000003.png")]):
        _png(tmp_path / "images" / split / "A" / name)
        _png(tmp_path / "images" / split / "B" / name)
        entries.append({"filepath": split, "filename": name, "imgid": i, "split": split, "changeflag": 1,
                        "sentences": [{"raw": "a road", "tokens": ["a", "road"], "imgid": i, "sentid": i}],
                        "sentids": [i]})
    (tmp_path / "LevirCCcaptions.json").write_text(json.dumps({"images": entries}))
    assert [i.id for i in list_pairs(tmp_path)] == ["train_000001.png", "test_000002.png", "test_000003.png"]
    test = list_pairs(tmp_path, split="test")
    assert [i.id for i in test] == ["test_000002.png", "test_000003.png"]
    assert test[0].before == tmp_path / "images" / "test" / "A" / "test_000002.png"
    with pytest.raises(DataError, match="unknown split 'dev'; choose one of train, val, test"):
        list_pairs(tmp_path, split="dev")
    with pytest.raises(DataError, match="no pairs in split 'val'"):
        list_pairs(tmp_path, split="val")
    os.remove(tmp_path / "images" / "test" / "B" / "test_000003.png")
    with pytest.raises(DataError, match=r"1 image file\(s\) not found: test_000003.png: .*B/test_000003.png"):
        list_pairs(tmp_path)


def test_list_pairs_csv(tmp_path: Path) -> None:
    from rsicrc.runtime.pairs import list_pairs

    _png(tmp_path / "imgs" / "x1.png")
    _png(tmp_path / "imgs" / "x2.png")
    absolute = _png(tmp_path / "elsewhere" / "y.png")
    csv_path = tmp_path / "lists" / "pairs.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(f"before,after,id\n../imgs/x1.png,../imgs/x2.png,first\n\n"
                        f"{absolute},../imgs/x1.png,second\n")
    items = list_pairs(csv_path)
    assert [i.id for i in items] == ["first", "second"]
    assert items[0].before.resolve() == (tmp_path / "imgs" / "x1.png").resolve()
    assert items[1].before == absolute
    no_id = tmp_path / "lists" / "noid.csv"
    no_id.write_text("After , Before\n../imgs/x2.png,../imgs/x1.png\n")
    (item,) = list_pairs(no_id)
    assert item.id == "1" and item.before.name == "x1.png" and item.after.name == "x2.png"

    def fails(text: str, pattern: str) -> None:
        bad = tmp_path / "lists" / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=pattern):
            list_pairs(bad)

    fails("../imgs/x1.png,../imgs/x2.png\n", "first line must be a header naming the columns before,after")
    fails("before,id\n../imgs/x1.png,a\n", "header naming the columns")
    fails("", "header naming the columns")
    fails("before,after\n", "lists no pairs")
    fails("before,after\n../imgs/x1.png,\n", "line 2: the after column is empty")
    fails("before,after\n../imgs/x1.png,../imgs/missing.png\n", r"not found: 1: .*missing.png")
    fails("before,after,id\n../imgs/x1.png,../imgs/x2.png,a\n../imgs/x2.png,../imgs/x1.png,a\n",
          "duplicate ids a")


def test_list_pairs_other_sources(tmp_path: Path) -> None:
    from rsicrc.runtime.pairs import list_pairs

    with pytest.raises(DataError, match="pairs source not found"):
        list_pairs(tmp_path / "missing")
    (tmp_path / "list.txt").write_text("a b\n")
    with pytest.raises(DataError, match="cannot list pairs from .*list.txt; give a folder with A/ and B/"):
        list_pairs(tmp_path / "list.txt")
    with pytest.raises(DataError, match="cannot list pairs"):
        list_pairs(tmp_path)

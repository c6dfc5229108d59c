"""Import checkpoints trained with the original RSICRC research code (DESIGN §10).

The original code saves a plain state dict (`model_best.pt` / `pytorch_model.bin`) next to a
flat `config.json` and a `levir_vocab.json` (`read_original_vocab` reads it as their code
writes it). This module reads the three, maps every tensor onto
our parameter names (splitting the decoder's packed q/k/v projections), checks that every key is
consumed and every shape fits, and writes one of our checkpoint folders. The imported model sets
`value_from_key` because the original encoder computed its attention values with `to_k`.

Every key of their `config.json` is honoured or refused (`model_config_from_original`): the
architecture keys, including the decoder switches `learnable`, `tie_embeddings` and `prenorm`, set
our ModelConfig; `fine_tune`, `s-transformers`, `s-threshold` and `fna` are read only by their
train.py / eval.py and are recorded, not used. Beyond their keys the file may carry `image_size`
(default 224) and, for tests and custom trunks, `backbone_layers` / `backbone_width` (default
RN50: [3, 4, 6, 3] and 64). Any other key is an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rsicrc.config import BackboneConfig, Config, ModelConfig
from rsicrc.errors import CheckpointError, ConfigError, VocabularyError
from rsicrc.vocab import SPECIAL_TOKENS, Vocabulary

log = logging.getLogger(__name__)

# The original trunk is an nn.Sequential of open_clip ModifiedResNet's children, in this order.
TRUNK_CHILDREN = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool",
                  "layer1", "layer2", "layer3", "layer4")
SUPPORTED_BACKBONES = {"RN50": ((3, 4, 6, 3), 64)}  # name -> (layers, width)
ARCH_INT_KEYS = ("d_model", "max_len", "encoder_layers", "decoder_layers", "num_heads", "h_dim", "a_dim")
# The original decoder's switches -> (our ModelConfig field, the original ICCModel's default).
ARCH_BOOL_KEYS = {"learnable": ("learned_positions", False), "tie_embeddings": ("tie_embeddings", True),
                  "prenorm": ("prenorm", False)}
# Keys only their train.py / eval.py read, with what they do there (none reaches the forward pass).
TRAINING_ONLY_KEYS = {
    "fine_tune": "which trunk stages train",
    "s-transformers": "the sentence model that finds false negatives and eval's relevant pairs",
    "s-threshold": "the sentence similarity of a false negative",
    "fna": "false-negative attraction in InfoNCE",
}
EXTENSION_KEYS = ("image_size", "backbone_layers", "backbone_width")  # ours, not in their file
KNOWN_KEYS = ("backbone", *ARCH_INT_KEYS, "dropout", *ARCH_BOOL_KEYS, *TRAINING_ONLY_KEYS, *EXTENSION_KEYS)
PE_KEY = "decoder.position_encoding.pe"  # their sin/cos buffer (learnable: false)
POS_EMB_KEY = "decoder.position_encoding.pos_emb.weight"  # their learned positions (learnable: true)
EMBED_KEY, HEAD_KEY = "decoder.tokens_embed.weight", "decoder.lm_head.weight"
SHOW = 5  # keys listed per kind of problem in an error message
# Ids 0-3 as the original's utils.get_{levir,dubai,clevr}_vocabulary write them; ours are SPECIAL_TOKENS.
ORIGINAL_SPECIALS = ("PAD", "START", "UNK", "END")

# Our name prefix -> the original's, first match wins (blocks and layers are handled by regex).
_PREFIXES = (
    ("encoder.proj.", "encoder.encoder.proj."),
    ("encoder.pos_col", "encoder.encoder_trans.h_embedding.weight"),
    ("encoder.pos_row", "encoder.encoder_trans.w_embedding.weight"),
    ("encoder.fuse.", "encoder.Conv1."),
    ("encoder.bottleneck.", "encoder.LN."),
    ("encoder.pool.norm.", "encoder.att_pool_norm."),
    ("encoder.pool.query", "encoder.img_queries"),
    ("encoder.pool.", "encoder.att_pool."),
    ("decoder.tokens_embed.", "decoder.tokens_embed."),
    ("decoder.head.", "decoder.lm_head."),  # untied head only
    ("decoder.pe", POS_EMB_KEY),  # learned positions only (else a buffer, not in our state dict)
)
_TRUNK = re.compile(r"^encoder\.trunk\.net\.(\w+?)\.(.+)$")
_BLOCK = re.compile(r"^encoder\.t([12])\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^decoder\.(uni|cross)\.(\d+)\.(.+)$")
_QKV = re.compile(r"^(self_attn|cross_attn)\.([qkv])_proj\.(weight|bias)$")


def original_key(ours: str) -> tuple[str, int | None]:
    """Our parameter name -> (the original's name, chunk index 0/1/2 of a packed q/k/v or None)."""
    if m := _TRUNK.match(ours):
        return f"encoder.encoder.net.{TRUNK_CHILDREN.index(m[1])}.{m[2]}", None
    if m := _BLOCK.match(ours):
        rest = re.sub(r"^feedforward\.", "feedforward.net.", m[3])
        return f"encoder.encoder_trans.selftrans.{m[2]}.{int(m[1]) - 1}.{rest}", None
    if m := _LAYER.match(ours):
        stack = "uni_decoder" if m[1] == "uni" else "cross_decoder"
        if q := _QKV.match(m[3]):
            return f"decoder.{stack}.{m[2]}.{q[1]}.in_proj_{q[3]}", "qkv".index(q[2])
        return f"decoder.{stack}.{m[2]}.{m[3]}", None
    for mine, theirs in _PREFIXES:
        if ours.startswith(mine):
            return theirs + ours[len(mine):], None
    raise ValueError(f"no original name for parameter {ours!r}")  # a model change this file missed


def expected_shapes(cfg: ModelConfig, vocab_size: int) -> dict[str, torch.Size]:
    """Our state dict's shapes for `cfg`, built on the meta device (no memory, no init cost)."""
    from rsicrc.model import RSICRC

    with torch.device("meta"):
        model = RSICRC(cfg, vocab_size)
    return {k: v.shape for k, v in model.state_dict().items()}


def _listing(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOW]) + (", ..." if len(items) > SHOW else "")
    return f"{len(items)} {kind} ({shown})"


def _check_positions(pe: Tensor, cfg: ModelConfig) -> None:
    """The original's sinusoid buffer must equal the table we regenerate (any [L,1,C]-like layout)."""
    from rsicrc.model.decoder import sinusoid_table

    table = pe.detach().float().squeeze()
    if table.dim() != 2 or table.shape[1] != cfg.d_model or table.shape[0] < cfg.max_len:
        raise CheckpointError(
            f"{PE_KEY} has shape {list(pe.shape)}; expected {cfg.max_len} or more positions of width "
            f"{cfg.d_model} (e.g. [L, 1, {cfg.d_model}] or [1, L, {cfg.d_model}])")
    delta = (table[: cfg.max_len] - sinusoid_table(cfg.max_len, cfg.d_model)).abs().max().item()
    if delta > 1e-4:
        raise CheckpointError(
            f"{PE_KEY} is not the standard interleaved sin/cos table (max |diff| {delta:.3g} over the "
            f"first {cfg.max_len} positions); only that position encoding can be imported")


def convert_state_dict(original: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Map an original RSICRC state dict onto our parameter names for `cfg`.

    Every original key must be consumed and every shape must fit, else CheckpointError listing
    the missing, unexpected and mismatched keys (original names). The vocabulary size is read
    from the token embedding. `cfg` must already have `value_from_key` set for parity.
    """
    state = dict(original)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    embed = state.get(EMBED_KEY, state.get(HEAD_KEY))
    if embed is None:
        raise CheckpointError(f"missing {EMBED_KEY}: not an original RSICRC state dict")
    if cfg.tie_embeddings:
        if EMBED_KEY in state and HEAD_KEY in state and not torch.equal(state[EMBED_KEY], state[HEAD_KEY]):
            raise CheckpointError(f"{HEAD_KEY} differs from {EMBED_KEY} but config.json has tie_embeddings: "
                                  f"true; set it to false if the model was trained untied")
        state.pop(HEAD_KEY, None)
        state[EMBED_KEY] = embed
    if cfg.learned_positions and PE_KEY in state:
        raise CheckpointError(f"the weights hold the sin/cos table {PE_KEY} but config.json has learnable: "
                              f"true; set it to false")
    if not cfg.learned_positions and POS_EMB_KEY in state:
        raise CheckpointError(f"the weights hold learned positions {POS_EMB_KEY} but config.json has "
                              f"learnable: false; set it to true")
    pe = state.pop(PE_KEY, None)  # a buffer we regenerate: checked, not copied

    ours = expected_shapes(cfg, int(embed.shape[0]))
    sources = {k: original_key(k) for k in ours}  # ours -> (original, chunk)
    wanted: dict[str, torch.Size] = {}  # original name -> expected original shape
    for key, (theirs, chunk) in sources.items():
        shape = ours[key]
        wanted[theirs] = torch.Size([3 * shape[0], *shape[1:]]) if chunk is not None else shape
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    mismatched = sorted(
        f"{k} {list(state[k].shape)} vs {list(s)}"
        for k, s in wanted.items()
        if k in state and (not isinstance(state[k], Tensor) or state[k].shape != s))
    if missing or unexpected or mismatched:
        parts = [_listing(kind, items) for kind, items in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                 if items]
        raise CheckpointError(f"the state dict does not fit the original RSICRC layout for this config: "
                              f"{'; '.join(parts)}")
    if pe is not None:
        _check_positions(pe, cfg)
    converted: dict[str, Tensor] = {}
    for key, (theirs, chunk) in sources.items():
        tensor = state[theirs] if chunk is None else state[theirs].chunk(3)[chunk]
        converted[key] = _own_storage(tensor)
    return converted


def _own_storage(t: Tensor) -> Tensor:
    """A tensor that alone covers its storage (safetensors refuses partial views, e.g. q of qkv)."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _int(data: dict[str, Any], key: str, where: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    return value


def _bool(data: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {json.dumps(value)}")
    return value


def model_config_from_original(data: Any, where: str = "config.json") -> tuple[ModelConfig, list[str]]:
    """The original flat config.json -> our ModelConfig (value_from_key on) and the training-only
    keys it holds (recorded, not used). Unknown keys and unsupported values are a ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; the original config.json keys are "
                          f"{', '.join(k for k in KNOWN_KEYS if k not in EXTENSION_KEYS)} "
                          f"(and ours: {', '.join(EXTENSION_KEYS)})")
    missing = [k for k in ("backbone", *ARCH_INT_KEYS) if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing architecture key(s) {', '.join(missing)}; "
                          f"needed: backbone, {', '.join(ARCH_INT_KEYS)}")
    backbone = data["backbone"]
    if not isinstance(backbone, str) or backbone not in SUPPORTED_BACKBONES:
        raise ConfigError(f"{where}: backbone {json.dumps(backbone)} is not supported (valid: "
                          f"{', '.join(SUPPORTED_BACKBONES)}; the original's ViT and torchvision trunks have "
                          f"no counterpart here)")
    layers, width = SUPPORTED_BACKBONES[backbone]
    if "backbone_layers" in data:
        raw = data["backbone_layers"]
        if not (isinstance(raw, list) and len(raw) == 4
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in raw)):
            raise ConfigError(f"{where}: backbone_layers must be a list of 4 positive integers, got {raw!r}")
        layers = tuple(raw)
    if "backbone_width" in data:
        width = _int(data, "backbone_width", where)
    dropout = data.get("dropout", 0.1)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float):
        raise ConfigError(f"{where}: dropout must be a number, got {dropout!r}")
    ints = {k: _int(data, k, where) for k in ARCH_INT_KEYS}
    switches = {field: _bool(data, key, default, where) for key, (field, default) in ARCH_BOOL_KEYS.items()}
    image_size = _int(data, "image_size", where) if "image_size" in data else 224
    # frozen_stages 2 (stem and layer1) is what their fine_tune: true trains; fine_tune: false froze
    # the whole trunk, which only matters to further training.
    cfg = ModelConfig(name=f"imported-{backbone.lower()}",
                      backbone=BackboneConfig(layers=layers, width=width, frozen_stages=2),  # type: ignore[arg-type]
                      dropout=float(dropout), image_size=image_size, value_from_key=True, **ints, **switches)
    return cfg.validate(), [k for k in TRAINING_ONLY_KEYS if k in data]


def read_original_config(path: Path) -> tuple[ModelConfig, dict[str, Any], list[str]]:
    """Read the original config.json -> (our ModelConfig, the raw JSON, training-only keys)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read original config {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    cfg, training_only = model_config_from_original(data, str(path))
    return cfg, data, training_only


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, so that a word written twice stays visible."""


def _shown(items: list[str]) -> str:
    return ", ".join(items[:SHOW]) + (", ..." if len(items) > SHOW else "")


def read_original_vocab(path: Path) -> Vocabulary:
    """The original {word: id} vocabulary file -> our Vocabulary with the file's ids kept.

    Their get_levir_vocabulary / get_dubai_vocabulary (and get_clevr_vocabulary) all write the
    kept words first, ids from 4 in value_counts() order, then PAD 0, START 1, UNK 2, END 3. Key
    order is free; the specials may also be spelled as ours (<NULL>, <START>, <UNK>, <END>) and
    are renamed to ours. Anything else wrong is one CheckpointError naming it.
    """
    where = f"vocabulary {path}"
    try:
        raw = json.loads(Path(path).read_text(), object_pairs_hook=_Pairs)
    except OSError as e:
        raise CheckpointError(f"cannot read {where}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(raw, _Pairs):
        raise CheckpointError(f"{where}: expected a JSON object {{word: id}}, got {type(raw).__name__}")
    twice = sorted(w for w, n in Counter(w for w, _ in raw).items() if n > 1)
    if twice:
        raise CheckpointError(f"{where}: word(s) written more than once: {_shown(twice)}")
    mapping: dict[str, int] = dict(raw)
    bad = [f"{w!r}: {i!r}" for w, i in mapping.items() if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
        raise CheckpointError(f"{where}: ids must be integers; got {_shown(bad)}")
    problems, rename = [], {}
    for want, (theirs, ours) in enumerate(zip(ORIGINAL_SPECIALS, SPECIAL_TOKENS, strict=True)):
        present = [name for name in (theirs, ours) if name in mapping]
        if not present:
            problems.append(f"{theirs} (or {ours}) is missing")
        elif len(present) == 2:
            problems.append(f"both {theirs} and {ours} are present")
        elif mapping[present[0]] != want:
            problems.append(f"{present[0]} has id {mapping[present[0]]}, expected {want}")
        else:
            rename[present[0]] = ours
    if problems:
        raise CheckpointError(f"{where}: special tokens must be PAD 0, START 1, UNK 2, END 3 (or <NULL>, "
                              f"<START>, <UNK>, <END>): {'; '.join(problems)}")
    by_id: dict[int, list[str]] = {}
    for word, i in mapping.items():
        by_id.setdefault(i, []).append(word)
    shared = [f"id {i} ({', '.join(repr(w) for w in ws)})" for i, ws in sorted(by_id.items()) if len(ws) > 1]
    if shared:
        raise CheckpointError(f"{where}: duplicate ids: {_shown(shared)}")
    n = len(mapping)
    gaps = [str(i) for i in range(n) if i not in by_id]
    if gaps:
        outside = [str(i) for i in sorted(by_id) if not 0 <= i < n]
        raise CheckpointError(f"{where}: ids must run 0..{n - 1} without gaps; missing {_shown(gaps)}; "
                              f"out of range {_shown(outside)}")
    try:
        return Vocabulary(tuple(rename.get(by_id[i][0], by_id[i][0]) for i in range(n)))
    except VocabularyError as e:
        raise CheckpointError(f"{where}: {e}") from None


def load_original_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load with weights_only=True only; a wrapping {"state_dict"|"model": ...} is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"original weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors all mean an unusable file
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refused: it pickles a Python object ({found[1]}) and original weights are only "
                f"loaded with torch.load(weights_only=True); re-save just model.state_dict()") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read original weights {path}: {first}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    bad = sorted(str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor)))
    if bad:
        raise CheckpointError(f"{path}: not a plain state dict; non-tensor entries: {', '.join(bad[:SHOW])}")
    return state


def _check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise CheckpointError(f"output {out} already exists and is not an empty folder; choose a new path")


def import_original(weights: Path, config: Path, vocab: Path, out: Path) -> Path:
    """Convert an original RSICRC checkpoint into our checkpoint folder `out` and return its path.

    The folder is assembled beside `out` and renamed into place, so a failure leaves nothing.
    """
    from rsicrc.checkpoint import save_checkpoint
    from rsicrc.model import RSICRC

    weights, out = Path(weights), Path(out)
    _check_out(out)
    cfg, raw_config, training_only = read_original_config(Path(config))
    if training_only:
        log.info("original config: %s only affect training (%s); recorded in training.json, not used",
                 ", ".join(training_only), "; ".join(f"{k}: {TRAINING_ONLY_KEYS[k]}" for k in training_only))
    words = read_original_vocab(Path(vocab))
    converted = convert_state_dict(load_original_state_dict(weights), cfg)
    rows = converted[EMBED_KEY].shape[0]
    if rows != len(words):
        raise CheckpointError(f"vocabulary {vocab} has {len(words)} entries but the weights embed {rows} "
                              f"tokens; use the levir_vocab.json the model was trained with")
    with torch.device("meta"):  # skip the random init of up to 350 M weights we overwrite anyway
        model = RSICRC(cfg, len(words))
    # assign=True adopts the converted tensors. The model only exists to be saved here: its
    # non-persistent buffer (the regenerated position table) stays on meta and is not written.
    model.load_state_dict(converted, strict=True, assign=True)
    meta = {"imported_from": {"weights": str(weights.resolve()), "config": str(Path(config).resolve()),
                              "vocab": str(Path(vocab).resolve())},
            "original_config": raw_config, "training_only_config_keys": training_only,
            "note": "original RSICRC research-code weights; value_from_key reproduces its encoder"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is not
    try:
        save_checkpoint(tmp, model.eval(), Config(model=cfg), words, meta)
        _check_out(out)
        if out.is_dir():
            out.rmdir()  # empty (checked above); os.replace needs the name free
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %s (%s, d_model %d, vocabulary %d) -> %s", weights.name, cfg.name, cfg.d_model,
             len(words), out)
    return out

"""An exported model folder, opened once: where it is, its manifest, and its graph files checked
against the manifest's sha256 when (and only when) a job opens them. Torch-free.

    folder = ModelFolder.open(path)                  # None: $RSICRC_MODEL or the default folder
    backend = folder.backend(options, (IMAGE_ENCODER, DECODER_STEP))   # only the graphs a job needs

Captioning opens the image encoder and the decoder step, indexing the image encoder, search the
text encoder: a graph nobody runs is neither hashed nor loaded (the paper model's decoder step is
441 MB). A graph is hashed once per process, and not at all while it is the file a previous load
verified (`rsicrc.runtime.load_cache`); `rsicrc verify` and `load_manifest(verify=True)` hash every
listed file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from rsicrc.errors import ModelFolderError
from rsicrc.files import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS, MANIFEST_FILE
from rsicrc.runtime.contract import GRAPHS, Dims
from rsicrc.runtime.load_cache import FolderCache
from rsicrc.runtime.manifest import ENGINE_DIR, Manifest, default_model_dir, load_manifest, sha256_file
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import Vocabulary

if TYPE_CHECKING:
    from rsicrc.runtime.backend import Backend

SPECIAL_KEYS: tuple[str, ...] = ("pad", "start", "end")


def resolve_model_dir(model_dir: Path | None) -> Path:
    """The model folder to use; a clear error saying how to get one if there is none."""
    path = default_model_dir() if model_dir is None else Path(model_dir)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        raise ModelFolderError(
            f"no model at {path}; export one with `rsicrc export CKPT_DIR --out {path}` or pass --model"
        )
    if not path.is_dir():
        raise ModelFolderError(f"{path} is not a model folder (expected a folder with {MANIFEST_FILE})")
    return path


def folder_kind(path: Path) -> str:
    """"model" for an exported model folder, "checkpoint" for a checkpoint folder, told apart by
    their files alone (so a model folder never needs torch). Raises ModelFolderError otherwise."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return "model"
    if (path / CHECKPOINT_WEIGHTS).is_file() and (path / CHECKPOINT_CONFIG).is_file():
        return "checkpoint"
    raise ModelFolderError(
        f"{path} is neither an exported model folder ({MANIFEST_FILE} + .onnx graphs, from `rsicrc export`) "
        f"nor a checkpoint folder ({CHECKPOINT_WEIGHTS} + {CHECKPOINT_CONFIG}, from rsicrc-train)")


@dataclass(frozen=True)
class FileCheck:
    """One listed file hashed by `ModelFolder.verify_all`."""

    what: str  # "fp32 image_encoder", "engine fp16 decoder_step", ...
    path: str  # the file
    expected: str  # sha256 in the manifest
    actual: str | None  # sha256 of the file now (None: missing)

    @property
    def ok(self) -> bool:
        return self.actual == self.expected

    def to_dict(self) -> dict[str, object]:
        return {"what": self.what, "path": self.path, "ok": self.ok, "expected": self.expected,
                "actual": self.actual}


@dataclass(frozen=True)
class ModelFolder:
    """A model folder and its parsed manifest (every listed file present; hashes checked lazily)."""

    path: Path  # the folder
    manifest: Manifest  # its manifest.json, strictly parsed and consistent
    # (precision, graph) pairs whose file matched its sha256 in this process: hashed once each
    _verified: set[tuple[str, str]] = field(default_factory=set, compare=False, repr=False)

    @cached_property
    def cache(self) -> FolderCache:
        """Verified-file records and optimized graphs kept between processes (load_cache)."""
        return FolderCache(self.path)

    @classmethod
    def open(cls, path: Path | None = None) -> ModelFolder:
        """Resolve (None: the default folder), read and check the manifest; graphs are hashed when
        a job opens them. Raises ModelFolderError saying how to get a model where there is none."""
        folder = resolve_model_dir(path)
        return cls(folder, load_manifest(folder, verify=False))

    @property
    def dims(self) -> Dims:
        return self.manifest.dims

    @property
    def max_len(self) -> int:
        return self.manifest.max_len

    @property
    def preprocess(self) -> PreprocessSpec:
        return self.manifest.preprocess

    @cached_property
    def vocab(self) -> Vocabulary:
        return self.manifest.vocabulary()

    @cached_property
    def special(self) -> dict[str, int]:
        """The pad, start and end token ids."""
        return {key: int(self.manifest.special_ids[key]) for key in SPECIAL_KEYS}

    def precision(self, requested: str | None) -> str:
        """`requested`, or the manifest's default; ModelFolderError naming the ones it has."""
        precision = requested or self.manifest.default_precision
        if precision not in self.manifest.graphs:
            raise ModelFolderError(f"{self.path} has no {precision!r} graphs; available precisions: "
                                   f"{', '.join(sorted(self.manifest.graphs))}")
        return precision

    def resolve(self, options: RuntimeOptions) -> RuntimeOptions:
        """The options with the precision filled in (the manifest's default when None)."""
        if options.engine == "trt":  # engines are built per precision; their records say which
            return replace(options, precision=options.precision or "fp32")
        return replace(options, precision=self.precision(options.precision))

    def graph_file(self, precision: str, graph: str) -> Path:
        """The graph's file, its sha256 checked against the manifest: once per process, and not
        at all while the file is the one a previous load verified (same identity, load_cache)."""
        files = self.manifest.graphs.get(precision, {})
        if graph not in GRAPHS or graph not in files:
            raise ModelFolderError(f"{self.path}: the manifest lists no {precision} {graph} graph")
        path, digest = self.path / files[graph].file, files[graph].sha256
        if (precision, graph) not in self._verified:
            if not self.cache.is_verified(path, digest):
                if sha256_file(path) != digest:
                    raise ModelFolderError(f"{path}: sha256 differs from the manifest (file changed after "
                                           "export); re-export the model")
                self.cache.mark_verified(path, digest)
            self._verified.add((precision, graph))
        return path

    def verify_all(self) -> list[FileCheck]:
        """Hash every file the manifest lists (every precision's graphs and the TensorRT engines),
        whatever the cache says; files that match are recorded as verified (`rsicrc verify`)."""
        listed = [(f"{p} {g}", self.path / f.file, f.sha256) for p, files in self.manifest.graphs.items()
                  for g, f in files.items()]
        listed += [(f"engine {e.precision} {e.graph}", self.path / ENGINE_DIR / e.file, e.sha256)
                   for e in self.manifest.engines]
        checks = []
        for what, path, digest in listed:
            actual = sha256_file(path) if path.is_file() else None
            if actual == digest:
                self.cache.mark_verified(path, digest)
            checks.append(FileCheck(what, str(path), digest, actual))
        return checks

    def backend(self, options: RuntimeOptions, graphs: Sequence[str] = ()) -> Backend:
        """A backend for these options with `graphs` opened (hashed, loaded, checked against the
        contract) now, so that errors and load cost come up front; other graphs open on first use."""
        from rsicrc.runtime.backend import open_backend

        backend = open_backend(self, self.resolve(options))
        for graph in graphs:
            backend.session(graph)
        return backend

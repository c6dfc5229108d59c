"""Caption every changed place of a scene pair: the tile loop behind `rsicrc scene`.

    caption_scene(before, after, out, SceneOptions(...)) -> SceneReport

Rasters are opened and checked first (bad input fails before the model loads), the tiles are
declared once on the before grid, the 8-bit stretch is fitted once, then tiles are read and
encoded in batches. Only the tiles the change gate lets through are decoded (every tile with
`all_tiles`); with `query` every tile is only ranked by similarity to the text and the top k
are captioned at the end. Ctrl-C stops the loop and writes what is done (`complete: false`).
Memory holds one batch of pixels and the results, never the scene.
"""

from __future__ import annotations

import heapq
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rsicrc.runtime.scene.features import Georeference, TileResult, feature_collection
from rsicrc.runtime.scene.gate import ChangeGate, build_gate, is_no_change
from rsicrc.runtime.scene.grid import Tile, check_tile, tile_grid
from rsicrc.runtime.scene.heat import HeatLayer
from rsicrc.runtime.scene.model import SceneModel
from rsicrc.runtime.scene.options import SceneOptions, SceneReport
from rsicrc.runtime.scene.output import check_output, write_features
from rsicrc.runtime.scene.quicklook import write_quicklook
from rsicrc.runtime.scene.radiometry import SceneStretch, fit_stretch
from rsicrc.runtime.scene.source import ScenePair

log = logging.getLogger("rsicrc.scene")
T = TypeVar("T")
COUNTS = ("tiles", "processed", "skipped_nodata", "gate_unchanged", "decoded", "changed", "features")


class _Timer:
    """Seconds spent per stage, summed."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    def __call__(self, key: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.s[key] = self.s.get(key, 0.0) + time.perf_counter() - start


class _TileLoop:
    """Reads, encodes, gates and decodes the tiles batch by batch; keeps only the results."""

    def __init__(self, scene: ScenePair, model: SceneModel, stretch: SceneStretch, options: SceneOptions,
                 timer: _Timer) -> None:
        self.scene, self.model, self.stretch, self.options, self.timer = scene, model, stretch, options, timer
        self.counts = dict.fromkeys(COUNTS, 0)
        self.results: list[TileResult] = []
        self.hits: list[tuple[float, int, Tile]] = []  # --query: min-heap of (similarity, -index, tile)
        self.gate: ChangeGate | None = None
        self.heat: HeatLayer | None = None  # --heat: every processed tile's score, on the scene grid
        if options.heat is not None:
            self.heat = HeatLayer(scene.alignment.window, "query" if options.query is not None else "gate")
        self.query: np.ndarray | None = None  # [C] L2-normalised
        if options.query is not None:
            self.query = timer("embed_text", lambda: model.embed_text([options.query])[0])  # type: ignore[list-item]
        else:
            self.gate = timer("embed_text", lambda: build_gate(model.embed_text, options.gate_margin))

    def _pixels(self, tiles: Sequence[Tile]) -> tuple[list[Tile], np.ndarray, np.ndarray]:
        """The tiles with enough data, preprocessed: (tiles, before [b, 3, S, S], after [b, 3, S, S])."""
        pixels = self.timer("read", lambda: [self.scene.read(t.window) for t in tiles])
        keep = [i for i, p in enumerate(pixels) if 1.0 - float(p.valid.mean()) <= self.options.max_nodata]
        self.counts["skipped_nodata"] += len(tiles) - len(keep)
        arrays = self.timer("stretch", lambda: [self.stretch.apply(pixels[i]) for i in keep])
        before = self.timer("preprocess", lambda: self.model.preprocess([a[0] for a in arrays]))
        after = self.timer("preprocess", lambda: self.model.preprocess([a[1] for a in arrays]))
        return [tiles[i] for i in keep], before, after

    def batch(self, tiles: Sequence[Tile]) -> None:
        kept, before, after = self._pixels(tiles)
        if not kept:
            return
        encoded = self.timer("encode", lambda: self.model.encode(before, after))
        self.counts["processed"] += len(kept)
        if self.query is not None:
            for tile, similarity in zip(kept, encoded.embedding @ self.query, strict=True):
                if self.heat is not None:
                    self.heat.paint(tile, float(similarity))
                item = (float(similarity), -tile.index, tile)
                if len(self.hits) < self.options.top_k:
                    heapq.heappush(self.hits, item)
                elif item[:2] > self.hits[0][:2]:
                    heapq.heapreplace(self.hits, item)
            return
        assert self.gate is not None  # set whenever there is no query
        scores = self.gate.scores(encoded.embedding)  # [b]
        passed = scores <= self.gate.margin  # [b]
        if self.heat is not None:
            for tile, score in zip(kept, scores, strict=True):
                self.heat.paint(tile, -float(score))
        self.counts["gate_unchanged"] += int((~passed).sum())
        rows = np.arange(len(kept)) if self.options.all_tiles else np.flatnonzero(passed)
        captions = self.timer("decode", lambda: self.model.caption(encoded.take(rows), self.options.decoding))
        found = [TileResult(kept[r], c.caption, c.score, c.beams, not is_no_change(c.caption),
                            float(scores[r])) for r, c in zip(rows, captions, strict=True)]
        self.counts["decoded"] += len(found)
        self.counts["changed"] += sum(r.changed for r in found)
        self.results.extend(r for r in found if r.changed or self.options.all_tiles)

    def run(self, tiles: Sequence[Tile]) -> bool:
        """Every tile, in batches; False when Ctrl-C stopped it (what was done is kept)."""
        from tqdm import tqdm

        size = self.options.batch_size
        with tqdm(total=len(tiles), unit="tile", desc="scene", file=sys.stderr, dynamic_ncols=True,
                  disable=not self.options.progress) as bar:
            try:
                for start in range(0, len(tiles), size):
                    self.batch(tiles[start: start + size])
                    bar.update(len(tiles[start: start + size]))
                    bar.set_postfix(changed=self.counts["changed"], refresh=False)
            except KeyboardInterrupt:
                return False
        return True

    def ranked(self, complete: bool) -> list[TileResult]:
        """--query: the hits, best first, captioned (not when interrupted: no more work after Ctrl-C)."""
        hits = sorted(self.hits, key=lambda h: (-h[0], -h[1]))
        results = []
        for start in range(0, len(hits), self.options.batch_size):
            chunk = hits[start: start + self.options.batch_size]
            captions: list[Any] = [None] * len(chunk)
            if complete:
                _, before, after = self._pixels([h[2] for h in chunk])
                encoded = self.timer("encode", lambda b=before, a=after: self.model.encode(b, a))
                rows = np.arange(len(chunk))
                captions = self.timer("decode", lambda e=encoded, r=rows: self.model.caption(
                    e.take(r), self.options.decoding))
            for k, ((similarity, _, tile), c) in enumerate(zip(chunk, captions, strict=True)):
                changed = c is not None and not is_no_change(c.caption)
                results.append(TileResult(tile, c.caption if c else None, c.score if c else None,
                                          c.beams if c else (), changed, None, similarity, start + k + 1))
                self.counts["decoded"] += c is not None
                self.counts["changed"] += changed
        return results


def _area_km2(scene: ScenePair, share: float) -> float | None:
    """Ground area of the processed window times the share of tiles processed (metric CRS only)."""
    crs = scene.before.crs
    metric = crs is not None and crs.is_projected and crs.linear_units in ("metre", "meter")
    if not scene.alignment.georeferenced or not metric:
        return None
    t, w = scene.before.transform, scene.alignment.window
    return abs(t.a * t.e - t.b * t.d) * w.width * w.height * share / 1e6


def _meta(scene: ScenePair, model: SceneModel, options: SceneOptions, tiles: list[Tile], tile: int,
          overlap: int, stretch: SceneStretch, counts: dict[str, int], complete: bool) -> dict[str, Any]:
    from rsicrc import __version__

    geo = scene.alignment.georeferenced
    query = None if options.query is None else {
        "text": options.query, "top_k": options.top_k, "unknown_words": model.unknown_words(options.query)}
    return {
        "inputs": {"before": str(Path(scene.shown[0]).resolve()),
                   "after": str(Path(scene.shown[1]).resolve()),
                   "bands": list(options.bands) if options.bands else None},
        "model": model.identity(),
        "source_crs": scene.before.crs.to_string() if geo else None,
        "source_transform": list(scene.before.transform)[:6] if geo else None,
        "alignment": scene.alignment.to_dict(),
        "tiles": {"size": tile, "overlap": overlap, "rows": tiles[-1].row + 1, "cols": tiles[-1].col + 1,
                  "max_nodata": options.max_nodata},
        "decoding": {"beam": options.decoding.beam_size, "length_penalty": options.decoding.length_penalty},
        "gate": {"method": "visual embedding: cosine to embedded no-change vs change sentences",
                 "margin": options.gate_margin, "decodes": "all tiles" if options.all_tiles or query
                 else "tiles the gate calls changed"},
        "query": query,
        "stretch": stretch.to_dict(),
        "counts": counts,
        "complete": complete,
        "rsicrc_version": __version__,
    }


def caption_scene(before: Path, after: Path, out: Path, options: SceneOptions | None = None) -> SceneReport:
    """Caption the changed tiles of a scene pair into `out` (GeoJSON or GeoPackage); see the module doc."""
    options = options or SceneOptions()
    out = check_output(out, "--out")
    quicklook = check_output(options.quicklook, "--quicklook") if options.quicklook is not None else None
    heat = check_output(options.heat, "--heat") if options.heat is not None else None
    timer = _Timer()
    began = time.perf_counter()
    with timer("open", lambda: ScenePair(before, after, options.bands)) as scene:
        model = timer("load_model", lambda: SceneModel(options.model_dir, options.runtime))
        tile, overlap = check_tile(options.tile, options.overlap, model.input_size)
        tiles = tile_grid(scene.alignment.window, tile, overlap)
        stretch = timer("fit_stretch", lambda: fit_stretch(scene))
        loop = _TileLoop(scene, model, stretch, options, timer)
        log.info(scene.alignment.describe())  # only now: bad input stays a single error line
        log.info(f"captioning {len(tiles)} tiles of {tile} px (overlap {overlap})")
        start = time.perf_counter()
        complete = loop.run(tiles)
        results = loop.ranked(complete) if options.query is not None else loop.results
        timer.s["tiles"] = time.perf_counter() - start
        counts = {**loop.counts, "tiles": len(tiles), "features": len(results)}
        crs = scene.before.crs if scene.alignment.georeferenced else None
        geo = Georeference(crs, scene.before.transform)
        meta = _meta(scene, model, options, tiles, tile, overlap, stretch, counts, complete)
        collection = feature_collection(results, geo, meta)
        timer("write", lambda: write_features(out, collection, options.format))
        if quicklook is not None:
            timer("write", lambda: write_quicklook(quicklook, scene, stretch, results))
        if heat is not None and loop.heat is not None:
            tags = {"model": json.dumps(meta["model"]), "complete": str(complete).lower(),
                    "gate_margin": str(options.gate_margin), "query": options.query or ""}
            timer("write", lambda: loop.heat.write(heat, crs, scene.before.transform, tags))  # type: ignore[union-attr]
        area = _area_km2(scene, counts["processed"] / len(tiles))
    timer.s["total"] = time.perf_counter() - began
    return SceneReport(out, quicklook, complete, counts, dict(timer.s), area, scene.alignment.describe(),
                       heat)

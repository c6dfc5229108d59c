"""A list of scene pairs (`rsicrc scene --list scenes.csv`): each scene captioned into its own
features file, as `rsicrc scene` would, here or on a Ray cluster (`--cluster ray[:ADDRESS]`).

The list is a CSV whose first line names its columns (LIST_COLUMNS; order free, case ignored):
    before   the before raster (required)
    after    the after raster (required)
    out      the features file to write (optional: default OUT_FOLDER/ID.geojson, or .gpkg with
             --format gpkg); a .gpkg name is written as GeoPackage unless --format says otherwise
    id       a name for the scene in messages and default file names (optional: the row number)
Relative paths are read from the CSV's folder. Every row is checked before anything runs: both
rasters open and overlap, outputs are distinct and writable, the tile fits the model.

One scene is one unit of work (`rsicrc.runtime.cluster.execute`): a worker loads the model once,
opens the rasters itself (every node sees the paths: a shared file system) and sends back the
FeatureCollection; the driver (this process) alone writes each file, atomically, as scenes come
back. Locally the same job runs in this process, the model loaded once for the whole list.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rsicrc.errors import DataError, RsicrcError
from rsicrc.runtime.cluster import ClusterOptions, execute, preflight, worker_runtime
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.scene.grid import check_tile
from rsicrc.runtime.scene.model import SceneModel
from rsicrc.runtime.scene.options import SceneOptions
from rsicrc.runtime.scene.output import check_format, check_output, write_features
from rsicrc.runtime.scene.run import COUNTS, SceneRun, _Timer, run_scene
from rsicrc.runtime.scene.source import ScenePair

LIST_COLUMNS = ("before", "after", "out", "id")  # before and after required
EXTENSIONS = {"geojson": ".geojson", "gpkg": ".gpkg"}  # default file name per format (output.FORMATS)


@dataclass(frozen=True)
class SceneRow:
    """One scene of the list, paths absolute (workers run in other folders)."""

    id: str  # the row's id, or its row number
    line: int  # line of the CSV (for messages)
    before: Path  # before raster
    after: Path  # after raster
    out: Path  # features file to write
    format: str  # one of FORMATS

    def where(self, source: Path) -> str:
        return f"{source} line {self.line} (scene {self.id})"


def _cells(source: Path) -> list[tuple[int, list[str]]]:
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the scene list {source}: {e}") from None
    return [(n, row) for n, row in rows if any(cell.strip() for cell in row)]  # blank lines do not count


def read_scene_list(source: Path, out_folder: Path | None, fmt: str | None) -> list[SceneRow]:
    """The rows of a scene list (module docstring), checked: DataError naming the line otherwise.
    `out_folder` takes the rows without an `out`; `fmt` (--format) overrides the file names' suffix."""
    source = Path(source)
    if not source.is_file():
        raise DataError(f"scene list not found: {source}; give a CSV with the header before,after[,out][,id]")
    rows = _cells(source)
    header = [h.strip().lower() for h in rows[0][1]] if rows else []
    unknown = [h for h in header if h not in LIST_COLUMNS]
    if "before" not in header or "after" not in header or unknown or len(set(header)) != len(header):
        raise DataError(f"{source}: the first line must name the columns before,after[,out][,id] "
                        f"(each once); found {','.join(header) or 'nothing'}")
    if len(rows) < 2:
        raise DataError(f"{source}: the list names no scenes (only a header)")
    col = {name: header.index(name) for name in header}
    listed: list[SceneRow] = []
    for number, (line, cells) in enumerate(rows[1:], start=1):
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
            raise DataError(f"{source} line {line}: {len(cells)} values for {len(header)} columns")
        value = {k: (cells[i].strip() if i < len(cells) else "") for k, i in col.items()}
        ident = value.get("id") or str(number)
        for key in ("before", "after"):
            if not value[key]:
                raise DataError(f"{source} line {line}: the {key} column is empty")
        before, after = (source.parent / Path(value[k]).expanduser() for k in ("before", "after"))
        if value.get("out"):
            out = source.parent / Path(value["out"]).expanduser()
        elif out_folder is None:
            raise DataError(f"{source} line {line}: no out for scene {ident}; fill the out column or give "
                            "--out FOLDER for the rows without one")
        elif "/" in ident or "\\" in ident or ident.startswith("."):
            raise DataError(f"{source} line {line}: the id {ident!r} cannot name a file in --out; give "
                            "the row an out path, or an id without / and no leading dot")
        else:
            out = Path(out_folder) / f"{ident}{EXTENSIONS[fmt or 'geojson']}"
        chosen = fmt or ("gpkg" if out.suffix.lower() == ".gpkg" else "geojson")
        listed.append(SceneRow(ident, line, before.resolve(), after.resolve(), out.resolve(), chosen))
    _check_unique(source, listed)
    return listed


def _check_unique(source: Path, rows: Sequence[SceneRow]) -> None:
    for what, key in (("id", lambda r: r.id), ("output", lambda r: str(r.out))):
        first: dict[str, SceneRow] = {}
        for row in rows:
            if key(row) in first:
                raise DataError(f"{source} line {row.line}: the same {what} as line {first[key(row)].line} "
                                f"({key(row)}); each scene needs its own")
            first[key(row)] = row
    missing = [f"line {r.line}: {p}" for r in rows for p in (r.before, r.after) if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{source}: {len(missing)} raster(s) not found: {', '.join(missing[:3])}{more}")


def check_scenes(source: Path, rows: Sequence[SceneRow], options: SceneOptions, folder: ModelFolder,
                 out_folder: Path | None) -> None:
    """Everything a run could fail on before its first tile, for every row: formats, the tile size
    against the model, both rasters open and align, outputs writable. Creates `out_folder` (last)."""
    for fmt in sorted({r.format for r in rows}):
        check_format(fmt)
    check_tile(options.tile, options.overlap, folder.preprocess.size)
    for row in rows:
        if row.out in (row.before, row.after):
            raise DataError(f"{row.where(source)}: the output {row.out} is one of its rasters")
        try:
            with ScenePair(row.before, row.after, options.bands):
                pass
        except RsicrcError as e:
            raise type(e)(f"{row.where(source)}: {e}") from None
    folder_rows = [r for r in rows if out_folder is not None and r.out.parent == Path(out_folder).resolve()]
    _check_outputs(source, [r for r in rows if r not in folder_rows])
    if out_folder is not None:  # created only once every other check passed
        if Path(out_folder).exists() and not Path(out_folder).is_dir():
            raise DataError(f"--out {out_folder} is a file; with --list, --out is the folder for the rows "
                            "without an out")
        try:
            Path(out_folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create --out {out_folder}: {e.strerror or e}") from None
        _check_outputs(source, folder_rows)


def _check_outputs(source: Path, rows: Sequence[SceneRow]) -> None:
    for row in rows:
        try:
            check_output(row.out, "out")
        except RsicrcError as e:
            raise type(e)(f"{row.where(source)}: {e}") from None


@dataclass(frozen=True)
class CaptionScenes:
    """Job: whole scenes, one SceneModel load per worker; the worker reads the rasters itself."""

    options: SceneOptions  # model_dir absolute, runtime resolved, no progress bar, no quick-look or heat

    def open(self) -> Callable[[list[SceneRow]], list[SceneRun]]:
        model = SceneModel(self.options.model_dir, self.options.runtime)
        bands = self.options.bands

        def run(rows: list[SceneRow]) -> list[SceneRun]:
            done = []
            for row in rows:
                timer = _Timer()
                try:
                    with timer("open", lambda r=row: ScenePair(r.before, r.after, bands)) as scene:
                        done.append(run_scene(scene, model, self.options, timer))
                except RsicrcError as e:  # one of many scenes failed: which?
                    raise type(e)(f"scene {row.id}: {e}") from None
            return done

        return run


@dataclass(frozen=True)
class SceneListReport:
    """The outcome of a scene list: the scenes written (listing order), and whether all were."""

    listed: int  # scenes in the list
    done: list[tuple[SceneRow, SceneRun]]  # written, in listing order
    complete: bool  # False when Ctrl-C stopped a scene (its file holds the tiles done)
    where: str  # where it ran
    total_s: float  # wall time, list read to last file written

    @property
    def counts(self) -> dict[str, int]:
        """Tile counts summed over the scenes written."""
        return {key: sum(run.counts[key] for _, run in self.done) for key in COUNTS}

    def to_dict(self) -> dict[str, Any]:
        return {"scenes": self.listed, "written": len(self.done), "complete": self.complete,
                "cluster": self.where, "counts": self.counts, "total_s": round(self.total_s, 3),
                "outputs": [{"id": row.id, "out": str(row.out), "complete": run.complete,
                             "counts": run.counts} for row, run in self.done]}


def caption_scene_list(source: Path, out_folder: Path | None, options: SceneOptions,
                       cluster: ClusterOptions = ClusterOptions(), fmt: str | None = None,
                       progress: bool = True) -> SceneListReport:
    """Caption every scene of the list `source` into its own file (module docstring)."""
    began = time.perf_counter()
    if fmt is not None:
        check_format(fmt)  # an unknown format, or gpkg without pyogrio: before the list is read
    rows = read_scene_list(source, out_folder, fmt)
    runtime = options.runtime
    if not cluster.is_local:
        runtime = worker_runtime(cluster, runtime)
        preflight(cluster)
    folder = ModelFolder.open(options.model_dir)
    check_scenes(Path(source), rows, options, folder, out_folder)
    runtime = folder.resolve(runtime) if not cluster.is_local else runtime
    job = CaptionScenes(replace(options, model_dir=folder.path.resolve(), runtime=runtime, progress=False,
                                quicklook=None, heat=None))
    units = [[row] for row in rows]
    done: dict[int, tuple[SceneRow, SceneRun]] = {}
    complete = True
    with _bar(len(rows), progress) as bar:
        for seq, (run,) in execute(units, job, cluster):
            row = rows[seq]
            write_features(row.out, run.collection, row.format)
            done[seq] = (row, run)
            bar.update(1)
            if not run.complete:  # Ctrl-C inside a local scene: its partial file is written, stop here
                complete = False
                break
    return SceneListReport(len(rows), [done[k] for k in sorted(done)], complete, cluster.describe(),
                           time.perf_counter() - began)


def _bar(total: int, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="scene", desc="scenes", file=sys.stderr, disable=not progress)

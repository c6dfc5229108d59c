"""Whole scenes (#14): peak memory, throughput and the change gate, on synthetic scene pairs.

    python -m benchmarks.scene rss   --model M --work DIR [--sides 2048 8192] [--tile 256]
    python -m benchmarks.scene speed --model M --work DIR [--side 2048] [--precision fp32 int8]
    python -m benchmarks.scene gate  --model M --data DATA --work DIR [--split test] [--side 4096]

- rss: one fresh process per scene side (same tile settings) captions a synthetic scene pair
  (`rsicrc synth-scene`, cached in DIR); peak = the process's VmHWM (ru_maxrss would carry the
  parent's peak across exec). The bound of the issue: the largest within 15 % of the smallest.
- speed: tiles/s and km2/min of `caption_scene` with the change gate (default) and without it
  (--all-tiles: every tile decoded), per precision, in one process per case, on one scene.
- gate: on a LEVIR-CC-layout split, the gate's changed/unchanged call against full decoding
  (beam 3; unchanged = one of the five no-change sentences) and against the pairs' changeflag,
  for a sweep of margins; then, on a synthetic scene with --all-tiles, the decoded changed-tile
  decision against the scene's truth, and the same scene with its after date reprojected
  (EPSG:3857, 0.7 m) against the aligned one.

Every result records the load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rsicrc.runtime.scene.gate import DEFAULT_MARGIN

SCENE_RUN = """
import json, sys, time
from pathlib import Path
from rsicrc.runtime.decoding import DecodingOptions
from rsicrc.runtime.scene import SceneOptions, caption_scene
from rsicrc.runtime.options import RuntimeOptions

args = json.loads(sys.argv[1])
options = SceneOptions(tile=args["tile"], batch_size=args["batch"], all_tiles=args["all_tiles"],
                       gate_margin=args["gate_margin"],
                       decoding=DecodingOptions(beam_size=args["beam"]), progress=False,
                       model_dir=Path(args["model"]),
                       runtime=RuntimeOptions(device="cpu", precision=args["precision"],
                                              threads=args["threads"]))
report = caption_scene(Path(args["before"]), Path(args["after"]), Path(args["out"]), options)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({**report.to_dict(), "peak_rss_mb": hwm / 1024}))
"""


ENCODE_ONLY = -2.0  # a gate margin no cosine difference reaches: every tile skipped, nothing decoded
# speed cases: (name, all_tiles, gate margin)
CASES = (("gate", False, None), ("all_tiles", True, None), ("encode_only", False, ENCODE_ONLY))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def synth_scene(work: Path, side: int, tile: int = 256, **extra: Any) -> Path:
    """A cached synthetic scene pair of side x side pixels (tiles of `tile`)."""
    from rsicrc.synth.scene_pair import ScenePairSpec, synthesize_scene

    tag = "".join(f"-{k}{v}" for k, v in sorted(extra.items())).replace(":", "")
    folder = work / f"scene{side}{tag}"
    if not (folder / "truth.json").is_file():
        n = side // tile
        synthesize_scene(
            folder,
            ScenePairSpec(rows=n, cols=n, tile=tile, seed=0, changed_fraction=0.3, **extra),
            progress=True,
        )
    return folder


def run_scene(
    folder: Path,
    out: Path,
    model: Path,
    *,
    tile: int = 256,
    batch: int = 16,
    beam: int = 3,
    all_tiles: bool = False,
    precision: str | None = None,
    threads: int | None = None,
    gate_margin: float | None = None,
) -> dict:
    """caption_scene in a fresh process; its report plus peak RSS and the load around it."""
    args = {
        "before": str(folder / "before.tif"),
        "after": str(folder / "after.tif"),
        "out": str(out),
        "model": str(model),
        "tile": tile,
        "batch": batch,
        "beam": beam,
        "all_tiles": all_tiles,
        "precision": precision,
        "threads": threads,
        "gate_margin": DEFAULT_MARGIN if gate_margin is None else gate_margin,
    }
    load = _load()
    run = subprocess.run([sys.executable, "-c", SCENE_RUN, json.dumps(args)], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(run.stderr)
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "load_before": load, "load_after": _load()}


def cmd_rss(a: argparse.Namespace) -> dict:
    rows = []
    for side in a.sides:
        folder = synth_scene(a.work, side, a.tile)
        r = run_scene(folder, a.work / f"rss{side}.geojson", a.model, tile=a.tile, beam=1)
        rows.append(
            {
                "side": side,
                "tiles": r["counts"]["processed"],
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "seconds": r["timing_s"]["total"],
                "load": [r["load_before"], r["load_after"]],
            }
        )
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return {"rss": rows, "largest_over_smallest": round(ratio, 3), "within_15_percent": ratio <= 1.15}


def cmd_speed(a: argparse.Namespace) -> dict:
    """Per precision: the gate (default margin), --all-tiles (every tile decoded) and encode only
    (every tile skipped: the floor any gate can reach), alternating over `repeats` rounds so all
    cases see the same neighbours."""
    import statistics

    folder = synth_scene(a.work, a.side, a.tile)
    rows = []
    for precision in a.precision:
        for round_ in range(a.repeats):
            for case, all_tiles, margin in CASES:
                r = run_scene(
                    folder,
                    a.work / "speed.geojson",
                    a.model,
                    tile=a.tile,
                    beam=a.beam,
                    all_tiles=all_tiles,
                    precision=precision,
                    threads=a.threads,
                    gate_margin=margin,
                )
                rows.append(
                    {
                        "precision": precision,
                        "case": case,
                        "round": round_,
                        "tiles": r["counts"]["processed"],
                        "decoded": r["counts"]["decoded"],
                        "tiles_per_s": r["tiles_per_s"],
                        "km2_per_min": r["km2_per_min"],
                        "tile_loop_s": r["timing_s"]["tiles"],
                        "encode_s": r["timing_s"].get("encode"),
                        "decode_s": r["timing_s"].get("decode"),
                        "peak_rss_mb": round(r["peak_rss_mb"], 1),
                        "load": [r["load_before"], r["load_after"]],
                    }
                )
    summary = [
        {
            "precision": p,
            "case": c,
            "decoded": rows_[0]["decoded"],
            "tiles": rows_[0]["tiles"],
            "tiles_per_s_median": statistics.median(x["tiles_per_s"] for x in rows_),
            "km2_per_min_median": statistics.median(x["km2_per_min"] for x in rows_),
        }
        for p in a.precision
        for c, _, _ in CASES
        for rows_ in [[x for x in rows if x["precision"] == p and x["case"] == c]]
    ]
    return {
        "model": str(a.model),
        "scene_side": a.side,
        "tile": a.tile,
        "beam": a.beam,
        "summary": summary,
        "speed": rows,
    }


def _split_calls(model_dir: Path, data: Path, split: str, beam: int, batch: int) -> dict[str, list]:
    """Per pair of a split: gate score, full-decoding verdict, changeflag."""
    import numpy as np

    from rsicrc.levircc import LevirCC
    from rsicrc.runtime.decoding import DecodingOptions
    from rsicrc.runtime.images import read_pair
    from rsicrc.runtime.options import RuntimeOptions
    from rsicrc.runtime.scene.gate import build_gate, is_no_change
    from rsicrc.runtime.scene.model import SceneModel

    model = SceneModel(model_dir, RuntimeOptions(device="cpu"))
    gate = build_gate(model.embed_text)
    records = LevirCC.open(data).split(split)
    out: dict[str, list] = {"score": [], "decoded_changed": [], "changeflag": []}
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        pairs = [read_pair(*r.image_paths(data)) for r in chunk]
        encoded = model.encode(
            model.preprocess([p[0] for p in pairs]), model.preprocess([p[1] for p in pairs])
        )
        captions = model.caption(encoded.take(np.arange(len(chunk))), DecodingOptions(beam_size=beam))
        out["score"] += [float(s) for s in gate.scores(encoded.embedding)]
        out["decoded_changed"] += [not is_no_change(c.caption) for c in captions]
        out["changeflag"] += [bool(r.changed) for r in chunk]
    return out


def _agreement(calls: dict[str, list], margin: float) -> dict:
    import numpy as np

    gate = np.array(calls["score"]) <= margin  # True: sent to the decoder
    decoded, truth = np.array(calls["decoded_changed"]), np.array(calls["changeflag"])
    return {
        "margin": margin,
        "gate_decodes": round(float(gate.mean()), 4),
        "disagree_with_decoding": round(float((gate != decoded).mean()), 4),
        "missed_changes": int((~gate & decoded).sum()),
        "wasted_decodes": int((gate & ~decoded).sum()),
        "gate_vs_changeflag": round(float((gate == truth).mean()), 4),
        "gated_output_vs_changeflag": round(float(((gate & decoded) == truth).mean()), 4),
    }


def cmd_gate(a: argparse.Namespace) -> dict:
    import numpy as np

    calls = _split_calls(a.model, a.data, a.split, a.beam, 16)
    decoded, truth = np.array(calls["decoded_changed"]), np.array(calls["changeflag"])
    result: dict[str, Any] = {
        "split": {
            "pairs": len(truth),
            "changed": int(truth.sum()),
            "decoding_vs_changeflag": round(float((decoded == truth).mean()), 4),
            "sweep": [_agreement(calls, m) for m in a.margins],
        }
    }
    aligned = synth_scene(a.work, a.side, a.tile)
    warped = synth_scene(a.work, a.side, a.tile, after_crs="EPSG:3857", after_resolution=0.7)
    runs = {}
    for name, folder in (("aligned", aligned), ("reprojected", warped)):
        r = run_scene(
            folder, a.work / f"gate-{name}.geojson", a.model, tile=a.tile, beam=a.beam, all_tiles=True
        )
        doc = json.loads((a.work / f"gate-{name}.geojson").read_text())
        runs[name] = {f["properties"]["tile_id"]: f["properties"] for f in doc["features"]}
        result[f"scene_{name}_run"] = {
            "tiles_per_s": r["tiles_per_s"],
            "load": [r["load_before"], r["load_after"]],
        }
    truth_tiles = {
        t["tile_id"]: t["changed"] for t in json.loads((aligned / "truth.json").read_text())["tiles"]
    }
    props = runs["aligned"]
    ids = sorted(props)
    changed = np.array([props[t]["changed"] for t in ids])
    gate = np.array([props[t]["gate_score"] <= DEFAULT_MARGIN for t in ids])
    flag = np.array([truth_tiles[t] for t in ids])
    other = runs["reprojected"]
    result["scene"] = {
        "side": a.side,
        "tiles": len(ids),
        "truth_changed": int(flag.sum()),
        "decoded_changed_vs_changeflag": round(float((changed == flag).mean()), 4),
        "gated_output_vs_changeflag": round(float(((gate & changed) == flag).mean()), 4),
        "gate_vs_decoding": round(float((gate == changed).mean()), 4),
        "reprojected_same_tiles": sorted(other) == ids,
        "reprojected_changed_agreement": round(
            float(np.mean([other[t]["changed"] == props[t]["changed"] for t in ids if t in other])), 4
        ),
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("rss", "speed", "gate"):
        s = sub.add_parser(name)
        s.add_argument("--model", type=Path, required=True)
        s.add_argument("--work", type=Path, required=True)
        s.add_argument("--tile", type=int, default=256)
        s.add_argument("--beam", type=int, default=3)
        s.add_argument("--json", type=Path)
    sub.choices["rss"].add_argument("--sides", type=int, nargs="+", default=[2048, 8192])
    sub.choices["speed"].add_argument("--side", type=int, default=2048)
    sub.choices["speed"].add_argument("--precision", nargs="+", default=["fp32"])
    sub.choices["speed"].add_argument("--threads", type=int)
    sub.choices["speed"].add_argument("--repeats", type=int, default=1)
    sub.choices["gate"].add_argument("--data", type=Path, required=True)
    sub.choices["gate"].add_argument("--split", default="test")
    sub.choices["gate"].add_argument("--side", type=int, default=4096)
    sub.choices["gate"].add_argument(
        "--margins", type=float, nargs="+", default=[0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08]
    )
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = {
        "started": started,
        "cpu_count": os.cpu_count(),
        **{"rss": cmd_rss, "speed": cmd_speed, "gate": cmd_gate}[a.cmd](a),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

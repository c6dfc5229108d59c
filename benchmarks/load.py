"""How long opening an exported model folder takes, as a user meets it: `rsicrc caption BEFORE AFTER
--json` of one real pair in a fresh process, read from its own timing_ms (load, encode, decode).

    python -m benchmarks.load --model benchmarks/.cache/paper/model --precision int8 --json out.json

cold = the first call after export: the folder's load cache (rsicrc.runtime.load_cache) is removed
first, so the call hashes the graphs it opens and optimizes and saves them; warm = the calls after
that (median of `--repeats`). The OS page cache is warm in both: this measures the toolkit, not
the disk. Records are named load/<config>/<precision>/<cold|warm>.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "data" / "levircc" / "samples"
PAIR = "train_000016.png"  # a real LEVIR-CC pair when ../shared is there


def _pair(tmp: Path) -> tuple[Path, Path]:
    """A real sample pair, else a synthetic one written to `tmp`."""
    if (SAMPLES / "A" / PAIR).is_file():
        return SAMPLES / "A" / PAIR, SAMPLES / "B" / PAIR
    from rsicrc.synth import synthesize

    root = synthesize(tmp / "pair", pairs=10, seed=0, progress=False)
    name = sorted((root / "images" / "train" / "A").iterdir())[0].name
    return root / "images" / "train" / "A" / name, root / "images" / "train" / "B" / name


def caption_timing(model: Path, precision: str, threads: int, before: Path, after: Path
                   ) -> dict[str, float]:
    """timing_ms of one `rsicrc caption --json` in a fresh process."""
    cli = [sys.executable, "-c", "from rsicrc.cli.main import main; main()"]
    cmd = [*cli, "caption", str(before), str(after), "--model", str(model), "--precision", precision,
           "--threads", str(threads), "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(" | ".join(proc.stderr.strip().splitlines()[-2:]))
    return json.loads(proc.stdout)["timing_ms"]


def measure(model: Path, precision: str, threads: int, repeats: int, config: str) -> list[dict[str, Any]]:
    """The cold record and the warm record of one model folder and precision."""
    from rsicrc.runtime.load_cache import FolderCache

    with tempfile.TemporaryDirectory(prefix="rsicrc-load-") as tmp:
        before, after = _pair(Path(tmp))
        root = FolderCache(model).root
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        runs = {"cold": [caption_timing(model, precision, threads, before, after)],
                "warm": [caption_timing(model, precision, threads, before, after) for _ in range(repeats)]}
    root = FolderCache(model).root
    cache_mb = sum(p.stat().st_size for p in root.iterdir()) / 1e6 if root else 0.0
    records = []
    for kind, timings in runs.items():
        load = statistics.median(t["load"] for t in timings)
        compute = statistics.median(t["encode"] + t["decode"] for t in timings)
        records.append({"name": f"load/{config}/{precision}/{kind}", "config": config, "precision": precision,
                        "kind": kind, "threads": threads, "runs": len(timings), "load_ms": round(load, 1),
                        "encode_ms": round(statistics.median(t["encode"] for t in timings), 1),
                        "decode_ms": round(statistics.median(t["decode"] for t in timings), 1),
                        "load_over_compute": round(load / compute, 3),
                        "runs_load_ms": [round(t["load"], 1) for t in timings],
                        "cache_mb": round(cache_mb, 1)})
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Cold and warm load time of a model folder (rsicrc caption).")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--precision", nargs="+", default=["fp32", "int8"])
    p.add_argument("--config", default="paper", help="label of the records")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=3, help="warm calls (median)")
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    args = p.parse_args(argv)
    records = [r for precision in args.precision
               for r in measure(args.model, precision, args.threads, args.repeats, args.config)]
    for r in records:
        compute = r["encode_ms"] + r["decode_ms"]
        print(f"{r['name']:26} load {r['load_ms']:8.1f} ms   encode+decode {compute:8.1f} ms   "
              f"load/compute {r['load_over_compute']:.2f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small printers for `make demo`: reference captions of a pair, and a captions JSONL file."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def references(annotations: Path, split: str, filename: str) -> None:
    images = json.loads(annotations.read_text())["images"]
    entry = next(e for e in images if e["filename"] == filename and e["split"] == split)
    for sentence in entry["sentences"]:
        print("  " + sentence["raw"].strip())


def captions(jsonl: Path) -> None:
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        print(f"  {row['id']}: {row['caption']}")


DEMO_QUERIES = (
    "two houses are built at the top of the scene",
    "a road is built through the trees",
    "the scene is the same as before",
)


def queries(levircc: Path, real: int = 3) -> None:
    """Demo search queries: a few written ones, then real LEVIR-CC change captions (test split)."""
    for q in DEMO_QUERIES:
        print(q)
    if levircc.is_file():
        images = json.loads(levircc.read_text())["images"]
        changed = [e for e in images if e["split"] == "test" and e.get("changeflag")]
        for entry in changed[:real]:
            print(entry["sentences"][0]["raw"].strip().rstrip(" ."))


def targets(metrics_file: Path) -> None:
    """The demo's bar (foundation issue): no-change accuracy, CIDEr vs baseline, R@5 vs chance."""
    m = json.loads(metrics_file.read_text())
    cider = m["captioning"]["changed"]["CIDEr"]
    base = m["baseline"]["captioning"]["changed"]["CIDEr"]
    r5, chance = m["retrieval"]["changed"]["R@5"], m["chance"]["R@5"]
    rows = [
        ("no-change accuracy >= 0.90", m["no_change_accuracy"], m["no_change_accuracy"] >= 0.90),
        ("CIDEr(changed) >= 3x constant baseline", cider / max(base, 1e-9), cider >= 3 * base),
        ("R@5(changed) >= 5x chance", r5 / chance, r5 >= 5 * chance),
    ]
    for name, value, ok in rows:
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {value:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["references"] and len(sys.argv) == 5:
        references(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif sys.argv[1:2] == ["captions"] and len(sys.argv) == 3:
        captions(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["targets"] and len(sys.argv) == 3:
        targets(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["queries"] and len(sys.argv) == 3:
        queries(Path(sys.argv[2]))
    else:
        sys.exit("usage: demo_show.py references ANNOTATIONS SPLIT FILENAME"
                 " | captions FILE.jsonl | targets FILE.json | queries LEVIRCC.json")

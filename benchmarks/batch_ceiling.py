"""What batching can gain at most on this machine, without HTTP: one process runs the captioning
task (`Captioner.caption_preprocessed`) on batch 1 and batch 16 of random preprocessed pairs, in
turn for a few rounds, and prints the encoder and decoder time per pair and the ratio of pairs/s.
`rsicrc serve` cannot beat this ratio (issue #16: the load test's 16-client speed-up is bounded by
it).

    python benchmarks/batch_ceiling.py --model MODEL [--precision int8] [--beam 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from rsicrc.runtime.captioner import Captioner
    from rsicrc.runtime.cpu import cpu_info
    from rsicrc.runtime.decoding import DecodingOptions
    from rsicrc.runtime.model_folder import ModelFolder
    from rsicrc.runtime.options import RuntimeOptions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--precision", default=None)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)

    runtime = RuntimeOptions(device="cpu", precision=args.precision)
    captioner = Captioner(ModelFolder.open(args.model), runtime)
    size = captioner.model.preprocess.size
    rng = np.random.default_rng(0)
    before, after = (rng.standard_normal((args.batch, 3, size, size)).astype(np.float32) for _ in range(2))
    options = DecodingOptions(beam_size=args.beam)
    captioner.caption_preprocessed(before[:1], after[:1], options)  # warm-up
    print(f"CPU: {cpu_info().describe()}, {os.cpu_count()} cores; {args.model} ({captioner.precision}), "
          f"beam {args.beam}", flush=True)
    per_pair: dict[int, list[float]] = {1: [], args.batch: []}
    for rnd in range(args.rounds):
        for b in (1, args.batch):
            timing: dict[str, float] = {}
            start = time.perf_counter()
            results = captioner.caption_preprocessed(before[:b], after[:b], options, timing)
            wall = (time.perf_counter() - start) * 1000.0
            per_pair[b].append(wall / b)
            print(f"round {rnd} batch {b:2d}: {wall:.0f} ms, {wall / b:.0f} ms/pair (encode "
                  f"{timing['encode'] / b:.0f}, decode {timing['decode'] / b:.0f} ms/pair; "
                  f"{len(results[0].tokens)} tokens) load {os.getloadavg()[0]:.1f}", flush=True)
    ratio = statistics.median(per_pair[1]) / statistics.median(per_pair[args.batch])
    print(f"pairs/s at batch {args.batch} / batch 1 (medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

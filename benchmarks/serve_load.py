"""Load test of `rsicrc serve` (issue #16): N clients on loopback sending real pairs for T seconds
at each concurrency, then an optional soak at one concurrency with the server's RSS sampled.

    python benchmarks/serve_load.py --model MODEL --data PAIRS [--precision int8]
        [--concurrency 1,4,16,64] [--duration 60] [--warmup 10] [--soak 300 --soak-concurrency 16]
        [--max-batch 16] [--max-wait-ms 10] [--max-queue 256] [--beam 3] [--threads N] [--json OUT]

The server is a child process (`benchmarks/serve_process.py`) on a free loopback port, stopped
with SIGTERM at the end (its exit code is reported). Each client is a closed loop: send a pair
(multipart upload of the real image files, the pairs taken in turn), wait for the answer, send
the next. A level runs `--duration` seconds; only answers that arrive after `--warmup` seconds
count towards throughput and latency (nor do those answered after the level's end, while the last
requests drain), but every request sent is awaited and classified: ok (200),
rejected (503, backpressure: never accepted), failed (any other status) or lost (no answer:
connection error or the client timeout). The script stops by itself: the clients stop sending at
the end of each level, and every request has a client timeout.

Per level: throughput (ok answers in the window / window length, pairs/s), latency p50/p95/p99
(ms) of those answers, the batch sizes seen (X-Batch-Size of each answer: how many pairs ran
together with it) and the mean pairs per batch from the server's /metrics (batches formed in
the level), and the 1-minute load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: `python benchmarks/serve_load.py`
    sys.path.insert(0, str(REPO))

from benchmarks.serve_process import ServerProcess  # noqa: E402

CLIENT_TIMEOUT_S = 900.0  # a request unanswered this long is counted lost


@dataclass
class Level:
    """What one concurrency level measured."""

    concurrency: int  # clients, each with one request in flight
    seconds: float  # measuring window (duration - warmup)
    ok: int = 0  # answered 200 within the window [warmup, duration]
    sent: int = 0  # requests sent during the whole level (warm-up included)
    ok_total: int = 0  # answered 200, whole level
    rejected: int = 0  # 503 (queue full): never accepted
    failed: int = 0  # any other status
    lost: int = 0  # no answer at all
    pairs_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # X-Batch-Size -> answers (window)
    mean_batch: float = 0.0  # pairs per batch formed during the level (/metrics)
    load_before: float = 0.0  # 1-minute load average
    load_after: float = 0.0
    errors: list[str] = field(default_factory=list)  # first few failure texts


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered) + 0.5) - 1))]


Upload = tuple[str, bytes]  # (file name, file bytes)


def read_pairs(data: Path, split: str | None, count: int) -> list[tuple[Upload, Upload]]:
    """The first `count` pairs of a folder/LEVIR-CC/CSV source as (name, bytes) uploads."""
    from rsicrc.runtime.pairs import list_pairs

    items = list_pairs(data, split)[:count]
    if not items:
        raise SystemExit(f"no pairs in {data}")
    return [((i.before.name, i.before.read_bytes()), (i.after.name, i.after.read_bytes())) for i in items]


def batch_metrics(text: str) -> tuple[float, float]:
    """(sum, count) of the server's rsicrc_batch_size histogram."""
    total = float(re.search(r"^rsicrc_batch_size_sum (\S+)$", text, re.MULTILINE).group(1))
    count = float(re.search(r"^rsicrc_batch_size_count (\S+)$", text, re.MULTILINE).group(1))
    return total, count


async def run_level(url: str, pairs: list, concurrency: int, duration: float, warmup: float,
                    beam: int | None) -> Level:
    """`concurrency` closed-loop clients for `duration` seconds."""
    import httpx

    level = Level(concurrency, duration - warmup, load_before=os.getloadavg()[0])
    latencies: list[float] = []
    sizes: Counter[int] = Counter()
    turn = 0
    data = {"beam": str(beam)} if beam is not None else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        before = batch_metrics((await client.get("/metrics")).text)
        start = time.monotonic()

        async def client_loop() -> None:
            nonlocal turn
            while time.monotonic() - start < duration:
                (bn, bb), (an, ab) = pairs[turn % len(pairs)]
                turn += 1
                level.sent += 1
                sent = time.monotonic()
                try:
                    response = await client.post("/v1/caption", files={"before": (bn, bb), "after": (an, ab)},
                                                 data=data)
                except httpx.HTTPError as e:
                    level.lost += 1
                    level.errors.append(f"{type(e).__name__}: {e}"[:200])
                    continue
                done = time.monotonic()
                if response.status_code == 200:
                    level.ok_total += 1
                    if warmup <= done - start <= duration:  # answers of the drain after it do not count
                        level.ok += 1
                        latencies.append((done - sent) * 1000.0)
                        sizes[int(response.headers["x-batch-size"])] += 1
                elif response.status_code == 503:
                    level.rejected += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                else:
                    level.failed += 1
                    level.errors.append(f"{response.status_code}: {response.text}"[:200])

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        after = batch_metrics((await client.get("/metrics")).text)
    level.pairs_per_s = level.ok / level.seconds
    level.p50_ms, level.p95_ms, level.p99_ms = (percentile(latencies, q) for q in (50, 95, 99))
    level.batch_sizes = dict(sorted(sizes.items()))
    level.mean_batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    level.load_after = os.getloadavg()[0]
    level.errors = level.errors[:5]
    return level


async def soak(server: ServerProcess, pairs: list, concurrency: int, seconds: float, beam: int | None,
               sample_s: float = 10.0) -> dict[str, Any]:
    """A level of `seconds` with the server's RSS sampled every `sample_s`."""
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    async def sampler() -> None:
        while time.monotonic() - start < seconds:
            samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))
            await asyncio.sleep(sample_s)
        samples.append((round(time.monotonic() - start, 1), round(server.rss_mb(), 1)))

    level, _ = await asyncio.gather(run_level(server.url, pairs, concurrency, seconds, 0.0, beam), sampler())
    rss = [r for _, r in samples]
    return {"level": asdict(level), "rss_mb_start": rss[0], "rss_mb_end": rss[-1], "rss_mb_max": max(rss),
            "rss_samples": samples}


def table(levels: list[Level]) -> str:
    lines = [f"{'clients':>7} {'pairs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'ok':>5} {'rej':>4} "
             f"{'fail':>4} {'lost':>4} {'mean batch':>10}  batch sizes seen (size:answers)  load"]
    for v in levels:
        seen = " ".join(f"{k}:{n}" for k, n in v.batch_sizes.items())
        lines.append(f"{v.concurrency:>7} {v.pairs_per_s:8.2f} {v.p50_ms:8.0f} {v.p95_ms:8.0f} "
                     f"{v.p99_ms:8.0f} {v.ok:>5} {v.rejected:>4} {v.failed:>4} {v.lost:>4} "
                     f"{v.mean_batch:10.2f}  {seen}  "
                     f"{v.load_before:.1f}->{v.load_after:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--data", type=Path, required=True, help="pairs: LEVIR-CC folder, A/ + B/ folder or CSV")
    p.add_argument("--split", default=None, help="LEVIR-CC split (default: all)")
    p.add_argument("--pairs", type=int, default=64, help="distinct pairs sent in turn")
    p.add_argument("--precision", default=None, help="fp32 or int8 (default: the model's)")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per level")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds at the start of a level not counted")
    p.add_argument("--soak", type=float, default=0.0, help="soak seconds (0: none)")
    p.add_argument("--soak-concurrency", type=int, default=16)
    p.add_argument("--beam", type=int, default=None, help="beam per request (default: the server's, 3)")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per graph")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.warmup >= args.duration:
        raise SystemExit("--warmup must be shorter than --duration")

    pairs = read_pairs(args.data, args.split, args.pairs)
    serve_args = ["--model", args.model, "--device", "cpu", "--max-batch", args.max_batch, "--max-wait-ms",
                  args.max_wait_ms, "--max-queue", args.max_queue]
    serve_args += ["--precision", args.precision] if args.precision else []
    serve_args += ["--threads", args.threads] if args.threads else []
    from rsicrc.runtime.cpu import cpu_info

    record: dict[str, Any] = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_info().to_dict(),
                              "cpu_count": os.cpu_count(), "load_start": os.getloadavg()}
    server = ServerProcess(serve_args).start()
    print(f"CPU: {cpu_info().describe()}, {os.cpu_count()} cores", flush=True)
    print(f"server {server.url} ready, RSS {server.rss_mb():.0f} MiB; {len(pairs)} pairs; load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    try:
        levels = []
        for c in (int(x) for x in args.concurrency.split(",")):
            level = asyncio.run(run_level(server.url, pairs, c, args.duration, args.warmup, args.beam))
            levels.append(level)
            print(table(levels[-1:]), flush=True)
        record["levels"] = [asdict(v) for v in levels]
        base = next((v for v in levels if v.concurrency == 1), None)
        if base is not None and base.pairs_per_s > 0:
            record["speedup_vs_1"] = {v.concurrency: round(v.pairs_per_s / base.pairs_per_s, 2)
                                      for v in levels}
        if args.soak > 0:
            print(f"soak: {args.soak_concurrency} clients for {args.soak:.0f} s", flush=True)
            record["soak"] = asyncio.run(soak(server, pairs, args.soak_concurrency, args.soak, args.beam))
    finally:
        record["exit_code"] = server.stop()
        record["load_end"] = os.getloadavg()
    print("\n" + table(levels))
    if "speedup_vs_1" in record:
        print("throughput vs 1 client:", record["speedup_vs_1"])
    if "soak" in record:
        s = record["soak"]
        print(f"soak: {s['level']['pairs_per_s']:.2f} pairs/s, ok {s['level']['ok']}, failed "
              f"{s['level']['failed']}, lost {s['level']['lost']}; RSS start {s['rss_mb_start']} MiB, end "
              f"{s['rss_mb_end']} MiB, max {s['rss_mb_max']} MiB")
    print(f"server exit code after SIGTERM: {record['exit_code']}; load {record['load_start'][0]:.1f} -> "
          f"{record['load_end'][0]:.1f}")
    if args.json:
        from rsicrc.files import write_atomic

        write_atomic(args.json, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`rsicrc index` and `rsicrc caption --pairs` on Ray (`--cluster ray[:ADDRESS]`): a real local Ray
instance (2 CPUs, started once for the module) runs the tiny exported model in an actor pool; the
index and the JSON Lines file must equal a local run's, an interrupted distributed run must resume
from its last commit, and a worker process killed mid-run must be replaced by Ray, its batches
retried, the result still complete. Option errors and a machine without Ray need no Ray. The Ray
instance is conftest's `ray_address` (one per session, shared with the scene-list tests)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_runtime import tiny_model_dir
from typer.testing import CliRunner

from conftest import assert_one_line_error
from rsicrc.cli.main import app
from rsicrc.errors import ConfigError
from rsicrc.runtime.cluster import ClusterOptions, actor_pool, cluster_options, worker_runtime
from rsicrc.runtime.encoders import ImageEncoder
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.index import open_index
from rsicrc.runtime.index_format import read_header
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.retriever import index_pairs

CPU1 = RuntimeOptions(device="cpu", threads=1)
RAY2 = ClusterOptions("ray", workers=2, worker_threads=1)
# One pair's embedding from two runs differs in the last bits only (other batch neighbours, other
# thread counts in the workers): rows are unit vectors, compared element by element.
EMBEDDING_TOLERANCE = 1e-6
SLOW_SIDE = 512  # px: reading and resizing a 512 px pair to the tiny model's 64 px takes tens of ms
DEADLINE_S = 120  # a run that takes longer than this on the test machine is a failure, not a hang


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsicrc.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("cluster") / "data", pairs=20, seed=23, size=64, progress=False)


def _cli(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def _rows(index_dir: Path) -> dict[str, tuple[np.ndarray, object]]:
    """id -> (stored embedding as float32, record) of every row of an index."""
    index = open_index(index_dir)
    vectors = np.concatenate([a for _, a in index.blocks()]).astype(np.float32)
    return {e.id: (vectors[i], e) for i, e in enumerate(index.records(range(len(index))))}


@contextmanager
def _logged(name: str) -> Iterator[list[str]]:
    """What the logger `name` logs (INFO and up) in this process, from any thread, while inside."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- without Ray --------------------------------------------------------------------------------


def test_cluster_options_parse_and_refuse_with_one_line(tmp_path: Path, dataset: Path,
                                                        model_dir: Path) -> None:
    assert cluster_options("local") == ClusterOptions()
    assert cluster_options("ray") == ClusterOptions("ray")
    assert cluster_options("ray:10.0.0.5:6379", 3, 2, 0.5) == ClusterOptions("ray", "10.0.0.5:6379", 3, 2,
                                                                             0.5)
    assert cluster_options(" ray:auto ").address == "auto"
    with pytest.raises(ConfigError, match="--threads applies to --cluster local"):
        worker_runtime(RAY2, CPU1)
    assert worker_runtime(ClusterOptions("ray", worker_threads=3), RuntimeOptions()).threads == 3
    out = tmp_path / "idx"
    base = ["index", str(dataset), "--out", str(out), "--model", str(model_dir)]
    assert_one_line_error(_cli(*base, "--cluster", "slurm"), "unknown --cluster 'slurm'", "local",
                          "ray:ADDRESS")
    assert_one_line_error(_cli(*base, "--cluster", "ray:"), "unknown --cluster")
    assert_one_line_error(_cli(*base, "--workers", "2"), "--workers apply only with --cluster ray")
    assert_one_line_error(_cli(*base, "--cluster", "ray", "--workers", "0"),
                          "workers must be an integer >= 1")
    assert_one_line_error(_cli(*base, "--cluster", "ray", "--worker-threads", "0"),
                          "worker threads must be an integer >= 1")
    assert_one_line_error(_cli(*base, "--cluster", "ray", "--gpus-per-worker", "-1"),
                          "GPUs per worker must be a finite number >= 0")
    assert_one_line_error(_cli(*base, "--cluster", "ray", "--threads", "2"), "--worker-threads")
    assert_one_line_error(_cli(*base, "--cluster", "ray", "--device", "cuda"), "--gpus-per-worker 1")
    assert_one_line_error(_cli(*base, "--cluster", "ray", "--device", "cpu", "--gpus-per-worker", "1"),
                          "--device cpu")
    pair = [str(sorted((dataset / "images" / "test" / side).iterdir())[0]) for side in "AB"]
    assert_one_line_error(_cli("caption", *pair, "--model", str(model_dir), "--cluster", "ray"),
                          "applies to --pairs")
    assert not out.exists()


NO_RAY = textwrap.dedent('''
    import sys

    class NoRay:
        """Meta-path finder that makes ray unimportable, as on a machine without the [ray] extra."""
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ImportError(f"ray is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, NoRay())
    from rsicrc.cli.main import main
    sys.argv = ["rsicrc", *sys.argv[1:]]
    main()
''')


def test_without_ray_a_clear_error_and_nothing_written(tmp_path: Path, dataset: Path,
                                                       model_dir: Path) -> None:
    out = tmp_path / "idx"
    command = [sys.executable, "-c", NO_RAY, "index", str(dataset), "--out", str(out), "--model",
               str(model_dir), "--quiet"]
    proc = subprocess.run([*command, "--cluster", "ray"], capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --cluster ray needs Ray Data: pip install 'rsicrc[ray]' (ray[data]>=2.44,<2.61)"]
    assert not out.exists()
    local = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=DEADLINE_S)
    assert local.returncode == 0, local.stderr  # everything else works without Ray
    assert json.loads(local.stdout)["total"] == 20


def test_a_dead_address_is_one_line_and_nothing_written(tmp_path: Path, dataset: Path,
                                                        model_dir: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'rsicrc[ray]')")
    out = tmp_path / "captions.jsonl"
    proc = subprocess.run([sys.executable, "-c", "from rsicrc.cli.main import main; main()", "caption",
                           "--pairs", str(dataset), "--out", str(out), "--model", str(model_dir),
                           "--cluster", "ray:127.0.0.1:1"],
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: cannot join the Ray cluster at 127.0.0.1:1: nothing answers at 127.0.0.1:1 (Connection "
        "refused); start it with `ray start --head` or check the address"]
    assert list(tmp_path.iterdir()) == []


# --- a local Ray instance ------------------------------------------------------------------------


def test_actor_pool_is_spelled_for_the_installed_ray(ray_address: str) -> None:
    import ray

    major, minor = (int(x) for x in ray.__version__.split(".")[:2])
    arguments = actor_pool(ray, 2)
    if (major, minor) >= (2, 51):
        assert arguments["compute"].min_size == arguments["compute"].max_size == 2
    else:
        assert arguments == {"concurrency": 2}


def test_index_on_ray_equals_local(tmp_path: Path, dataset: Path, model_dir: Path, ray_address: str) -> None:
    local = index_pairs(dataset, tmp_path / "local", model_dir, CPU1, batch_size=4, dtype="float32",
                        commit_every=8, progress=False)
    with _logged("ray.data") as ray_log:  # Ray Data's logger does not propagate to the root
        result = _cli("index", str(dataset), "--out", str(tmp_path / "ray"), "--model", str(model_dir),
                      "--cluster", "ray", "--workers", "2", "--worker-threads", "1", "--batch-size", "4",
                      "--dtype", "float32", "--commit-every", "8", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["skipped"], report["total"]) == (local.added, local.skipped, 20)
    assert not [line for line in ray_log if "deprecated" in line]  # the actor pool spelled for this Ray
    a, b = read_header(tmp_path / "local"), read_header(tmp_path / "ray")
    assert (a.model, a.dim, a.dtype, a.count) == (b.model, b.dim, b.dtype, b.count)
    assert [s.rows for s in b.shards] == [8, 8, 4]  # committed every 8 pairs, as locally
    ours, theirs = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert sorted(ours) == sorted(theirs)
    for ident, (vector, record) in theirs.items():
        assert record == ours[ident][1]  # id, absolute paths, split and changeflag
        np.testing.assert_allclose(vector, ours[ident][0], rtol=0, atol=EMBEDDING_TOLERANCE)
    again = index_pairs(dataset, tmp_path / "ray", model_dir, RuntimeOptions(device="cpu"), batch_size=4,
                        progress=False, cluster=RAY2)
    assert (again.added, again.skipped, again.total) == (0, 20, 20)  # nothing left: no Ray run at all


def test_caption_pairs_on_ray_equals_local(tmp_path: Path, dataset: Path, model_dir: Path,
                                           ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rsicrc.runtime.decoding import DecodingOptions
    from rsicrc.runtime.pairs import caption_pairs

    monkeypatch.chdir(dataset.parent)  # a relative source: the lines keep the listing's paths
    source = Path(dataset.name)
    caption_pairs(source, tmp_path / "local.jsonl", DecodingOptions(beam_size=2), model_dir, CPU1,
                  split="test", batch_size=3, progress=False)
    result = _cli("caption", "--pairs", str(source), "--split", "test", "--out", str(tmp_path / "ray.jsonl"),
                  "--model", str(model_dir), "--beam", "2", "--batch-size", "3", "--cluster",
                  f"ray:{ray_address}", "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    local = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    ours = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert len(local) == 4 and not Path(local[0]["before"]).is_absolute()
    assert [{k: v for k, v in d.items() if k != "score"} for d in ours] == [
        {k: v for k, v in d.items() if k != "score"} for d in local]  # ids, order, paths, captions
    np.testing.assert_allclose([d["score"] for d in ours], [d["score"] for d in local], rtol=0, atol=1e-6)

    # A pair a worker cannot read: one line naming it, exit 2, no output file.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    good = sorted((dataset / "images" / "test" / "A").iterdir())
    csv = tmp_path / "pairs.csv"
    csv.write_text("before,after,id\n" + "".join(f"{p},{p.parent.parent / 'B' / p.name},ok{i}\n"
                                                 for i, p in enumerate(good)) + f"{broken},{broken},bad\n")
    failed = _cli("caption", "--pairs", str(csv), "--out", str(tmp_path / "no.jsonl"), "--model",
                  str(model_dir), "--batch-size", "2", "--cluster", "ray", "--workers", "2", "--quiet")
    assert_one_line_error(failed, "pair bad:", str(broken))
    assert not (tmp_path / "no.jsonl").exists() and not list(tmp_path.glob(".no.jsonl*"))


# --- faults: a crashed driver, a killed worker --------------------------------------------------


@pytest.fixture(scope="module")
def slow_pairs(tmp_path_factory: pytest.TempPathFactory, model_dir: Path
               ) -> tuple[Path, dict[str, np.ndarray]]:
    """A CSV of 48 ids over 4 distinct 512 px pairs (slow enough to interrupt a run between its
    commits), and each id's expected unit embedding from a local ImageEncoder."""
    root = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(5)
    expected, encoder = {}, ImageEncoder(ModelFolder.open(model_dir), CPU1)
    for k in range(4):
        field = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(field).resize((SLOW_SIDE, SLOW_SIDE), Image.Resampling.BILINEAR))
        image = np.clip(image + rng.integers(-20, 21, size=image.shape), 0, 255).astype(np.uint8)
        after = image.copy()
        after[k * 100: k * 100 + 150, 50:200] = rng.integers(0, 256, size=3)
        Image.fromarray(image).save(root / f"a{k}.png")
        Image.fromarray(after).save(root / f"b{k}.png")
        vector = encoder.embed(*([x] for x in read_pair(root / f"a{k}.png", root / f"b{k}.png")))[0]
        expected[str(k)] = vector / np.linalg.norm(vector)
    ids = [f"site{i:02d}" for i in range(48)]
    (root / "pairs.csv").write_text("before,after,id\n" + "".join(
        f"a{i % 4}.png,b{i % 4}.png,{ident}\n" for i, ident in enumerate(ids)))
    return root / "pairs.csv", {ident: expected[str(i % 4)] for i, ident in enumerate(ids)}


def _check_complete(index_dir: Path, expected: dict[str, np.ndarray]) -> None:
    rows = _rows(index_dir)
    assert sorted(rows) == sorted(expected)
    for ident, (vector, _) in rows.items():
        np.testing.assert_allclose(vector, expected[ident], rtol=0, atol=EMBEDDING_TOLERANCE)


def _committed(index_dir: Path) -> int:
    try:
        return read_header(index_dir).count
    except Exception:  # noqa: BLE001  (not created yet, or index.json being replaced)
        return 0


def _wait(condition: object, what: str, alive: object = lambda: True) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        assert alive(), f"the run ended before {what}"  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S} s"
        time.sleep(0.01)


def test_resume_after_the_driver_is_killed(tmp_path: Path, model_dir: Path, ray_address: str,
                                           slow_pairs: tuple[Path, dict[str, np.ndarray]]) -> None:
    source, expected = slow_pairs
    out = tmp_path / "idx"
    driver = subprocess.Popen([sys.executable, "-c", "from rsicrc.cli.main import main; main()", "index",
                               str(source), "--out", str(out), "--model", str(model_dir), "--dtype",
                               "float32", "--cluster", f"ray:{ray_address}", "--workers", "2",
                               "--batch-size", "2", "--commit-every", "4", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _committed(out) >= 4, "a first commit", lambda: driver.poll() is None)
        driver.send_signal(signal.SIGKILL)  # a crash: no clean-up of any kind in the driver
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    committed = read_header(out).count
    assert 4 <= committed < 48 and committed % 4 == 0, committed
    report = index_pairs(source, out, model_dir, RuntimeOptions(device="cpu"), batch_size=2, commit_every=4,
                         progress=False, cluster=RAY2)
    assert (report.added, report.skipped, report.total) == (48 - committed, committed, 48)  # only the missing
    _check_complete(out, expected)
    assert not list(out.glob(".*.tmp"))


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        found.add(pid)
    return found


def _embedding_workers() -> set[int]:
    """Our Ray instance's actor processes of the index job (Ray titles them after the class)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "MapBatches(RsicrcEmbedPairs)" in title and os.getpid() in _ancestors(int(entry.name)):
            found.add(int(entry.name))
    return found


def test_a_killed_worker_is_replaced_and_its_batches_retried(
        tmp_path: Path, model_dir: Path, ray_address: str, slow_pairs: tuple[Path, dict[str, np.ndarray]]
        ) -> None:
    source, expected = slow_pairs
    out = tmp_path / "idx"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = index_pairs(source, out, model_dir, RuntimeOptions(device="cpu"),
                                            batch_size=2, dtype="float32", commit_every=4, progress=False,
                                            cluster=RAY2)
        except BaseException as e:  # noqa: BLE001  (handed to the test thread)
            outcome["error"] = e

    driver = threading.Thread(target=run)
    with _logged("rsicrc.runtime.cluster") as lines:
        driver.start()
        _wait(lambda: _committed(out) >= 4 and len(_embedding_workers()) == 2, "a commit with 2 workers",
              driver.is_alive)
        before = _embedding_workers()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        at_kill = _committed(out)
        _wait(lambda: bool(_embedding_workers() - before), "a replacement worker", driver.is_alive)
        driver.join(DEADLINE_S)
    assert not driver.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert at_kill <= 40, at_kill  # both workers still held batches when one was killed
    assert not Path(f"/proc/{victim}").exists()
    report = outcome["report"]
    assert (report.added, report.total) == (48, 48)  # type: ignore[attr-defined]
    _check_complete(out, expected)  # every batch arrived, once, with the right embeddings
    assert lines[-1].startswith("ray: 24 batch(es) from"), lines

"""`rsicrc serve` end to end: the real server in a child process (torch blocked in it) on a free
loopback port, called over HTTP with httpx. Concurrent captions equal `rsicrc caption --json`
token for token and are batched only with requests of the same beam; every bad input gets its
status and a one-line JSON error and the next good request still works; path mode cannot leave
--allow-paths; search equals `rsicrc search --json`; a full queue answers 503 with Retry-After;
SIGTERM drains the queue and exits 0."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_runtime import tiny_model_dir
from typer.testing import CliRunner

from benchmarks.serve_process import MAIN, ServerProcess
from conftest import assert_one_line_error, random_pairs
from rsicrc.cli.main import app

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

runner = CliRunner()
QUERY = "two houses are built at the top"
NO_TORCH = textwrap.dedent('''
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None
    BLOCKED = {"torch"}
    sys.meta_path.insert(0, NoTorch())
''')


# --- data, references and the server ----------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """allowed/{A,B}/p0..p4.png and t0.tif (uint16, 4 bands), files to misuse, and things outside."""
    import rasterio

    root = tmp_path_factory.mktemp("serve")
    allowed = root / "allowed"
    for side in ("A", "B"):
        (allowed / side).mkdir(parents=True)
    before, after = random_pairs(5, seed=11)
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        Image.fromarray(b).save(allowed / "A" / f"p{i}.png")
        Image.fromarray(a).save(allowed / "B" / f"p{i}.png")
    rng = np.random.default_rng(4)
    bands = rng.integers(200, 3000, size=(4, 64, 64), dtype=np.uint16)
    for side, data in (("A", bands), ("B", np.clip(bands.astype(int) + rng.integers(-300, 300, bands.shape),
                                                   0, 65535).astype(np.uint16))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(allowed / side / "t0.tif", "w", driver="GTiff", width=64, height=64, count=4,
                               dtype="uint16") as ds:
                ds.write(data)
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(allowed / "big.png")
    secret = root / "secret"
    secret.mkdir()
    shutil.copy(allowed / "A" / "p0.png", root / "outside.png")
    shutil.copy(allowed / "A" / "p0.png", secret / "x.png")
    (allowed / "link.png").symlink_to(root / "outside.png")
    (allowed / "linkdir").symlink_to(secret)
    archive = root / "archive"  # the pairs to index for search
    shutil.copytree(allowed / "A", archive / "A", ignore=shutil.ignore_patterns("*.tif"))
    shutil.copytree(allowed / "B", archive / "B", ignore=shutil.ignore_patterns("*.tif"))
    return {"root": root, "allowed": allowed, "archive": archive}


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def index_dir(files: dict[str, Any], model_dir: Path) -> Path:
    out = files["root"] / "index"
    result = invoke("index", files["archive"], "--out", out, "--model", model_dir, "--device", "cpu",
                    "--quiet")
    assert result.exit_code == 0, result.output
    return out


_CLI: dict[tuple, dict[str, Any]] = {}


def cli_answer(model_dir: Path, allowed: Path, name_a: str, name_b: str, beam: int | None = None,
               bands: str | None = None) -> dict[str, Any]:
    """`rsicrc caption --json` of allowed/name_a, allowed/name_b (cached)."""
    key = (name_a, name_b, beam, bands)
    if key not in _CLI:
        extra = (["--beam", str(beam)] if beam else []) + (["--bands", bands] if bands else [])
        result = invoke("caption", allowed / name_a, allowed / name_b, "--model", model_dir,
                        "--device", "cpu", "--json", *extra)
        assert result.exit_code == 0, result.output
        _CLI[key] = json.loads(result.stdout)
    return _CLI[key]


def assert_same_caption(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Token for token the same; scores equal up to float rounding of a different batch."""
    assert set(got) == set(want) == {"caption", "score", "tokens", "beams", "timing_ms"}
    assert got["tokens"] == want["tokens"]
    assert got["caption"] == want["caption"]
    assert [b["caption"] for b in got["beams"]] == [b["caption"] for b in want["beams"]]
    assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    assert [b["score"] for b in got["beams"]] == pytest.approx([b["score"] for b in want["beams"]], abs=1e-5)
    assert {"read", "queue", "encode", "decode", "total"} <= set(got["timing_ms"])


def assert_error(response: Any, status: int, *texts: str) -> str:
    """A JSON error answer: the status, one key `error`, one line, the expected words."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and body["error"], body
    for text in texts:
        assert text in body["error"], body["error"]
    return body["error"]


def metric(client: Any, name: str) -> float:
    """One unlabelled sample of GET /metrics."""
    text = client.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def server(model_dir: Path, files: dict[str, Any], index_dir: Path):
    proc = ServerProcess(["--model", model_dir, "--index", index_dir, "--allow-paths", files["allowed"],
                          "--max-wait-ms", "200", "--max-upload-mb", "1", "--max-beam", "4",
                          "--device", "cpu"], prelude=NO_TORCH).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def upload(allowed: Path, name_a: str, name_b: str) -> dict[str, Any]:
    return {"before": (Path(name_a).name, (allowed / name_a).read_bytes()),
            "after": (Path(name_b).name, (allowed / name_b).read_bytes())}


def good_request_works(client: Any, files: dict[str, Any], model_dir: Path) -> None:
    response = client.post("/v1/caption", files=upload(files["allowed"], "A/p1.png", "B/p1.png"))
    assert response.status_code == 200, response.text
    assert_same_caption(response.json(), cli_answer(model_dir, files["allowed"], "A/p1.png", "B/p1.png"))


# --- captions -------------------------------------------------------------------------------------

def test_concurrent_captions_equal_the_cli_and_batch_by_beam(client: Any, files: dict[str, Any],
                                                              model_dir: Path) -> None:
    allowed = files["allowed"]
    jobs = [(f"A/p{i}.png", f"B/p{i}.png", None, None) for i in range(5)]  # default beam 3
    jobs += [("A/t0.tif", "B/t0.tif", None, "4,3,2")]  # GeoTIFF through rasterio, bands chosen
    jobs += [(f"A/p{i}.png", f"B/p{i}.png", 2, None) for i in range(3)]  # beam 2: other batches
    wants = [cli_answer(model_dir, allowed, *job) for job in jobs]
    pairs_before = metric(client, "rsicrc_batch_size_sum")

    def send(job: tuple) -> Any:
        a, b, beam, bands = job
        data = {k: str(v) for k, v in (("beam", beam), ("bands", bands)) if v is not None}
        return client.post("/v1/caption", files=upload(allowed, a, b), data=data)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs))
    for response, want in zip(responses, wants, strict=True):
        assert response.status_code == 200, response.text
        assert_same_caption(response.json(), want)
    sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert all(s <= 6 for s in sizes[:6]) and all(s <= 3 for s in sizes[6:])  # beams never mixed
    assert max(sizes) > 1, sizes  # concurrent requests were batched
    assert metric(client, "rsicrc_batch_size_sum") - pairs_before == len(jobs)


def test_path_mode_equals_upload(client: Any, files: dict[str, Any], model_dir: Path) -> None:
    for a, b, bands in (("A/p2.png", "B/p2.png", None), ("A/t0.tif", "B/t0.tif", "4,3,2")):
        body: dict[str, Any] = {"before": a, "after": b, "beam": 2}
        if bands:
            body["bands"] = bands
        response = client.post("/v1/caption", json=body)
        assert response.status_code == 200, response.text
        assert_same_caption(response.json(), cli_answer(model_dir, files["allowed"], a, b, 2, bands))


@pytest.mark.parametrize("before", ["../outside.png", "A/../../outside.png", "link.png", "linkdir/x.png",
                                    "A/../B/../../secret/x.png", "ABSOLUTE"])
def test_path_mode_cannot_escape_allow_paths(client: Any, files: dict[str, Any], model_dir: Path,
                                             before: str) -> None:
    if before == "ABSOLUTE":
        before = str(files["root"] / "outside.png")
    response = client.post("/v1/caption", json={"before": before, "after": "B/p0.png"})
    message = assert_error(response, 403, "outside the folder this server may read")
    assert str(files["root"]) not in message.replace(before, "")
    good_request_works(client, files, model_dir)


def test_path_mode_errors_name_the_client_path(client: Any, files: dict[str, Any]) -> None:
    message = assert_error(client.post("/v1/caption", json={"before": "A/nope.png", "after": "B/p0.png"}),
                           400, "A/nope.png: image not found")
    assert str(files["allowed"]) not in message
    assert_error(client.post("/v1/caption", json={"before": "A/p0.png", "after": "big.png"}), 400,
                 "same size", "before: A/p0.png", "after: big.png")
    assert_error(client.post("/v1/caption", json={"before": 3, "after": "B/p0.png"}), 422,
                 "before must be a path")


def _chunked(data: bytes):
    """The body in 64 KiB pieces: httpx sends an iterator with Transfer-Encoding: chunked."""
    for i in range(0, len(data), 1 << 16):
        yield data[i: i + (1 << 16)]


def _bad_requests(allowed: Path) -> dict[str, tuple[dict[str, Any], int, tuple[str, ...]]]:
    """name -> (httpx.post keyword arguments, status, words of the error)."""
    good = upload(allowed, "A/p0.png", "B/p0.png")
    png = (allowed / "A" / "p0.png").read_bytes()
    big = np.random.default_rng(0).integers(0, 256, size=1_300_000, dtype=np.uint8).tobytes()
    multipart = httpx.Request("POST", "http://x", files={"before": ("a.png", big), "after": ("b.png", png)})
    return {
        "not an image": ({"files": {**good, "after": ("notes.txt", b"hello, not an image")}}, 400,
                         ("after.txt", "not a readable image")),
        "truncated png": ({"files": {**good, "before": ("x.png", png[: len(png) // 2])}}, 400,
                          ("before.png", "corrupted or truncated")),
        "empty file": ({"files": {**good, "before": ("x.png", b"")}}, 400, ("before.png", "empty file")),
        "size mismatch": ({"files": {**good, "after": ("big.png", (allowed / "big.png").read_bytes())}}, 400,
                          ("same size", "72x72", "50x60")),
        "band out of range": ({"files": good, "data": {"bands": "4"}}, 400, ("band 4 is out of range",)),
        "bands junk": ({"files": good, "data": {"bands": "red"}}, 422, ("invalid bands", "4,3,2")),
        "beam 0": ({"files": good, "data": {"beam": "0"}}, 422, ("beam must be an integer from 1 to 4",)),
        "beam over --max-beam": ({"files": good, "data": {"beam": "5"}}, 422, ("from 1 to 4", "got 5")),
        "beam text": ({"files": good, "data": {"beam": "wide"}}, 422, ("beam must be an integer",)),
        "missing after": ({"files": {"before": good["before"]}}, 422, ("missing field(s) 'after'",)),
        "unknown field": ({"files": good, "data": {"beams": "2"}}, 422, ("unknown field(s) 'beams'",
                                                                         "valid fields: before, after")),
        "text instead of a file": ({"files": {"before": good["before"]}, "data": {"after": "B/p0.png"}}, 422,
                                   ("after must be a file upload",)),
        "over the upload limit": ({"files": {**good, "before": ("a.png", big)}}, 413, ("limit of 1 MiB",)),
        "over the limit, chunked": ({"content": _chunked(multipart.read()), "headers": {
            "content-type": multipart.headers["content-type"]}}, 413, ("limit of 1 MiB",)),
        "unsupported content type": ({"content": b"before=x", "headers": {"content-type": "text/plain"}}, 415,
                                     ("multipart/form-data",)),
        "malformed JSON": ({"content": b"{\"before\": ", "headers": {"content-type": "application/json"}},
                           400, ("not valid JSON",)),
        "JSON unknown field": ({"json": {"before": "A/p0.png", "after": "B/p0.png", "x": 1}}, 422,
                               ("unknown field(s) 'x'",)),
        "JSON beam as text": ({"json": {"before": "A/p0.png", "after": "B/p0.png", "beam": True}}, 422,
                              ("beam must be an integer",)),
    }


BAD = ["not an image", "truncated png", "empty file", "size mismatch", "band out of range", "bands junk",
       "beam 0", "beam over --max-beam", "beam text", "missing after", "unknown field",
       "text instead of a file", "over the upload limit", "over the limit, chunked",
       "unsupported content type", "malformed JSON", "JSON unknown field", "JSON beam as text"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_gets_its_status_then_good_requests_work(client: Any, files: dict[str, Any],
                                                            model_dir: Path, name: str) -> None:
    kwargs, status, texts = _bad_requests(files["allowed"])[name]
    assert_error(client.post("/v1/caption", **kwargs), status, *texts)
    good_request_works(client, files, model_dir)


# --- search, health, metrics, docs ----------------------------------------------------------------

def test_search_equals_the_cli(client: Any, index_dir: Path, model_dir: Path) -> None:
    for body, extra in (({"query": QUERY, "top_k": 3}, ["--top-k", "3"]), ({"query": QUERY}, [])):
        cli = invoke("search", QUERY, "--index", index_dir, "--model", model_dir, "--device", "cpu", "--json",
                     *extra)
        assert cli.exit_code == 0, cli.output
        response = client.post("/v1/search", json=body)
        assert response.status_code == 200, response.text
        assert response.json() == json.loads(cli.stdout)
    assert_error(client.post("/v1/search", json={"query": QUERY, "top_k": 0}), 422,
                 "top-k must be an integer")
    assert_error(client.post("/v1/search", json={"query": "  "}), 422, "has no words")
    assert_error(client.post("/v1/search", json={"text": QUERY}), 422, "unknown field(s) 'text'")
    assert_error(client.post("/v1/search", json=[QUERY]), 400, "JSON object")
    assert client.post("/v1/search", json={"query": QUERY, "top_k": 2}).status_code == 200


def test_health_readiness_metrics_and_docs(client: Any, model_dir: Path) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["precision"] == "fp32"
    assert ready.json()["index"]["pairs"] == 5
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("rsicrc_requests_total", "rsicrc_request_errors_total",
                 "rsicrc_request_duration_seconds_bucket", "rsicrc_batch_size_bucket", "rsicrc_queue_depth",
                 "rsicrc_model_ready 1.0"):
        assert name in metrics.text, name
    assert 'rsicrc_requests_total{endpoint="/healthz",status="200"}' in metrics.text
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) >= {"/v1/caption", "/v1/search", "/healthz", "/readyz", "/metrics"}
    body = spec["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert client.get("/docs").status_code == 200
    assert_error(client.get("/nowhere"), 404, "Not Found")


# --- backpressure and shutdown (a server of their own) -------------------------------------------

def _wait_for_depth(client: Any, depth: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(client, "rsicrc_queue_depth") < depth:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.02)


def test_full_queue_answers_503_with_retry_after_and_serving_goes_on(model_dir: Path,
                                                                     files: dict[str, Any]) -> None:
    allowed = files["allowed"]
    want = cli_answer(model_dir, allowed, "A/p3.png", "B/p3.png", 4)
    with ServerProcess(["--model", model_dir, "--max-queue", "1", "--max-batch", "1", "--device", "cpu"],
                       prelude=NO_TORCH) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        def send(_: int = 0) -> Any:
            return client.post("/v1/caption", files=upload(allowed, "A/p3.png", "B/p3.png"),
                               data={"beam": "4"})

        refused: list[Any] = []
        for _ in range(5):  # a burst of 32 against a queue of 1 and batches of 1: some must be refused
            with ThreadPoolExecutor(32) as pool:
                responses = list(pool.map(send, range(32)))
            assert {r.status_code for r in responses} <= {200, 503}
            for r in responses:
                if r.status_code == 200:
                    assert_same_caption(r.json(), want)
            refused = [r for r in responses if r.status_code == 503]
            if refused:
                break
        assert refused, "a burst of 32 never filled a queue of 1"
        assert_error(refused[0], 503, "queue is full (1 waiting)")
        assert refused[0].headers["retry-after"] == "1"
        assert_same_caption(send().json(), want)  # serving goes on
        assert metric(client, "rsicrc_queue_depth") == 0


def _slow_upload(client: Any, allowed: Path, seconds: float) -> Any:
    """POST a pair whose multipart body trickles in over `seconds`: the server knows the request
    is on its way (announced to the batcher) from its headers on, so batches forming meanwhile wait
    for it, up to --max-wait-ms."""
    request = httpx.Request("POST", "http://x", files=upload(allowed, "A/p3.png", "B/p3.png"))
    body, pieces = request.read(), 20

    def trickle():
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            yield body[i: i + step]
            time.sleep(seconds / pieces)

    return client.post("/v1/caption", content=trickle(),
                       headers={"content-type": request.headers["content-type"]})


def test_sigterm_answers_queued_and_uploading_requests_then_exits_0(model_dir: Path,
                                                                      files: dict[str, Any]) -> None:
    allowed = files["allowed"]
    want = cli_answer(model_dir, allowed, "A/p3.png", "B/p3.png")
    server = ServerProcess(["--model", model_dir, "--max-wait-ms", "6000", "--device", "cpu"],
                           prelude=NO_TORCH).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
            def send() -> Any:
                return client.post("/v1/caption", files=upload(allowed, "A/p3.png", "B/p3.png"))

            assert send().status_code == 200  # alone: answered at once, no --max-wait-ms for nobody
            slow = pool.submit(_slow_upload, client, allowed, 3.0)
            queued = [pool.submit(send) for _ in range(2)]
            _wait_for_depth(client, 2)  # both wait for the slow one to join their batch
            code: list[int] = []
            stopper = threading.Thread(target=lambda: code.append(server.stop()))
            stopper.start()  # SIGTERM while two requests wait and a third is still uploading
            responses = [f.result(60) for f in [slow, *queued]]
            stopper.join(60)
        for response in responses:
            assert response.status_code == 200, response.text
            assert_same_caption(response.json(), want)
        assert [int(r.headers["x-batch-size"]) for r in responses] == [3, 3, 3]
        assert code == [0], "\n".join(server.log[-20:])
        host, port = server.url.removeprefix("http://").split(":")
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
        assert not any("Traceback" in line for line in server.log)
    finally:
        server.kill()


# --- start-up failures ----------------------------------------------------------------------------

def test_start_up_errors_are_one_line(model_dir: Path, files: dict[str, Any], tmp_path: Path) -> None:
    assert_one_line_error(invoke("serve", "--model", tmp_path / "none"), "no model at")
    assert_one_line_error(invoke("serve", "--model", model_dir, "--max-batch", "0"), "max-batch must be")
    assert_one_line_error(invoke("serve", "--model", model_dir, "--allow-paths", tmp_path / "no"),
                          "not a folder")
    assert_one_line_error(invoke("serve", "--model", model_dir, "--precision", "int4"),
                          "available precisions")
    assert_one_line_error(invoke("serve", "--model", model_dir, "--index", tmp_path / "no"), "rsicrc index")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(invoke("serve", "--model", model_dir, "--port", str(port)),
                              f"cannot listen on 127.0.0.1:{port}")


def test_a_model_that_fails_to_load_stops_the_server_with_exit_2(model_dir: Path, tmp_path: Path) -> None:
    from rsicrc.runtime.manifest import load_manifest

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    graph = copy / load_manifest(copy).graphs["fp32"]["decoder_step"].file
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-c", MAIN, "serve", "--model", str(copy), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and graph.name in last and "sha256" in last, proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_the_serve_extra_modules_import_and_the_command_says_what_to_install(model_dir: Path) -> None:
    code = NO_TORCH.replace('BLOCKED = {"torch"}', 'BLOCKED = {"torch", "fastapi", "starlette", "uvicorn", '
                            '"prometheus_client", "httpx"}') + textwrap.dedent('''
        import importlib, pkgutil
        import rsicrc.runtime.serve as serve
        for info in pkgutil.iter_modules(serve.__path__):
            importlib.import_module(f"rsicrc.runtime.serve.{info.name}")
        print("imported", len(list(pkgutil.iter_modules(serve.__path__))))
    ''') + MAIN
    proc = subprocess.run([sys.executable, "-c", code, "serve", "--model", str(model_dir), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "imported 9"
    assert proc.stderr.strip() == "error: rsicrc serve needs FastAPI and uvicorn: pip install 'rsicrc[serve]'"


# --- the load test script -------------------------------------------------------------------------

def test_load_benchmark_runs_a_short_sweep_and_reports(model_dir: Path, files: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """benchmarks/serve_load.py end to end at toy scale: every level answered, nothing lost, the
    server drained with exit code 0, the record has what the README's table reports."""
    from benchmarks.serve_load import main

    out = tmp_path / "load.json"
    assert main(["--model", str(model_dir), "--data", str(files["archive"]), "--concurrency", "1,3",
                 "--duration", "3", "--warmup", "0.5", "--soak", "2", "--soak-concurrency", "2",
                 "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["exit_code"] == 0
    levels = record["levels"]
    assert [v["concurrency"] for v in levels] == [1, 3]
    for v in levels:
        assert v["ok"] > 0 and v["failed"] == v["lost"] == v["rejected"] == 0, v
        assert v["p50_ms"] <= v["p95_ms"] <= v["p99_ms"]
        assert sum(v["batch_sizes"].values()) == v["ok"] and v["mean_batch"] >= 1.0
    assert set(levels[0]["batch_sizes"]) == {"1"}  # one client: always alone
    assert record["soak"]["rss_mb_start"] > 0 and record["soak"]["level"]["lost"] == 0


def test_batch_ceiling_script_reports_a_ratio(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/batch_ceiling.py at toy scale: both batch sizes run and a finite ratio is printed."""
    from benchmarks.batch_ceiling import main

    assert main(["--model", str(model_dir), "--batch", "2", "--rounds", "1", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "round 0 batch  1:" in out and "round 0 batch  2:" in out
    ratio = float(re.search(r"batch 2 / batch 1 \(medians\): (\S+)", out).group(1))
    assert ratio > 0

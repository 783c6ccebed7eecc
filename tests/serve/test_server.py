"""`vitkit serve` as a real process on 127.0.0.1: the v2 endpoints and /predict give what the export computes,
concurrent requests share forward passes with unchanged answers, and every bad or hostile input is a 4xx with a
message while the server keeps serving."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe, write_image_folder
from tests.serve.client import Server, png, read_pngs
from vitkit.deploy.export import ExportOptions, export_run
from vitkit.deploy.formats import OrtModel
from vitkit.deploy.predict import load_classifier, predict
from vitkit.serve.models import load_models
from vitkit.train.loop import train


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """models/shapes/1.0.0 (ONNX) and 1.1.0 (torch.export) of one tiny run, and the images it was trained on."""
    tmp = tmp_path_factory.mktemp("serve")
    images = write_image_folder(tmp / "images", ("red", "green", "blue"), per_class=10)
    recipe = tiny_recipe(*PLAIN, "schedule.epochs=2", f"data.source={images}", "data.val_fraction=0.3")
    train(recipe, tmp / "run", console=Console(quiet=True), evaluate=False)
    export_run(tmp / "run", tmp / "models" / "shapes" / "1.0.0", ExportOptions(version="1.0.0"))
    export_run(tmp / "run", tmp / "models" / "shapes" / "1.1.0", ExportOptions(format="pt2", version="1.1.0"))
    return tmp / "models"


@pytest.fixture(scope="module")
def server(models: Path):
    s = Server(str(models), "--max-batch", "8", "--max-wait-ms", "100")
    yield s
    s.close()


@pytest.fixture(scope="module")
def strict(models: Path):
    s = Server(str(models / "shapes" / "1.0.0"), "--max-body-mb", "0.25", "--max-images", "4", "--max-pixels", "40000")
    yield s
    s.close()


def photos(models: Path) -> list[tuple[str, bytes]]:
    return read_pngs(models.parent / "images")[:6]


def test_health_and_metadata(server: Server):
    assert server.get("/v2/health/live").json() == {"live": True}
    assert server.get("/v2/health/ready").json() == {"ready": True}
    meta = server.get("/v2/models/shapes").json()
    assert meta["versions"] == ["1.0.0", "1.1.0"] and meta["platform"] == "torch.export"  # the newest by default
    assert meta["inputs"][0] == {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 16, 16]}
    assert meta["parameters"]["classes"] == ["blue", "green", "red"]
    old = server.get("/v2/models/shapes/versions/1.0.0").json()
    assert old["platform"] == "onnxruntime" and len(old["parameters"]["sha256"]) == 64
    assert server.get("/v2/models/shapes/ready").json() == {"name": "shapes", "ready": True}
    missing = server.get("/v2/models/cats")
    assert missing.status == 404 and "no model 'cats'; this server serves shapes" in missing.json()["error"]
    assert server.get("/v2/models/shapes/versions/9.9").status == 404


def test_predict_gives_what_vitkit_predict_computes(server: Server, models: Path, tmp_path: Path):
    files = photos(models)
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    local = list(predict(load_classifier(models / "shapes" / "1.0.0"), sorted(tmp_path.iterdir()), top=2))
    by_files = server.post_files("/predict?version=1.0.0&top_k=2", files).json()
    encoded = [base64.b64encode(data).decode() for _, data in files]
    by_json = server.post_json("/predict?version=1.0.0&top_k=2", {"images": encoded}).json()
    assert by_files["model"] == "shapes" and by_files["version"] == "1.0.0" and len(by_files["sha256"]) == 64
    for answer in (by_files, by_json):
        for expected, got in zip(local, answer["predictions"], strict=True):
            assert [t["label"] for t in got["top"]] == [label for label, _ in expected.top]
            np.testing.assert_allclose([t["probability"] for t in got["top"]], [p for _, p in expected.top], atol=1e-5)


def test_v2_infer_returns_the_exports_logits(server: Server, models: Path):
    pixels = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    request = {"id": "r1", "inputs": [{"name": "pixels", "shape": [3, 3, 16, 16], "datatype": "FP32"}]}
    request["inputs"][0]["data"] = pixels.ravel().tolist()
    reply = server.post_json("/v2/models/shapes/versions/1.0.0/infer", request).json()
    logits = next(o for o in reply["outputs"] if o["name"] == "logits")
    assert reply["id"] == "r1" and reply["model_version"] == "1.0.0" and logits["shape"] == [3, 3]
    expected = OrtModel(models / "shapes" / "1.0.0" / "model.onnx")(pixels)
    np.testing.assert_allclose(np.asarray(logits["data"]).reshape(3, 3), expected, atol=1e-5)
    bad = dict(request["inputs"][0])
    for change, message in (
        ({"datatype": "INT8"}, "datatype FP32"),
        ({"shape": [3, 3, 8, 8]}, "[n, 3, 16, 16]"),
        ({"data": [0.0] * 10}, "holds 10 numbers"),
    ):
        reply = server.post_json("/v2/models/shapes/infer", {"inputs": [{**bad, **change}]})
        assert reply.status == 400 and message in reply.json()["error"]


def test_concurrent_requests_share_forward_passes_with_the_same_answers(server: Server, models: Path):
    files = photos(models) * 3  # 18 requests of one image
    alone = [server.post_files("/predict?top_k=3", [f]).json()["predictions"][0] for f in files[:6]]
    passes = server.metric("vitkit_batch_size_count", model="shapes:1.1.0")
    images = server.metric("vitkit_batch_size_sum", model="shapes:1.1.0")
    with ThreadPoolExecutor(len(files)) as pool:
        replies = list(pool.map(lambda f: server.post_files("/predict?top_k=3", [f]), files))
    assert all(r.status == 200 for r in replies)
    assert server.metric("vitkit_batch_size_sum", model="shapes:1.1.0") - images == len(files)
    assert server.metric("vitkit_batch_size_count", model="shapes:1.1.0") - passes < len(files)
    for i, reply in enumerate(replies):
        got, expected = reply.json()["predictions"][0]["top"], alone[i % 6]["top"]
        assert [t["label"] for t in got] == [t["label"] for t in expected]
        np.testing.assert_allclose([t["probability"] for t in got], [t["probability"] for t in expected], atol=1e-5)


NOISE_PNG = png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side x side 1-bit pixels, with a tiny compressed body."""
    raw = zlib.compress(b"\x00" * (side // 8 + 1) * 4)
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("send", "status", "message"),
    [
        (lambda s: s.post_files("/predict", [("a.txt", b"just text")]), 415, "not an image in a supported format"),
        (lambda s: s.post_files("/predict", [("a.png", NOISE_PNG[: len(NOISE_PNG) // 2])]), 400, "damaged"),
        (lambda s: s.post_files("/predict", [("e.png", b"")]), 400, "is empty"),
        (lambda s: s.post_files("/predict", [("big.png", png(np.zeros((300, 300, 3), np.uint8)))]), 413, "300 x 300"),
        (lambda s: s.post_files("/predict", [("bomb.png", png_bomb(60000))]), 413, "pixels"),
        (lambda s: s.post_files("/predict", [("x.png", png(np.zeros((8, 8, 3), np.uint8)))] * 5), 413, "limit is 4"),
        (lambda s: s.post_files("/predict", [("huge.png", b"\x00" * 300_000)]), 413, "over the server's limit"),
        (lambda s: s.post_json("/predict", {"images": []}), 400, "holds no image"),
        (lambda s: s.post_json("/predict", {"pictures": ["x"]}), 400, '{"images"'),
        (lambda s: s.post_json("/predict", {"images": ["%%%"]}), 400, "not valid base64"),
        (lambda s: s.request("POST", "/predict", b"{", {"Content-Type": "application/json"}), 400, "not valid JSON"),
        (lambda s: s.request("POST", "/predict", b"abc", {"Content-Type": "text/plain"}), 415, "multipart/form-data"),
        (lambda s: s.post_files("/predict?top_k=0", [("a.txt", b"x")]), 422, "top_k"),
        (lambda s: s.post_json("/v2/models/shapes/infer", {"inputs": "no"}), 422, "inputs"),
        (lambda s: s.get("/no/such/path"), 404, "Not Found"),
    ],
    ids=[
        "text",
        "truncated",
        "empty",
        "too-many-pixels",
        "decompression-bomb",
        "too-many-images",
        "body-too-large",
        "no-images",
        "wrong-json",
        "bad-base64",
        "bad-json",
        "wrong-content-type",
        "bad-query",
        "bad-v2-body",
        "unknown-path",
    ],
)
def test_bad_and_hostile_inputs_get_a_4xx_with_a_message(strict: Server, send, status: int, message: str):
    reply = send(strict)
    assert reply.status == status, reply.body[:300]
    assert message in reply.json()["error"]
    assert strict.get("/v2/health/ready").status == 200  # still serving


def test_a_chunked_body_over_the_limit_is_cut_off(strict: Server):
    connection = http.client.HTTPConnection("127.0.0.1", strict.port, timeout=30)
    body = iter([b"{" + b" " * 100_000] * 4)  # no Content-Length: sent chunked
    connection.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
    reply = connection.getresponse()
    assert reply.status == 413 and "over the server's limit" in json.loads(reply.read())["error"]


def test_metrics_count_requests_by_code_predictions_and_memory(strict: Server, models: Path):
    before = strict.metric("vitkit_requests_total", endpoint="/predict", code="415")
    strict.post_files("/predict", [("a.txt", b"text")])
    assert strict.metric("vitkit_requests_total", endpoint="/predict", code="415") == before + 1
    reply = strict.post_files("/predict", photos(models)[:2]).json()
    label = reply["predictions"][0]["top"][0]["label"]
    assert strict.metric("vitkit_predictions_total", model="shapes", version="1.0.0", label=label) >= 1
    assert strict.metric("vitkit_confidence_count", model="shapes", version="1.0.0") >= 2
    assert strict.metric("process_resident_memory_bytes") > 10e6


def test_openapi_schema_describes_both_upload_forms(strict: Server):
    schema = strict.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "/v2/models/{name}/versions/{version}/infer" in schema["paths"]
    assert schema["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]


def test_model_folders_are_named_and_versioned(models: Path, tmp_path: Path):
    assert [v.version for v in load_models(models)["shapes"]] == ["1.0.0", "1.1.0"]
    assert list(load_models(models / "shapes" / "1.1.0")) == ["shapes"]
    with pytest.raises(Exception, match="holds no model"):
        load_models(tmp_path)


def test_no_generated_request_gets_a_5xx(strict: Server):
    """Requests generated from the server's own OpenAPI schema (schemathesis), 12 per operation: none is answered
    with a server error, and every refusal is a JSON error message."""
    schema = schemathesis.openapi.from_url(f"{strict.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    calls = []

    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def call(case) -> None:
            response = case.call(base_url=strict.url, timeout=30)
            calls.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
            if response.status_code >= 400:
                assert "error" in response.json()

        call()
    assert len(calls) > 5 * len(operations)
    assert strict.get("/v2/health/ready").status == 200


def test_a_taken_port_is_named_before_the_server_says_it_serves(server: Server, models: Path):
    """Before, 'serving on ...' was printed, then uvicorn's own bind error; now the fix is named and nothing runs."""
    taken = subprocess.run(
        [sys.executable, "-m", "vitkit", "serve", str(models), "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert taken.returncode == 2 and "serving on" not in taken.stdout
    assert f"cannot listen on 127.0.0.1:{server.port}" in taken.stderr and "--port 0" in taken.stderr
    assert "Traceback" not in taken.stderr
    assert server.get("/v2/health/ready").status == 200  # the running server is untouched

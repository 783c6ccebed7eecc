"""Versions on a real server: A/B traffic by weight with sticky keys, shadow mode, promote and rollback without a
restart (rollback restores the earlier answers bit for bit), a broken candidate that never costs an answer, new
versions loaded by reload, the admin token, and `vitkit compare` on the log the server wrote."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe, write_image_folder
from tests.e2e.test_cli import vitkit
from tests.serve.client import Server, multipart, read_pngs
from vitkit.deploy.export import ExportOptions, export_run
from vitkit.train.loop import train

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """models/shapes/1.0.0 and 1.1.0 from two differently seeded runs, and 1.2.0 whose model cannot run."""
    tmp = tmp_path_factory.mktemp("rollout")
    images = write_image_folder(tmp / "images", ("red", "green", "blue"), per_class=8)
    for seed, version in ((0, "1.0.0"), (1, "1.1.0")):
        recipe = tiny_recipe(*PLAIN, "schedule.epochs=1", f"data.source={images}", f"train.seed={seed}")
        train(recipe, tmp / f"run{seed}", console=Console(quiet=True), evaluate=False)
        export_run(tmp / f"run{seed}", tmp / "models" / "shapes" / version, ExportOptions(version=version))
    broken = tmp / "spare" / "1.2.0"
    shutil.copytree(tmp / "models" / "shapes" / "1.1.0", broken)
    doc = json.loads((broken / "model.json").read_text())
    doc["recipe"]["model"]["img_size"] = doc["img_size"] = 24  # the ONNX graph takes 16 px: every forward fails
    (broken / "model.json").write_text(json.dumps(doc))
    return tmp


@pytest.fixture(scope="module")
def server(folder: Path):
    s = Server(str(folder / "models"), "--admin-token", TOKEN, "--log", str(folder / "predictions.jsonl"))
    yield s
    s.close()


def admin(server: Server, method: str, path: str, body: dict | None = None, token: str = TOKEN):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return server.request(method, path, data, headers)


def ask(server: Server, image: tuple[str, bytes], key: str | None = None) -> dict:
    body, content_type = multipart([image])
    headers = {"Content-Type": content_type, **({"X-Request-Key": key} if key else {})}
    reply = server.request("POST", "/predict?top_k=3", body, headers)
    assert reply.status == 200, reply.body
    return reply.json()


def test_ab_split_by_weight_with_sticky_keys(server: Server, folder: Path):
    image = read_pngs(folder / "images")[0]
    set_to = {"stable": "1.0.0", "candidate": "1.1.0", "weight": 0.3, "shadow": False}
    assert admin(server, "PUT", "/admin/models/shapes/rollout", set_to).json()["weight"] == 0.3
    versions = [ask(server, image, f"user-{i}")["version"] for i in range(300)]
    assert abs(versions.count("1.1.0") - 90) <= 4 * math.sqrt(300 * 0.3 * 0.7)
    assert {ask(server, image, "user-3")["version"] for _ in range(10)} == {versions[3]}
    admin(server, "PUT", "/admin/models/shapes/rollout", {"candidate": None})


def test_shadow_never_answers_and_its_predictions_are_logged(server: Server, folder: Path):
    image = read_pngs(folder / "images")[1]
    admin(server, "PUT", "/admin/models/shapes/rollout", {"stable": "1.0.0", "candidate": "1.1.0", "shadow": True})
    replies = [ask(server, image, f"k{i}") for i in range(20)]
    assert {r["version"] for r in replies} == {"1.0.0"}
    ids = {r["predictions"][0]["id"] for r in replies}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # shadow predictions are written in the background
        records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        shadowed = {r["request_id"] for r in records if r.get("role") == "shadow" and r["version"] == "1.1.0"}
        if ids <= shadowed:
            break
    assert ids <= shadowed
    admin(server, "PUT", "/admin/models/shapes/rollout", {"candidate": None, "shadow": False})


def test_promote_then_rollback_restores_the_earlier_answers_bit_for_bit(server: Server, folder: Path):
    images = read_pngs(folder / "images")[:4]
    admin(server, "PUT", "/admin/models/shapes/rollout", {"stable": "1.0.0", "candidate": "1.1.0", "weight": 0.0})
    before = [ask(server, image)["predictions"][0]["top"] for image in images]
    assert admin(server, "POST", "/admin/models/shapes/promote").json()["stable"] == "1.1.0"
    promoted = [ask(server, image) for image in images]
    assert {r["version"] for r in promoted} == {"1.1.0"}
    assert [r["predictions"][0]["top"] for r in promoted] != before  # another model answers
    assert admin(server, "POST", "/admin/models/shapes/rollback").json()["stable"] == "1.0.0"
    assert [ask(server, image)["predictions"][0]["top"] for image in images] == before


def test_a_broken_candidate_never_costs_an_answer(server: Server, folder: Path):
    shutil.copytree(folder / "spare" / "1.2.0", folder / "models" / "shapes" / "1.2.0")
    assert admin(server, "POST", "/admin/reload").json()["added"] == {"shapes": ["1.2.0"]}
    assert "1.2.0" in server.get("/v2/models/shapes").json()["versions"]
    assert server.get("/v2/models/shapes/versions/1.2.0").json()["parameters"]["broken"]
    admin(server, "PUT", "/admin/models/shapes/rollout", {"stable": "1.0.0", "candidate": "1.2.0", "weight": 1.0})
    replies = [ask(server, image) for image in read_pngs(folder / "images")[:5]]
    assert {(r["version"], r["fallback_from"]) for r in replies} == {("1.0.0", "1.2.0")}
    assert server.metric("vitkit_version_errors_total", model="shapes", version="1.2.0", role="answer") >= 5
    admin(server, "PUT", "/admin/models/shapes/rollout", {"candidate": None})


def test_admin_needs_the_token(server: Server):
    assert admin(server, "GET", "/admin/models/shapes/rollout", token="wrong").status == 401
    assert admin(server, "GET", "/admin/models/shapes/rollout").status == 200


def test_a_misspelt_rollout_field_is_refused_and_changes_nothing(server: Server):
    before = admin(server, "GET", "/admin/models/shapes/rollout").json()
    typo = admin(server, "PUT", "/admin/models/shapes/rollout", {"candidate": "1.1.0", "share": 0.5})
    assert typo.status == 422 and "body.share: Extra inputs are not permitted" in typo.json()["error"]
    assert admin(server, "GET", "/admin/models/shapes/rollout").json() == before


def test_compare_judges_the_candidate_from_the_log_and_feedback(server: Server, folder: Path):
    admin(server, "PUT", "/admin/models/shapes/rollout", {"stable": "1.0.0", "candidate": "1.1.0", "shadow": True})
    for name, data in read_pngs(folder / "images"):
        reply = ask(server, (name, data))
        label = {"0": "red", "1": "green", "2": "blue"}.get(name[0], "red")  # any fixed labelling will do
        assert server.post_json("/feedback", {"id": reply["predictions"][0]["id"], "label": label}).status == 200
    # a label that is no class would count as a wrong answer of both versions: refused, and not logged
    lines = (folder / "predictions.jsonl").read_text().count("\n")
    typo = server.post_json("/feedback", {"id": reply["predictions"][0]["id"], "label": "gren"})
    said = "label 'gren' is not a class of the served models (blue, green, red)."
    assert typo.status == 422 and typo.json()["error"] == said
    assert server.post_json("/feedback", {"id": "x" * 100_000, "label": "red"}).status == 422
    findings = server.post_json("/feedback", {"id": reply["predictions"][0]["id"], "labels": ["red"]})
    assert findings.status == 422 and findings.json()["error"] == 'send the prediction\'s "label": the true class.'
    assert (folder / "predictions.jsonl").read_text().count("\n") == lines
    admin(server, "PUT", "/admin/models/shapes/rollout", {"candidate": None, "shadow": False})
    out = vitkit("compare", str(folder / "predictions.jsonl"), "--a", "1.0.0", "--b", "1.1.0")
    assert out.returncode == 0, out.stderr
    assert "McNemar exact (paired)" in out.stdout and "accuracy: 1.0.0" in out.stdout

"""`vitkit serve --ray` on a one-node Ray started by the command itself: the same endpoints and answers as
`vitkit serve`, with Ray Serve's @serve.batch joining concurrent requests, and a clean shutdown on SIGTERM."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe, write_image_folder
from tests.serve.client import Server, read_pngs
from vitkit.deploy.export import export_run
from vitkit.deploy.predict import load_classifier, predict
from vitkit.train.loop import train


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ray")
    images = write_image_folder(tmp / "images", ("red", "green", "blue"), per_class=8)
    train(tiny_recipe(*PLAIN, "schedule.epochs=1", f"data.source={images}"), tmp / "run", console=Console(quiet=True))
    export_run(tmp / "run", tmp / "models" / "shapes" / "1.0.0")
    return tmp / "models" / "shapes" / "1.0.0"


def test_the_app_runs_as_a_ray_serve_deployment(export: Path, tmp_path: Path):
    files = read_pngs(export.parents[2] / "images")[:8]
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    local = list(predict(load_classifier(export), sorted(tmp_path.iterdir()), top=1))
    server = Server(
        str(export), "--ray", "--max-batch", "8", "--max-wait-ms", "200", startup_seconds=240, stop_seconds=90
    )
    try:
        assert server.get("/v2/models/shapes").json()["versions"] == ["1.0.0"]
        with ThreadPoolExecutor(len(files)) as pool:
            replies = list(pool.map(lambda f: server.post_files("/predict?top_k=1", [f]), files))
        assert all(r.status == 200 for r in replies), [r.body[:200] for r in replies]
        for expected, reply in zip(local, replies, strict=True):
            top = reply.json()["predictions"][0]["top"][0]
            assert top["label"] == expected.top[0][0]
            np.testing.assert_allclose(top["probability"], expected.top[0][1], atol=1e-5)
        images = server.metric("vitkit_batch_size_sum", model="shapes:1.0.0")
        passes = server.metric("vitkit_batch_size_count", model="shapes:1.0.0")
        assert images == len(files) + 1 and passes < images  # the warm-up image, then batches of several
        assert server.post_files("/predict", [("a.txt", b"text")]).status == 415
    finally:
        server.close()
    assert server.process.returncode is not None and server.process.returncode in (0, -15)

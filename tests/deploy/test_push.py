"""vitkit push: what goes up (checked on the commit huggingface_hub prepares, never on the network), and the
messages for a missing token, an unreachable hub and a wrong repository name."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe
from vitkit.deploy.card import read_front_matter
from vitkit.deploy.folders import export_folder
from vitkit.deploy.push import plan_push, push
from vitkit.errors import VitkitError
from vitkit.run_folder import check_new_run_folder
from vitkit.train.loop import train


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("push")
    train(tiny_recipe(*PLAIN, "schedule.epochs=1"), tmp / "run", console=Console(quiet=True), evaluate=False)
    export_folder(tmp / "run", tmp / "export", "hf")
    return tmp / "export"


@pytest.fixture
def no_stored_token(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))


class FakeHub:
    """HfApi's network calls replaced: a repository with `files` (and `card` as its README), and a record of the
    commit huggingface_hub prepares."""

    def __init__(self, monkeypatch, tmp: Path) -> None:
        self.files: list[str] = []
        self.card = ""
        self.captured: dict = {}
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.captured["repo"] = (repo_id, kwargs.get("private"))
            return f"https://hub.example/{repo_id}"

        def create_commit(api, repo_id, operations, **kwargs):
            hub.captured["files"] = sorted(op.path_in_repo for op in operations)
            hub.captured["bytes"] = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
            hub.captured["create_pr"] = kwargs.get("create_pr")

        def validate_yaml(api, content, **kwargs):  # the hub checks a README's front matter before the commit
            hub.captured["validated"] = read_front_matter(content)

        def hf_hub_download(api, repo_id, filename, **kwargs):
            (tmp / filename).write_text(hub.card)
            return str(tmp / filename)

        for name, fake in {
            "create_repo": create_repo,
            "create_commit": create_commit,
            "_validate_yaml": validate_yaml,
            "list_repo_files": lambda api, repo_id, **kwargs: list(hub.files),
            "hf_hub_download": hf_hub_download,
        }.items():
            monkeypatch.setattr(huggingface_hub.HfApi, name, fake)
        # one commit holds every file (hf_xet's pipelined upload would stream them from here)
        monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)


@pytest.fixture
def hub(monkeypatch, tmp_path: Path) -> FakeHub:
    return FakeHub(monkeypatch, tmp_path)


def test_the_prepared_commit_holds_the_export_and_its_card_only(exported: Path, hub: FakeHub):
    (exported / ".export-leftover").mkdir(exist_ok=True)  # a staging folder must never go up
    (exported / ".export-leftover" / "model.safetensors").write_bytes(b"partial")
    plan = plan_push(exported, "my-lab/tiny-vit")
    url = push(plan, private=True, token="hf_test")
    assert url == "https://hub.example/my-lab/tiny-vit" and hub.captured["repo"] == ("my-lab/tiny-vit", True)
    expected = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert hub.captured["files"] == plan.files == expected
    assert hub.captured["bytes"]["README.md"] == (exported / "README.md").read_bytes()
    assert hub.captured["validated"]["library_name"] == "transformers"


def test_a_repository_with_someone_elses_card_keeps_its_files(exported: Path, hub: FakeHub):
    hub.files, hub.card = [".gitattributes", "README.md", "config.json"], "# Our model\nWritten by hand.\n"
    with pytest.raises(VitkitError, match=r"already holds README.md, config.json.*--create-pr"):
        push(plan_push(exported, "my-lab/tiny-vit"), token="hf_test")
    assert "files" not in hub.captured  # nothing was committed
    push(plan_push(exported, "my-lab/tiny-vit"), token="hf_test", create_pr=True)
    assert hub.captured["create_pr"] is True and "README.md" in hub.captured["files"]


def test_a_new_version_replaces_an_earlier_vitkit_upload(exported: Path, hub: FakeHub):
    hub.files, hub.card = ["README.md", "config.json"], (exported / "README.md").read_text()
    push(plan_push(exported, "my-lab/tiny-vit"), token="hf_test")
    assert hub.captured["create_pr"] is False and "config.json" in hub.captured["files"]


def test_no_token_says_how_to_log_in_and_uploads_nothing(exported: Path, no_stored_token):
    with pytest.raises(VitkitError, match="no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"):
        push(plan_push(exported, "my-lab/tiny-vit"))


class NoWaits:
    """The time module without its waits."""

    def sleep(self, seconds: float) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_an_unreachable_hub_is_a_clear_message(exported: Path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    # huggingface_hub retries a refused connection five times with backoff (23 s); its waits are skipped here
    monkeypatch.setattr(huggingface_hub.utils._http, "time", NoWaits())
    with pytest.raises(VitkitError, match=rf"the upload to http://127.0.0.1:{port} failed: .*check the network"):
        push(plan_push(exported, "my-lab/tiny-vit"), token="hf_test")


def test_wrong_repository_names_and_foreign_folders_are_refused(exported: Path, tmp_path: Path):
    with pytest.raises(VitkitError, match="ORG/NAME"):
        plan_push(exported, "tiny-vit")
    with pytest.raises(VitkitError, match="not a vitkit export"):
        plan_push(tmp_path, "my-lab/tiny-vit")


def test_a_run_is_not_exported_for_a_push_without_a_token(exported: Path, tmp_path: Path):
    """The token is checked first: before, the run was exported into RUN/export-hf, then the push failed."""
    run = exported.parent / "run"
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"} | {"HF_HOME": str(tmp_path), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "vitkit", "push", str(run), "--repo", "my-lab/tiny-vit"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 2 and "no Hugging Face token" in out.stderr
    assert not (run / "export-hf").exists()


def test_overwrite_names_the_runs_own_exports_it_would_delete(exported: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(exported.parent / "run", run)
    shutil.copytree(exported, run / "export-hf")  # where vitkit export and vitkit push put a run's export
    with pytest.raises(VitkitError, match=r"holds exports of the run it would replace \(export-hf/\)"):
        check_new_run_folder(run, overwrite=True)
    assert (run / "export-hf" / "model.safetensors").is_file()

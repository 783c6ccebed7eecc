"""vitkit push: what goes up (checked on the commit huggingface_hub prepares, never on the network), and the
messages for a missing token, an unreachable hub and a wrong repository name."""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub
import pytest
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe
from vitkit.deploy.card import read_front_matter
from vitkit.deploy.folders import export_folder
from vitkit.deploy.push import plan_push, push
from vitkit.errors import VitkitError
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


def test_the_prepared_commit_holds_the_export_and_its_card_only(exported: Path, monkeypatch):
    captured: dict = {}

    def create_repo(self, repo_id, **kwargs):
        captured["repo"] = (repo_id, kwargs.get("private"))
        return f"https://hub.example/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        captured["files"] = sorted(op.path_in_repo for op in operations)
        captured["bytes"] = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}

    def validate_yaml(self, content, **kwargs):  # the hub checks a README's front matter before the commit
        captured["validated"] = read_front_matter(content)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.HfApi, "_validate_yaml", validate_yaml)
    # one commit holds every file (hf_xet's pipelined upload would stream them from here)
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    (exported / ".export-leftover").mkdir(exist_ok=True)  # a staging folder must never go up
    (exported / ".export-leftover" / "model.safetensors").write_bytes(b"partial")
    plan = plan_push(exported, "my-lab/tiny-vit")
    url = push(plan, private=True, token="hf_test")
    assert url == "https://hub.example/my-lab/tiny-vit" and captured["repo"] == ("my-lab/tiny-vit", True)
    expected = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert captured["files"] == plan.files == expected
    assert captured["bytes"]["README.md"] == (exported / "README.md").read_bytes()
    assert captured["validated"]["library_name"] == "transformers"


def test_no_token_says_how_to_log_in_and_uploads_nothing(exported: Path, no_stored_token):
    with pytest.raises(VitkitError, match="no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"):
        push(plan_push(exported, "my-lab/tiny-vit"))


def test_an_unreachable_hub_is_a_clear_message(exported: Path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(VitkitError, match=rf"the upload to http://127.0.0.1:{port} failed: .*check the network"):
        push(plan_push(exported, "my-lab/tiny-vit"), token="hf_test")


def test_wrong_repository_names_and_foreign_folders_are_refused(exported: Path, tmp_path: Path):
    with pytest.raises(VitkitError, match="ORG/NAME"):
        plan_push(exported, "tiny-vit")
    with pytest.raises(VitkitError, match="not a vitkit export"):
        plan_push(tmp_path, "my-lab/tiny-vit")

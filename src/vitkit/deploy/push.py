"""`vitkit push`: upload an exported folder (or a run, exported first) to a Hugging Face Hub repository.

The upload is huggingface_hub's own (`create_repo` + `upload_folder`); vitkit decides only what goes up (the
export's files and its model card, never vitkit's marker or staging folders) and turns a missing token or an
unreachable hub into a message that says what to do. The endpoint is huggingface_hub's: `HF_ENDPOINT` if set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit.deploy.card import CARD, SIGNATURE
from vitkit.errors import MissingExtraError, VitkitError
from vitkit.run_folder import EXPORT_MARKER

NOT_UPLOADED = [EXPORT_MARKER, ".export-*", ".export-*/**"]  # vitkit's bookkeeping stays on this machine
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class PushPlan:
    folder: Path
    repo: str
    files: list[str]  # paths inside the repository


def upload_files(folder: Path) -> list[str]:
    """The files of an export folder that are uploaded, relative to it."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != EXPORT_MARKER and not any(part.startswith(".export-") for part in p.parts)
    )


def check_repo_id(repo: str) -> None:
    if not REPO_ID.match(repo):
        raise VitkitError(f"--repo {repo}: a Hub repository is named ORG/NAME (or USER/NAME), e.g. my-lab/vit-xray.")


def hub_token(token: str | None = None) -> str:
    """The token the upload will use (huggingface_hub's: HF_TOKEN or `hf auth login`), or what to do without one."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise MissingExtraError("huggingface_hub", "hf", "vitkit push") from exc
    token = token or huggingface_hub.get_token()
    if not token:
        raise VitkitError(
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN, then push again. Nothing was "
            "uploaded; `vitkit push ... --dry-run` lists what would be."
        )
    return token


def plan_push(folder: Path, repo: str) -> PushPlan:
    check_repo_id(repo)
    if not (folder / EXPORT_MARKER).exists() or not (folder / "README.md").exists():
        raise VitkitError(
            f"{folder} is not a vitkit export with a model card. Push a run folder, or a folder written by "
            "vitkit export."
        )
    return PushPlan(folder, repo, upload_files(folder))


def push(plan: PushPlan, *, private: bool = False, token: str | None = None, create_pr: bool = False) -> str:
    """Upload the planned folder; returns the repository URL (or the pull request's). Files in an existing
    repository are replaced only when its model card is one vitkit wrote, or through a pull request."""
    import huggingface_hub

    api = huggingface_hub.HfApi(token=hub_token(token))
    try:
        if not create_pr:
            _refuse_replacing_foreign_files(api, plan)
        url = api.create_repo(plan.repo, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=plan.repo,
            folder_path=str(plan.folder),
            ignore_patterns=NOT_UPLOADED,
            commit_message="Upload model exported by vitkit",
            create_pr=create_pr,
        )
    except VitkitError:
        raise
    except Exception as exc:  # network, auth and hub errors come from httpx and huggingface_hub in many types
        raise VitkitError(
            f"the upload to {api.endpoint} failed: {_reason(exc)}. Nothing on this machine was changed; check the "
            "network, the token's write access and the repository name, then push again."
        ) from exc
    return str(getattr(commit, "pr_url", None) or url)


def _refuse_replacing_foreign_files(api: Any, plan: PushPlan) -> None:
    """A repository that exists with a model card vitkit did not write keeps its files: refuse, naming them."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        existing = set(api.list_repo_files(plan.repo))
    except RepositoryNotFoundError:
        return  # a new repository
    clash = sorted(existing & set(plan.files))
    if not clash:
        return
    if CARD in existing and SIGNATURE in Path(api.hf_hub_download(plan.repo, CARD)).read_text(errors="replace"):
        return  # an earlier vitkit upload: a new version replaces it, and the Hub keeps the old one in its history
    raise VitkitError(
        f"{plan.repo} already holds {', '.join(clash)}, and its model card was not written by vitkit: they are "
        "left alone. Push to a new repository, or open a pull request with --create-pr."
    )


def _reason(exc: Any) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

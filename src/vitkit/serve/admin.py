"""Admin endpoints: change a model's rollout, promote, roll back, load new versions, all without a restart.

They answer only requests that carry the server's admin token (`Authorization: Bearer TOKEN`), and are off (403)
when the server was started without one.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field

from vitkit.serve.inputs import InputError
from vitkit.serve.rollout import Rollout, promote, rollback, updated

if TYPE_CHECKING:
    from vitkit.serve.registry import Registry


class RolloutChange(BaseModel):
    # a misspelt field (share for weight) would otherwise be dropped and the rollout changed without it
    model_config = ConfigDict(extra="forbid")

    stable: str | None = Field(None, description="The version that answers by default.")
    candidate: str | None = Field(None, description="A version to try; null removes it.")
    weight: float | None = Field(None, ge=0, le=1, description="Share of request keys the candidate answers.")
    shadow: bool | None = Field(None, description="The candidate sees every request and never answers.")


def admin_routes(app: FastAPI, registry: Registry) -> None:
    def authorise(authorization: str | None) -> None:
        token = registry.settings.admin_token
        if token is None:
            raise InputError(
                403, "admin endpoints are off: start the server with --admin-token (or VITKIT_ADMIN_TOKEN)."
            )
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise InputError(401, "admin endpoints need the header Authorization: Bearer <admin token>.")

    @app.get("/admin/models/{name}/rollout")
    def show(name: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        authorise(authorization)
        return registry.rollouts[registry.model(name)].to_dict()

    def apply(name: str, authorization: str | None, change: Callable[[Rollout], Rollout]) -> dict[str, Any]:
        authorise(authorization)
        name = registry.model(name)
        registry.rollouts[name] = change(registry.rollouts[name])
        return registry.rollouts[name].to_dict()

    @app.put("/admin/models/{name}/rollout")
    def change(name: str, body: RolloutChange, authorization: str | None = Header(None)) -> dict[str, Any]:
        fields = body.model_dump(exclude_unset=True)
        return apply(name, authorization, lambda r: updated(r, fields, registry.versions(registry.model(name))))

    @app.post("/admin/models/{name}/promote")
    def promote_candidate(name: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        return apply(name, authorization, promote)

    @app.post("/admin/models/{name}/rollback")
    def roll_back(name: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        return apply(name, authorization, rollback)

    @app.post("/admin/reload")
    async def reload(authorization: str | None = Header(None)) -> dict[str, Any]:
        authorise(authorization)
        return {"added": await registry.reload()}

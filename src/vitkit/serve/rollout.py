"""Which version of a model answers a request: a stable version, and optionally a candidate that gets a share of
the traffic (A/B) or sees every request without answering it (shadow).

A request with a key (the X-Request-Key header) always goes to the same version for the same policy: the key is
hashed to a number in [0, 1), and keys below the candidate's weight go to the candidate. Requests without a key
are assigned at random. Promote makes the candidate stable; rollback restores the stable version from before.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from vitkit.serve.inputs import InputError


@dataclass
class Rollout:
    stable: str
    candidate: str | None = None
    weight: float = 0.0  # share of traffic the candidate answers (A/B); ignored in shadow mode
    shadow: bool = False  # the candidate sees every request; its answers are logged, never returned
    history: list[str] = field(default_factory=list)  # earlier stable versions, newest last

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_position(key: str, name: str) -> float:
    """A stable number in [0, 1) for a request key (per model name, so two models split independently)."""
    digest = hashlib.sha256(f"{name}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Route:
    answer: str  # the version whose answer is returned
    shadow: str | None = None  # a version that also computes the request, for the log only
    fallback: str | None = None  # the version that answers if `answer` fails


def route(policy: Rollout, name: str, key: str | None) -> Route:
    if policy.candidate is None:
        return Route(policy.stable)
    if policy.shadow:
        return Route(policy.stable, shadow=policy.candidate)
    position = key_position(key, name) if key is not None else random.random()
    if position < policy.weight:
        return Route(policy.candidate, fallback=policy.stable)
    return Route(policy.stable)


def updated(policy: Rollout, change: dict[str, Any], versions: list[str]) -> Rollout:
    """`policy` with the fields of an admin request changed, checked against the loaded versions."""
    allowed = {"stable", "candidate", "weight", "shadow"}
    unknown = sorted(set(change) - allowed)
    if unknown:
        raise InputError(400, f"unknown rollout fields {unknown}; use {sorted(allowed)}.")
    new = Rollout(**{**policy.to_dict(), **change})
    for version in (new.stable, new.candidate):
        if version is not None and version not in versions:
            raise InputError(404, f"no version '{version}' is loaded (loaded: {versions}).")
    if not isinstance(new.weight, int | float) or not 0 <= new.weight <= 1:
        raise InputError(400, f"weight must be a number from 0 to 1, not {new.weight!r}.")
    if new.candidate == new.stable:
        new.candidate = None
    if new.stable != policy.stable:
        new.history = [*policy.history, policy.stable]
    return new


def promote(policy: Rollout) -> Rollout:
    if policy.candidate is None:
        raise InputError(409, "there is no candidate to promote; set one first.")
    return Rollout(policy.candidate, history=[*policy.history, policy.stable])


def rollback(policy: Rollout) -> Rollout:
    if not policy.history:
        raise InputError(409, f"version {policy.stable} has no earlier stable version to roll back to.")
    return Rollout(policy.history[-1], history=policy.history[:-1])

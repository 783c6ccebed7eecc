"""`vitkit serve --ray`: the same app as a Ray Serve deployment, for more replicas than one process can hold.

Each replica builds the app itself (the models are loaded on the replica, from the same path: a shared file
system on a cluster), so endpoints, limits, metrics and monitoring are the ones `vitkit serve` has. Batching is
Ray Serve's own `@serve.batch`, per replica. `ray.init()` joins the cluster named by RAY_ADDRESS, or starts a
one-node Ray on this machine. Needs vitkit[ray].
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.errors import MissingExtraError, VitkitError
from vitkit.serve.batching import BatchRecord, Forward
from vitkit.serve.registry import ServeSettings

PROXY_START_S = 60  # how long Ray Serve's HTTP proxy may take to start (Ray's own default: 5 s)


class RayBatcher:
    """A batcher on Ray Serve's @serve.batch: calls that reach one replica within `max_wait_ms` of each other run
    as one forward pass (Ray counts calls, so a batch holds up to `max_batch` requests, not images)."""

    def __init__(
        self, forward: Forward, max_batch: int, max_wait_ms: float, observe: Callable[[BatchRecord], None] | None
    ) -> None:
        from ray import serve

        self.forward, self.observe = forward, observe
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitkit-model")
        self._batched = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_wait_ms / 1000)(self._run)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def infer(self, pixels: np.ndarray) -> np.ndarray:
        result: np.ndarray = await self._batched(pixels)
        return result

    async def _run(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        pixels = np.concatenate(requests)
        start = time.perf_counter()
        logits = await asyncio.get_running_loop().run_in_executor(self._executor, self.forward, pixels)
        if self.observe is not None:
            self.observe(BatchRecord(len(pixels), len(requests), [], time.perf_counter() - start))
        bounds = np.cumsum([len(r) for r in requests])[:-1]
        return list(np.split(logits, bounds))


def _require_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("ray[serve]", "ray", "vitkit serve --ray") from exc
    return ray


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_ray(
    path: Path, name: str | None, settings: ServeSettings, host: str, port: int, replicas: int, max_replicas: int
) -> None:
    """Deploy and serve until Ctrl-C or SIGTERM, then shut Serve and a Ray started here down."""
    ray = _require_ray()
    from ray import serve

    from vitkit.serve.app import create_app
    from vitkit.serve.models import load_models

    if settings.admin_token and max(replicas, max_replicas) > 1:
        raise VitkitError(
            "--admin-token with several Ray replicas would change the rollout of whichever replica took the call; "
            "serve one replica, or set versions by deploying again."
        )
    load_models(path, name)  # a wrong path fails here, before Ray starts

    def build() -> Any:
        return create_app(load_models(path, name), settings, RayBatcher)

    options: dict[str, Any] = {"name": "vitkit", "ray_actor_options": {"num_cpus": 1}}
    if max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas}
    else:
        options["num_replicas"] = replicas
    # Ray Serve gives its HTTP proxy 5 s to start and kills it after that; a busy machine (a few cores, a model
    # loading) can take longer. The processes of a local Ray instance inherit this environment.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_START_S))
    ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    signal.signal(signal.SIGTERM, _interrupt)  # a plain SIGTERM would skip the shutdown below
    try:
        serve.start(http_options={"host": host, "port": port})
        deployment: Any = serve.deployment(serve.ingress(build)(), **options)
        serve.run(deployment.bind(), name="vitkit", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()

"""The HTTP app: Open Inference Protocol (KServe v2) endpoints, a plain /predict for image files, /metrics.

Every refusal is a 4xx with `{"error": "..."}` naming the problem; a model that fails answers 500 for its own
requests only. Requests for one model version share a `MicroBatcher`, so concurrent requests run together.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vitkit import __version__
from vitkit.serve.batching import MicroBatcher
from vitkit.serve.inputs import InputError, Limits, check_count, decode_base64, decode_image, v2_pixels
from vitkit.serve.limits import BodyLimit
from vitkit.serve.metrics import ServerMetrics
from vitkit.serve.models import ServedModel


@dataclass
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    low_confidence: float = 0.5  # predictions below this top-1 probability are flagged


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor]
    parameters: dict[str, Any] | None = None


class Label(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    top: list[Label]
    low_confidence: bool


class PredictResponse(BaseModel):
    model: str
    version: str
    sha256: str | None
    predictions: list[ImagePrediction]


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["files"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "byte"}}},
                    "required": ["images"],
                }
            },
        },
    }
}


class Registry:
    """The loaded models and one batcher per version; the last version of a name serves by default."""

    def __init__(self, models: dict[str, list[ServedModel]], settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.models, self.settings, self.metrics = models, settings, metrics
        self.batchers: dict[tuple[str, str], MicroBatcher] = {}
        self.ready = False

    def pick(self, name: str | None, version: str | None) -> ServedModel:
        if name is None:
            if len(self.models) > 1:
                raise InputError(400, f"this server holds several models ({', '.join(self.models)}): name one.")
            name = next(iter(self.models))
        versions = self.models.get(name)
        if versions is None:
            raise InputError(404, f"no model '{name}'; this server serves {', '.join(self.models)}.")
        if version is None:
            return versions[-1]
        for served in versions:
            if served.version == version:
                return served
        raise InputError(404, f"model '{name}' has no version '{version}' (it has {[v.version for v in versions]}).")

    async def start(self) -> None:
        s = self.settings
        for versions in self.models.values():
            for served in versions:
                observe = self.metrics.observer(f"{served.name}:{served.version}")
                batcher = MicroBatcher(served.classifier.logits, s.max_batch, s.max_wait_ms, observe)
                batcher.start()
                self.batchers[(served.name, served.version)] = batcher
                size = served.img_size
                await batcher.infer(np.zeros((1, 3, size, size), np.float32))  # warm-up: the first call is slow
        self.ready = True

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()

    async def logits(self, served: ServedModel, pixels: np.ndarray) -> np.ndarray:
        return await self.batchers[(served.name, served.version)].infer(pixels)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(models: dict[str, list[ServedModel]], settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    registry = Registry(models, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        yield
        await registry.stop()

    app = FastAPI(title="vitkit serve", version=__version__, lifespan=lifespan)
    app.state.registry = registry
    _handlers(app, metrics)
    _v2_routes(app, registry)
    _predict_route(app, registry)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    return app


def _handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return error(422, f"the request does not match the API: {problems}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response


def _v2_routes(app: FastAPI, registry: Registry) -> None:
    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> JSONResponse:
        return JSONResponse({"ready": registry.ready}, status_code=200 if registry.ready else 503)

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": "vitkit", "version": __version__, "extensions": [], "models": list(registry.models)}

    def metadata(name: str, version: str | None) -> dict[str, Any]:
        served = registry.pick(name, version)
        doc = served.metadata()
        if version is None:
            doc["versions"] = [v.version for v in registry.models[name]]
        return doc

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> dict[str, Any]:
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    def version_metadata(name: str, version: str) -> dict[str, Any]:
        return metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> dict[str, Any]:
        return {"name": registry.pick(name, None).name, "ready": registry.ready}

    async def infer(name: str, version: str | None, body: InferRequest) -> dict[str, Any]:
        served = registry.pick(name, version)
        limits = registry.settings.limits
        pixels = v2_pixels([t.model_dump() for t in body.inputs], served.img_size, limits)
        logits = await registry.logits(served, pixels)
        probabilities = served.probabilities(logits)
        shape = list(logits.shape)
        return {
            "model_name": served.name,
            "model_version": served.version,
            "id": body.id,
            "outputs": [
                {"name": "logits", "shape": shape, "datatype": "FP32", "data": logits.ravel().tolist()},
                {"name": "probabilities", "shape": shape, "datatype": "FP32", "data": probabilities.ravel().tolist()},
            ],
        }

    @app.post("/v2/models/{name}/infer")
    async def model_infer(name: str, body: InferRequest) -> dict[str, Any]:
        return await infer(name, None, body)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def version_infer(name: str, version: str, body: InferRequest) -> dict[str, Any]:
        return await infer(name, version, body)


async def _image_payloads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of each image in a multipart upload or a JSON body of base64 strings."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=limits.max_images + 1, max_fields=limits.max_images + 1)
        uploads = [v for _, v in form.multi_items() if not isinstance(v, str)]
        check_count(len(uploads), limits)
        return [(f"file '{u.filename or i}'", await u.read()) for i, u in enumerate(uploads)]
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise InputError(400, "the body is not valid JSON.") from None
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list):
            raise InputError(400, 'a JSON body must be {"images": ["<base64>", ...]}.')
        check_count(len(images), limits)
        return [(f"images[{i}]", decode_base64(text, f"images[{i}]")) for i, text in enumerate(images)]
    raise InputError(415, 'send images as multipart/form-data (field files) or JSON {"images": [base64, ...]}.')


def _predict_route(app: FastAPI, registry: Registry) -> None:
    @app.post("/predict", response_model=PredictResponse, openapi_extra=PREDICT_BODY)
    async def predict(
        request: Request,
        model: str | None = Query(None, description="Model name; needed when the server holds several."),
        version: str | None = Query(None, description="Model version; the newest when omitted."),
        top_k: int = Query(3, ge=1, le=100, description="Classes per image, most likely first."),
    ) -> dict[str, Any]:
        served = registry.pick(model, version)
        limits = registry.settings.limits
        payloads = await _image_payloads(request, limits)

        def prepare() -> np.ndarray:
            return np.stack([served.pixels(decode_image(data, limits, name)) for name, data in payloads])

        pixels = await run_in_threadpool(prepare)
        probabilities = served.probabilities(await registry.logits(served, pixels))
        return {
            "model": served.name,
            "version": served.version,
            "sha256": served.classifier.sha256,
            "predictions": [_ranked(served, p, top_k, registry) for p in probabilities],
        }


def _ranked(served: ServedModel, probabilities: np.ndarray, top_k: int, registry: Registry) -> dict[str, Any]:
    order = np.argsort(-probabilities)[:top_k]
    top = [{"label": served.classes[i], "probability": float(probabilities[i])} for i in order]
    m = registry.metrics
    m.predictions.labels(served.name, served.version, top[0]["label"]).inc()
    m.confidence.labels(served.name, served.version).observe(top[0]["probability"])
    return {"top": top, "low_confidence": top[0]["probability"] < registry.settings.low_confidence}

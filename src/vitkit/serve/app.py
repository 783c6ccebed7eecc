"""The HTTP app: Open Inference Protocol (KServe v2) endpoints, a plain /predict for image files, /metrics.

Every refusal is a 4xx with `{"error": "..."}` naming the problem; a model that fails answers 500 for its own
requests only. Requests for one model version share a `MicroBatcher`, so concurrent requests run together.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vitkit import __version__
from vitkit.serve.admin import admin_routes
from vitkit.serve.batching import MakeBatcher, MicroBatcher
from vitkit.serve.inputs import InputError, Limits, check_count, decode_base64, decode_image, v2_pixels
from vitkit.serve.limits import BodyLimit
from vitkit.serve.metrics import ServerMetrics
from vitkit.serve.models import ServedModel
from vitkit.serve.registry import Answer, Registry, ServeSettings


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
    id: str = Field(description="Send it back with the true label to POST /feedback.")
    top: list[Label]
    low_confidence: bool | None = Field(None, description="Single-label models: top-1 below --low-confidence.")
    findings: list[str] | None = Field(
        None, description="Multi-label models: the labels at or above their thresholds (90% specificity on validation)."
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    sha256: str | None
    fallback_from: str | None = Field(None, description="A candidate version that failed; stable answered.")
    predictions: list[ImagePrediction]


class Feedback(BaseModel):
    id: str = Field(description="A prediction's id.", min_length=1, max_length=128)
    label: str | None = Field(None, description="Single-label models: the true class.", max_length=1000)
    labels: list[str] | None = Field(
        None, description="Multi-label models: every true finding; [] when there is none.", max_length=1000
    )


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


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(
    models: dict[str, list[ServedModel]],
    settings: ServeSettings | None = None,
    make_batcher: MakeBatcher = MicroBatcher,
) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    registry = Registry(models, settings, metrics, make_batcher)

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
    admin_routes(app, registry)

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
        doc["parameters"]["broken"] = registry.broken.get((served.name, served.version))
        if version is None:
            doc["versions"] = registry.versions(served.name)
            doc["parameters"]["rollout"] = registry.rollouts[served.name].to_dict()
        return doc

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> dict[str, Any]:
        return metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    def version_metadata(name: str, version: str) -> dict[str, Any]:
        return metadata(name, version)

    @app.get("/v2/models/{name}/monitor")
    async def monitor(name: str, version: str | None = Query(None)) -> dict[str, Any]:
        """Drift of the recent traffic against the export's validation data: KS on confidence, MMD on
        embeddings, attention-entropy shift per layer; latency p99 and the memory trend."""
        return await registry.monitor_report(registry.pick(name, version))

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> dict[str, Any]:
        return {"name": registry.pick(name, None).name, "ready": registry.ready}

    async def infer(name: str, version: str | None, body: InferRequest, key: str | None) -> dict[str, Any]:
        tensors = [t.model_dump() for t in body.inputs]

        async def pixels_for(served: ServedModel) -> np.ndarray:
            return v2_pixels(tensors, served.img_size, registry.settings.limits)

        answer = await registry.answer(name, version, key, pixels_for)
        probabilities = answer.probabilities
        for i, row in enumerate(probabilities):
            registry.record(answer.served, row, f"{answer.request_id}:{i}", key, "answer")
        shape = list(answer.logits.shape)
        return {
            "model_name": answer.served.name,
            "model_version": answer.served.version,
            "id": body.id,
            "parameters": {"request_id": answer.request_id, "fallback_from": answer.fallback_from},
            "outputs": [
                {"name": "logits", "shape": shape, "datatype": "FP32", "data": answer.logits.ravel().tolist()},
                {"name": "probabilities", "shape": shape, "datatype": "FP32", "data": probabilities.ravel().tolist()},
            ],
        }

    @app.post("/v2/models/{name}/infer")
    async def model_infer(
        name: str, body: InferRequest, key: str | None = Header(None, alias="X-Request-Key")
    ) -> dict[str, Any]:
        return await infer(name, None, body, key)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def version_infer(name: str, version: str, body: InferRequest) -> dict[str, Any]:
        return await infer(name, version, body, None)


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
        version: str | None = Query(None, description="A version; when omitted, the rollout picks one."),
        top_k: int = Query(3, ge=1, le=100, description="Classes per image, most likely first."),
        key: str | None = Header(None, alias="X-Request-Key", description="Sticky A/B assignment."),
    ) -> dict[str, Any]:
        limits = registry.settings.limits
        payloads = await _image_payloads(request, limits)
        images = await run_in_threadpool(lambda: [decode_image(data, limits, name) for name, data in payloads])

        async def pixels_for(served: ServedModel) -> np.ndarray:
            return await run_in_threadpool(lambda: np.stack([served.pixels(image) for image in images]))

        answer = await registry.answer(model, version, key, pixels_for)
        return _predictions(answer, top_k, key, registry)

    @app.post("/feedback")
    def feedback(body: Feedback) -> dict[str, Any]:
        """The true label (or a multi-label model's true findings) of an earlier prediction, for `vitkit compare`."""
        return registry.feedback(body.id, body.label, body.labels)


def _predictions(answer: Answer, top_k: int, key: str | None, registry: Registry) -> dict[str, Any]:
    served = answer.served
    predictions = []
    classifier = served.classifier
    findings = classifier.findings(answer.probabilities) if classifier.multilabel else None
    for i, probabilities in enumerate(answer.probabilities):
        request_id = f"{answer.request_id}:{i}"
        registry.record(served, probabilities, request_id, key, "answer")
        order = np.argsort(-probabilities)[:top_k]
        top = [{"label": served.classes[j], "probability": float(probabilities[j])} for j in order]
        if findings is not None:  # multi-label: the labels at or above their validation-fitted thresholds
            predictions.append({"id": request_id, "top": top, "findings": findings[i]})
            continue
        low = top[0]["probability"] < registry.settings.low_confidence
        predictions.append({"id": request_id, "top": top, "low_confidence": low})
    return {
        "model": served.name,
        "version": served.version,
        "sha256": served.classifier.sha256,
        "fallback_from": answer.fallback_from,
        "predictions": predictions,
    }

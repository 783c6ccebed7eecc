"""What a server holds and how it answers: the loaded versions, one batcher per version, the rollout policy per
model, and the prediction log.

A request that names a version gets that version. Otherwise the rollout decides: the stable version, the
candidate for its share of keys (falling back to stable if the candidate fails, so a broken candidate never costs
an answer), or stable with the candidate computing in the background (shadow). The path the server was started
on can be scanned again (`reload`) to add versions without a restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.serve.batching import Batcher, MakeBatcher, MicroBatcher
from vitkit.serve.inputs import InputError, Limits
from vitkit.serve.log import PredictionLog
from vitkit.serve.metrics import ServerMetrics
from vitkit.serve.models import ServedModel, load_models
from vitkit.serve.monitor import MonitorSettings, VersionMonitor
from vitkit.serve.rollout import Rollout, route

PixelsFor = Callable[[ServedModel], Awaitable[np.ndarray]]  # a request's pixels, prepared for one version


@dataclass
class ServeSettings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    limits: Limits = field(default_factory=Limits)
    low_confidence: float = 0.5  # predictions below this top-1 probability are flagged
    admin_token: str | None = None  # guards /admin/...; None turns those endpoints off
    log: Path | None = None  # the prediction log (JSONL)
    source: Path | None = None  # the folder the models came from, scanned again by reload
    name: str | None = None
    monitor: MonitorSettings = field(default_factory=MonitorSettings)


@dataclass
class Answer:
    served: ServedModel
    logits: np.ndarray
    probabilities: np.ndarray  # calibrated: softmax(logits / temperature)
    request_id: str
    fallback_from: str | None = None  # the version that failed, when the stable one answered instead


class Registry:
    def __init__(
        self,
        models: dict[str, list[ServedModel]],
        settings: ServeSettings,
        metrics: ServerMetrics,
        make_batcher: MakeBatcher = MicroBatcher,
    ) -> None:
        self.models, self.settings, self.metrics = models, settings, metrics
        self.make_batcher = make_batcher
        self.batchers: dict[tuple[str, str], Batcher] = {}
        self.monitors: dict[tuple[str, str], VersionMonitor] = {}
        self.rollouts = {name: Rollout(versions[-1].version) for name, versions in models.items()}
        self.log = PredictionLog(settings.log) if settings.log else None
        self.ready = False
        self.broken: dict[tuple[str, str], str] = {}  # versions whose warm-up failed, and why
        self._background: set[asyncio.Task[None]] = set()

    # --- models and batchers ----------------------------------------------------------------------------

    def versions(self, name: str) -> list[str]:
        return [v.version for v in self.models[name]]

    def model(self, name: str | None) -> str:
        if name is None:
            if len(self.models) > 1:
                raise InputError(400, f"this server holds several models ({', '.join(self.models)}): name one.")
            return next(iter(self.models))
        if name not in self.models:
            raise InputError(404, f"no model '{name}'; this server serves {', '.join(self.models)}.")
        return name

    def pick(self, name: str | None, version: str | None) -> ServedModel:
        """The version a request names, or the stable version of the model."""
        name = self.model(name)
        wanted = version or self.rollouts[name].stable
        for served in self.models[name]:
            if served.version == wanted:
                return served
        raise InputError(404, f"model '{name}' has no version '{wanted}' (it has {self.versions(name)}).")

    async def _start_version(self, served: ServedModel) -> None:
        s = self.settings
        observe = self.metrics.observer(f"{served.name}:{served.version}")
        batcher = self.make_batcher(served.classifier.logits, s.max_batch, s.max_wait_ms, observe)
        batcher.start()
        self.batchers[(served.name, served.version)] = batcher
        monitor = VersionMonitor(served.reference, served.monitor_forward, s.monitor)
        monitor.start()
        self.monitors[(served.name, served.version)] = monitor
        size = served.img_size
        try:
            await batcher.infer(np.zeros((1, 3, size, size), np.float32))  # warm-up: the first call is slow
        except Exception as exc:  # a broken version must not keep the others from serving
            self.broken[(served.name, served.version)] = f"{type(exc).__name__}: {exc}"
            self._record_failure(served, "warm-up", exc)

    async def start(self) -> None:
        for versions in self.models.values():
            for served in versions:
                await self._start_version(served)
        for name, versions in self.models.items():  # the newest version that works is stable at start
            working = [v.version for v in versions if (name, v.version) not in self.broken]
            if working:
                self.rollouts[name] = Rollout(working[-1])
        self.ready = all((name, policy.stable) not in self.broken for name, policy in self.rollouts.items())

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        for monitor in self.monitors.values():
            await monitor.stop()
        if self.log is not None:
            self.log.close()

    async def reload(self) -> dict[str, list[str]]:
        """Load the versions that appeared in the served folder since start; returns what was added."""
        if self.settings.source is None:
            raise InputError(409, "this server was not started on a folder it can scan again.")
        found = await asyncio.get_running_loop().run_in_executor(
            None, load_models, self.settings.source, self.settings.name
        )
        added: dict[str, list[str]] = {}
        for name, versions in found.items():
            known = set(self.versions(name)) if name in self.models else set()
            for served in versions:
                if served.version not in known:
                    await self._start_version(served)
                    self.models.setdefault(name, []).append(served)
                    added.setdefault(name, []).append(served.version)
            self.rollouts.setdefault(name, Rollout(self.models[name][-1].version))
        return added

    # --- answering ----------------------------------------------------------------------------------------

    async def logits(self, served: ServedModel, pixels: np.ndarray) -> np.ndarray:
        return await self.batchers[(served.name, served.version)].infer(pixels)

    async def answer(self, name: str | None, version: str | None, key: str | None, pixels_for: PixelsFor) -> Answer:
        """Run a request on the version that answers it (and the shadow version, in the background)."""
        request_id, start = uuid.uuid4().hex, time.perf_counter()
        if version is not None:
            return await self._run(self.pick(name, version), pixels_for, request_id, start)
        name = self.model(name)
        chosen = route(self.rollouts[name], name, key)
        served = self.pick(name, chosen.answer)
        if chosen.shadow is not None:
            self._in_background(self._shadow(self.pick(name, chosen.shadow), pixels_for, request_id, key))
        try:
            return await self._run(served, pixels_for, request_id, start)
        except InputError:
            raise
        except Exception as exc:
            self._record_failure(served, "answer", exc)
            if chosen.fallback is None:
                raise
            stable = self.pick(name, chosen.fallback)
            return await self._run(stable, pixels_for, request_id, start, fallback_from=served.version)

    async def _run(
        self,
        served: ServedModel,
        pixels_for: PixelsFor,
        request_id: str,
        start: float,
        fallback_from: str | None = None,
    ) -> Answer:
        """One version's answer, fed to its monitor; every `report_every` images, drift is tested off the loop."""
        pixels = await pixels_for(served)
        logits = await self.logits(served, pixels)
        answer = Answer(served, logits, served.probabilities(logits), request_id, fallback_from)
        monitor = self.monitors[(served.name, served.version)]
        if monitor.add(answer.probabilities.max(axis=1), pixels, time.perf_counter() - start):
            self._in_background(self._publish(served))
        return answer

    async def monitor_report(self, served: ServedModel) -> dict[str, Any]:
        monitor = self.monitors[(served.name, served.version)]
        report = await asyncio.get_running_loop().run_in_executor(None, monitor.report)
        self.metrics.monitor_report(served.name, served.version, report)
        return {"model": served.name, "version": served.version, **report}

    async def _publish(self, served: ServedModel) -> None:
        report = await self.monitor_report(served)
        if self.log is not None:
            self.log.write({"kind": "monitor", **report})

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)  # a reference, or the task could be collected before it ends
        task.add_done_callback(self._background.discard)

    async def _shadow(self, served: ServedModel, pixels_for: PixelsFor, request_id: str, key: str | None) -> None:
        try:
            logits = await self.logits(served, await pixels_for(served))
        except Exception as exc:  # a failing shadow is logged and counted, never seen by the client
            self._record_failure(served, "shadow", exc)
            return
        for i, probabilities in enumerate(served.probabilities(logits)):
            self.record(served, probabilities, f"{request_id}:{i}", key, "shadow")

    def _record_failure(self, served: ServedModel, role: str, exc: Exception) -> None:
        self.metrics.version_errors.labels(served.name, served.version, role).inc()
        if self.log is not None:
            error = f"{type(exc).__name__}: {exc}"
            self.log.write(
                {"kind": "error", "model": served.name, "version": served.version, "role": role, "error": error}
            )

    def record(
        self, served: ServedModel, probabilities: np.ndarray, request_id: str, key: str | None, role: str
    ) -> None:
        """Metrics (answers only) and a log line (answers and shadows) for one image's prediction."""
        order = np.argsort(-probabilities)[:5]
        top = [[served.classes[i], round(float(probabilities[i]), 6)] for i in order]
        if role == "answer":
            self.metrics.predictions.labels(served.name, served.version, top[0][0]).inc()
            self.metrics.confidence.labels(served.name, served.version).observe(top[0][1])
        if self.log is not None:
            self.log.write(
                {
                    "kind": "prediction",
                    "request_id": request_id,
                    "key": key,
                    "model": served.name,
                    "version": served.version,
                    "role": role,
                    "top": top,
                    **self._findings(served, probabilities),
                }
            )

    @staticmethod
    def _findings(served: ServedModel, probabilities: np.ndarray) -> dict[str, list[str]]:
        """A multi-label model's findings at its thresholds: what `vitkit compare` judges against true labels."""
        if not served.classifier.multilabel:
            return {}
        return {"findings": served.classifier.findings(probabilities[None])[0]}

    def feedback(self, request_id: str, label: str | None, labels: list[str] | None) -> dict[str, Any]:
        if self.log is None:
            raise InputError(409, "this server keeps no prediction log: start it with --log FILE to take feedback.")
        served_models = [served for versions in self.models.values() for served in versions]
        multilabel = any(served.classifier.multilabel for served in served_models)
        wanted, other = (labels, label) if multilabel else (label, labels)
        if wanted is None or other is not None:  # the field this server's models need, and only that one
            wanted = (
                '"labels": the true findings, [] when there is none (a multi-label model)'
                if multilabel
                else '"label": the true class'
            )
            raise InputError(422, f"send the prediction's {wanted}.")
        given = [label] if label is not None else labels or []
        for name in given:  # a misspelt label would count as wrong
            if not any(name in served.classes for served in served_models):
                classes = sorted({c for served in served_models for c in served.classes})
                shown = ", ".join(classes[:20]) + (f" ... ({len(classes)} in all)" if len(classes) > 20 else "")
                raise InputError(422, f"label '{name[:100]}' is not a class of the served models ({shown}).")
        truth: dict[str, Any] = {"label": label} if label is not None else {"labels": sorted(set(given))}
        record = {"kind": "feedback", "request_id": request_id, **truth}
        self.log.write(record)
        return record

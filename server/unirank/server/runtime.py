"""One artifact version made ready to serve: verified data, encoder, retriever, warmed backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unirank.artifact import Artifact, FeatureEncoder, load_artifact
from unirank.artifact.store import MODEL_ONNX, MODEL_ONNX_DATA, MODEL_TORCH, ArtifactError
from unirank.artifact.tasks import TASKS, TaskSpec
from unirank.server.backends.base import BackendError, InvalidScores, ScoringBackend
from unirank.server.backends.stacking import concat_model_inputs, split_scores
from unirank.server.batching import BatchObserver
from unirank.server.config import ModelSection
from unirank.server.retrieval import Retriever

log = logging.getLogger(__name__)

WARMUP_RTOL = 1e-3
WARMUP_ATOL = 1e-4
"""How far one request's warm-up scores may differ between a call alone and a batched call
(different kernels sum in different orders; a graph that mixes rows differs by far more)."""


def make_backend(
    artifact: Artifact,
    section: ModelSection,
    batch_observer: BatchObserver | None = None,
    alone: Callable[[], bool] | None = None,
) -> ScoringBackend:
    """The profile's backend. torch is imported only when the profile asks for it.

    ``batch_observer`` sees every batch a batching backend executes (telemetry); ``alone`` says
    whether a call is the only one open in the server (``inline_when_alone``).
    """
    if section.backend == "onnxruntime":
        from unirank.server.backends.onnx_backend import OnnxBackend

        return OnnxBackend(
            artifact.onnx_path,
            threads=section.intra_op_threads,
            workers=section.inference_workers,
            batching=section.batching if section.batching.enabled else None,
            batch_observer=batch_observer,
            alone=alone if section.inline_when_alone else None,
        )
    try:
        from unirank.server.backends.torch_backend import TorchBackend
    except ImportError as exc:
        raise BackendError(
            f"profile backend 'torch' needs torch ({exc}); install it with: pip install 'unirank[torch]'"
        ) from exc

    return TorchBackend(
        artifact.torch_path,
        device=section.device,
        threads=section.intra_op_threads,
        batching=section.batching if section.batching.enabled else None,
        warmup_requests=section.warmup_requests,
        batch_observer=batch_observer,
    )


@dataclass
class ModelRuntime:
    """Everything that depends on one artifact version; swapped whole on reload."""

    artifact: Artifact
    encoder: FeatureEncoder
    retriever: Retriever
    backend: ScoringBackend
    maturity: np.ndarray
    release_year: np.ndarray
    primary_category: np.ndarray
    title_keys: np.ndarray
    in_flight: int = 0
    """Requests currently using this version; a retired version closes when it reaches 0."""

    @property
    def version(self) -> str:
        return self.artifact.model_version

    @property
    def n_tasks(self) -> int:
        """Task heads of the model (task ids 1..n_tasks); an artifact trained before a use-case was
        added has no head for it."""
        return int(self.artifact.manifest["model_config"]["n_tasks"])

    def has_head(self, spec: TaskSpec) -> bool:
        """The model has a trained head for ``spec``: one for its task id, and the artifact records
        training it (``trained_tasks``; an artifact written before that record trained every head)."""
        trained = self.artifact.manifest.get("trained_tasks")
        return spec.head_index < self.n_tasks and (trained is None or spec.name in trained)

    @classmethod
    async def load(
        cls,
        path: str | Path,
        section: ModelSection,
        batch_observer: Callable[[str], BatchObserver | None] | None = None,
        alone: Callable[[], bool] | None = None,
    ) -> ModelRuntime:
        """Verify and load the artifact off the event loop, start the backend and warm it up.

        ``batch_observer(model_version)`` gives the observer of this version's batches, if any;
        ``alone()`` whether a call is the only one open in the server (the transport counts them).
        """
        # The files this server never opens (the other backend's model) are not hashed.
        unread = (MODEL_TORCH,) if section.backend == "onnxruntime" else (MODEL_ONNX, MODEL_ONNX_DATA)
        artifact = await asyncio.to_thread(load_artifact, path, unread)
        try:
            runtime = cls._assemble(artifact, section, batch_observer, alone)
        except (ArtifactError, BackendError):
            raise
        except Exception as exc:  # verified files whose content still cannot be served
            raise ArtifactError(f"{path}: cannot serve artifact: {type(exc).__name__}: {exc}") from exc
        backend = runtime.backend
        try:
            await backend.start()
            await runtime.warm_up(section.warmup_requests)
        except BaseException:
            # A refused version must not leave its scoring threads or model session behind.
            await backend.close()
            raise
        log.info(
            "loaded artifact %s (%s) on %s/%s", artifact.model_version, path, backend.name, backend.device
        )
        return runtime

    @classmethod
    def _assemble(
        cls,
        artifact: Artifact,
        section: ModelSection,
        batch_observer: Callable[[str], BatchObserver | None] | None,
        alone: Callable[[], bool] | None = None,
    ) -> ModelRuntime:
        catalog = artifact.catalog
        categories = catalog.category_matrix()[:, 0]
        encoder = artifact.encoder()
        retriever = Retriever(artifact)
        observer = batch_observer(artifact.model_version) if batch_observer is not None else None
        return cls(
            artifact=artifact,
            encoder=encoder,
            retriever=retriever,
            backend=make_backend(artifact, section, observer, alone),  # last: it may start threads
            maturity=np.asarray(catalog.maturity, dtype=np.int64),
            release_year=np.asarray(catalog.release_year, dtype=np.int64),
            primary_category=categories.astype(np.int64),
            title_keys=catalog.title_keys(),
        )

    async def warm_up(self, requests: int) -> None:
        """Score every task at a few candidate counts, alone and stacked, and check every answer.

        First requests then pay no lazy-init cost, and a model that answers wrongly is refused
        before it serves (:class:`InvalidScores`): every backend checks that scores are finite and
        shaped [rows, candidates], and here each request's scores must agree whether it is scored
        alone, among concurrent requests (a batching backend stacks them) or as rows of one call.
        """
        if requests <= 0:
            return
        from unirank.artifact import Context

        popular = self.artifact.retrieval.popular_items
        tasks = [spec for spec in TASKS if self.has_head(spec)] or [TASKS[0]]
        warm = []
        for i in range(requests):
            spec = tasks[i % len(tasks)]
            n = min(len(popular), (10, 100, 200)[i % 3])
            encoded = self.encoder.encode(Context(task=spec.task_type))
            warm.append(self.encoder.batch([encoded], popular[None, :n]))
        alone = [await self.backend.score(inputs) for inputs in warm]
        together = await asyncio.gather(*(self.backend.score(inputs) for inputs in warm))
        stacked = split_scores(await self.backend.score(concat_model_inputs(warm)), warm)
        for i, (single, *batched) in enumerate(zip(alone, together, stacked, strict=True)):
            for scores in batched:
                if not np.allclose(scores, single, rtol=WARMUP_RTOL, atol=WARMUP_ATOL):
                    gap = float(np.max(np.abs(scores - single)))
                    raise InvalidScores(
                        f"warm-up request {i} ({len(single[0])} candidates) scores differently alone and "
                        f"in a batch (largest difference {gap:.3g}): the graph mixes rows of a batch"
                    )

    async def close(self) -> None:
        await self.backend.close()

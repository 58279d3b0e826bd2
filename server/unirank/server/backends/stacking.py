"""Stacking single requests into one model batch and back, for every batching backend (no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unirank.artifact.features import ModelInputs
from unirank.server.backends.base import BackendError

ROW_INPUTS = ("task", "user", "anchor_item", "category")
"""Inputs shaped [B]; the others are [B, width] and 0-padded on the right."""
WIDE_INPUTS = ("history", "query_tokens", "candidates")


def concat_model_inputs(requests: Sequence[ModelInputs]) -> ModelInputs:
    """Stack requests row-wise, 0-padding history, query and candidates to the widest request.

    Padding is exact rather than approximate: the model masks id 0 out of every mean and the
    query overlap, and padded candidates score -1e9 and are cut off again by :func:`split_scores`.
    """
    if not requests:
        raise ValueError("no requests to concatenate")
    columns: dict[str, np.ndarray] = {}
    for name in ROW_INPUTS:
        columns[name] = np.concatenate([getattr(r, name) for r in requests], dtype=np.int64)
    for name in WIDE_INPUTS:
        parts = [getattr(r, name) for r in requests]
        out = np.zeros((sum(p.shape[0] for p in parts), max(p.shape[1] for p in parts)), dtype=np.int64)
        row = 0
        for part in parts:
            out[row : row + part.shape[0], : part.shape[1]] = part
            row += part.shape[0]
        columns[name] = out
    times = [r.candidate_time for r in requests]
    if any(t is not None for t in times):
        if any(t is None for t in times):
            raise BackendError("requests with and without time features cannot share a batch")
        stacked = np.zeros((*columns["candidates"].shape, times[0].shape[-1]), dtype=np.float32)  # type: ignore[union-attr]
        row = 0
        for part in times:
            assert part is not None
            stacked[row : row + part.shape[0], : part.shape[1]] = part
            row += part.shape[0]
        return ModelInputs(**columns, candidate_time=stacked)
    return ModelInputs(**columns)


def split_scores(scores: np.ndarray, requests: Sequence[ModelInputs]) -> list[np.ndarray]:
    """Undo :func:`concat_model_inputs`: each request's own rows and candidate columns."""
    out: list[np.ndarray] = []
    row = 0
    for request in requests:
        rows, width = request.candidates.shape
        out.append(np.ascontiguousarray(scores[row : row + rows, :width]))
        row += rows
    if row != scores.shape[0]:
        raise BackendError(f"model returned {scores.shape[0]} rows for {row} requested")
    return out

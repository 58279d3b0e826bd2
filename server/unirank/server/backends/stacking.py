"""Stacking single requests into one model batch and back, for every batching backend (no torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unirank.artifact.features import INPUT_NAMES, ModelInputs
from unirank.server.backends.base import BackendError

_ROW_INPUTS = ("task", "user", "anchor_item", "category")
"""Inputs shaped [B]; the others are [B, width] and 0-padded on the right."""
_WIDE_INPUTS = ("history", "query_tokens", "candidates")


def concat_model_inputs(requests: Sequence[ModelInputs]) -> ModelInputs:
    """Stack requests row-wise, 0-padding history, query and candidates to the widest request.

    Padding is exact rather than approximate: the model masks id 0 out of every mean and the
    query overlap, and padded candidates score -1e9 and are cut off again by :func:`split_scores`.
    """
    if not requests:
        raise ValueError("no requests to concatenate")
    columns: dict[str, np.ndarray] = {}
    for name in _ROW_INPUTS:
        columns[name] = np.concatenate([getattr(r, name) for r in requests], dtype=np.int64)
    for name in _WIDE_INPUTS:
        parts = [getattr(r, name) for r in requests]
        out = np.zeros((sum(p.shape[0] for p in parts), max(p.shape[1] for p in parts)), dtype=np.int64)
        row = 0
        for part in parts:
            out[row : row + part.shape[0], : part.shape[1]] = part
            row += part.shape[0]
        columns[name] = out
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


def check_model_inputs(inputs: ModelInputs, limits: dict[str, int]) -> None:
    """Raise :class:`BackendError` unless ``inputs`` match the input contract and the vocabularies.

    Checked before batching because a bad request inside a batch would fail every batch mate.
    """
    rows = len(inputs)
    for name in INPUT_NAMES:
        array = getattr(inputs, name)
        if not isinstance(array, np.ndarray):
            raise BackendError(f"input {name!r} is {type(array).__name__}, not a numpy array")
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise BackendError(f"input {name!r} has dtype {array.dtype}, expected int64")
        want_ndim = 1 if name in _ROW_INPUTS else 2
        if array.ndim != want_ndim or array.shape[0] != rows:
            expected = f"[{rows}]" if want_ndim == 1 else f"[{rows}, width]"
            raise BackendError(f"input {name!r} has shape {list(array.shape)}, expected {expected}")
        if array.size and (int(array.min()) < 0 or int(array.max()) >= limits[name]):
            raise BackendError(
                f"input {name!r} holds ids outside [0, {limits[name]}): min {array.min()}, max {array.max()}"
            )


def id_limits(model_config: Mapping[str, Any]) -> dict[str, int]:
    """Exclusive upper bound of every input's ids under a model config (``ModelConfig.to_dict()``,
    or the manifest's ``model_config``)."""
    return {
        "task": int(model_config["n_tasks"]) + 1,
        "user": int(model_config["n_users"]),
        "history": int(model_config["n_items"]),
        "query_tokens": int(model_config["n_tokens"]),
        "anchor_item": int(model_config["n_items"]),
        "category": int(model_config["n_categories"]),
        "candidates": int(model_config["n_items"]),
    }

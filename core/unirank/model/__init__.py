"""The multi-task ranking network (torch). Imported by training and by the torch backend only.

May import: torch, numpy and ``unirank.artifact``. ``unirank.model.config`` alone loads no torch
(training's config validates against it); the names below load ``net`` / ``serving`` on first use.
"""

from __future__ import annotations

from typing import Any

from unirank.model.config import ARCHITECTURES, ModelConfig

_LAZY = {
    "UniRankModel": "unirank.model.net",
    "build_model_from_checkpoint": "unirank.model.net",
    "ServingModel": "unirank.model.serving",
    "serving_model": "unirank.model.serving",
}

__all__ = ["ARCHITECTURES", "ModelConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'unirank.model' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

"""The multi-task ranking network (torch). Imported by training and by the torch backend only.

May import: torch, numpy and ``unirank.artifact``.
"""

from unirank.model.net import ModelConfig, ServingModel, UniRankModel, build_model_from_checkpoint

__all__ = ["ModelConfig", "ServingModel", "UniRankModel", "build_model_from_checkpoint"]

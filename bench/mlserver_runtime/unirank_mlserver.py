"""An MLServer custom runtime serving UniRank's model.onnx with ONNX Runtime (the benchmark's peer).

The input contract is UniRank's: INT64 task [B], user [B], history [B,H], query_tokens [B,Q],
anchor_item [B], category [B], candidates [B,N], and FP32 candidate_time [B,N,3] in a graph
trained with time features -> scores [B,N] (FP32). Like UniRank's
cpu-realtime profile it uses one intra-op thread. It runs in MLServer's own virtual environment
(build/mlserver-venv), never in UniRank's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

INPUT_NAMES = ("task", "user", "history", "query_tokens", "anchor_item", "category", "candidates")


def _feed(array: np.ndarray) -> np.ndarray:
    """Ids as INT64; the time features of a graph trained with them stay FP32."""
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    return array.astype(np.int64, copy=False)


class UniRankOnnxRuntime(MLModel):
    async def load(self) -> bool:
        uri = await get_model_uri(self.settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: _feed(NumpyCodec.decode_input(tensor)) for tensor in payload.inputs}
        missing = [name for name in INPUT_NAMES if name not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}")
        (scores,) = self._session.run(["scores"], feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("scores", np.asarray(scores, dtype=np.float32))],
        )

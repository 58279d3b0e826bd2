"""The artifact contract shared by training and serving: tasks, catalogue, feature encoding, store.

Everything here depends on numpy and the standard library only, so the ONNX serving path and the
client never pull in torch. May import: nothing of ``unirank`` outside ``unirank.artifact``
(faiss only lazily, for the item index).
"""

from unirank.artifact.catalog import Catalog, Vocab
from unirank.artifact.features import Context, EncodedContext, FeatureEncoder, ModelInputs
from unirank.artifact.store import Artifact, ArtifactError, load_artifact, write_manifest
from unirank.artifact.tasks import TASKS, TaskSpec, TaskType, task_by_name

__all__ = [
    "TASKS",
    "Artifact",
    "ArtifactError",
    "Catalog",
    "Context",
    "EncodedContext",
    "FeatureEncoder",
    "ModelInputs",
    "TaskSpec",
    "TaskType",
    "Vocab",
    "load_artifact",
    "task_by_name",
    "write_manifest",
]

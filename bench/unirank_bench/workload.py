"""Realistic request mixes drawn from an artifact, and the same requests in every wire format.

UniRank, the floors and MLServer are all driven with the same requests: a use-case's contexts
(known users, popular-skewed items, title-fragment queries, categories) and, by default, 100–200
caller-supplied candidates, so every target scores the same candidate count.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unirank.artifact import Artifact, Context, ModelInputs, TaskType, task_by_name
from unirank.artifact.catalog import is_new_release
from unirank.artifact.text import tokenize
from unirank.client import codec
from unirank.client.domain import (
    Category,
    NewReleases,
    Notification,
    RecommendationRequest,
    RelatedItems,
    Search,
    Task,
)
from unirank.v1 import recommender_pb2 as pb

USE_CASES: tuple[str, ...] = ("notification", "related_items", "search", "category", "new_releases")
MIXED = "mixed"
MIX_WEIGHTS: dict[str, float] = {
    "notification": 0.15,
    "related_items": 0.3,
    "search": 0.3,
    "category": 0.15,
    "new_releases": 0.1,
}
"""Share of each use-case in the mixed workload (item pages and search dominate, pushes and the
new-releases row are rarer)."""
DEVICES = ("mobile", "web", "tv")
V2_MODEL_NAME = "unirank"


@dataclass(frozen=True)
class BenchRequest:
    """One request in use-case neutral form; ``candidate_item_ids`` empty means: retrieval picks."""

    task: str
    user_id: str
    history_item_ids: tuple[str, ...]
    query: str = ""
    anchor_item_id: str = ""
    category_id: str = ""
    candidate_item_ids: tuple[str, ...] = ()
    device: str = "mobile"

    def context(self) -> Context:
        return Context(
            task=task_by_name(self.task).task_type,
            user_id=self.user_id,
            history_item_ids=self.history_item_ids,
            query=self.query,
            anchor_item_id=self.anchor_item_id,
            category_id=self.category_id,
        )


class RequestSampler:
    """Draws requests the way traffic looks: popularity-skewed items, Zipf users, real titles."""

    def __init__(self, artifact: Artifact, seed: int, candidate_range: tuple[int, int] = (100, 200)) -> None:
        self.catalog = artifact.catalog
        self.rng = np.random.default_rng(seed)
        self.candidate_range = candidate_range
        popularity = np.asarray(self.catalog.popularity[1:], dtype=np.float64)
        # Flattened a little: the raw counts make a handful of items every request's favourite.
        weights = np.power(np.maximum(popularity, 1e-9), 0.7)
        self.item_p = weights / weights.sum()
        self.item_ids = np.asarray(self.catalog.items.keys[1:])
        users = np.asarray(self.catalog.users.keys[1:])
        self.user_ids = users[self.rng.permutation(len(users))]
        zipf = 1.0 / np.arange(1, len(users) + 1)
        self.user_p = zipf / zipf.sum()
        counts = np.diff(artifact.retrieval.category_indptr)[1:].astype(np.float64)
        self.category_ids = np.asarray(self.catalog.categories.keys[1:])[: len(counts)]
        self.category_p = counts / counts.sum()
        if len(self.item_ids) < candidate_range[1] + 30:
            raise ValueError(
                f"the artifact has {len(self.item_ids)} items; {candidate_range[1]} candidates need more"
            )
        # A new-releases row's caller sends items of the default window (requests carry no event
        # time, so the window ends at the catalogue's newest year), or any items when too few are new.
        release_year = np.asarray(self.catalog.release_year[1:])
        newest = self.catalog.newest_release_year
        new = is_new_release(release_year, np.iinfo(np.int64).max // 2, newest)
        self.new_p = np.where(new, self.item_p, 0.0) if new.sum() >= candidate_range[1] + 30 else self.item_p
        self.new_p = self.new_p / self.new_p.sum()

    def _items(
        self,
        n: int,
        exclude: set[str] = frozenset(),  # type: ignore[assignment]
        p: np.ndarray | None = None,
    ) -> list[str]:
        weights = self.item_p if p is None else p
        drawn = self.rng.choice(len(self.item_ids), size=n + len(exclude), replace=False, p=weights)
        picked = [str(x) for x in self.item_ids[drawn] if x not in exclude]
        return picked[:n]

    def _user(self) -> str:
        return str(self.user_ids[self.rng.choice(len(self.user_ids), p=self.user_p)])

    def _query(self) -> str:
        # Users type fragments of titles they are looking for: 1 to 3 consecutive title tokens.
        for _ in range(100):
            title = self.catalog.titles[self.catalog.items.index(self._items(1)[0])]
            tokens = [t for t in tokenize(title) if t in self.catalog.tokens]
            if tokens:
                width = int(self.rng.integers(1, min(3, len(tokens)) + 1))
                start = int(self.rng.integers(0, len(tokens) - width + 1))
                return " ".join(tokens[start : start + width])
        raise ValueError("no title in the catalogue has a token in the vocabulary")

    def request(self, task: str, caller_candidates: bool) -> BenchRequest:
        history = tuple(self._items(int(self.rng.integers(5, 21))))
        anonymous = self.rng.random() < 0.3
        user = "" if anonymous and task in ("related_items", "search") else self._user()
        if anonymous and task in ("related_items", "search"):
            history = ()
        fields: dict[str, Any] = {}
        if task == "related_items":
            fields["anchor_item_id"] = self._items(1, set(history))[0]
        elif task == "search":
            fields["query"] = self._query()
        elif task == "category":
            fields["category_id"] = str(
                self.category_ids[self.rng.choice(len(self.category_ids), p=self.category_p)]
            )
        elif task not in ("notification", "new_releases"):
            raise ValueError(f"unknown use-case {task!r}")
        candidates: tuple[str, ...] = ()
        if caller_candidates:
            low, high = self.candidate_range
            exclude = set(history) | {fields.get("anchor_item_id", "")}
            pool = self.new_p if task == "new_releases" else None
            candidates = tuple(self._items(int(self.rng.integers(low, high + 1)), exclude, pool))
        return BenchRequest(
            task=task,
            user_id=user,
            history_item_ids=history,
            candidate_item_ids=candidates,
            device=DEVICES[int(self.rng.integers(0, len(DEVICES)))],
            **fields,
        )


def build_workloads(
    artifact: Artifact,
    per_use_case: int,
    seed: int,
    caller_candidates: bool = True,
    candidate_range: tuple[int, int] = (100, 200),
) -> dict[str, list[BenchRequest]]:
    """``per_use_case`` requests of every use-case, plus the mixed stream drawn from them."""
    sampler = RequestSampler(artifact, seed, candidate_range)
    workloads = {
        task: [sampler.request(task, caller_candidates) for _ in range(per_use_case)] for task in USE_CASES
    }
    names = list(MIX_WEIGHTS)
    p = np.asarray([MIX_WEIGHTS[n] for n in names])
    order = sampler.rng.choice(len(names), size=per_use_case, p=p / p.sum())
    cursors = dict.fromkeys(names, 0)
    mixed = []
    for index in order:
        name = names[int(index)]
        mixed.append(workloads[name][cursors[name] % per_use_case])
        cursors[name] += 1
    workloads[MIXED] = mixed
    return workloads


def to_unirank(request: BenchRequest, index: int) -> bytes:
    """The serialized ``unirank.v1.RecommendRequest`` the UniRank client would send."""
    tasks: dict[str, Task] = {
        "notification": Notification(),
        "related_items": RelatedItems(anchor_item_id=request.anchor_item_id),
        "search": Search(query=request.query),
        "category": Category(category_id=request.category_id),
        "new_releases": NewReleases(),
    }
    task = tasks[request.task]
    message = codec.encode_request(
        RecommendationRequest(
            task=task,
            user_id=request.user_id,
            history_item_ids=request.history_item_ids,
            request_id=f"bench-{index}",
            country="US",
            language="en",
            device=request.device,
            candidate_item_ids=request.candidate_item_ids,
        )
    )
    return message.SerializeToString()


def model_inputs(artifact: Artifact, request: BenchRequest) -> ModelInputs:
    """The model inputs of one request under the artifact's feature encoding (caller candidates)."""
    encoder = artifact.encoder()
    encoded = encoder.encode(request.context())
    index = artifact.catalog.items.index
    candidates = np.asarray([[index(x) for x in request.candidate_item_ids]], dtype=np.int64)
    return encoder.batch([encoded], candidates)


def to_v2(inputs: ModelInputs, v2: Any, index: int) -> bytes:
    """The serialized V2 ``ModelInferRequest`` carrying the same tensors (typed contents: INT64
    ids, FP32 for the time features of a graph trained with them)."""
    message = v2.ModelInferRequest(model_name=V2_MODEL_NAME, id=f"bench-{index}")
    for name, array in inputs.as_dict().items():
        floating = np.issubdtype(array.dtype, np.floating)
        datatype = "FP32" if floating else "INT64"
        tensor = message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        contents = tensor.contents.fp32_contents if floating else tensor.contents.int64_contents
        contents.extend(array.reshape(-1).tolist())
    return bytes(message.SerializeToString())


def typical_response(artifact: Artifact, max_results: int = 10) -> bytes:
    """A ``RecommendResponse`` of a realistic size (what the transport floor answers with)."""
    catalog = artifact.catalog
    message = pb.RecommendResponse(
        request_id="bench-0",
        task_type=int(TaskType.RELATED_ITEMS),  # type: ignore[arg-type]
        model_version=artifact.model_version,
        profile="cpu-realtime",
    )
    for index in range(1, max_results + 1):
        message.items.add(
            item_id=catalog.items.key(index),
            score=0.5,
            title=catalog.titles[index],
            category_id=catalog.primary_category(index),
        )
    return message.SerializeToString()


@dataclass
class Payloads:
    """Everything the load generators, floors and peers send, written once to one pickle."""

    requests: dict[str, list[BenchRequest]]
    unirank: dict[str, list[bytes]]
    v2: dict[str, list[bytes]]
    candidate_counts: dict[str, list[int]]
    response: bytes

    def save(self, path: Path) -> None:
        path.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def load(path: Path) -> Payloads:
        payloads = pickle.loads(path.read_bytes())
        assert isinstance(payloads, Payloads)
        return payloads


def build_payloads(artifact: Artifact, workloads: dict[str, list[BenchRequest]], v2: Any | None) -> Payloads:
    unirank = {name: [to_unirank(r, i) for i, r in enumerate(reqs)] for name, reqs in workloads.items()}
    v2_bytes: dict[str, list[bytes]] = {}
    counts: dict[str, list[int]] = {}
    for name, reqs in workloads.items():
        counts[name] = [len(r.candidate_item_ids) for r in reqs]
        if v2 is not None and all(r.candidate_item_ids for r in reqs):
            v2_bytes[name] = [to_v2(model_inputs(artifact, r), v2, i) for i, r in enumerate(reqs)]
    return Payloads(workloads, unirank, v2_bytes, counts, typical_response(artifact))

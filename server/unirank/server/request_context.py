"""What the pipeline reads off a request before ranking it: the stored history of a known user
who sent none, whether the use-case's signal is missing (cold start) with a hint for the caller,
and the cache key of the answer."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import replace

import numpy as np

from unirank.artifact import Catalog, Context, EncodedContext, TaskType
from unirank.server.domain import Candidates, RankRequest, RuleContext
from unirank.server.runtime import ModelRuntime


def cold_start(task: TaskType, encoded: EncodedContext) -> str:
    """Why the request lacks the signal its use-case needs (empty string when it has it)."""
    if (
        task in (TaskType.NOTIFICATION, TaskType.NEW_RELEASES)
        and not encoded.user
        and not encoded.history.any()
    ):
        return "unknown user_id and no known history_item_ids"
    if task is TaskType.RELATED_ITEMS and not encoded.anchor_item:
        return "unknown anchor_item_id"
    if task is TaskType.SEARCH and not encoded.query_tokens.any():
        return "no query token is in the catalogue vocabulary"
    if task is TaskType.CATEGORY and not encoded.category:
        return "unknown category_id"
    return ""


def with_stored_history(request: RankRequest, runtime: ModelRuntime) -> tuple[RankRequest, bool]:
    """The request with the known user's history from the artifact when it sent none; the caller's
    history, when sent, always wins. Returns (request, whether the stored history was used)."""
    catalog = runtime.encoder.catalog
    items = runtime.retriever.stored_history(catalog.users.index(request.context.user_id))
    if not len(items):
        return request, False
    keys = catalog.items.keys
    history = tuple(keys[i] for i in items.tolist())
    return replace(request, context=replace(request.context, history_item_ids=history)), True


def did_you_mean(context: Context, encoded: EncodedContext, catalog: Catalog) -> str:
    """A hint for a caller whose id is unknown: the close category ids, or what known ids look
    like (a newcomer's ``u42`` for the catalogue's ``u00042``). Cold path only."""
    if context.category_id and not encoded.category:
        close = catalog.categories.closest(context.category_id)
        if close:
            return f"; did you mean {' or '.join(repr(c) for c in close)}?"
        return (
            f"; known category ids look like {catalog.categories.key(1)!r}"
            if len(catalog.categories) > 1
            else ""
        )
    for given, vocab, known in (
        (context.anchor_item_id, catalog.items, encoded.anchor_item),
        (context.user_id, catalog.users, encoded.user),
    ):
        if given and not known and len(vocab) > 1:
            return f"; {given!r} is not in the catalogue, whose ids look like {vocab.key(1)!r}"
    return ""


def cache_key(request: RankRequest) -> Hashable:
    """A 16-byte digest of everything that changes the answer (never the request id).

    A digest, not the fields: a history of hundreds of ids would make each entry kilobytes.
    """
    ctx, opts = request.context, request.options
    parts = (
        str(int(ctx.task)),
        ctx.user_id,
        "\x1f".join(ctx.history_item_ids),
        " ".join(ctx.query.lower().split()),
        ctx.anchor_item_id,
        ctx.category_id,
        str(opts.max_results),
        "\x1f".join(opts.excluded_item_ids),
    )
    return hashlib.blake2b("\x1e".join(parts).encode(), digest_size=16).digest()


def rule_context(runtime: ModelRuntime, encoded: EncodedContext) -> RuleContext:
    """What a business rule may look at for this request besides the candidates."""
    return RuleContext(
        history_items=encoded.history[encoded.history > 0],
        anchor_item=encoded.anchor_item,
        maturity=runtime.maturity,
        release_year=runtime.release_year,
        primary_category=runtime.primary_category,
        title_keys=runtime.title_keys,
    )


def exclude_requested(request: RankRequest, runtime: ModelRuntime, candidates: Candidates) -> Candidates:
    """``candidates`` without the items the request excluded."""
    excluded = request.options.excluded_item_ids
    if not excluded:
        return candidates
    return candidates.keep(~np.isin(candidates.items, runtime.encoder.catalog.items.indices(excluded)))

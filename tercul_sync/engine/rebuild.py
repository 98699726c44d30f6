"""Rebuilding collections behind their aliases: a new vector definition with no broken read side.

A collection's vectors (a new model, new source properties, another module)
cannot be changed in place. Readers query ``Work``, an alias; a rebuild

1. makes the next version of each collection concerned (``Work_v2``), with
   the vectors the settings ask for;
2. fills it from the database with the ordinary sync path, writing to the
   new versions while every alias still names the old ones (readers keep
   getting answers from the old collections meanwhile). In ``client`` mode a
   vector whose model and text are unchanged is copied from the old version,
   not embedded again;
3. verifies it: the parity check of every new entity collection is exact and
   no write failed, else it stops and leaves the aliases alone;
4. swaps every alias together, then runs a catch-up pass (a full sync
   through the aliases, which writes only what changed in the database
   during the rebuild) and drops the old versions.

Weaviate refuses an alias as a reference target, so references name
versioned collections. Rebuilding a collection therefore rebuilds, with it,
every collection whose references point at it, transitively (``members``):
Work takes Translation (``work``) and Passage (``parent``) with it; Translation
and Book can be rebuilt alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from tercul_sync.engine import weaviate_client
from tercul_sync.engine.parity import ParityReport, check_parity
from tercul_sync.engine.reading import Shard
from tercul_sync.engine.registry import (
    PASSAGE_COLLECTION,
    RELATIONS,
    EntityType,
    entity,
    passage_parents,
    sync_order,
)
from tercul_sync.engine.runs import FULL, EdgesRun, EntityRun, Shards, run_edges, run_entity, run_passages
from tercul_sync.engine.weaviate_schema import ensure_schema, resolve, version_of, versioned
from tercul_sync.engine.writing import SyncContext

ALL: Shards = {"all": Shard(0, 1)}


class RebuildError(RuntimeError):
    """A rebuild that cannot start, or whose new collections did not verify (the aliases are unchanged)."""


def members(names: Iterable[str], passages: bool = True) -> list[str]:
    """``names`` and every collection whose references point at one of them, transitively, in sync order
    (the ``Passage`` collection last, when a passage parent is among them)."""
    chosen = set(names)
    unknown = sorted(n for n in chosen if n != PASSAGE_COLLECTION and not _is_entity(n))
    if unknown:
        raise RebuildError(
            f"unknown collections {unknown}: rebuild one of {[e.collection for e in sync_order()]}"
        )
    grew = True
    while grew:
        referrers = {r.source for r in RELATIONS if r.target in chosen} - chosen
        chosen |= referrers
        grew = bool(referrers)
    if passages and any(p.collection in chosen for p in passage_parents()):
        chosen.add(PASSAGE_COLLECTION)
    ordered = [e.collection for e in sync_order() if e.collection in chosen]
    return ordered + ([PASSAGE_COLLECTION] if PASSAGE_COLLECTION in chosen else [])


def _is_entity(name: str) -> bool:
    try:
        entity(name)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class RebuildPlan:
    requested: tuple[str, ...]
    old: dict[str, str]  # registry name -> the collection its alias names now
    new: dict[str, str]  # registry name -> the version being built

    def describe(self) -> str:
        return ", ".join(f"{n}: {self.old[n]} -> {self.new[n]}" for n in self.new)


@dataclass
class RebuildReport:
    plan: RebuildPlan
    entity_runs: dict[str, EntityRun] = field(default_factory=dict)
    edges: EdgesRun | None = None
    passages_written: int = 0
    passages_embedded: int = 0
    passages_reused: int = 0
    parity: list[ParityReport] = field(default_factory=list)
    objects_before: dict[str, int] = field(default_factory=dict)  # in the old versions
    objects_after: dict[str, int] = field(default_factory=dict)  # in the new versions, before the catch-up
    swapped: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(
            f"{n} {self.objects_before.get(n, 0)} -> {self.objects_after.get(n, 0)}" for n in self.plan.new
        )
        state = "swapped" if self.swapped else "not swapped"
        return f"rebuilt {self.plan.describe()} ({counts} objects), {state}, in {self.seconds:.1f} s"


def plan_rebuild(ctx: SyncContext, names: Iterable[str]) -> RebuildPlan:
    """The versions a rebuild of ``names`` (and their referrers) will make."""
    requested = tuple(dict.fromkeys(names))
    if not requested:
        raise RebuildError("name at least one collection to rebuild")
    chosen = members(requested, passages=ctx.settings.passages)
    old: dict[str, str] = {}
    for name in chosen:
        current = resolve(ctx.client, name)
        if current is None:
            raise RebuildError(f"{name} does not exist in Weaviate yet: a sync creates it, no rebuild needed")
        old[name] = current
    new = {name: versioned(name, version_of(name, old[name]) + 1) for name in chosen}
    return RebuildPlan(requested, old, new)


def rebuild(
    ctx: SyncContext,
    names: Iterable[str],
    before_swap: Callable[[RebuildPlan], None] | None = None,
    keep_old: bool = False,
) -> RebuildReport:
    """Rebuild ``names`` and their referrers behind their aliases (see the module's docstring).

    ``before_swap`` is called once the new versions are full and verified, while every alias still
    names the old ones. ``keep_old`` leaves the old versions in place instead of dropping them.
    Raises ``RebuildError`` when the new versions do not verify; the aliases then still name the
    old collections, and the new ones are kept for inspection (the next rebuild replaces them).
    """
    started = time.monotonic()
    plan = plan_rebuild(ctx, names)
    report = RebuildReport(plan)
    client = ctx.client
    for target in plan.new.values():  # left over by a rebuild that stopped: never behind an alias
        if client.collections.exists(target) and target not in plan.old.values():
            client.collections.delete(target)
    entities = [entity(n) for n in plan.new if n != PASSAGE_COLLECTION]
    relations = [r for r in RELATIONS if r.source in plan.new]
    ensure_schema(client, ctx.settings, entities, relations, names=plan.new)
    report.objects_before = {n: weaviate_client.count_objects(client, plan.old[n]) for n in plan.new}

    building = replace(ctx, names=plan.new, reuse_vectors_from=_reusable(ctx, plan))
    for e in entities:
        report.entity_runs[e.collection] = run_entity(building, e, ALL, FULL, {})
        _require_no_failures(e.collection, report.entity_runs[e.collection].report.write.failed)
    report.edges = run_edges(building, ALL, FULL, {})
    if PASSAGE_COLLECTION in plan.new:
        passages, _ = run_passages(building, ALL, FULL, {})
        report.passages_written = passages.write.written
        report.passages_embedded = passages.embeddings.texts
        report.passages_reused = passages.embeddings_reused
        _require_no_failures(PASSAGE_COLLECTION, passages.write.failed)
    # The gate before the swap walks every object: it must not rely on the digests the build itself
    # just wrote.
    for e in entities:
        parity = check_parity(
            ctx.db, client, e, list(ALL.values()), ctx.settings, collection=plan.new[e.collection], walk=True
        )
        report.parity.append(parity)
        if not parity.exact:
            raise RebuildError(
                f"{plan.new[e.collection]} did not verify, aliases unchanged: {parity.describe()}"
            )
    report.objects_after = {n: weaviate_client.count_objects(client, plan.new[n]) for n in plan.new}

    if before_swap is not None:
        before_swap(plan)
    _swap(ctx, plan)
    report.swapped = True
    _catch_up(ctx, entities, PASSAGE_COLLECTION in plan.new)
    if not keep_old:
        for name, old in plan.old.items():
            if old != plan.new[name] and client.collections.exists(old):
                client.collections.delete(old)
    report.seconds = time.monotonic() - started
    return report


def _reusable(ctx: SyncContext, plan: RebuildPlan) -> dict[str, str]:
    """Where stored vectors may be copied from (``client`` mode): the old versions. An entity's vector
    hash holds the model and the text, so a changed one is embedded again whatever; a passage's hash
    does not, so passages are copied only when Passage was not asked for (its vectors are not changing)."""
    if ctx.settings.vectorizer != "client":
        return {}
    return {
        n: old
        for n, old in plan.old.items()
        if n != PASSAGE_COLLECTION or PASSAGE_COLLECTION not in plan.requested
    }


def _require_no_failures(name: str, failed: int) -> None:
    if failed:
        raise RebuildError(f"{failed} objects of {name} failed during the rebuild, aliases unchanged")


def _swap(ctx: SyncContext, plan: RebuildPlan) -> None:
    """Point every alias at its new version. A plain collection made before aliases existed here
    has to be dropped before an alias may take its name (a moment without an answer)."""
    for name, new in plan.new.items():
        if plan.old[name] == name:
            ctx.client.collections.delete(name)
            ctx.client.alias.create(alias_name=name, target_collection=new)
        else:
            ctx.client.alias.update(alias_name=name, new_target_collection=new)


def _catch_up(ctx: SyncContext, entities: list[EntityType], passages: bool) -> None:
    """A full pass through the aliases: rows changed in the database during the rebuild are written."""
    for e in entities:
        run_entity(ctx, e, ALL, FULL, {})
    run_edges(ctx, ALL, FULL, {})
    if passages:
        run_passages(ctx, ALL, FULL, {})

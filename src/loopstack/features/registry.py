"""Feature registry: stores definitions in the metadata store, a new version per change.

`apply` compares what it is given with what is stored and returns the diff (added, changed,
removed, unchanged). Old versions stay readable, so a model can pin the versions it trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from loopstack.errors import DefinitionError
from loopstack.features.definitions import Definition, Entity, EventSource, FeatureView, OnDemandFeature
from loopstack.meta.db import MetadataStore

KINDS = {"entity": Entity, "source": EventSource, "feature_view": FeatureView, "on_demand": OnDemandFeature}
_ORDER = ["entity", "source", "feature_view", "on_demand"]


@dataclass
class ApplyDiff:
    """What `apply` changed; each entry is (kind, name, version)."""

    added: list[tuple[str, str, int]] = field(default_factory=list)
    changed: list[tuple[str, str, int]] = field(default_factory=list)
    removed: list[tuple[str, str, int]] = field(default_factory=list)
    unchanged: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.removed)

    def lines(self) -> list[str]:
        """Human-readable diff, one line per definition ("+ added", "~ changed", "- removed")."""
        out = [f"+ {k} {n} (v{v})" for k, n, v in self.added]
        out += [f"~ {k} {n} (v{v})" for k, n, v in self.changed]
        out += [f"- {k} {n} (removed, v{v})" for k, n, v in self.removed]
        return out or ["no changes"]


def _collect(objects: Iterable[Definition]) -> dict[tuple[str, str], Definition]:
    """The definitions to store, including entities and sources that views reference."""
    found: dict[tuple[str, str], Definition] = {}

    def add(obj: Definition) -> None:
        key = (obj.kind, obj.name)
        if key in found and found[key].to_spec() != obj.to_spec():
            raise DefinitionError(
                f"two different {obj.kind} definitions are both named {obj.name!r}; rename one of them"
            )
        found[key] = obj

    for obj in objects:
        if not isinstance(obj, Definition):
            raise DefinitionError(
                f"apply() got {obj!r}; pass Entity, EventSource, FeatureView or OnDemandFeature objects"
            )
        if isinstance(obj, FeatureView):
            add(obj.entity)
            add(obj.source)
        add(obj)
    return found


class FeatureRegistry:
    """Definitions, versioned in the metadata store."""

    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta

    def plan(self, objects: Iterable[Definition], prune: bool = False) -> tuple[ApplyDiff, list]:
        """The diff `apply` would make, and the change rows it would write."""
        wanted = _collect(objects)
        stored = {(r["kind"], r["name"]): r for r in self.meta.latest_definitions()}
        diff, changes = ApplyDiff(), []
        for (kind, name), obj in sorted(wanted.items(), key=lambda kv: (_ORDER.index(kv[0][0]), kv[0][1])):
            old = stored.get((kind, name))
            if old is None:
                changes.append((kind, name, obj.to_spec(), obj.spec_hash))
                diff.added.append((kind, name, self._next_version(kind, name)))
            elif old["spec_hash"] != obj.spec_hash:
                changes.append((kind, name, obj.to_spec(), obj.spec_hash))
                diff.changed.append((kind, name, old["version"] + 1))
            else:
                diff.unchanged.append((kind, name, old["version"]))
        if prune:
            for (kind, name), old in sorted(stored.items()):
                if (kind, name) not in wanted:
                    changes.append((kind, name, None, None))
                    diff.removed.append((kind, name, old["version"] + 1))
        return diff, changes

    def apply(self, objects: Iterable[Definition], prune: bool = False) -> ApplyDiff:
        """Store new versions of what changed; with `prune`, mark stored definitions not given as removed."""
        diff, changes = self.plan(objects, prune)
        if changes:
            self.meta.put_definitions(changes)
        return diff

    def _next_version(self, kind: str, name: str) -> int:
        versions = self.meta.definition_versions(kind, name)
        return versions[-1]["version"] + 1 if versions else 1

    # -- reading back --------------------------------------------------------------------------
    def entities(self) -> dict[str, Entity]:
        return {r["name"]: Entity.from_spec(r["spec"]) for r in self.meta.latest_definitions("entity")}

    def sources(self) -> dict[str, EventSource]:
        return {r["name"]: EventSource.from_spec(r["spec"]) for r in self.meta.latest_definitions("source")}

    def views(self) -> dict[str, FeatureView]:
        """The current version of every feature view, rebuilt from the stored specs."""
        entities, sources = self.entities(), self.sources()
        out = {}
        for r in self.meta.latest_definitions("feature_view"):
            spec = r["spec"]
            if spec["entity"] not in entities or spec["source"] not in sources:
                raise DefinitionError(
                    f"feature view {r['name']!r} refers to entity {spec['entity']!r} / source {spec['source']!r} "
                    "which are no longer defined; apply them again"
                )
            out[r["name"]] = FeatureView.from_spec(spec, entities, sources)
        return out

    def view_version(self, name: str, version: int | None = None) -> dict:
        """A stored version of a view (latest by default), with its spec and version number."""
        versions = self.meta.definition_versions("feature_view", name)
        if not versions:
            raise DefinitionError(f"no feature view named {name!r} has been applied")
        if version is None:
            return versions[-1]
        for v in versions:
            if v["version"] == version:
                return v
        raise DefinitionError(
            f"feature view {name!r} has no version {version}; versions are {[v['version'] for v in versions]}"
        )

    def versions_of(self, kind: str, name: str) -> list[dict]:
        return self.meta.definition_versions(kind, name)

"""`Project`: one folder with a loopstack.yaml, and the entry point to every store it configures.

The project wires the configured backends together (log, metadata, registry, offline engine); the
boxes themselves never reach into each other's storage.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from loopstack.config import CONFIG_FILE, Config, default_yaml, load_config, resolve
from loopstack.errors import ConfigError, DefinitionError, LogError
from loopstack.features.definitions import Definition, EventSource, FeatureView, Field, OnDemandFeature
from loopstack.features.registry import ApplyDiff, FeatureRegistry
from loopstack.meta.artifacts import ArtifactStore
from loopstack.meta.db import MetadataStore


def _where(exc: BaseException, path: Path) -> str:
    """`file:line` of the definitions file's line that raised `exc` (the file itself if unknown)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    target = str(path.resolve())
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if str(Path(frame.filename).resolve()) == target:
            line = frame.lineno  # keep the innermost call made from the file
    return f"{path}:{line}" if line else str(path)


class Project:
    """A loopstack project folder: reads `loopstack.yaml` and opens the stores it names lazily."""

    def __init__(self, path: str | Path = ".", config: Config | None = None) -> None:
        self.root = Path(path).expanduser().resolve()
        if self.root.is_file():
            raise ConfigError(f"{self.root} is a file, not a project folder: pass the folder that holds {CONFIG_FILE}")
        if not self.root.is_dir():
            raise ConfigError(f"project folder {self.root} does not exist: create it with `loopstack init {path}`")
        self.config = config or load_config(self.root)
        self._on_demand: dict[str, OnDemandFeature] = {}

    # -- creating ------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | Path, name: str | None = None, example: bool = True) -> "Project":
        """Create a project folder with loopstack.yaml (and an example definitions.py); idempotent."""
        root = Path(path).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"cannot create a project in {root}: it is a file; give a folder path")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create project folder {root}: {exc.strerror or exc}") from exc
        cfg = root / CONFIG_FILE
        defs = root / "definitions.py"
        try:
            if not cfg.exists():
                cfg.write_text(default_yaml(name or root.name), encoding="utf-8")
            if example and not defs.exists():
                defs.write_text(resources.files("loopstack.templates").joinpath("definitions.py.txt").read_text())
            (root / "data").mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the project in {root}: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}") from None
        return cls(root)

    # -- stores (opened on first use) ----------------------------------------------------------
    def path(self, p: str) -> Path:
        """A config path resolved against the project folder."""
        return resolve(self.root, p)

    @cached_property
    def meta(self) -> MetadataStore:
        url = self.config.metadata_url(self.root)
        if url.startswith("sqlite:///"):
            folder = Path(url[len("sqlite:///"):]).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"metadata store: cannot create the folder {folder} ({exc.strerror}); set "
                                  "`metadata.path` in loopstack.yaml to a file in a folder you can write to") from None
        return MetadataStore(url)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        p = self.config.artifacts.path
        where = p if "://" in p else self.path(p)
        try:
            return ArtifactStore(where)
        except OSError as exc:
            raise ConfigError(f"artifact store: cannot create the folder {where} ({exc.strerror or exc}); set "
                              "`artifacts.path` in loopstack.yaml to a folder you can write to") from None

    @cached_property
    def registry(self) -> FeatureRegistry:
        return FeatureRegistry(self.meta)

    @cached_property
    def models(self):  # -> registry.Registry
        """The model registry (box 5): versions, aliases, rollout states, gates, profiles."""
        from loopstack.registry.registry import Registry
        return Registry(self.meta, self.artifacts)

    @cached_property
    def log(self):  # -> EventLog
        from loopstack.log import open_log
        c = self.config.log
        if c.backend == "local":
            try:
                return open_log("local", path=self.path(c.path))
            except OSError as exc:
                raise ConfigError(f"event log: cannot open the folder {self.path(c.path)} ({exc.strerror or exc}); "
                                  "set `log.path` in loopstack.yaml to a folder you can write to") from None
        return open_log(c.backend, url=c.url, prefix=c.prefix)

    @cached_property
    def engine(self):  # -> OfflineEngine
        from loopstack.features.offline import open_engine
        return open_engine(self.config.offline, index_dir=str(self.path(self.config.offline.index_path)))

    @cached_property
    def online_store(self):  # -> OnlineStore
        """The configured online store (sqlite file or redis), opened on first use."""
        from loopstack.features.online import open_online_store
        c = self.config.online
        if c.backend == "sqlite":
            return open_online_store("sqlite", path=self.path(c.path), populate=c.populate, cache_mb=c.cache_mb)
        return open_online_store(c.backend, url=c.url, prefix=c.prefix, spin_us=c.spin_us)

    @property
    def online(self):  # -> OnlineFeatures
        """Applies events to / reads features from the online store, for the applied views.

        Rebuilt when `apply` changed the definitions; the check (one indexed query) runs at most
        once a second, so a hot read path does not pay for the registry.
        """
        from loopstack.features.online.service import OnlineFeatures
        now = time.monotonic()
        cached = self.__dict__.get("_online")
        if cached is not None and now - self.__dict__.get("_online_checked", 0.0) < 1.0:
            return cached
        version = self.meta.definitions_version()
        if cached is None or self.__dict__.get("_online_version") != version:
            cached = self.__dict__["_online"] = OnlineFeatures(self.online_store, self.registry.views(),
                                                                        on_demand=self.on_demand_names())
            self.__dict__["_online_version"] = version
        self.__dict__["_online_checked"] = now
        return cached

    def get_online_features(self, features: Sequence[str], entity_rows: Sequence[dict], as_of: Any = None,
                            full_feature_names: bool = False):  # -> OnlineResponse
        """Online features for entity rows as of `as_of` (µs, datetime or ISO 8601 text; default now)."""
        return self.online.get_online_features(features, entity_rows, as_of, full_feature_names)

    @property
    def lake_path(self) -> Path:
        return self.path(self.config.offline.lake_path)

    # -- definitions ---------------------------------------------------------------------------
    def load_definitions(self, file: str | Path | None = None) -> list[Definition]:
        """Import the definitions file and collect every Entity/EventSource/FeatureView/OnDemandFeature in it."""
        path = Path(file) if file else self.path(self.config.definitions)
        fix = "check the --file path" if file else f"set `definitions:` in {CONFIG_FILE}"
        if not path.exists():
            raise DefinitionError(f"definitions file {path} not found ({fix})")
        spec = importlib.util.spec_from_file_location(f"loopstack_defs_{abs(hash(str(path)))}", path)
        if path.is_dir() or spec is None or spec.loader is None:
            raise DefinitionError(f"definitions file {path} is {'a folder' if path.is_dir() else 'not a .py file'}: "
                                  f"name the Python file that defines the entities, sources and views ({fix})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise DefinitionError(
                f"{_where(exc, path)}: {type(exc).__name__}: {exc} (while importing the definitions file)") from exc
        return [v for v in vars(module).values() if isinstance(v, Definition)]

    def plan(self, objects: Iterable[Definition], prune: bool = False) -> ApplyDiff:
        """What `apply` would change, without changing anything."""
        return self.registry.plan(list(objects), prune)[0]

    def apply(self, objects: Iterable[Definition], prune: bool = False) -> ApplyDiff:
        """Register definitions (a new version per change) and create the log topics their sources need."""
        objects = list(objects)
        diff, _ = self.registry.plan(objects, prune)  # validates before touching the log
        for obj in objects:
            if isinstance(obj, OnDemandFeature):
                self._on_demand[obj.name] = obj
        sources = {o.name: o for o in objects if isinstance(o, EventSource)}
        sources.update({o.source.name: o.source for o in objects if isinstance(o, FeatureView)})
        for source in sources.values():
            self._ensure_topic(source, objects)
        diff = self.registry.apply(objects, prune)
        self.__dict__.pop("_online_checked", None)  # the next `online` access sees the new views
        return diff

    def _ensure_topic(self, source: EventSource, objects: Sequence[Definition]) -> None:
        if source.is_batch:
            return
        from loopstack.log.base import TopicConfig
        schema = list(source.schema)
        if source.schema and source.field(source.timestamp) is None:
            schema.append(Field(source.timestamp, "timestamp"))
        key = source.key or next((o.entity.join_key for o in objects
                                  if isinstance(o, FeatureView) and o.source.name == source.name), None)
        try:
            self.log.create_topic(TopicConfig(source.topic, source.partitions, tuple(schema), key_field=key))
        except LogError as exc:
            raise DefinitionError(f"source {source.name!r}: {exc}") from exc

    # -- offline retrieval ---------------------------------------------------------------------
    def source_data(self, source: EventSource):  # -> SourceData
        """Where the engine finds a source's events; log topics are first archived into the lake."""
        from loopstack.features.offline.base import SourceData
        if source.is_batch:
            p = self.path(source.path) if "://" not in source.path else Path(source.path)
            fmt = "csv" if str(p).lower().endswith(".csv") else "parquet"
            if p.is_dir():
                files = tuple(sorted(str(f) for f in p.rglob("*.parquet")))
            elif any(ch in str(p) for ch in "*?["):
                files = tuple(sorted(str(f) for f in Path("/").glob(str(p).lstrip("/"))))
            else:
                files = (str(p),) if p.exists() else ()
            return SourceData(source.name, files, source.timestamp, (), fmt)
        from loopstack.log.archive import archive_topic
        archive_topic(self.log, source.topic, self.lake_path, timestamp_field=source.timestamp)
        files = tuple(sorted(str(f) for f in (self.lake_path / source.topic).rglob("*.parquet")))
        return SourceData(source.name, files, source.timestamp, ("_append_ts", "_partition", "_offset"), "parquet")

    def on_demand_features(self) -> dict[str, OnDemandFeature]:
        """On-demand features applied in this process, else those in the definitions file."""
        if not self._on_demand and self.registry.meta.latest_definitions("on_demand"):
            self._on_demand = {d.name: d for d in self.load_definitions() if isinstance(d, OnDemandFeature)}
        return self._on_demand

    def on_demand_names(self) -> set[str]:
        """The names of the applied on-demand features, from the metadata store (the definitions file is not
        imported: online reads only need to recognise them)."""
        return {d["name"] for d in self.registry.meta.latest_definitions("on_demand")}

    def get_historical_features(self, entity_df: Any, features: Sequence[str], *,
                                full_feature_names: bool = False, timestamp_column: str = "event_timestamp",
                                output: str = "pandas") -> Any:
        """Point-in-time correct features for each row of `entity_df` (see docs/offline-store.md)."""
        from loopstack.features.retrieval import get_historical_features
        refs = [features] if isinstance(features, str) else list(features)  # list("v:f") would split it
        return get_historical_features(
            entity_df, refs, views=self.registry.views(), source_data=self.source_data,
            engine=self.engine, full_feature_names=full_feature_names, timestamp_column=timestamp_column,
            on_demand=self.on_demand_features(), output=output)

    # -- training datasets and runs (box 4) -----------------------------------------------------
    def build_dataset(self, labels: Any, features: Sequence[str], label_delay: Any = "24h", split: Any = None,
                      cutoff: Any = None, name: str | None = None, **options: Any):  # -> Dataset
        """Labels final for `label_delay` + point-in-time features + temporal split, saved as a snapshot."""
        from loopstack.training.datasets import build_dataset
        return build_dataset(self, labels, features, label_delay=label_delay, split=split, cutoff=cutoff,
                             name=name, **options)

    def dataset(self, name_or_id: str):  # -> Dataset
        """A stored dataset by id, `name@version` or name (newest version)."""
        from loopstack.training.datasets import load_dataset
        return load_dataset(self, name_or_id)

    @cached_property
    def runs(self):  # -> RunStore
        """Tracked runs: `get`, `search`, `compare`."""
        from loopstack.training.tracking import RunStore
        return RunStore(self.meta, self.artifacts)

    def start_run(self, name: str | None = None, tags: dict | None = None, **options: Any):  # -> Run
        """Start a tracked run; use as `with project.start_run("name") as run: ...`."""
        return self.runs.start(name, tags, **options)

    def train(self, estimator: Any, dataset: Any, *, label: str | None = None, run_name: str | None = None,
              params: dict | None = None, fit_kwargs: dict | None = None, custom_loop: Any = None,
              **options: Any):  # -> TrainResult
        """Fit (or run `custom_loop`) on the train part, evaluate on the holdout, track it all in a run.

        `label` defaults to the dataset's label column ("label").
        Returns TrainResult(model, run_id, signature, metrics).
        """
        from loopstack.training.trainers import train
        return train(self, estimator, dataset, label=label, run_name=run_name, params=params,
                     fit_kwargs=fit_kwargs, custom_loop=custom_loop, **options)

    def close(self) -> None:
        """Close every store that was opened."""
        for name in ("log", "engine", "online_store", "meta"):
            if name in self.__dict__:
                self.__dict__[name].close()

    def __enter__(self) -> "Project":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

"""loopstack.yaml → typed config: one section per store, each choosing its backend.

Every value can be overridden by an environment variable ``LOOPSTACK_<SECTION>__<KEY>``
(e.g. ``LOOPSTACK_LOG__BACKEND=redis``). Invalid values raise ConfigError naming the key, the bad
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from loopstack.errors import ConfigError

CONFIG_FILE = "loopstack.yaml"
ENV_PREFIX = "LOOPSTACK_"


@dataclass(frozen=True)
class LogConfig:
    """Event log: `local` (segment files under `path`) or `redis` (Redis Streams at `url`)."""

    backend: str = "local"
    path: str = "data/log"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "loopstack"

    ALLOWED = {"backend": ("local", "redis")}


@dataclass(frozen=True)
class OfflineConfig:
    """Offline store: the Parquet lake at `lake_path`, queried by `engine`."""

    engine: str = "duckdb"
    lake_path: str = "data/lake"
    threads: int | None = None
    memory_limit: str | None = None
    index: str = "auto"                 # sorted indexes of big sources for plain fields: auto | always | never
    index_path: str = "data/index"      # where they live (rebuilt when a source's files change)
    index_min_rows: int = 1_000_000     # auto: index sources with at least this many events

    ALLOWED = {"engine": ("duckdb",), "index": ("auto", "always", "never")}


@dataclass(frozen=True)
class OnlineConfig:
    """Online store: `sqlite` file (WAL) or `redis` at `url`."""

    backend: str = "sqlite"
    path: str = "data/online.db"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "loopstack"

    ALLOWED = {"backend": ("sqlite", "redis")}


@dataclass(frozen=True)
class MetadataConfig:
    """Metadata (definitions, later runs and the registry): `sqlite` file or a `postgresql` URL."""

    backend: str = "sqlite"
    path: str = "data/metadata.db"
    url: str | None = None

    ALLOWED = {"backend": ("sqlite", "postgresql")}


@dataclass(frozen=True)
class ArtifactsConfig:
    """Artifact store: a local folder or any fsspec URL."""

    path: str = "data/artifacts"


@dataclass(frozen=True)
class Config:
    """The whole loopstack.yaml, with relative paths resolved against the project folder."""

    name: str = "loopstack-project"
    definitions: str = "definitions.py"
    log: LogConfig = field(default_factory=LogConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)

    SECTIONS = {"log": LogConfig, "offline": OfflineConfig, "online": OnlineConfig, "metadata": MetadataConfig,
                "artifacts": ArtifactsConfig}

    def metadata_url(self, root: Path) -> str:
        """SQLAlchemy URL of the metadata store."""
        if self.metadata.backend == "postgresql":
            if not self.metadata.url:
                raise ConfigError(
                    "metadata.url is required when metadata.backend is postgresql "
                    "(e.g. postgresql+psycopg://user@127.0.0.1:5432/loopstack)"
                )
            return self.metadata.url
        return self.metadata.url or f"sqlite:///{resolve(root, self.metadata.path)}"


def resolve(root: Path, p: str) -> Path:
    """A config path: absolute stays, relative is under the project folder."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


def _coerce(section: str, key: str, ftype: Any, value: Any) -> Any:
    where = f"{section}.{key}" if section else key
    t = str(ftype)  # annotations are strings here: "str", "int | None", ...
    optional = "None" in t
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if optional:
            return None
        raise ConfigError(f"{where} must not be empty")
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where} = {value!r} must be a single value, not a {type(value).__name__}")
    if t.startswith("int"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} = {value!r} is not an integer") from None
    return str(value)


def _build(section: str, cls: type, raw: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)} in {CONFIG_FILE}; "
            f"allowed keys of [{section}] are {', '.join(fields)}"
        )
    values = {}
    for k, v in raw.items():
        values[k] = _coerce(section, k, fields[k].type, v)
        allowed = getattr(cls, "ALLOWED", {}).get(k)
        if allowed and values[k] not in allowed:
            raise ConfigError(f"{section}.{k} = {v!r} is not allowed; choose one of: {', '.join(allowed)}")
    return cls(**values)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str] | str]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "TEST_"):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if "__" in rest:
            section, key = rest.split("__", 1)
            if section not in Config.SECTIONS:
                raise ConfigError(
                    f"environment variable {name}: no section {section!r}; sections are {', '.join(Config.SECTIONS)}"
                )
            out.setdefault(section, {})[key] = value
        elif rest in ("name", "definitions"):
            out[rest] = value
    return out


def parse_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from a parsed YAML mapping plus environment overrides (env wins)."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{CONFIG_FILE} must be a mapping of sections, got {type(raw).__name__}")
    for key, value in _env_overrides(os.environ if env is None else env).items():
        if isinstance(value, dict):
            section = dict(raw.get(key) or {})
            section.update(value)
            raw[key] = section
        else:
            raw[key] = value
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)} in {CONFIG_FILE}; allowed: {', '.join(sorted(top))}"
        )
    kwargs: dict[str, Any] = {}
    for name, cls in Config.SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"section {name!r} must be a mapping of keys, got {section!r}")
        kwargs[name] = _build(name, cls, section)
    for key in ("name", "definitions"):
        if key in raw:
            kwargs[key] = _coerce("", key, str, raw[key])
    return Config(**kwargs)


def load_config(root: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read `<root>/loopstack.yaml` (missing file → ConfigError saying how to create one)."""
    path = root / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"no {CONFIG_FILE} in {root}: create a project with `loopstack init {root}`")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(raw, env)


DEFAULT_YAML = """\
# loopstack project configuration. Every key can be overridden by an environment variable
# LOOPSTACK_<SECTION>__<KEY>, e.g. LOOPSTACK_LOG__BACKEND=redis.
name: {name}
definitions: definitions.py

log:
  backend: local            # local | redis
  path: data/log            # local: segment files live here
  url: redis://127.0.0.1:6379/0   # redis: Redis Streams server

offline:
  engine: duckdb            # the Parquet lake is queried with DuckDB
  lake_path: data/lake
  index: auto               # sorted copies of big sources speed up repeated joins: auto | always | never
  index_path: data/index

online:
  backend: sqlite           # sqlite | redis
  path: data/online.db      # sqlite file
  url: redis://127.0.0.1:6379/0   # redis server

metadata:
  backend: sqlite           # sqlite | postgresql
  path: data/metadata.db    # sqlite file
  # url: postgresql+psycopg://user@127.0.0.1:5432/loopstack

artifacts:
  path: data/artifacts
"""

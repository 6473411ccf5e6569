"""loopstack.yaml → typed config: one section per store, each choosing its backend.

Every value can be overridden by an environment variable ``LOOPSTACK_<SECTION>__<KEY>``
(e.g. ``LOOPSTACK_LOG__BACKEND=redis``). Invalid values raise ConfigError naming the key, the bad
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from loopstack.errors import ConfigError

CONFIG_FILE = "loopstack.yaml"
_MEMORY = re.compile(r"\s*(\d+(\.\d*)?|\.\d+)\s*(%|(bytes?|b|[kmgt](i?b)?))\s*$", re.IGNORECASE)  # DuckDB
ENV_PREFIX = "LOOPSTACK_"


@dataclass(frozen=True)
class LogConfig:
    """Event log: `local` (segment files under `path`), `redis` (Redis Streams at `url`) or `kafka`
    (`url` = kafka://host:port[,host:port]; Kafka topics are named `<prefix>.<topic>`)."""

    backend: str = "local"
    path: str = "data/log"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "loopstack"

    ALLOWED = {"backend": ("local", "redis", "kafka")}


@dataclass(frozen=True)
class OfflineConfig:
    """Offline store: the Parquet lake at `lake_path`, queried by `engine` (duckdb | spark).

    Spark: `spark_master` (``local[2]``, ``spark://host:7077``, ``yarn``, ``k8s://...``) and
    `spark_conf`, a mapping of extra Spark settings (env: YAML/JSON text), e.g.
    ``{spark.executor.memory: 8g}``. See docs/offline-engines.md.
    """

    engine: str = "duckdb"
    lake_path: str = "data/lake"
    threads: int | None = None
    memory_limit: str | None = None
    index: str = "auto"                 # sorted indexes of big sources for plain fields: auto | always | never
    index_path: str = "data/index"      # where they live (rebuilt when a source's files change)
    index_min_rows: int = 1_000_000     # auto: index sources with at least this many events
    spark_master: str = "local[2]"
    spark_conf: dict = field(default_factory=dict, hash=False)

    ALLOWED = {"engine": ("duckdb", "spark"), "index": ("auto", "always", "never")}

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 0:
            raise ConfigError(f"offline.threads = {self.threads} must be >= 0 (DuckDB worker threads; 0 or "
                              "unset: all cores)")
        if self.index_min_rows < 0:
            raise ConfigError(f"offline.index_min_rows = {self.index_min_rows} must be >= 0 (events a source needs "
                              "before `index: auto` builds a sorted index)")
        if self.memory_limit is not None and not _MEMORY.match(self.memory_limit):
            raise ConfigError(f"offline.memory_limit = {self.memory_limit!r} is not an amount of memory; write e.g. "
                              "\"8GB\", \"512MiB\" or \"80%\" (leave it unset for DuckDB's default)")
        conf = self.spark_conf
        if isinstance(conf, str):  # from an environment variable: YAML or JSON text
            try:
                conf = yaml.safe_load(conf) if conf.strip() else {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"offline.spark_conf = {self.spark_conf!r} is not YAML/JSON: {exc}") from None
        if not isinstance(conf, dict):
            raise ConfigError(f"offline.spark_conf = {self.spark_conf!r} must be a mapping of Spark settings, "
                              "e.g. {spark.executor.memory: 8g}")
        object.__setattr__(self, "spark_conf", {str(k): str(v) for k, v in conf.items()})


@dataclass(frozen=True)
class OnlineConfig:
    """Online store: `sqlite` file (WAL) or `redis` at `url`."""

    backend: str = "sqlite"
    path: str = "data/online.db"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "loopstack"
    spin_us: int = 200                  # redis: a serving read polls this long for the reply before sleeping
    populate: bool = True               # sqlite: a serving reader maps the whole file at its first read
    cache_mb: int = 0                   # sqlite: page cache of each reading/writing connection, MiB (0: SQLite's 2)

    ALLOWED = {"backend": ("sqlite", "redis")}

    def __post_init__(self) -> None:
        if self.spin_us < 0:
            raise ConfigError(f"online.spin_us = {self.spin_us} must be >= 0 (microseconds a redis read polls for "
                              "its reply; 0: never)")
        if self.cache_mb < 0:
            raise ConfigError(f"online.cache_mb = {self.cache_mb} must be >= 0 (MiB of SQLite page cache per "
                              "connection; 0 keeps SQLite's default of 2 MiB)")


@dataclass(frozen=True)
class MetadataConfig:
    """Metadata (definitions, later runs and the registry): `sqlite` file or a `postgresql` URL."""

    backend: str = "sqlite"
    path: str = "data/metadata.db"
    url: str | None = None

    ALLOWED = {"backend": ("sqlite", "postgresql")}

    def __post_init__(self) -> None:
        if self.url is not None:
            from loopstack.meta.url import check_metadata_url
            check_metadata_url(self.url, self.backend)


@dataclass(frozen=True)
class ArtifactsConfig:
    """Artifact store: a local folder or any fsspec URL."""

    path: str = "data/artifacts"


@dataclass(frozen=True)
class MonitoringConfig:
    """Monitoring (box 8): window width, label delay, decision threshold, alert rules, webhook.

    `rules` is a list of mappings ``{metric, feature?, op, value, severity?}`` (see
    `loopstack.monitoring.rules`); empty means the default rules. Env: ``LOOPSTACK_MONITORING__RULES``
    takes the list as JSON/YAML text.
    """

    window: str = "1h"                  # width of the base windows (hourly); reports roll them up
    label_delay: str = "24h"            # a window's labels are final this long after it ends
    threshold: float = 0.5              # score >= threshold counts as flagged (positive)
    min_samples: int = 100              # fewer feature samples in a window: no drift numbers for it
    label_key: str = "request_id"       # field joining a label to its prediction
    join_retention: str = "7d"          # predictions wait this long after their window for a label
    rules: tuple = ()
    webhook_url: str | None = None      # POST each new alert as JSON here (failures are logged)
    max_feature_lag: str = "1h"         # diagnose: a feature view older than this is lagging
    deploy_lookback: str = "24h"        # diagnose: deploys/alias moves this recent are suspects

    def __post_init__(self) -> None:
        from loopstack.monitoring.rules import parse_rules
        from loopstack.timeutil import parse_duration
        for key in ("window", "label_delay", "join_retention", "max_feature_lag", "deploy_lookback"):
            try:
                parse_duration(getattr(self, key))
            except Exception:  # noqa: BLE001 - re-raised as a config error
                raise ConfigError(f"monitoring.{key} = {getattr(self, key)!r} is not a duration; write e.g. "
                                  "\"1h\", \"1d\", \"15m\"") from None
        window = parse_duration(self.window).total_seconds()
        if window < 1 or window != int(window):
            raise ConfigError(f"monitoring.window = {self.window!r} must be a whole number of seconds, at least 1 s "
                              "(windows are stored per second of width); write e.g. \"1h\", \"10m\", \"30s\"")
        if not math.isfinite(self.threshold):
            raise ConfigError(f"monitoring.threshold = {self.threshold!r} must be a finite number: the score at "
                              "or above which a prediction counts as flagged (e.g. 0.5)")
        if self.min_samples < 1:
            raise ConfigError(f"monitoring.min_samples = {self.min_samples!r} must be at least 1: the feature "
                              "samples/scores a window needs before drift numbers are computed (default 100)")
        if self.webhook_url is not None:
            from urllib.parse import urlsplit
            parts = urlsplit(self.webhook_url.strip())
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"monitoring.webhook_url = {self.webhook_url!r} is not an http(s) URL; alerts are "
                                  "POSTed to it as JSON: write e.g. http://127.0.0.1:9000/alerts")
        object.__setattr__(self, "rules", parse_rules(list(self.rules) if isinstance(self.rules, tuple)
                                                      else self.rules))

    def effective_rules(self) -> tuple:
        """The configured rules, or the default ones when none are configured."""
        from loopstack.monitoring.rules import DEFAULT_RULES, parse_rules
        return self.rules or parse_rules(list(DEFAULT_RULES))


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
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)

    SECTIONS = {"log": LogConfig, "offline": OfflineConfig, "online": OnlineConfig, "metadata": MetadataConfig,
                "artifacts": ArtifactsConfig, "monitoring": MonitoringConfig}

    def metadata_url(self, root: Path) -> str:
        """SQLAlchemy URL of the metadata store."""
        if self.metadata.backend == "postgresql":
            if not self.metadata.url:
                raise ConfigError(
                    "metadata.url is required when metadata.backend is postgresql "
                    "(e.g. postgresql+psycopg://user@127.0.0.1:5432/loopstack)"
                )
            return self.metadata.url
        if self.metadata.url:
            from loopstack.meta.url import resolve_sqlite_url
            return resolve_sqlite_url(self.metadata.url, root)
        return f"sqlite:///{resolve(root, self.metadata.path)}"


def resolve(root: Path, p: str) -> Path:
    """A config path: absolute stays, relative is under the project folder."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _to_int(where: str, value: Any) -> int:
    """A whole number (4, "4", 4.0, "4.0"); true, 2.7, inf and "two" are not integers."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                pass
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if not isinstance(number, int) or isinstance(number, bool):
        raise ConfigError(f"{where} = {value!r} is not an integer")
    return number


def _coerce(section: str, key: str, ftype: Any, value: Any) -> Any:
    where = f"{section}.{key}" if section else key
    t = str(ftype)  # annotations are strings here: "str", "int | None", ...
    optional = "None" in t
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        if optional:
            return None
        raise ConfigError(f"{where} must not be empty")
    if t.startswith("tuple"):
        return value if isinstance(value, (list, tuple, str)) else [value]
    if t.startswith("dict"):
        return value  # checked by the section's __post_init__
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where} = {value!r} must be a single value, not a {type(value).__name__}")
    if t.startswith("bool"):
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ConfigError(f"{where} = {value!r} is not true or false (use true/false, yes/no, on/off or 1/0)")
    if t.startswith("int"):
        return _to_int(where, value)
    if t.startswith("float"):
        if isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} = {value!r} is not a number") from None
    text = str(value)
    if not text.strip() and key != "prefix":  # an empty path would be the project folder itself
        raise ConfigError(f"{where} must not be empty; remove the key to use the default")
    return text


def _build(section: str, cls: type, raw: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(raw) - set(fields)))  # YAML keys may be numbers, null, true
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
        else:  # LOOPSTACK_LOG_BACKEND: one underscore short of an override, which would be silently ignored
            section, _, key = rest.partition("_")
            if key in {f.name for f in dataclasses.fields(Config.SECTIONS.get(section, Config))}:
                raise ConfigError(f"environment variable {name} is not read: write {ENV_PREFIX}{section.upper()}__"
                                  f"{key.upper()} (two underscores between section and key) to set {section}.{key}")
    return out


def parse_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from a parsed YAML mapping plus environment overrides (env wins)."""
    if raw is not None and not isinstance(raw, Mapping):  # check before dict(): a list would half-convert
        raise ConfigError(f"{CONFIG_FILE} must be a mapping of sections (key: value), got {type(raw).__name__}")
    raw = dict(raw or {})
    for key, value in _env_overrides(os.environ if env is None else env).items():
        if isinstance(value, dict):
            if not isinstance(raw.get(key) or {}, Mapping):
                raise ConfigError(f"section {key!r} must be a mapping of keys, got {raw[key]!r}")
            section = dict(raw.get(key) or {})
            section.update(value)
            raw[key] = section
        else:
            raw[key] = value
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(map(str, set(raw) - top))  # YAML keys may be numbers, null, true
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
        above = next((d for d in Path(root).resolve().parents if (d / CONFIG_FILE).is_file()), None)
        if above is not None:  # opened from a subfolder of a project: point at it, do not suggest a nested one
            raise ConfigError(f"no {CONFIG_FILE} in {root}; it is inside the project {above}: run from there "
                              f"or pass -p {above}")
        raise ConfigError(f"no {CONFIG_FILE} in {root}: create a project with `loopstack init {root}`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}; {CONFIG_FILE} must be a readable "
                          "file") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_config(raw, env)


# the loopstack.yaml `init` writes; `{name}` is replaced by a quoted YAML string (see default_yaml)
DEFAULT_YAML = resources.files("loopstack.templates").joinpath("loopstack.yaml.txt").read_text(encoding="utf-8")


def default_yaml(name: str) -> str:
    """The loopstack.yaml `init` writes, `name` quoted so any folder name ("null", "a: b", "#1") stays its name."""
    try:
        name.encode("utf-8")
        readable = True
    except UnicodeEncodeError:  # a folder name that is not UTF-8 (surrogate escapes): write \u escapes
        readable = False
    return DEFAULT_YAML.format(name=json.dumps(name, ensure_ascii=not readable))

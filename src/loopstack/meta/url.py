"""Metadata store URLs: checked when loopstack.yaml is read, redacted in every message."""
from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from loopstack.errors import ConfigError

EXAMPLE = "postgresql+psycopg://user@127.0.0.1:5432/loopstack"
BACKENDS = ("sqlite", "postgresql")


def check_metadata_url(url: str, backend: str) -> None:
    """ConfigError unless `url` is a SQLAlchemy URL of `backend` (sqlite or postgresql)."""
    try:
        dialect = sa.engine.make_url(url).get_backend_name()
    except sa.exc.ArgumentError:
        raise ConfigError(f"metadata.url = {hide_password(url)!r} is not a database URL; write e.g. {EXAMPLE} "
                          "or sqlite:////absolute/path/metadata.db") from None
    if dialect not in BACKENDS:
        raise ConfigError(f"metadata.url = {hide_password(url)!r} is a {dialect!r} URL; the metadata store runs on "
                          f"sqlite or postgresql: write e.g. {EXAMPLE}")
    if dialect != backend:
        raise ConfigError(f"metadata.url = {hide_password(url)!r} is a {dialect} URL but metadata.backend is "
                          f"{backend}; set metadata.backend: {dialect} (or remove metadata.url)")


def resolve_sqlite_url(url: str, root: Path) -> str:
    """A sqlite URL whose file is relative (sqlite:///data/m.db) or starts with ~, made absolute against the
    project folder `root` like every other path in loopstack.yaml; any other URL is returned as given."""
    parsed = sa.engine.make_url(url)
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return url
    path = Path(db).expanduser()
    if not path.is_absolute():
        path = root / path
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def hide_password(url: str) -> str:
    """Any URL (postgresql, redis, kafka, http) with the password of its user:password@ part shown as ***."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, _, host = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{tail}"

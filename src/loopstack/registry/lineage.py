"""Lineage inputs recorded with a model version: who registered it, from which code, dataset and profile.

Split out of `registry.py` (the `Registry` class) so that file stays under ~400 lines; these helpers
only normalise what `Registry.register` is given, they never touch the database.
"""
from __future__ import annotations

import getpass
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from loopstack.registry.errors import RegistryError


def default_actor() -> str:
    """The OS user name, recorded as the actor of audited changes when the caller names none."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return os.environ.get("USER") or "unknown"


def bounded(value: Any, what: str, limit: int) -> str | None:
    """`value` as text of at most `limit` characters (its column's width), or None; RegistryError if longer
    (PostgreSQL refused it with a DataError traceback while SQLite kept it, so check before writing)."""
    if value is None:
        return None
    text = str(value)
    if len(text) > limit:
        raise RegistryError(f"{what} is {len(text)} characters long ({text[:40]!r}...); the registry keeps at most "
                            f"{limit}: pass a shorter id")
    return text


def actor_name(actor: str | None) -> str:
    """Who made a change: `actor`, or the OS user when none is given (at most 255 characters)."""
    if actor is not None and not str(actor).strip():
        raise RegistryError("actor is empty: name who made the change, or leave it out to record the OS user")
    return bounded(actor, "actor", 255) or default_actor()


def code_version(cwd: str | Path | None = None) -> str | None:
    """The git commit of `cwd` (with "-dirty" when tracked files changed), or None outside git."""
    try:
        run = dict(cwd=cwd, capture_output=True, text=True, timeout=5)
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


_CODE_VERSION: list[str | None] = []


def cached_code_version() -> str | None:
    """`code_version()` of the working directory, computed once per process (git runs only once)."""
    if not _CODE_VERSION:
        _CODE_VERSION.append(code_version())
    return _CODE_VERSION[0]


def dataset_lineage(dataset: Any) -> tuple[str | None, str | None]:
    """(dataset id, content hash) from an id, a {"id", "hash"} mapping or a dataset object."""
    if dataset is None:
        return None, None
    if isinstance(dataset, Mapping):
        did, dhash = dataset.get("id", dataset.get("dataset_id")), dataset.get("hash") or dataset.get("content_hash")
    else:
        did, dhash = dataset, None
        for attr in ("id", "dataset_id"):   # a dataset object from box 4, without importing it
            if hasattr(dataset, attr):
                did, dhash = getattr(dataset, attr), getattr(dataset, "hash", None) or getattr(dataset, "content_hash",
                                                                                              None)
                break
    return bounded(did, "dataset id", 255), bounded(dhash, "dataset hash", 128)


def reference_profile(profile: Any, scores: Any) -> dict | None:
    """A stored profile as given, or one built from holdout features (and scores); None without one."""
    if profile is None:
        if scores is not None:
            raise RegistryError("holdout_scores given without profile=<holdout features>; pass both")
        return None
    if isinstance(profile, Mapping):
        if "features" not in profile:
            raise RegistryError("profile must come from loopstack.registry.profile.build_profile (no 'features')")
        feats = profile["features"]
        bad = ([f"'features' is a {type(feats).__name__}"] if not isinstance(feats, Mapping) else
               [f"feature {k!r}" for k, f in feats.items()
                if not isinstance(f, Mapping) or f.get("kind") not in ("numeric", "categorical")])
        if bad:
            raise RegistryError(f"profile is malformed ({', '.join(bad[:3])}: each feature needs a dict with kind "
                                "'numeric' or 'categorical'); build it with loopstack.registry.build_profile(df)")
        return dict(profile)
    from loopstack.registry.profile import build_profile
    return build_profile(profile, scores=scores)

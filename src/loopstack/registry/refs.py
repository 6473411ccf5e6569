"""MLflow-style model references: ``models:/name/3``, ``models:/name@alias``, ``models:/name/latest``."""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from loopstack.registry.errors import ModelReferenceError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_FORMS = "models:/<name>/<version>, models:/<name>/latest or models:/<name>@<alias> (e.g. models:/spam/3)"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None   # exactly one of version / alias / latest
    alias: str | None = None
    latest: bool = False

    def __str__(self) -> str:
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{'latest' if self.latest else self.version}"


def validate_name(name: str) -> str:
    """The name unchanged, or ModelReferenceError saying which characters a model name may use."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ModelReferenceError(f"invalid model name {name!r}: use letters, digits, '_', '-', '.' "
                                  "(starting with a letter or digit), e.g. 'spam'")
    return name


def validate_alias(alias: str) -> str:
    """The alias unchanged, or ModelReferenceError saying what an alias may look like."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise ModelReferenceError(f"invalid alias {alias!r}: use letters, digits, '_' and '-', starting with a "
                                  "letter or '_' (an alias cannot look like a version number), e.g. 'champion'")
    if alias.lower() == "latest":
        raise ModelReferenceError("'latest' is reserved (models:/<name>/latest); choose another alias")
    return alias


def validate_version(version: object) -> int:
    """`version` as an int; a bool, float or string is refused rather than silently rounded or misread."""
    try:
        if isinstance(version, bool):
            raise TypeError
        return operator.index(version)  # type: ignore[arg-type]
    except TypeError:
        raise ModelReferenceError(f"version {version!r} is not a version number: pass a whole number such as "
                                  "3 (versions start at 1)") from None


def parse_ref(ref: "str | ModelRef") -> ModelRef:
    """Parse a reference; raises ModelReferenceError naming what is wrong and the accepted forms."""
    if isinstance(ref, ModelRef):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise ModelReferenceError(f"empty model reference {ref!r}: expected {_FORMS}")
    s = ref.strip()
    if not s.startswith("models:/"):
        raise ModelReferenceError(f"model reference {ref!r} must start with 'models:/': expected {_FORMS}")
    body = s[len("models:/"):]
    if "@" in body:
        name, _, alias = body.partition("@")
        if "/" in name or not alias:
            raise ModelReferenceError(f"malformed model reference {ref!r}: expected {_FORMS}")
        try:
            return ModelRef(validate_name(name), alias=validate_alias(alias))
        except ModelReferenceError as exc:
            raise ModelReferenceError(f"in {ref!r}: {exc}") from None
    name, sep, version = body.partition("/")
    if not sep or not version or "/" in version:
        raise ModelReferenceError(f"model reference {ref!r} names no version or alias: expected {_FORMS}")
    try:
        validate_name(name)
    except ModelReferenceError as exc:
        raise ModelReferenceError(f"in {ref!r}: {exc}") from None
    if version.lower() == "latest":
        return ModelRef(name, latest=True)
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise ModelReferenceError(f"version {version!r} in {ref!r} must be a positive integer (versions start at "
                                  f"1) or 'latest'; for an alias write models:/{name}@{version}")
    return ModelRef(name, version=int(version))

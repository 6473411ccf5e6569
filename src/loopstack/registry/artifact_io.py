"""Turning a model into artifact bytes and back, with the sha256 check before every load."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from loopstack.registry.errors import ArtifactIntegrityError, RegistryError


def serialize(model: Any) -> tuple[bytes, str, str]:
    """(bytes, format, file name): a path is stored as-is ("file") or as a tar ("dir"); an object is
    pickled with joblib when installed (efficient for numpy-heavy sklearn models), else pickle."""
    if model is None:
        raise RegistryError("the model is None: pass the trained model object or the path of its file or folder "
                            "(did the training code return the model?)")
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if p.is_file():
            return p.read_bytes(), "file", p.name
        if p.is_dir():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", dereference=True) as tar:
                for f in _folder_entries(p):
                    tar.add(p / f, arcname=f, recursive=False)
            return buf.getvalue(), "dir", p.name + ".tar"
        raise RegistryError(f"model path {str(p)!r} does not exist: pass a model object or an existing file/folder")
    try:
        import joblib
        buf = io.BytesIO()
        joblib.dump(model, buf)
        return buf.getvalue(), "joblib", "model.joblib"
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - same advice as pickle below
        raise _unpicklable(model, exc) from exc
    try:
        return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), "pickle", "model.pkl"
    except Exception as exc:  # noqa: BLE001
        raise _unpicklable(model, exc) from exc


def _folder_entries(root: Path) -> list[str]:
    """Relative paths of every folder and file under `root`, sorted, following symbolic links (a model
    folder such as a Hugging Face snapshot links to its weights; storing the links would lose them)."""
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:   # a link back to a folder already stored: stop the loop
            dirnames[:] = []
            continue
        seen.add(real)
        for n in dirnames + filenames:
            full = Path(dirpath) / n
            if not full.exists():
                raise RegistryError(f"{str(full)!r} in the model folder is a broken symbolic link: fix or remove "
                                    "it before registering the folder")
            out.append(str(full.relative_to(root)))
    return sorted(out)


def _unpicklable(model: Any, exc: Exception) -> RegistryError:
    return RegistryError(f"cannot serialize the {type(model).__name__} model ({exc}); save it in its own "
                         "format and register the file or folder path instead")


def verify(data: bytes, expected: str, ref: str, uri: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ArtifactIntegrityError(
            f"artifact of {ref} at {uri} has sha256 {actual[:16]}…, but {expected[:16]}… was recorded at "
            "registration: the file was modified or corrupted after registration. Refusing to load it; "
            "restore the original artifact or register the model again")


def deserialize(data: bytes, fmt: str, filename: str, sha256: str, cache_dir: str | Path | None) -> Any:
    """The model object (pickle/joblib) or a local path (file/dir) holding the verified bytes."""
    if fmt == "pickle":
        return pickle.loads(data)  # noqa: S301 - bytes verified against the registered sha256
    if fmt == "joblib":
        import joblib
        return joblib.load(io.BytesIO(data))
    base = Path(cache_dir or Path(tempfile.gettempdir()) / "loopstack-models") / sha256
    base.mkdir(parents=True, exist_ok=True)
    if fmt == "file":
        out = base / filename
        tmp = base / f".{filename}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        tmp.replace(out)
        return out
    if fmt == "dir":
        out = base / filename.removesuffix(".tar")
        if not out.exists():
            tmp = Path(tempfile.mkdtemp(dir=base))
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                tar.extractall(tmp, filter="data")
            try:
                tmp.replace(out)
            except OSError:  # another process extracted it first
                pass
        return out
    raise RegistryError(f"unknown artifact format {fmt!r}; this loopstack is too old to load it")

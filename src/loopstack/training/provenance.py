"""Where a run's code came from: the git commit of its folder and the versions of the installed ML packages."""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path

PACKAGES = ("loopstack", "numpy", "pandas", "pyarrow", "scikit-learn", "lightgbm", "xgboost", "torch")


def git_info(path: str | Path | None = None) -> dict:
    """{'commit', 'dirty', 'root'} of the git repository holding `path` (default: cwd); Nones outside one."""
    cwd = str(path or Path.cwd())

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "root": None}
    status = git("status", "--porcelain")
    dirty = bool(status) if status is not None else None
    return {"commit": commit, "dirty": dirty, "root": git("rev-parse", "--show-toplevel")}


def package_versions() -> dict[str, str]:
    """Versions of loopstack and the ML packages that are installed (never imports them)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)  # installed versions do not change while a process runs; reading is slow
def _package_versions() -> dict[str, str]:
    import platform
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out

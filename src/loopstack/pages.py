"""Writing an HTML page a user asked for (monitoring report, run comparison, evaluation report)."""
from __future__ import annotations

from pathlib import Path

from loopstack.errors import LoopstackError


def write_page(path: str | Path, page: str, what: str, fix: str,
               error: type[LoopstackError] = LoopstackError) -> Path:
    """Write `page` to `path` as UTF-8 (the pages declare charset=utf-8, whatever the locale); a path that
    cannot be written is an `error` naming `what` was being written and the `fix`, not an OSError."""
    p = Path(path)
    try:
        p.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot write {what} to {str(p)!r}: {exc.strerror or exc}; {fix}") from None
    return p

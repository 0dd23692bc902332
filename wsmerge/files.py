"""Atomic file writes: a reader, or a run resumed after a kill, never sees half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "strict_json", "write_json"]


def _umask() -> int:
    # Reading the umask means setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Write through `write(tmp_path)` into a temp file beside `path`, fsync, then rename.
    Temp files are named `.<name>.<random>.tmp`, so a directory scan can spot leftovers.
    The file gets the mode a plain open() would give it (0666 less the umask), not the
    temp file's 0600, so a team can read a zoo or a sweep on shared storage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def strict_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±inf) replaced by None: JSON has no NaN, and
    Python's bare `NaN` breaks every other reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as strict JSON (non-finite floats become null)."""
    text = json.dumps(strict_json(obj), indent=1, allow_nan=False)
    return atomic_write(path, lambda p: Path(p).write_text(text))

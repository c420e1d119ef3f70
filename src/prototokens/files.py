"""Atomic file writes: a reader (or a crash) never sees a half-written result file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a sibling temporary file and an atomic rename.

    Goes through open(), so the file gets the usual umask-derived mode. If anything fails the old
    file, if any, is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """Serialise `obj` first (so a bad object never truncates the file), then write it atomically."""
    return write_atomic(path, json.dumps(obj, **{"indent": 1, **dumps}))

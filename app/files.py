"""Files we write that hold personal data or secrets (exports, letter batches, keys, tokens): readable by their
owner only from the moment they exist, never briefly by anyone (the mode is set when the file is created)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any


def open_private(path: Path | str, mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """Open for writing (truncated), created with mode 0600; `mode` and `kwargs` as for open()."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), mode, **kwargs)


def write_private(path: Path, text: str) -> None:
    """Replace a small secret file atomically (a crash leaves the old one or the new one, synced to disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open_private(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

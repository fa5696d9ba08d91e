"""Where the demo models live on disk, and how they get there without half-written folders.

The cache root is ``$TCOD_CACHE/demo`` when ``TCOD_CACHE`` is set, else
``~/.cache/tcod/demo``. Each recipe has its own folder named by a fingerprint of the
recipe, so changing the recipe builds a new pair instead of loading a stale one.
A folder is built in a temporary sibling and renamed into place in one step: a folder
that exists is complete. A lock file serializes concurrent builders of the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MARKER = "demo.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo cache folder: ``cache_dir``, else ``$TCOD_CACHE/demo``, else ``~/.cache/tcod/demo``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TCOD_CACHE"):
        return Path(os.environ["TCOD_CACHE"]) / "demo"
    return Path.home() / ".cache" / "tcod" / "demo"


def fingerprint(data: dict) -> str:
    """A short stable hash of a JSON-serializable mapping."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished build (its marker file exists)."""
    return (folder / MARKER).is_file()


@contextlib.contextmanager
def build_lock(folder: Path):
    """Holds an exclusive lock on ``<folder>.lock`` (blocks while another process builds)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_folder(folder: Path):
    """Yields a temporary folder; on success it is renamed to ``folder`` in one step.

    The caller writes everything, the marker file last. On an exception the temporary
    folder is removed and ``folder`` is left untouched.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        if not is_complete(tmp):
            raise RuntimeError(f"{tmp} has no {MARKER}: refusing to publish an incomplete build")
        if folder.exists():  # an incomplete leftover from an older, non-atomic writer
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

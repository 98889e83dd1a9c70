"""File helpers shared by the model cache and checkpoints (bottom layer: the standard library only)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """align's cache of built models, reference log-probs and user recipe links: $ALIGN_CACHE, else ~/.cache/align."""
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks: a multi-GB checkpoint never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

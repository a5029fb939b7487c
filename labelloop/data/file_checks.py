"""Checking image files: every file opened and fully decoded, its facts recorded (size, mode, content hash), its
thumbnail made; in worker processes beside this one for many files."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from labelloop.data.images import (
    ImageProblem,
    content_hash,
    decode,
    read_bytes,
    to_rgb,
    worker_pool,
)
from labelloop.data.workspace import (
    thumbnail_path,
)

THUMBNAIL_SIZE = 128


_INLINE_LIMIT = 256  # below this many files a process pool costs more than it saves


Progress = Callable[[int, int], None]
"""progress(done, total): called as files are checked."""


def check_image(path: str, thumbs_dir: str | None, thumbnail_size: int = THUMBNAIL_SIZE) -> dict:
    """Open and fully decode one file; write its thumbnail if missing.

    Returns a row (path, width, height, mode, file_size, content_hash) or
    ``{"path": ..., "reason": ...}`` if the file cannot be used. Never raises
    for a bad file.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return {"path": path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), "reason": "unreadable: the file name is not valid UTF-8; rename the file"}
    try:
        data = read_bytes(path)
        image = decode(data, draft_size=thumbnail_size * 2 if thumbnail_size else None)
        width, height = Image.open(io.BytesIO(data)).size  # the real size, not the draft's
        digest = content_hash(data)
        if thumbs_dir:
            _write_thumbnail(image, thumbnail_path(thumbs_dir, digest), thumbnail_size)
    except ImageProblem as problem:
        return {"path": path, "reason": str(problem)}
    return {"path": path, "width": width, "height": height, "mode": image.mode, "file_size": len(data), "content_hash": digest}


def _write_thumbnail(image: Image.Image, target: Path, size: int) -> None:
    if target.exists():
        return
    try:
        thumb = to_rgb(image)
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as exc:
        raise ImageProblem(f"truncated or corrupt: decoding for the thumbnail failed ({str(exc)[:100]})") from None
    # A failed write (disk full) is not the image's fault: it propagates and stops the import.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        thumb.save(tmp, "JPEG", quality=90)
        os.replace(tmp, target)  # never a half-written thumbnail, even if killed
    finally:
        tmp.unlink(missing_ok=True)


def _check_one(args: tuple[str, str | None]) -> dict:
    return check_image(*args)


def check_images(paths: list[str], thumbs_dir: str | os.PathLike | None, progress: Progress | None = None, workers: int | None = None) -> list[dict]:
    """:func:`check_image` for every path, in order, using a process pool for many files."""
    tasks = [(p, str(thumbs_dir) if thumbs_dir else None) for p in paths]
    total = len(tasks)
    results: list[dict] = []
    workers = workers or os.cpu_count() or 1
    if total <= _INLINE_LIMIT or workers == 1:
        for i, task in enumerate(tasks, 1):
            results.append(_check_one(task))
            if progress and (i % 64 == 0 or i == total):
                progress(i, total)
        return results
    with worker_pool(workers) as pool:
        for i, result in enumerate(pool.map(_check_one, tasks, chunksize=64), 1):
            results.append(result)
            if progress and (i % 256 == 0 or i == total):
                progress(i, total)
    return results

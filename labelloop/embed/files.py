"""Running files through an embedder: decoding in a separate process, a few batches ahead of the model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from labelloop.data.images import ImageProblem, load_square, worker_pool
from labelloop.embed.config import Embedder, Progress, ShouldStop
from labelloop.errors import Cancelled


def decode_batch(args: tuple[list[str], list[str | None], int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Worker: decode and resize a batch of files. Failures come back as (index, reason)."""
    paths, hashes, size = args
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures = []
    for i, (path, expected) in enumerate(zip(paths, hashes)):
        try:
            images[i] = load_square(path, size, expected)
        except ImageProblem as problem:
            failures.append((i, str(problem)))
    return images, failures


@dataclass
class EmbeddedBatch:
    indices: np.ndarray  # positions in the input list
    vectors: np.ndarray  # float32, one row per index


def embed_paths(
    embedder: Embedder,
    paths: Sequence[str],
    expected_hashes: Sequence[str | None] | None = None,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    on_batch: Callable[[EmbeddedBatch], None] | None = None,
    decode_workers: int = 1,
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Embed files. Returns (vectors with a NaN row for every failure, [(index, reason)]).

    Files are decoded in ``decode_workers`` separate processes (one is right
    on 2 cores: more fight the model for the CPU), a few batches ahead of the
    model. ``on_batch`` sees each finished batch (for incremental caching);
    ``should_stop`` is polled between batches and raises :class:`Cancelled`.
    """
    total = len(paths)
    hashes = list(expected_hashes) if expected_hashes is not None else [None] * total
    vectors = np.full((total, embedder.dim), np.nan, dtype=np.float32)
    failures: list[tuple[int, str]] = []
    batches = [(list(paths[i : i + batch_size]), hashes[i : i + batch_size], embedder.resolution) for i in range(0, total, batch_size)]
    done = 0

    def consume(start: int, images: np.ndarray, batch_failures: list[tuple[int, str]]) -> None:
        nonlocal done
        bad = {i for i, _ in batch_failures}
        failures.extend((start + i, reason) for i, reason in batch_failures)
        good = np.array([i for i in range(len(images)) if i not in bad], dtype=np.int64)
        if len(good):
            out = embedder.embed_batch(images[good])
            finite = np.isfinite(out).all(axis=1)
            for i in good[~finite]:
                failures.append((start + int(i), "embedding has NaN or infinite values (a broken model or weights file?)"))
            kept = good[finite]
            vectors[start + kept] = out[finite]
            if on_batch and len(kept):
                on_batch(EmbeddedBatch(start + kept, out[finite]))
        done += len(images)
        if progress:
            progress(done, total)

    if len(batches) <= 2 or decode_workers < 1:
        for number, batch in enumerate(batches):
            if should_stop and should_stop():
                raise Cancelled(f"Stopped after {done} of {total} images.")
            consume(number * batch_size, *decode_batch(batch))
        return vectors, sorted(failures)

    with worker_pool(decode_workers) as pool:
        pending: deque = deque()
        upcoming = iter(enumerate(batches))
        ahead = 3 * decode_workers  # bounded: decoded images wait in memory, not on disk
        try:
            for number, batch in upcoming:
                pending.append((number, pool.submit(decode_batch, batch)))
                if len(pending) >= ahead:
                    break
            while pending:
                if should_stop and should_stop():
                    raise Cancelled(f"Stopped after {done} of {total} images.")
                number, future = pending.popleft()
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following[0], pool.submit(decode_batch, following[1])))
                consume(number * batch_size, *future.result())
        finally:
            for _, future in pending:
                future.cancel()
    return vectors, sorted(failures)

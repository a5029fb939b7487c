"""Ray Data embedding and prediction: the local path's decoding and embedder, on a cluster's actor pool.

:func:`map_on_ray` runs the rows through Ray Data's ``map_batches`` on an actor
pool whose actors hold the same :class:`labelloop.embed.Embedder` that
:func:`labelloop.embed.load_embedder` builds locally and decode with the same
function as the local path; the vectors come back to this process, which
writes them into the same embedding cache. Call it inside
:func:`labelloop.compute.ray_cluster.ray_cluster`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from labelloop.compute.ray_cluster import RAY_BATCH, ClusterInfo, cluster_info
from labelloop.embed.files import EmbeddedBatch, decode_batch
from labelloop.errors import Cancelled, UserError


def _decode(batch: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Ray Data's decoding stage: the local path's decoding function, on a batch of rows."""
    images, failures = decode_batch((list(batch["path"]), [h or None for h in batch["content_hash"]], resolution))
    reasons = np.full(len(images), "", dtype=object)
    for i, reason in failures:
        reasons[i] = reason
    return {"position": batch["position"], "image": images, "reason": reasons.astype(str)}


class _EmbedActor:
    """One actor of the pool: an embedder built once, as locally, applied to decoded batches."""

    def __init__(self, make_embedder: Callable, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.embedder = make_embedder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embedder, reasons = self.embedder, batch["reason"].astype(object)
        vectors = np.full((len(reasons), embedder.dim), np.nan, dtype=np.float32)
        good = np.flatnonzero(reasons == "")
        if len(good):
            out = embedder.embed_batch(batch["image"][good])
            finite = np.isfinite(out).all(axis=1)
            vectors[good[finite]] = out[finite]
            reasons[good[~finite]] = "embedding has NaN or infinite values (a broken model or weights file?)"
        n = len(reasons)
        return {
            "position": batch["position"], "vector": vectors, "reason": reasons.astype(str),
            "key": np.full(n, embedder.key), "description": np.full(n, embedder.description), "warnings": np.full(n, "\n".join(embedder.warnings)),
        }


def _pool_shape(info: ClusterInfo, gpus_per_actor: float) -> tuple[int, float]:
    """(actors, CPUs per actor): one actor per GPU on a GPU cluster; on CPUs, one actor per two cores, the
    other core decoding for it (the local path's shape: one decoding process beside a model using every core)."""
    if gpus_per_actor > 0:
        return max(1, int(info.gpus // gpus_per_actor)), 1.0
    return max(1, int(info.cpus) // 2), 1.0


def map_on_ray(
    make_embedder: Callable,
    paths: Sequence[str],
    hashes: Sequence[str | None],
    *,
    resolution: int,
    expected_key: str | None,
    batch_size: int,
    gpus_per_actor: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_facts: Callable[[dict], None] | None = None,
    on_batch: Callable | None = None,
) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """Run ``paths`` through ``make_embedder()``'s embedder with Ray Data (call inside :func:`ray_cluster`).

    Two stages, streamed: decoding tasks (the local path's decoding function, images at ``resolution``)
    and an actor pool whose actors hold the embedder. The same contract as
    :func:`labelloop.embed.files.embed_paths`: ``on_batch`` sees each finished batch (positions into ``paths``
    and their vectors), failures come back as (position, reason). ``on_facts`` gets the embedder's key,
    description, dim and warnings once, before the first batch. Ray Data restarts a dead worker's actor and
    retries its batches. Every actor must produce ``expected_key`` (None: any one key), else a UserError:
    a cluster of mixed machines would otherwise mix vectors of two runtimes in one cache.
    Returns (all vectors if nobody consumed them with ``on_batch``, failures).
    """
    import logging

    import pandas as pd
    import ray
    from ray.data import ActorPoolStrategy

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # progress goes to ``progress``
    total = len(paths)
    info = cluster_info("current")
    actors, cpus = _pool_shape(info, gpus_per_actor)
    # Each Ray Data batch is a task and an actor call with overheads of their own: batches of up to RAY_BATCH
    # images, though at least 4 per actor, so a small job still spreads out and reports progress.
    batch_size = max(batch_size, min(RAY_BATCH, -(-total // (4 * actors))))
    frame = pd.DataFrame({"position": np.arange(total, dtype=np.int64), "path": list(paths), "content_hash": [h or "" for h in hashes]})
    # Blocks made here, not by a repartition task: the actor pool may hold most CPUs of the cluster.
    blocks = max(1, min(-(-total // batch_size), 8 * actors))
    dataset = ray.data.from_pandas([frame.iloc[part] for part in np.array_split(np.arange(total), blocks)])
    decoded = dataset.map_batches(_decode, fn_kwargs={"resolution": resolution}, batch_size=batch_size, batch_format="numpy", num_cpus=1)
    mapped = decoded.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"make_embedder": make_embedder, "threads": max(1, int(info.cpus) // actors) if not gpus_per_actor else 1},
        compute=ActorPoolStrategy(size=actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus,
        num_gpus=gpus_per_actor or None,
    )
    return _gather(mapped, total, expected_key, progress=progress, should_stop=should_stop, on_facts=on_facts, on_batch=on_batch)


def _gather(mapped, total: int, expected_key: str | None, *, progress, should_stop, on_facts, on_batch) -> tuple[np.ndarray | None, list[tuple[int, str]]]:
    """Consume the actor pool's batches as they come: facts once, each batch to ``on_batch`` (or collected), failures listed."""
    failures: list[tuple[int, str]] = []
    collected = None if on_batch else np.full((total, 0), np.nan, dtype=np.float32)
    done, seen_key = 0, expected_key
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        if should_stop and should_stop():
            raise Cancelled(f"Stopped after {done} of {total} images.")
        keys = set(batch["key"].tolist())
        if done == 0 and on_facts is not None:
            warnings = str(batch["warnings"][0])
            on_facts({"key": next(iter(keys)), "description": str(batch["description"][0]), "dim": int(np.asarray(batch["vector"]).shape[1]), "warnings": warnings.split("\n") if warnings else []})
        if seen_key is None:
            seen_key = next(iter(keys))
        if keys != {seen_key}:
            raise UserError(
                f"The cluster's workers embed as {', '.join(sorted(keys))}, not {seen_key} as expected: "
                "machines of different kinds give vectors of different runtimes. Pin --runtime and --precision, or use machines of one kind."
            )
        positions, vectors, reasons = batch["position"], np.asarray(batch["vector"], dtype=np.float32), batch["reason"]
        ok = reasons == ""
        failures.extend((int(p), str(r)) for p, r in zip(positions[~ok], reasons[~ok]))
        if on_batch is not None and ok.any():
            on_batch(EmbeddedBatch(positions[ok], vectors[ok]))
        if collected is not None:
            if collected.shape[1] != vectors.shape[1]:
                collected = np.full((total, vectors.shape[1]), np.nan, dtype=np.float32)
            collected[positions[ok]] = vectors[ok]
        done += len(positions)
        if progress:
            progress(done, total)
    return collected, sorted(failures)


def remote_key(config, gpus: float) -> str:
    """The embedding key ``config`` gives on one of the cluster's workers (its runtime, precision and device
    decide it, and they may differ from this machine's)."""
    import ray

    from labelloop.embed.runtimes import embedder_key

    task = ray.remote(num_cpus=1, num_gpus=gpus or None, max_retries=2)(embedder_key)
    return ray.get(task.remote(config))

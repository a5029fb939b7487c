"""Ray: a cluster, or a Ray started for one job on this machine, for embedding, prediction and training.

An address is ``local`` (start a Ray for this job on this machine's cores and
stop it afterwards), ``auto`` (the cluster this machine is part of, or
``$RAY_ADDRESS``) or ``host:port`` (a cluster's GCS address, from a machine in
the cluster). A Ray Client address (``ray://``) is refused with what to do
instead: Ray Data's executor does not run over Ray Client, so the job goes to
the cluster (``ray job submit``). Where no Ray answers, :func:`ray_cluster`
says so within seconds and nothing is written.

Nothing here is a second implementation of a model or of image decoding:

* :func:`map_on_ray` runs the rows through Ray Data's ``map_batches`` on an
  actor pool whose actors hold the same :class:`core.embed.Embedder` that
  :func:`core.embed.load_embedder` builds locally and decode with the same
  function as the local path; the vectors come back to this process, which
  writes them into the same embedding cache.
* :func:`train_on_ray` runs a family's training loop function (the one the
  local path calls) on Ray Train's ``TorchTrainer`` workers, each a
  :class:`core.train.common.Replica` of a DDP process group; curves stream
  back while it runs and the best epoch's weights come back here.

What every worker must reach: the images (the same path on a shared file
system, or ``s3://`` URIs) and Python packages of this project's
requirements. The ``core`` package itself travels with the job
(``runtime_env`` ``py_modules``) to a cluster that is not this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import Cancelled, UserError
from core.network import connect_problem

RAY_BATCH = 256  # images per Ray Data batch (decoding task and actor call); see map_on_ray
ADDRESS_HELP = "local (a Ray on this machine, for this job), auto (the cluster this machine is part of, or $RAY_ADDRESS), or HEAD:6379 (a cluster's GCS address)"
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ClusterInfo:
    """What a job is connected to."""

    address: str
    nodes: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        where = "a Ray started on this machine" if self.address == "local" else f"Ray at {self.address}"
        return f"{where}: {self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def validate_address(address: str) -> None:
    """A UserError for an address that is none of the forms this takes (checks no network).

    A Ray Client address (``ray://``) is refused: Ray Data and Ray Train need their driver inside the
    cluster (over Ray Client, Ray Data fails in its executor), so the job itself goes to the cluster.
    """
    if address in ("local", "auto") or (_host_port(address) is not None and not address.startswith("ray://")):
        return
    if address.startswith("ray://"):
        raise UserError(
            f"{address} is a Ray Client address; Ray Data and Ray Train need the job to run inside the cluster. Run LabelLoop on a "
            "cluster node with --ray auto (or --ray HEAD:6379), or submit it there: `ray job submit --address http://HEAD:8265 -- "
            "python -m core embed NAME --ray auto` (the workspace and images on storage the cluster reads)."
        )
    raise UserError(f"'{address}' is not a Ray address: use {ADDRESS_HELP}.")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` (or ``ray://host[:port]``, which validate_address refuses); None for anything else."""
    match = re.fullmatch(r"(ray://)?([A-Za-z0-9._-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?", address or "")
    if not match or (match.group(3) is None and not match.group(1)):
        return None
    return match.group(2).strip("[]"), int(match.group(3) or 10001)


def _check_reachable(address: str) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing listens at ``address``."""
    problem = connect_problem(*_host_port(address), CONNECT_TIMEOUT_S)
    if problem:
        raise UserError(
            f"No Ray cluster answers at {address} ({problem}). Check the address and that the cluster runs "
            "(`ray start --head` on its head node; its GCS port is 6379 unless --port said otherwise), or use --ray local. Nothing was written."
        )


def _target(address: str) -> str:
    """What ``address`` connects to: ``auto`` is ``$RAY_ADDRESS`` when set."""
    return os.environ.get("RAY_ADDRESS") or "auto" if address == "auto" else address


def check_answers(address: str) -> None:
    """Fail in seconds when nothing listens at a host:port address (``local`` and a bare ``auto`` are checked by connecting)."""
    validate_address(address)
    target = _target(address)
    if target not in ("local", "auto"):
        validate_address(target)
        _check_reachable(target)


def _connect(address: str) -> None:
    import ray

    options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address == "local":
        ray.init(num_cpus=os.cpu_count() or 1, **options)
        return
    check_answers(address)
    target = _target(address)
    # A cluster that is not this machine gets this project's code with the job.
    runtime_env = {"py_modules": [str(Path(__file__).parent)]}
    try:
        ray.init(address=target, runtime_env=runtime_env, **options)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        hint = "start one with `ray start --head`, set RAY_ADDRESS, or use --ray local" if address == "auto" else "check the address and that the cluster runs, or use --ray local"
        raise UserError(
            f"Could not connect to Ray at {target}: {first}. {hint.capitalize()}. A cluster with token authentication (Ray starts clusters so "
            "since 2.59) also needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (`ray get-auth-token` on the head node prints it). Nothing was written."
        ) from None


_connection_lock = threading.Lock()
_users = 0  # jobs of this process inside ray_cluster now
_started_here = False  # whether ray_cluster made this process's connection (and so closes it)


@contextlib.contextmanager
def ray_cluster(address: str) -> Iterator[ClusterInfo]:
    """Connected to the Ray at ``address`` for the block; a Ray this started is stopped after it.

    If this process is already connected (a test's cluster, another job of the app), that connection is
    used as it is: one process has one Ray connection, whatever address a later job names.
    """
    import ray

    validate_address(address)
    global _users, _started_here
    with _connection_lock:  # jobs of one app process share one connection; the last to finish closes what this started
        if not ray.is_initialized():
            _connect(address)
            _started_here = True
        _users += 1
    try:
        yield cluster_info(address)
    finally:
        with _connection_lock:
            _users -= 1
            if _users == 0 and _started_here:
                ray.shutdown()
                _started_here = False


def cluster_info(address: str) -> ClusterInfo:
    import ray

    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterInfo(address, nodes, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))


def probe(address: str) -> ClusterInfo:
    """Connect, read what the cluster has, disconnect: what the app's compute setting shows."""
    with ray_cluster(address) as info:
        return info


# ---------------------------------------------------------------------------- Ray Data: embedding and prediction


def _decode(batch: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Ray Data's decoding stage: the local path's decoding function, on a batch of rows."""
    from core.embed.files import decode_batch

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
    :func:`core.embed.files.embed_paths`: ``on_batch`` sees each finished batch (positions into ``paths``
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

    from core.embed.files import EmbeddedBatch

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

    from core.embed import embedder_key

    task = ray.remote(num_cpus=1, num_gpus=gpus or None, max_retries=2)(embedder_key)
    return ray.get(task.remote(config))


# ---------------------------------------------------------------------------- Ray Train: the image models


class _ResultSink:
    """An actor between the driver and the training workers: epoch rows in, a stop request out, the result in."""

    def __init__(self):
        self.rows: list[dict] = []
        self.stop = False
        self.result = None

    def epoch(self, row: dict) -> None:
        self.rows.append(row)

    def take(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows

    def request_stop(self) -> None:
        self.stop = True

    def stopping(self) -> bool:
        return self.stop

    def finish(self, result) -> None:
        self.result = result

    def outcome(self):
        return self.result


def _train_worker(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: the family's own loop, as one replica of the process group."""
    import ray
    import ray.train
    import ray.train.torch

    from core.train.common import Replica

    context = ray.train.get_context()
    replica = Replica(context.get_world_rank(), context.get_world_size())
    device = ray.train.torch.get_device()
    sink = config["sink"]
    args, kwargs = ray.get(config["inputs"][0])
    last_check, stopping = [0.0], [False]

    def should_stop() -> bool:
        if time.monotonic() - last_check[0] > 2.0:  # an actor call per batch would slow small batches down
            last_check[0], stopping[0] = time.monotonic(), ray.get(sink.stopping.remote())
        return stopping[0]

    on_epoch = (lambda row: sink.epoch.remote(row)) if replica.leads else None
    result = config["loop"](*args, device=device, replica=replica, on_epoch=on_epoch, should_stop=should_stop, **kwargs)
    if replica.leads:
        result.model = result.model.cpu()
        ray.get(sink.finish.remote(result))


def train_on_ray(loop: Callable, args: tuple, kwargs: dict, compute, *, on_epoch: Callable[[dict], None], should_stop: Callable[[], bool] | None, batch_size: int):
    """Run ``loop(*args, **kwargs)`` as ``compute.workers`` Ray Train workers (DDP); returns (its result here, a launcher line).

    Curves reach ``on_epoch`` while it runs; ``should_stop`` cancels every worker. The result's model
    comes back with the best epoch's weights, on this process's device.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from core.compute import resolve_device

    with ray_cluster(compute.ray) as info:
        use_gpu = compute.gpus_per_worker > 0
        if use_gpu and info.gpus < compute.workers * compute.gpus_per_worker:
            raise UserError(f"{compute.workers} workers with {compute.gpus_per_worker:g} GPU each need {compute.workers * compute.gpus_per_worker:g} GPUs; {info.describe()}.")
        if info.cpus < compute.workers:
            raise UserError(f"{compute.workers} training workers need {compute.workers} CPUs; {info.describe()}. Use fewer --workers.")
        sink = ray.remote(num_cpus=0)(_ResultSink).remote()
        inputs = ray.put((args, kwargs))
        resources = {"CPU": 1, **({"GPU": compute.gpus_per_worker} if use_gpu else {})}
        storage = Path(os.environ.get("LABELLOOP_CACHE", Path.home() / ".cache" / "labelloop")).expanduser() / "ray-train"
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"loop": loop, "sink": sink, "inputs": [inputs]},
            scaling_config=ScalingConfig(num_workers=compute.workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(storage_path=str(storage), name=f"labelloop-{os.getpid()}-{time.time_ns()}"),
        )
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(_fit(trainer)), daemon=True)
        runner.start()
        stop_sent = False
        while runner.is_alive():
            runner.join(0.5)
            for row in ray.get(sink.take.remote()):
                on_epoch(row)
            if should_stop and should_stop() and not stop_sent:
                ray.get(sink.request_stop.remote())
                stop_sent = True
        for row in ray.get(sink.take.remote()):
            on_epoch(row)
        result = ray.get(sink.outcome.remote())
        if stop_sent and result is None:
            raise Cancelled("Training cancelled; the Ray Train workers stopped.")
        if result is None:
            error = outcome.get("error")
            text = root_message(error)
            if "out of memory" in text.lower():
                from core.compute import out_of_memory

                raise out_of_memory(error, resolve_device("cuda") if use_gpu else resolve_device("cpu"), batch_size)
            raise UserError(f"Training on Ray failed: {text}. Nothing was saved as a run.")
        result.model = result.model.to(resolve_device(compute.device))
        launcher = f"ray train: {compute.workers} worker{'s' if compute.workers > 1 else ''}{f', {compute.gpus_per_worker:g} GPU each' if use_gpu else ' on CPUs'} ({info.describe()})"
        return result, launcher


def _fit(trainer) -> dict:
    try:
        trainer.fit()
        return {}
    except Exception as exc:  # the driver reads the outcome from the sink; this is only the reason if there is none
        return {"error": exc}


def root_message(error: BaseException | None) -> str:
    """The innermost cause's first line (Ray wraps a worker's error in several layers)."""
    if error is None:
        return "the workers ended without a result"
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    # Ray's rendering of a worker's error ends with "module.ExceptionType: message": keep the message.
    return re.sub(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception)(?:\([^)]*\))?: )+", "", lines[-1])[:300] if lines else type(error).__name__

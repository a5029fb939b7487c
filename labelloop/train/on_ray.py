"""Ray Train for the image models: a family's own training loop on ``TorchTrainer`` workers.

:func:`train_on_ray` runs the loop function the local path calls on Ray
Train's workers, each a :class:`labelloop.train.common.Replica` of a DDP
process group; curves stream back while it runs and the best epoch's weights
come back here.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from labelloop.compute.device import out_of_memory, resolve_device
from labelloop.compute.ray_cluster import ray_cluster
from labelloop.errors import Cancelled, UserError
from labelloop.train.common import Replica


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

"""Ray: a cluster, or a Ray started for one job on this machine, for embedding, prediction and training.

An address is ``local`` (start a Ray for this job on this machine's cores and
stop it afterwards), ``auto`` (the cluster this machine is part of, or
``$RAY_ADDRESS``) or ``host:port`` (a cluster's GCS address, from a machine in
the cluster). A Ray Client address (``ray://``) is refused with what to do
instead: Ray Data's executor does not run over Ray Client, so the job goes to
the cluster (``ray job submit``). Where no Ray answers, :func:`ray_cluster`
says so within seconds and nothing is written.

This module connects; the work that runs on the cluster lives with what it
runs, and is no second implementation of a model or of image decoding:
:mod:`labelloop.embed.on_ray` (Ray Data embedding and prediction) and
:mod:`labelloop.train.on_ray` (Ray Train for the image models).

What every worker must reach: the images (the same path on a shared file
system, or ``s3://`` URIs) and Python packages of this project's
requirements. The ``labelloop`` package itself travels with the job
(``runtime_env`` ``py_modules``) to a cluster that is not this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labelloop.compute.network import connect_problem
from labelloop.errors import UserError

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
            "labelloop embed NAME --ray auto` (the workspace and images on storage the cluster reads)."
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
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parent.parent)]}
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

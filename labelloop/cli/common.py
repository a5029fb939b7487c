"""What every command group shares: progress bars, tables on the terminal, the compute and embedder flags."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

import pandas as pd

from labelloop.errors import UserError


@contextmanager
def progress_bar(description: str, unit: str = "img"):
    """A callback for core's progress(done, total) that draws a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def print_table(frame: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160, "display.max_colwidth", 80):
        print(frame.to_string(index=False) if not frame.empty else "(none)")


def embedder_config(args: argparse.Namespace):
    from labelloop.embed import EmbedderConfig
    from labelloop.embed.models import model_from_flags

    return EmbedderConfig(
        **model_from_flags(model=args.model, kind=args.embedder, arch=args.arch, pretrained=args.pretrained, weights=args.weights),
        resolution=args.resolution,
        runtime=args.runtime,
        precision=args.precision,
        batch_size=args.batch_size,
        device=args.device,
    )


def add_compute_flags(p: argparse.ArgumentParser, *, ray: str, workers: bool = False) -> None:
    """--device and --ray (and for training, --workers and --gpus-per-worker): where the job runs."""
    from labelloop.compute.device import DEVICE_HELP
    from labelloop.compute.ray_cluster import ADDRESS_HELP

    p.add_argument("--device", default="auto", help=f"where torch runs: {DEVICE_HELP}")
    p.add_argument("--ray", metavar="ADDRESS", help=f"{ray} on Ray: {ADDRESS_HELP}. Default: everything in this process")
    if workers:
        p.add_argument("--workers", type=int, default=1, help="Ray Train data-parallel workers for the image models (default 1; needs --ray)")
        p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray Train worker takes (default 0: CPUs)")


def compute_of(args: argparse.Namespace):
    from labelloop.compute.device import Compute

    compute = Compute(device=args.device, ray=args.ray, workers=getattr(args, "workers", 1), gpus_per_worker=getattr(args, "gpus_per_worker", 0.0))
    compute.validate()
    return compute


def default_embedding_key(workspace, name: str) -> str:
    from labelloop.embed import EmbedderConfig, embedder_key, list_embeddings

    available = [meta["key"] for meta in list_embeddings(workspace, name)]
    default = embedder_key(EmbedderConfig())
    if default in available or not available:
        return default
    if len(available) == 1:
        return available[0]
    raise UserError(f"'{name}' has several embeddings ({', '.join(available)}); choose one with --embedding.")

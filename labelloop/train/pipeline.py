"""Training runs: the one entry point every family goes through, and the quick heads after a commit.

:func:`train` validates the settings, opens the version, hands the family a
:class:`~labelloop.train.family.TrainingJob` and saves what it returns as a run
(``labelloop.data.runs``): config, curves, CV scores, report, confusion matrix,
per-sample outputs and model files, published at once when the run has
finished and never when it fails or is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from labelloop.compute.device import Compute, describe_device
from labelloop.data.runs import RunBuilder, RunInfo, RunSummary
from labelloop.data.workspace import (
    DatasetPaths,
    WorkspaceOrDataset,
    as_dataset,
    open_table,
)
from labelloop.errors import UserError
from labelloop.train.family import Progress, PublishedEmbedding, TrainingJob
from labelloop.train.heads import HeadsSettings
from labelloop.train.registry import get_family, recipe_identity, run_recipe
from labelloop.train.settings import FamilySettings


def train(
    workspace: WorkspaceOrDataset,
    name: str | None,
    settings: FamilySettings,
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_curve: Callable[[dict], None] | None = None,
    trigger: str = "user",
    compute: Compute = Compute(),
) -> RunInfo:
    """Train ``settings.family`` on ``version`` (the latest if None): the one entry point for the CLI and the Train page.

    The data set is ``name`` of ``workspace``, or a :class:`~labelloop.data.workspace.DatasetPaths` given as ``workspace``
    (``name`` None): it is resolved once, here or by the caller, and passed on to whatever the run reads and writes.

    ``on_curve`` receives one row per epoch (stage, epoch, train_loss, val_accuracy, ...) as it happens.
    ``trigger`` is recorded with the run: ``"user"`` for a run someone started, ``"after commit"`` for the
    automatic quick heads, so pages can tell a user's own run from a background one. ``compute`` says where it
    runs (``labelloop.compute.device.Compute``: the torch device, a Ray cluster for the image models); the run records both.
    """
    family = get_family(settings.family)
    settings.validate()
    compute.validate()
    if compute.ray is not None:
        if not family.trains_on_ray:
            raise UserError(f"--ray trains the image models (resnet18-scratch, frozen-backbone); {family.name} trains here, in seconds. Drop --ray, or run several settings on Ray with `sweep`.")
        from labelloop.compute.ray_cluster import check_answers

        check_answers(compute.ray)  # before any image is loaded
    started = time.perf_counter()
    dataset = as_dataset(workspace, name)
    table = open_table(dataset)
    version = version or table.head_version()
    rows = table.read(version)
    builder = RunBuilder(dataset, f"v{version}-{family.run_label}", trigger=trigger)
    try:
        job = TrainingJob(dataset, version, table, rows, settings, builder, progress, should_stop, on_curve, compute)
        result = family.fit(job)
        builder.json("config.json", job.settings.to_dict())
        if job.curves:
            builder.table("curves.parquet", pd.DataFrame(job.curves))
        result.model.write(builder.model_dir)
        path = builder.finish(RunSummary(
            dataset=dataset.name, version=version, kind=family.name, best_model=result.best_model, held_out_accuracy=result.held_out_accuracy,
            accuracy_by_model=result.accuracy_by_model, folds=result.folds, n_labelled=result.n_labelled, n_samples=result.n_samples,
            not_embedded=result.not_embedded, embedding=result.embedding, train_seconds=round(time.perf_counter() - started, 2),
            best_epoch=result.best_epoch, seconds_per_epoch=result.seconds_per_epoch, note=result.note, figures=result.figures,
            device=describe_device(job.device), launcher=job.launcher,
        ))
    except BaseException:
        builder.abandon()  # nothing half-written is ever listed as a run
        raise
    if result.published is not None:
        _publish_embedding(dataset, result.published, path.name)
    return RunInfo.open(path)


def _publish_embedding(dataset: DatasetPaths, published: PublishedEmbedding, run_id: str) -> None:
    """A trained model's output as an embedding source; written only once its run has finished."""
    from labelloop.embed import EmbeddingCache

    key = published.key.format(run_id=run_id)
    cache = EmbeddingCache(dataset.embedding(key))
    cache.write_meta({"key": key, "description": published.description.format(run_id=run_id), "dim": int(published.vectors.shape[1]), "config": {"kind": published.kind, "run": run_id}, "warnings": []})
    cache.append(list(published.content_hashes), published.vectors)


QUICK_HEADS = ("knn", "logreg")
QUICK_HEADS_DIMS = 128
"""The quick heads read this many principal components of the embedding: at 100,000 x 1280-d
that is the difference between minutes and seconds, for the same label-issue F1 on the demo
(bench/bench_scores.py measures both)."""
QUICK_HEADS_RATE = "quick heads"  # the kind labelloop.compute.measured records their refreshes under


def quick_heads_config(dataset: DatasetPaths) -> HeadsSettings | None:
    """The fast retrain after an edit: k-NN and logistic regression on the embedding the user
    trains on (the default embedder's if cached, else the newest run's), or None if nothing is embedded."""
    from labelloop.data.runs import list_runs
    from labelloop.embed import is_default_embedding, list_embeddings

    cached = {meta["key"] for meta in list_embeddings(dataset)}
    default = next((key for key in sorted(cached) if is_default_embedding(key)), None)  # as preferred_embedding, from the one listing
    if default is not None:
        return HeadsSettings(heads=QUICK_HEADS, embedding=default, reduce_dims=QUICK_HEADS_DIMS)
    for run in list_runs(dataset):
        if run.summary.kind == "heads" and run.summary.embedding in cached:
            return HeadsSettings(heads=QUICK_HEADS, embedding=run.summary.embedding, reduce_dims=QUICK_HEADS_DIMS)
    return None


def quick_heads_recipe(dataset: DatasetPaths) -> str | None:
    """The recipe identity (see :func:`labelloop.train.registry.run_recipe`) of the quick heads' runs: the line "did the fix help" follows."""
    settings = quick_heads_config(dataset)
    return None if settings is None else recipe_identity(settings)


def quick_heads_estimate(dataset: DatasetPaths, version: int) -> str | None:
    """How long the quick heads on ``version`` should take, from the last refresh measured in this workspace (None before the first)."""
    from labelloop.compute.measured import last_rate

    rate = last_rate(dataset.workspace, QUICK_HEADS_RATE)
    return None if rate is None else rate.estimate(open_table(dataset).version_info(version).n_samples)


def refresh_quick_heads(dataset: DatasetPaths, version: int, *, progress=None, should_stop=None) -> RunInfo | None:
    """Retrain the quick heads on ``version`` unless nothing is embedded or the version already has them;
    records how long it took, so the next refresh can say how long it will take."""
    from labelloop.compute.measured import record
    from labelloop.data.runs import list_runs

    settings = quick_heads_config(dataset)
    if settings is None:
        return None  # nothing embedded yet: there is nothing quick to retrain
    if any(run_recipe(run)[0] == recipe_identity(settings) for run in list_runs(dataset, version=version)):
        return None  # this version already has its quick heads (same settings, same numbers)
    started = time.perf_counter()
    run = train(dataset, None, settings, version=version, progress=progress, should_stop=should_stop, trigger="after commit")
    record(dataset.workspace, QUICK_HEADS_RATE, run.summary.n_samples, time.perf_counter() - started)
    return run

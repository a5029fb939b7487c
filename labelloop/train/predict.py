"""Apply a saved model to a folder of new images: a ``filename,label`` CSV (and probabilities if asked)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.compute.device import Compute
from labelloop.data.discover import discover
from labelloop.data.runs import ModelConfig, RunInfo
from labelloop.data.workspace import DatasetPaths, list_datasets, models_dir, open_table
from labelloop.embed import Embedder, embed_paths
from labelloop.errors import UserError


def load_model(model_dir: str | os.PathLike) -> tuple[Callable[[np.ndarray], np.ndarray], ModelConfig]:
    """(predict_proba on embedding vectors, its ModelConfig) of a head's model folder written by a run."""
    from labelloop.train.heads import HEADS, load_head
    from labelloop.train.registry import family_of_model

    model_dir = Path(model_dir)
    model = ModelConfig.read(model_dir)
    if model.model_type in HEADS:
        return load_head(model_dir, model), model
    family_of_model(model.model_type).classifier(model_dir.parent, model, Path())  # says what the model is for instead (the triplet encoder)
    raise UserError(f"A {model.model_type} model classifies images, not embeddings: use predict_folder (or `labelloop predict RUN FOLDER`).")


def image_classifier(run_dir: Path, workspace: str | os.PathLike | None, device: str = "cpu") -> tuple[Embedder, ModelConfig]:
    """(an Embedder whose "vectors" are class probabilities, its ModelConfig) for any classifier run.

    Reusing the Embedder interface means prediction decodes images exactly as
    training did, in the same background process, for every kind of model.
    ``device`` is where it runs (``labelloop.compute.device``: auto, cpu, cuda[:N]).
    """
    from labelloop.compute.device import resolve_device
    from labelloop.train.registry import family_of_model

    model = ModelConfig.read(run_dir / "model")
    return family_of_model(model.model_type).classifier(run_dir, model, models_dir(workspace), resolve_device(device)), model


def _classifier_only(run_dir: Path, workspace, device: str) -> Embedder:
    """What a Ray actor builds for prediction: the same classifier as here."""
    return image_classifier(run_dir, workspace, device)[0]


def find_run_folder(run: str, workspace: str | os.PathLike | None) -> Path:
    """A run given as a folder path, or as a run id searched in every data set of the workspace."""
    path = Path(run).expanduser()
    if (path / "model").is_dir():
        return path
    if (path / "model_config.json").exists():
        return path.parent
    for name in list_datasets(workspace):
        candidate = DatasetPaths(workspace, name).run(run)
        if (candidate / "run.json").exists():
            return candidate
    raise UserError(f"No run '{run}': give a run folder, or a run id from `labelloop runs NAME`.")


def predict_folder(
    run: str, folder: str | os.PathLike, out: str | os.PathLike, workspace: str | os.PathLike | None = None, *, probabilities: bool = False, progress=None,
    compute: Compute = Compute(),
) -> tuple[Path, int, list[tuple[str, str]]]:
    """Predict every image under ``folder``; write ``filename,label`` (+ one column per class). Returns (csv, rows, skipped).

    ``compute`` says where the model runs: on its ``device`` here, or with ``ray`` on a Ray Data actor pool
    whose actors build the same classifier (the run folder and the images must be readable there).
    """
    compute.validate()
    run_dir = find_run_folder(run, workspace)
    model = ModelConfig.read(run_dir / "model")
    summary = RunInfo.open(run_dir).summary if (run_dir / "run.json").exists() else None
    dataset = summary.dataset if summary else run_dir.parent.parent.name
    if dataset in list_datasets(workspace):
        version = summary.version if summary else None
        known = set(open_table(workspace, dataset).classes(version))
        foreign = [label for label in model.label_names if label not in known]
        if foreign:
            raise UserError(
                f"The model's classes {foreign[:5]} are not classes of '{dataset}' version {version}: "
                "this model file comes from another data set. Use that data set's run."
            )
    if compute.ray is None:
        classifier, model = image_classifier(run_dir, workspace, compute.device)

    if Path(folder).expanduser().is_dir() and not any(Path(folder).expanduser().iterdir()):
        raise UserError(f"No images to predict in {folder}: the folder is empty.")
    found = discover(folder, layout="flat")
    paths = [c.path for c in found.candidates]
    if not paths:
        raise UserError(f"No images to predict in {folder}.")
    if compute.ray is None:
        probs, failures = embed_paths(classifier, paths, progress=progress)
    else:
        from labelloop.compute.ray_cluster import ray_cluster
        from labelloop.embed.on_ray import map_on_ray

        with ray_cluster(compute.ray) as info:
            make = functools.partial(_classifier_only, run_dir, workspace, compute.device)
            resolution = make().resolution  # built here once too: the size the decoding stage makes the images
            probs, failures = map_on_ray(make, paths, [None] * len(paths), resolution=resolution, expected_key=None, batch_size=32, gpus_per_actor=1.0 if info.gpus else 0.0, progress=progress)
        probs = probs if probs.shape[1] == model.n_classes else np.zeros((len(paths), model.n_classes), np.float32)
    bad = {i for i, _ in failures}
    good = [i for i in range(len(paths)) if i not in bad]
    probs = probs[good]
    names = np.array(model.label_names, dtype=object)
    root = Path(folder).expanduser()
    result = pd.DataFrame({"filename": [str(Path(paths[i]).relative_to(root)) for i in good], "label": names[probs.argmax(1)] if len(good) else []})
    if probabilities:
        for j, label in enumerate(names):
            result[f"p_{label}"] = probs[:, j].round(6)
    out = Path(out).expanduser()
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out (predictions never overwrite).")
    out.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(out, index=False)
    skipped = [(s.path, s.reason) for s in found.skipped] + [(paths[i], reason) for i, reason in failures]
    return out, len(result), skipped

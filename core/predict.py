"""Apply a saved model to a folder of new images: a ``filename,label`` CSV (and probabilities if asked)."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from core.embed import Embedder, EmbedderConfig, embed_paths, load_embedder
from core.errors import UserError
from core.ingest import discover
from core.workspace import list_datasets, open_table, resolve_workspace


def load_model(model_dir: str | os.PathLike) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """(predict_proba on embedding vectors, model_config) of a model folder written by a run."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir} is not a model folder written by this app (no readable model_config.json).") from exc
    kind, dim, n_classes = config.get("model_type"), config.get("input_dim"), len(config.get("label_names", []))
    if kind in ("mlp", "softmax"):
        import torch
        from safetensors.torch import load_file

        from core.train.heads import sequential_mlp

        net = sequential_mlp(dim, tuple(config["hidden_units"]), n_classes, tuple(config["dropout"])).eval()
        try:
            net.load_state_dict(load_file(model_dir / "model.safetensors"))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"The model file in {model_dir} does not match its model_config.json ({str(exc).splitlines()[0][:200]}).") from exc

        def predict(vectors: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(net(torch.from_numpy(np.asarray(vectors, np.float32))), 1).numpy()

        return predict, config
    if kind in ("logreg", "knn"):
        from core.train.heads import KnnHead, LogisticHead

        try:
            arrays = dict(np.load(model_dir / "model.npz", allow_pickle=False))  # never unpickles
            head = (LogisticHead if kind == "logreg" else KnnHead).from_arrays(arrays)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"The model file in {model_dir} cannot be read as a {kind} model ({type(exc).__name__}: {exc}); the run folder is damaged. Train again.") from exc
        if head.n_classes != n_classes:
            raise UserError(f"The model in {model_dir} has {head.n_classes} classes but its config names {n_classes}; the folder is inconsistent.")
        return head.predict_proba, config
    if kind in ("resnet18-scratch", "frozen-backbone"):
        raise UserError(f"A {kind} model classifies images, not embeddings: use predict_folder (or `python -m core predict RUN FOLDER`).")
    if kind == "triplet-encoder":
        raise UserError("A triplet-encoder run is an embedding, not a classifier: train heads on its embedding (`train NAME --embedding triplet-<run>`) and predict with that run.")
    raise UserError(f"{model_dir} holds a model of unknown type '{kind}'.")


def _read_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"Cannot read the model weights {path} ({str(exc).splitlines()[0][:200]}); the run folder is damaged. Train again.") from exc


def _load_strict(module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"The weights in {path} do not match its model_config.json ({str(exc).splitlines()[0][:200]}).") from exc


def image_classifier(run_dir: Path, workspace: str | os.PathLike | None) -> tuple[Embedder, dict]:
    """(an Embedder whose "vectors" are class probabilities, model_config) for any classifier run.

    Reusing the Embedder interface means prediction decodes images exactly as
    training did, in the same background process, for every kind of model.
    """
    import torch

    model_dir = run_dir / "model"
    try:
        config = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir} is not a model folder written by this app (no readable model_config.json).") from exc
    kind, names = config.get("model_type"), config.get("label_names", [])
    models = resolve_workspace(workspace) / ".models"
    if kind == "resnet18-scratch":
        from core.train.resnet import LOAD_SIZE, build_model, predict

        net = build_model(len(names))
        _load_strict(net, _read_weights(model_dir / "model.safetensors"), model_dir)
        net.eval()
        return Embedder(f"run-{run_dir.name}", "ResNet-18 trained here", LOAD_SIZE, len(names), "torch", lambda images: predict(net, images, np.arange(len(images)))), config
    if kind == "frozen-backbone":
        from core.embed import _resolution, _torch_feature_model
        from core.train.frozen import build_head

        backbone_config = EmbedderConfig(**config["backbone"])
        head = build_head(config["input_dim"], config["hidden"], len(names), tuple(config["dropout"])).eval()
        _load_strict(head, _read_weights(model_dir / "head.safetensors"), model_dir)
        if config.get("backbone_trained"):
            backbone, _, _ = _torch_feature_model(backbone_config)
            _load_strict(backbone, _read_weights(model_dir / "backbone.safetensors"), model_dir)
            features = lambda images: backbone.eval()(torch.from_numpy(np.ascontiguousarray(images)))
            resolution = _resolution(backbone_config)
        else:  # the unchanged pretrained backbone: the fast runtime the embeddings came from
            embedder = load_embedder(backbone_config, models)
            features = lambda images: torch.from_numpy(embedder.embed_batch(images))
            resolution = embedder.resolution

        def classify(images: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return torch.softmax(head(features(images)), 1).numpy()

        return Embedder(f"run-{run_dir.name}", f"{backbone_config.kind} with a trained head", resolution, len(names), "torch", classify), config
    predict_vectors, config = load_model(model_dir)
    meta_path = run_dir.parent.parent / "embeddings" / config["embedding"] / "meta.json"
    if not meta_path.exists():
        raise UserError(f"The embedder '{config['embedding']}' this model needs is not recorded beside the run; re-run `embed` in its data set.")
    embedder = load_embedder(EmbedderConfig(**json.loads(meta_path.read_text(encoding="utf-8"))["config"]), models)
    if embedder.dim != config["input_dim"]:
        raise UserError(f"The model expects {config['input_dim']}-d embeddings but '{embedder.key}' gives {embedder.dim}-d.")
    return Embedder(f"run-{run_dir.name}", f"{config['model_type']} on {embedder.key}", embedder.resolution, len(names), embedder.runtime, lambda images: predict_vectors(embedder.embed_batch(images))), config


def find_run_folder(run: str, workspace: str | os.PathLike | None) -> Path:
    """A run given as a folder path, or as a run id searched in every data set of the workspace."""
    path = Path(run).expanduser()
    if (path / "model").is_dir():
        return path
    if (path / "model_config.json").exists():
        return path.parent
    for name in list_datasets(workspace):
        candidate = resolve_workspace(workspace) / name / "runs" / run
        if (candidate / "run.json").exists():
            return candidate
    raise UserError(f"No run '{run}': give a run folder, or a run id from `python -m core runs NAME`.")


def predict_folder(run: str, folder: str | os.PathLike, out: str | os.PathLike, workspace: str | os.PathLike | None = None, *, probabilities: bool = False, progress=None) -> tuple[Path, int, list[tuple[str, str]]]:
    """Predict every image under ``folder``; write ``filename,label`` (+ one column per class). Returns (csv, rows, skipped)."""
    run_dir = find_run_folder(run, workspace)
    summary = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if (run_dir / "run.json").exists() else {}
    model_config = json.loads((run_dir / "model" / "model_config.json").read_text(encoding="utf-8")) if (run_dir / "model" / "model_config.json").exists() else {}
    dataset = summary.get("dataset") or run_dir.parent.parent.name
    if dataset in list_datasets(workspace) and model_config:
        known = set(open_table(workspace, dataset).classes(summary.get("version")))
        foreign = [label for label in model_config.get("label_names", []) if label not in known]
        if foreign:
            raise UserError(
                f"The model's classes {foreign[:5]} are not classes of '{dataset}' version {summary.get('version')}: "
                "this model file comes from another data set. Use that data set's run."
            )
    classifier, model_config = image_classifier(run_dir, workspace)

    if Path(folder).expanduser().is_dir() and not any(Path(folder).expanduser().iterdir()):
        raise UserError(f"No images to predict in {folder}: the folder is empty.")
    found = discover(folder, layout="flat")
    paths = [c.path for c in found.candidates]
    if not paths:
        raise UserError(f"No images to predict in {folder}.")
    probs, failures = embed_paths(classifier, paths, progress=progress)
    bad = {i for i, _ in failures}
    good = [i for i in range(len(paths)) if i not in bad]
    probs = probs[good]
    names = np.array(model_config["label_names"], dtype=object)
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

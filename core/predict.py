"""Apply a saved model to a folder of new images: a ``filename,label`` CSV (and probabilities if asked)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from core.embed import EmbedderConfig, embed_paths, load_embedder
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
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"The model file in {model_dir} cannot be read as a {kind} model ({exc}).") from exc
        if head.n_classes != n_classes:
            raise UserError(f"The model in {model_dir} has {head.n_classes} classes but its config names {n_classes}; the folder is inconsistent.")
        return head.predict_proba, config
    if kind in ("resnet18-scratch", "triplet-encoder"):
        raise UserError(f"Predicting a folder with a {kind} run is not supported yet; use a run of heads on embeddings (`train NAME`).")
    raise UserError(f"{model_dir} holds a model of unknown type '{kind}'.")


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
    predict, model_config = load_model(run_dir / "model")
    summary = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if (run_dir / "run.json").exists() else {}
    dataset = summary.get("dataset") or run_dir.parent.parent.name
    if dataset in list_datasets(workspace):
        known = set(open_table(workspace, dataset).classes(summary.get("version")))
        foreign = [label for label in model_config["label_names"] if label not in known]
        if foreign:
            raise UserError(
                f"The model's classes {foreign[:5]} are not classes of '{dataset}' version {summary.get('version')}: "
                "this model file comes from another data set. Use that data set's run."
            )
    meta_path = resolve_workspace(workspace) / dataset / "embeddings" / model_config["embedding"] / "meta.json"
    if not meta_path.exists():
        raise UserError(f"The embedder '{model_config['embedding']}' this model needs is not recorded in '{dataset}'; re-run `embed` there.")
    embedder_config = EmbedderConfig(**json.loads(meta_path.read_text(encoding="utf-8"))["config"])
    embedder = load_embedder(embedder_config, resolve_workspace(workspace) / ".models")
    if embedder.dim != model_config["input_dim"]:
        raise UserError(f"The model expects {model_config['input_dim']}-d embeddings but '{embedder.key}' gives {embedder.dim}-d.")

    found = discover(folder, layout="flat")
    paths = [c.path for c in found.candidates]
    if not paths:
        raise UserError(f"No images to predict in {folder}.")
    vectors, failures = embed_paths(embedder, paths, progress=progress)
    bad = {i for i, _ in failures}
    good = [i for i in range(len(paths)) if i not in bad]
    probs = predict(vectors[good]) if good else np.zeros((0, len(model_config["label_names"])))
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

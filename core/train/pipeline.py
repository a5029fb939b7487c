"""The seed-000 pipeline: heads on embeddings, stratified k-fold CV, model selection,
retrain on everything, out-of-fold outputs and label-issue scores, saved as a run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from core.embed import EmbedderConfig, embedder_key, load_embeddings
from core.errors import Cancelled, UserError
from core.issues import label_issue_scores, sample_metrics
from core.runs import RunBuilder, RunInfo
from core.tables import UNDEFINED
from core.train.config import TrainConfig
from core.train.heads import KnnHead, LogisticHead, MlpTraining, fit_many, fit_mlps, mlp_predict_proba
from core.workspace import open_table

Progress = Callable[[str, float], None]
"""progress(stage description, fraction done in [0, 1])."""


def _mlp_settings(config: TrainConfig, max_epochs: int, head: str = "mlp") -> MlpTraining:
    linear = head == "softmax"  # softmax regression: the same trainer with no hidden layer
    return MlpTraining(
        hidden=() if linear else config.hidden_units,
        dropout=() if linear else config.dropout,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        optimizer=config.optimizer,
        batch_size=config.batch_size,
        max_epochs=max_epochs,
        patience=config.softmax_patience if linear else config.patience,
        balanced=config.class_weighting == "balanced",
        seed=config.seed,
    )


def _inner_split(indices: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``share`` of a training set for early stopping, stratified when every class allows it."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y[indices])
    n_classes = int((counts > 0).sum())
    n_val = max(1, round(share * len(indices)))
    stratify = None
    if counts[counts > 0].min() >= 2 and len(indices) - n_classes >= n_classes:
        # Small sets: hold out at least one sample of every class rather than give up stratifying.
        n_val, stratify = max(n_val, n_classes), y[indices]
    train, val = train_test_split(indices, test_size=n_val, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(val)


def _training_embeddings(workspace, name: str, key: str, version: int):
    try:
        return load_embeddings(workspace, name, key, version)
    except UserError:
        raise UserError(f"'{name}' has no embeddings '{key}' yet. Make them with `python -m core embed {name}` (or the Embed button), then train.") from None


def _publish_embedding(workspace, name: str, key: str, description: str, content_hashes, vectors: np.ndarray, run_id: str, kind: str) -> None:
    """A trained model's output as an embedding source; written only once its run has finished."""
    from core.embed import EmbeddingCache
    from core.workspace import DatasetPaths

    cache = EmbeddingCache(DatasetPaths(workspace, name).root / "embeddings" / key)
    cache.write_meta({"key": key, "description": description, "dim": int(vectors.shape[1]), "config": {"kind": kind, "run": run_id}, "warnings": []})
    cache.append(list(content_hashes), vectors)


def _open_version(workspace, name: str, version: int | None):
    """(table, version number, rows) of ``version``, the latest if None."""
    table = open_table(workspace, name)
    version = version or table.head_version()
    return table, version, table.read(version)


def _reporter(progress: Progress | None, should_stop: Callable[[], bool] | None) -> Callable[[str, float], None]:
    """One call per stage: raises Cancelled if the user asked to stop, else reports progress."""

    def report(stage: str, fraction: float) -> None:
        if should_stop and should_stop():
            raise Cancelled(f"Training cancelled during: {stage}.")
        if progress:
            progress(stage, fraction)

    return report


def _run_info(path) -> RunInfo:
    return RunInfo(path.name, path, json.loads((path / "run.json").read_text(encoding="utf-8")))


def check_trainable(labels: np.ndarray, class_list: list[str], folds: int | None) -> tuple[list[str], int]:
    """(label names in code order, number of folds), or a UserError saying what to fix."""
    if len(labels) == 0:
        raise UserError("No labelled samples to train on: every sample is undefined or excluded. Label some first (for example with the lasso on the Map page).")
    counts = pd.Series(labels).value_counts()
    if len(counts) < 2:
        raise UserError(f"Training needs at least 2 classes with labelled samples; only '{counts.index[0]}' has any. Label samples of another class.")
    lonely = counts[counts < 2]
    if len(lonely):
        raise UserError(
            f"Class(es) {', '.join(repr(c) for c in lonely.index)} have a single labelled sample; cross-validation needs at least 2 per class. "
            "Label more samples of them, or exclude that sample."
        )
    n_folds = folds or max(2, min(5, int(counts.min())))
    if n_folds > counts.min():
        raise UserError(f"{n_folds} folds need at least {n_folds} samples per class, but '{counts.idxmin()}' has {counts.min()}. Use fewer folds.")
    names = [c for c in class_list if c in counts.index] + sorted(set(counts.index) - set(class_list))
    return names, n_folds


def train_heads(
    workspace,
    name: str,
    config: TrainConfig = TrainConfig(),
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_curve: Callable[[dict], None] | None = None,
    trigger: str = "user",
) -> RunInfo:
    """Cross-validate the configured heads on the embeddings of ``version``, keep the best, save a run."""
    config.validate()
    started = time.perf_counter()
    table, version, rows = _open_version(workspace, name, version)
    key = config.embedding or embedder_key(EmbedderConfig())
    embeddings = _training_embeddings(workspace, name, key, version)
    vectors = embeddings.vectors
    frame = rows.set_index("sample_id").loc[embeddings.sample_ids]
    trainable = (frame["label"] != UNDEFINED).to_numpy() & (frame["weight"] > 0).to_numpy()
    label_names, n_folds = check_trainable(frame["label"].to_numpy()[trainable], table.classes(version), config.folds)
    code_of = {label: i for i, label in enumerate(label_names)}
    n_classes = len(label_names)
    labelled = np.flatnonzero(trainable)
    X = vectors[labelled]
    y = np.array([code_of[label] for label in frame["label"].to_numpy()[labelled]], dtype=np.int64)
    torch.manual_seed(config.seed)

    report = _reporter(progress, should_stop)

    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=config.seed).split(X, y))
    fold_of = np.empty(len(y), dtype=np.int64)
    for number, (_, test) in enumerate(folds):
        fold_of[test] = number
    builder = RunBuilder(workspace, name, f"v{version}-heads", trigger=trigger)
    try:
        cv: dict[str, dict] = {}
        oof: dict[str, np.ndarray] = {}
        curves: list[dict] = []
        for number, head in enumerate(config.heads):
            report(f"cross-validating {head}", number / (len(config.heads) + 1))
            head_started = time.perf_counter()
            probabilities = np.zeros((len(y), n_classes), dtype=np.float32)
            if head == "knn":
                for train, test in folds:
                    probabilities[test] = KnnHead(min(config.knn_k, len(train) - 1)).fit(X[train], y[train], n_classes).predict_proba(X[test])
            elif head == "logreg":
                models = fit_many(lambda: LogisticHead(config.logreg_c, config.logreg_max_iter, config.class_weighting == "balanced"), X, y, n_classes, [t for t, _ in folds])
                for model, (_, test) in zip(models, folds):
                    probabilities[test] = model.predict_proba(X[test])
            else:
                splits = [_inner_split(train, y, config.validation_split, config.seed) for train, _ in folds]

                def on_epoch(epoch: int, losses: np.ndarray, accuracies: np.ndarray, head=head, number=number) -> None:
                    if on_curve:
                        on_curve({"stage": f"{head} cv (mean of folds)", "epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": float(np.mean(accuracies))})
                    report(f"cross-validating {head}: epoch {epoch} (val acc {np.mean(accuracies):.3f})", (number + min(epoch / config.epochs, 1)) / (len(config.heads) + 1))

                result = fit_mlps(X, y, n_classes, [s[0] for s in splits], [s[1] for s in splits], _mlp_settings(config, config.epochs, head), on_epoch=on_epoch, should_stop=should_stop)
                curves += [{"head": head, "stage": "cv", "fold": row["model"], **row} for row in result.curves]
                for fold, (_, test) in enumerate(folds):
                    probabilities[test] = mlp_predict_proba(result.model, fold, X[test])
            accuracies = [float((probabilities[test].argmax(1) == y[test]).mean()) for _, test in folds]
            cv[head] = {"fold_accuracy": accuracies, "mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)), "seconds": round(time.perf_counter() - head_started, 2)}
            oof[head] = probabilities
        best = max(config.heads, key=lambda h: cv[h]["mean"])

        report(f"retraining {best} on all {len(y)} labelled samples", len(config.heads) / (len(config.heads) + 1))
        retrain_started = time.perf_counter()
        final_model, final_epochs = _retrain(best, X, y, n_classes, config, curves, should_stop)
        cv[best]["retrain_seconds"] = round(time.perf_counter() - retrain_started, 2)

        # Per-sample outputs: out-of-fold for labelled samples, the final model for the rest.
        probabilities = np.zeros((len(frame), n_classes), dtype=np.float32)
        probabilities[labelled] = oof[best]
        others = np.flatnonzero(~trainable)
        if len(others):
            probabilities[others] = final_model(vectors[others])
        given = np.full(len(frame), -1, dtype=np.int64)
        given[labelled] = y
        metrics = sample_metrics(probabilities, given)
        # Issue scores use every cross-validated head: their mean out-of-fold
        # probabilities find flipped labels better than the best head alone
        # (bench/bench_train.py measures both).
        ensemble = probabilities.copy()
        ensemble[labelled] = np.mean([oof[head] for head in config.heads], axis=0)
        issues = label_issue_scores(ensemble, given, vectors, config.issue_neighbours)
        fold_column = np.full(len(frame), -1, dtype=np.int64)
        fold_column[labelled] = fold_of
        names = np.array(label_names, dtype=object)
        samples = pd.DataFrame(
            {
                "sample_id": embeddings.sample_ids,
                "label": frame["label"].to_numpy(),
                "trained_on": trainable,
                "fold": fold_column,
                "predicted_label": names[metrics["predicted"].to_numpy()],
            }
        )
        samples = pd.concat([samples, metrics.drop(columns=["predicted"]), issues], axis=1)
        samples["probabilities"] = list(probabilities)

        from sklearn.metrics import classification_report, confusion_matrix

        oof_predicted = oof[best].argmax(1)
        report_dict = classification_report(y, oof_predicted, labels=range(n_classes), target_names=label_names, output_dict=True, zero_division=0)
        confusion = confusion_matrix(y, oof_predicted, labels=range(n_classes))

        builder.json("config.json", {**config.to_dict(), "embedding": key})
        builder.json("cv.json", {"folds": n_folds, "heads": cv, "best": best})
        builder.json("report.json", report_dict)
        builder.json("confusion.json", {"labels": label_names, "matrix": confusion.tolist(), "rows": "given label", "columns": "predicted label (out of fold)"})
        builder.table("curves.parquet", pd.DataFrame(curves, columns=["head", "stage", "fold", "epoch", "train_loss", "val_accuracy"]))
        builder.table("samples.parquet", samples)
        _save_model(builder, best, final_model, label_names, X.shape[1], cv[best]["mean"], key, config, final_epochs)
        return _finish(builder, name, version, key, best, cv, n_folds, len(y), len(frame), embeddings.missing, started)
    except BaseException:
        builder.abandon()  # nothing half-written is ever listed as a run
        raise


def _retrain(best: str, X: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig, curves: list[dict], should_stop):
    """The best head trained on every labelled sample; returns (predict_proba, MLP epochs or None)."""
    if best == "knn":
        model = KnnHead(min(config.knn_k, len(y) - 1)).fit(X, y, n_classes)
        return _Final(model.predict_proba, model), None
    if best == "logreg":
        model = LogisticHead(config.logreg_c, config.logreg_max_iter, config.class_weighting == "balanced").fit(X, y, n_classes)
        return _Final(model.predict_proba, model), None
    train, val = _inner_split(np.arange(len(y)), y, config.validation_split, config.seed)
    result = fit_mlps(X, y, n_classes, [train], [val], _mlp_settings(config, config.final_epochs, best), should_stop=should_stop)
    curves += [{"head": best, "stage": "final", "fold": row["model"], **row} for row in result.curves]
    return _Final(lambda vectors: mlp_predict_proba(result.model, 0, vectors), result.model), result.best_epoch[0]


class _Final:
    def __init__(self, predict, model):
        self.predict = predict
        self.model = model

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return self.predict(vectors)


def _save_model(builder: RunBuilder, best: str, final: _Final, label_names: list[str], dim: int, cv_accuracy: float, key: str, config: TrainConfig, epochs: int | None) -> None:
    model_dir = builder.path / "model"
    model_config = {"model_type": best, "input_dim": dim, "n_classes": len(label_names), "label_names": label_names, "best_cv_accuracy": cv_accuracy, "embedding": key}
    if best in ("mlp", "softmax"):
        from safetensors.torch import save_file

        save_file(final.model.single(0), str(model_dir / "model.safetensors"))
        linear = best == "softmax"
        model_config.update({"hidden_units": [] if linear else list(config.hidden_units), "dropout": [] if linear else list(config.dropout), "epochs_trained_best": epochs, "format": "torch.nn.Sequential state dict (Linear, ReLU, Dropout per hidden layer)"})
    else:
        np.savez(model_dir / "model.npz", **final.model.arrays())
        model_config["format"] = "numpy .npz arrays (no pickle)"
    (model_dir / "model_config.json").write_text(json.dumps(model_config, indent=1), encoding="utf-8")


def _finish(builder: RunBuilder, name: str, version: int, key: str, best: str, cv: dict, folds: int, n_labelled: int, n_samples: int, missing: int, started: float) -> RunInfo:
    summary = {
        "dataset": name,
        "version": version,
        "kind": "heads",
        "embedding": key,
        "best_model": best,
        "cv_accuracy": cv[best]["mean"],
        "cv": {head: round(values["mean"], 4) for head, values in cv.items()},
        "folds": folds,
        "n_labelled": n_labelled,
        "n_samples": n_samples,
        "not_embedded": missing,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return _run_info(builder.finish(summary))


def _load_images(rows: pd.DataFrame, size: int, report) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x size x size x 3 images, readable mask) of every row, decoded as everywhere else."""
    from core.images import ImageProblem, load_square

    images = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
    readable = np.ones(len(rows), dtype=bool)
    for i, (path, content_hash) in enumerate(zip(rows["path"], rows["content_hash"])):
        if i % 500 == 0:
            report(f"loading images {i:,} of {len(rows):,}", 0.1 * i / len(rows))
        try:
            images[i] = load_square(path, size, content_hash)
        except ImageProblem:
            readable[i] = False
    return images, readable


def train_resnet_run(
    workspace,
    name: str,
    config: TrainConfig,
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_curve: Callable[[dict], None] | None = None,
    trigger: str = "user",
) -> RunInfo:
    """Seed 001: ResNet-18 from scratch on the images of ``version``; its features become an embedding."""
    from core.train.resnet import INPUT_SIZE, LOAD_SIZE, ResnetSettings, predict, train_resnet

    config.validate()
    started = time.perf_counter()
    table, version, rows = _open_version(workspace, name, version)

    report = _reporter(progress, should_stop)
    images, readable = _load_images(rows, LOAD_SIZE, report)
    trainable = (rows["label"] != UNDEFINED).to_numpy() & (rows["weight"] > 0).to_numpy() & readable
    label_names, _ = check_trainable(rows["label"].to_numpy()[trainable], table.classes(version), None)
    code_of = {label: i for i, label in enumerate(label_names)}
    given = np.array([code_of.get(label, -1) for label in rows["label"]], dtype=np.int64)
    given[~trainable] = -1
    train, val = _inner_split(np.flatnonzero(trainable), np.where(given >= 0, given, 0), config.validation_split, config.seed)
    settings = ResnetSettings(config.epochs, config.batch_size, config.learning_rate, config.weight_decay, config.seed, config.augmentation)
    builder = RunBuilder(workspace, name, f"v{version}-resnet18", trigger=trigger)
    try:
        def on_epoch(row: dict) -> None:
            if on_curve:
                on_curve({"stage": "resnet18", **row})
            report(f"epoch {row['epoch']} of {config.epochs}: val acc {row['val_accuracy']:.3f}", 0.1 + 0.8 * row["epoch"] / config.epochs)

        result = train_resnet(images, np.where(given >= 0, given, 0), len(label_names), train, val, settings, on_epoch=on_epoch, should_stop=should_stop)
        report("scoring every sample", 0.92)
        kept = np.flatnonzero(readable)
        probabilities, features = predict(result.model, images, kept, with_features=True)
        role = np.full(len(rows), "not trained on", dtype=object)
        role[train], role[val] = "train", "validation"
        samples = _samples_frame(
            rows["sample_id"].to_numpy()[kept], rows["label"].to_numpy()[kept], np.isin(kept, train), role[kept], np.full(len(kept), -1),
            probabilities, given[kept], features, label_names, config.issue_neighbours,
        )

        from safetensors.torch import save_file

        _write_evaluation(builder, given[val], predict(result.model, images, val).argmax(1), label_names, "predicted label (validation set)")
        builder.json("config.json", config.to_dict())
        builder.json("cv.json", {"folds": 0, "heads": {"resnet18-scratch": {"fold_accuracy": [result.best_accuracy], "mean": result.best_accuracy, "std": 0.0, "seconds": round(result.seconds_per_epoch * config.epochs, 2)}}, "best": "resnet18-scratch"})
        builder.table("curves.parquet", pd.DataFrame(result.curves))
        builder.table("samples.parquet", samples)
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(builder.path / "model" / "model.safetensors"))
        (builder.path / "model" / "model_config.json").write_text(json.dumps({
            "model_type": "resnet18-scratch", "n_classes": len(label_names), "label_names": label_names, "input_size": INPUT_SIZE, "load_size": LOAD_SIZE,
            "best_val_accuracy": result.best_accuracy, "best_epoch": result.best_epoch, "format": "torchvision resnet18 with the seed-001 head, safetensors state dict",
        }, indent=1), encoding="utf-8")
        summary = {
            "dataset": name, "version": version, "kind": "resnet18-scratch", "embedding": None, "best_model": "resnet18-scratch",
            "cv_accuracy": result.best_accuracy, "cv": {"resnet18-scratch": round(result.best_accuracy, 4)}, "folds": 0,
            "n_labelled": int(trainable.sum()), "n_samples": len(rows), "not_embedded": int((~readable).sum()),
            "best_epoch": result.best_epoch, "seconds_per_epoch": round(result.seconds_per_epoch, 2),
            "train_seconds": round(time.perf_counter() - started, 2),
            "note": "accuracy is on the held-out validation split; per-sample scores of training samples are in-sample",
        }
        path = builder.finish(summary)
    except BaseException:
        builder.abandon()
        raise
    _publish_embedding(workspace, name, f"trained-{path.name}", f"ResNet-18 trained here (run {path.name})", rows["content_hash"].to_numpy()[kept], features, path.name, "trained")
    return _run_info(path)


def train_triplet_run(
    workspace,
    name: str,
    config: TrainConfig,
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_curve: Callable[[dict], None] | None = None,
    trigger: str = "user",
) -> RunInfo:
    """Seed 002: a triplet-loss encoder on the embeddings of ``version``; its output becomes an embedding."""
    from safetensors.torch import save_file

    from core.project import knn_accuracy
    from core.train.triplet import TripletSettings, encode, train_triplet_encoder

    config.validate()
    started = time.perf_counter()
    table, version, rows = _open_version(workspace, name, version)
    key = config.embedding or embedder_key(EmbedderConfig())
    embeddings = _training_embeddings(workspace, name, key, version)
    frame = rows.set_index("sample_id").loc[embeddings.sample_ids]
    trainable = (frame["label"] != UNDEFINED).to_numpy() & (frame["weight"] > 0).to_numpy()
    label_names, _ = check_trainable(frame["label"].to_numpy()[trainable], table.classes(version), None)
    code_of = {label: i for i, label in enumerate(label_names)}
    labelled = np.flatnonzero(trainable)
    y = np.array([code_of[label] for label in frame["label"].to_numpy()[labelled]], dtype=np.int64)
    hidden, out_dim = config.hidden_units
    settings = TripletSettings(hidden, out_dim, 0.2, config.epochs, config.batch_size, config.learning_rate, config.weight_decay, config.seed)

    def on_epoch(row: dict) -> None:
        if on_curve:
            on_curve({"stage": "triplet", **row})
        if progress:
            progress(f"epoch {row['epoch']} of {config.epochs}: loss {row['train_loss']:.4f}", row["epoch"] / config.epochs)

    builder = RunBuilder(workspace, name, f"v{version}-triplet", trigger=trigger)
    try:
        encoder, curves = train_triplet_encoder(embeddings.vectors[labelled], y, settings, on_epoch=on_epoch, should_stop=should_stop)
        encoded = encode(encoder, embeddings.vectors)
        knn_input = knn_accuracy(embeddings.vectors[labelled], y)
        knn_encoded = knn_accuracy(encoded[labelled], y)
        builder.json("config.json", {**config.to_dict(), "embedding": key})
        builder.table("curves.parquet", pd.DataFrame(curves))
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(builder.path / "model" / "model.safetensors"))
        (builder.path / "model" / "model_config.json").write_text(json.dumps({
            "model_type": "triplet-encoder", "input_dim": int(embeddings.vectors.shape[1]), "hidden": hidden, "output_dim": out_dim,
            "label_names": label_names, "embedding": key, "format": "torch.nn.Sequential(Linear, ReLU, Linear) state dict; outputs are L2-normalised",
        }, indent=1), encoding="utf-8")
        path = builder.finish({
            "dataset": name, "version": version, "kind": "triplet", "embedding": key, "best_model": "triplet-encoder",
            "cv_accuracy": None, "cv": {}, "folds": 0, "n_labelled": int(len(labelled)), "n_samples": len(frame),
            "not_embedded": embeddings.missing, "knn_input": knn_input, "knn_encoded": knn_encoded,
            "train_seconds": round(time.perf_counter() - started, 2),
            "note": "10-NN accuracies are in-sample: the encoder was trained on these labels",
        })
    except BaseException:
        builder.abandon()
        raise
    _publish_embedding(workspace, name, f"triplet-{path.name}", f"triplet encoder trained here (run {path.name}) on '{key}'", embeddings.content_hashes, encoded, path.name, "triplet")
    return _run_info(path)


def _write_evaluation(builder: RunBuilder, given: np.ndarray, predicted: np.ndarray, label_names: list[str], columns: str) -> None:
    """report.json and confusion.json for predictions that were not trained on (out of fold or validation)."""
    from sklearn.metrics import classification_report, confusion_matrix

    n_classes = len(label_names)
    builder.json("report.json", classification_report(given, predicted, labels=range(n_classes), target_names=label_names, output_dict=True, zero_division=0))
    builder.json("confusion.json", {"labels": label_names, "matrix": confusion_matrix(given, predicted, labels=range(n_classes)).tolist(), "rows": "given label", "columns": columns})


def _samples_frame(sample_ids, labels, trained_on, role, fold, probabilities, given, vectors, label_names, neighbours: int) -> pd.DataFrame:
    """The per-sample table every run stores: outputs, metrics and label-issue scores."""
    metrics = sample_metrics(probabilities, given)
    issues = label_issue_scores(probabilities, given, vectors, neighbours)
    samples = pd.DataFrame({
        "sample_id": sample_ids, "label": labels, "trained_on": trained_on, "role": role, "fold": fold,
        "predicted_label": np.array(label_names, dtype=object)[metrics["predicted"].to_numpy()],
    })
    samples = pd.concat([samples, metrics.drop(columns=["predicted"]), issues], axis=1)
    samples["probabilities"] = list(probabilities)
    return samples


def train_frozen_run(
    workspace,
    name: str,
    config: TrainConfig,
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_curve: Callable[[dict], None] | None = None,
    trigger: str = "user",
) -> RunInfo:
    """Seed 004: a new head on a frozen pretrained backbone (optionally unfrozen gradually), saved as a run."""
    from safetensors.torch import save_file
    from sklearn.model_selection import StratifiedKFold

    from core.embed import _torch_feature_model, embed_dataset
    from core.train.frozen import FrozenSettings, predict_frozen, train_frozen
    from core.train.heads import class_weights

    config.validate()
    started = time.perf_counter()
    table, version, rows = _open_version(workspace, name, version)
    report = _reporter(progress, should_stop)
    backbone_config = config.backbone_config()
    settings = FrozenSettings(
        config.epochs, config.batch_size, config.learning_rate, config.weight_decay, config.optimizer, config.hidden_units[0], tuple(config.dropout),
        config.augmentation, config.unfreeze_from, config.class_weighting == "balanced", config.seed,
    )
    key = embedder_key(backbone_config)
    if settings.needs_images:
        from core.embed import _resolution

        data, readable = _load_images(rows, _resolution(backbone_config), report)
        kept = np.flatnonzero(readable)
        data, frame = data[kept], rows.iloc[kept].reset_index(drop=True)
        content_hashes = frame["content_hash"].to_numpy()
        missing = int((~readable).sum())
    else:
        # The backbone never changes: its features come from the embedding cache, computed once.
        embed_dataset(workspace, name, backbone_config, version=version, progress=lambda done, total: report(f"embedding with the backbone: {done:,} of {total:,}", 0.1 * done / max(total, 1)), should_stop=should_stop)
        embeddings = load_embeddings(workspace, name, key, version)
        data, missing, content_hashes = embeddings.vectors, embeddings.missing, embeddings.content_hashes
        frame = rows.set_index("sample_id").loc[embeddings.sample_ids].reset_index()
    trainable = (frame["label"] != UNDEFINED).to_numpy() & (frame["weight"] > 0).to_numpy()
    label_names, _ = check_trainable(frame["label"].to_numpy()[trainable], table.classes(version), config.folds)
    code_of = {label: i for i, label in enumerate(label_names)}
    n_classes = len(label_names)
    given = np.array([code_of.get(label, -1) for label in frame["label"]], dtype=np.int64)
    given[~trainable] = -1
    labelled = np.flatnonzero(trainable)
    y_all = np.where(given >= 0, given, 0)

    def backbone():
        return _torch_feature_model(backbone_config)[0] if settings.needs_images else None

    def fit(train: np.ndarray, val: np.ndarray, stage: str, share: tuple[float, float]) -> object:
        def on_epoch(row: dict) -> None:
            curves.append({"stage": stage, **row})
            if on_curve:
                on_curve({"stage": stage, **row})
            report(f"{stage}: epoch {row['epoch']} of {config.epochs}, val acc {row['val_accuracy']:.3f}", share[0] + (share[1] - share[0]) * row["epoch"] / config.epochs)

        weights = class_weights(y_all[train], n_classes) if settings.balanced else None
        return train_frozen(data, y_all, n_classes, train, val, backbone(), settings, class_weight=weights, on_epoch=on_epoch, should_stop=should_stop)

    builder = RunBuilder(workspace, name, f"v{version}-frozen", trigger=trigger)
    try:
        curves: list[dict] = []
        probabilities = np.zeros((len(frame), n_classes), dtype=np.float32)
        role = np.full(len(frame), "not trained on", dtype=object)
        fold_column = np.full(len(frame), -1, dtype=np.int64)
        features = not settings.needs_images
        if config.folds:
            folds = list(StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=config.seed).split(labelled, y_all[labelled]))
            accuracies = []
            for number, (train_part, test_part) in enumerate(folds):
                train, test = labelled[train_part], labelled[test_part]
                inner_train, inner_val = _inner_split(train, y_all, config.validation_split, config.seed)
                span = 0.1 + 0.7 * number / (len(folds) + 1), 0.1 + 0.7 * (number + 1) / (len(folds) + 1)
                result = fit(inner_train, inner_val, f"fold {number + 1}", span)
                probabilities[test] = predict_frozen(result.model, data, test, features=features)
                accuracies.append(float((probabilities[test].argmax(1) == y_all[test]).mean()))
                fold_column[test] = number
            role[labelled] = "out of fold"
            evaluated = labelled
        train, val = _inner_split(labelled, y_all, config.validation_split, config.seed)
        k = config.folds or 0
        final = fit(train, val, "final", (0.1 + 0.7 * k / (k + 1), 0.85))
        unscored = np.setdiff1d(np.arange(len(frame)), labelled) if config.folds else np.arange(len(frame))
        report("scoring every sample", 0.88)
        probabilities[unscored] = predict_frozen(final.model, data, unscored, features=features)
        if not config.folds:
            role[train], role[val], evaluated = "train", "validation", val
            accuracies = [final.best_accuracy]
        if features:
            vectors = data
        else:
            with torch.inference_mode():
                vectors = np.concatenate([final.model.backbone(torch.from_numpy(data[s : s + 64])).numpy() for s in range(0, len(data), 64)])
        samples = _samples_frame(frame["sample_id"].to_numpy(), frame["label"].to_numpy(), np.isin(np.arange(len(frame)), train), role, fold_column, probabilities, given, vectors, label_names, config.issue_neighbours)
        _write_evaluation(builder, y_all[evaluated], probabilities[evaluated].argmax(1), label_names, "predicted label (out of fold)" if config.folds else "predicted label (validation set)")
        accuracy = float(np.mean(accuracies))
        builder.json("config.json", {**config.to_dict(), "embedding": key})
        builder.json("cv.json", {"folds": config.folds or 0, "heads": {"frozen-backbone": {"fold_accuracy": accuracies, "mean": accuracy, "std": float(np.std(accuracies)), "seconds": round(time.perf_counter() - started, 2)}}, "best": "frozen-backbone"})
        builder.table("curves.parquet", pd.DataFrame(curves))
        builder.table("samples.parquet", samples)
        model_dir = builder.path / "model"
        save_file({k: v.contiguous() for k, v in final.model.head.state_dict().items()}, str(model_dir / "head.safetensors"))
        if final.backbone_trained:
            save_file({k: v.contiguous() for k, v in final.model.backbone.state_dict().items()}, str(model_dir / "backbone.safetensors"))
        (model_dir / "model_config.json").write_text(json.dumps({
            "model_type": "frozen-backbone", "input_dim": int(final.model.head[1].in_features), "hidden": settings.hidden, "dropout": list(settings.dropout),
            "n_classes": n_classes, "label_names": label_names, "backbone": {"kind": backbone_config.kind, "arch": backbone_config.arch, "weights": backbone_config.weights, "resolution": backbone_config.resolution},
            "embedding": key, "backbone_trained": final.backbone_trained, "best_cv_accuracy": accuracy, "best_epoch": final.best_epoch,
            "format": "head.safetensors: torch.nn.Sequential(Dropout, Linear, ReLU, Dropout, Linear) state dict" + ("; backbone.safetensors: the unfrozen backbone" if final.backbone_trained else "; the backbone is the unchanged pretrained one"),
        }, indent=1), encoding="utf-8")
        path = builder.finish({
            "dataset": name, "version": version, "kind": "frozen-backbone", "embedding": key, "best_model": "frozen-backbone",
            "cv_accuracy": accuracy, "cv": {"frozen-backbone": round(accuracy, 4)}, "folds": config.folds or 0,
            "n_labelled": int(len(labelled)), "n_samples": len(rows), "not_embedded": missing, "best_epoch": final.best_epoch,
            "seconds_per_epoch": round(final.seconds_per_epoch, 3), "train_seconds": round(time.perf_counter() - started, 2),
            "note": "accuracy is out of fold" if config.folds else "accuracy is on the held-out validation split; per-sample scores of training samples are in-sample",
        })
    except BaseException:
        builder.abandon()
        raise
    if final.backbone_trained:
        _publish_embedding(workspace, name, f"trained-{path.name}", f"{backbone_config.kind} fine-tuned here (run {path.name})", content_hashes, vectors, path.name, "trained")
    return _run_info(path)


def train(
    workspace,
    name: str,
    config: TrainConfig,
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_curve: Callable[[dict], None] | None = None,
    trigger: str = "user",
) -> RunInfo:
    """Train ``config.family`` on ``version``: the one entry point for the CLI and the Train page.

    ``on_curve`` receives one row per epoch (stage, epoch, train_loss, val_accuracy, ...) as it happens.
    ``trigger`` is recorded with the run: ``"user"`` for a run someone started, ``"after commit"`` for the
    automatic quick heads, so pages can tell a user's own run from a background one.
    """
    trainer = {"heads": train_heads, "resnet18-scratch": train_resnet_run, "frozen-backbone": train_frozen_run, "triplet": train_triplet_run}[config.family]
    return trainer(workspace, name, config, version=version, progress=progress, should_stop=should_stop, on_curve=on_curve, trigger=trigger)


QUICK_HEADS = ("knn", "logreg")


def quick_heads_config(workspace, name: str) -> TrainConfig | None:
    """The fast retrain after an edit: k-NN and logistic regression on the embedding the user
    trains on (the default embedder's if cached, else the newest run's), or None if nothing is embedded."""
    from core.embed import list_embeddings
    from core.runs import list_runs

    from core.embed import is_default_embedding, preferred_embedding

    cached = {meta["key"] for meta in list_embeddings(workspace, name)}
    default = preferred_embedding(workspace, name)
    if default is not None and is_default_embedding(default):
        return TrainConfig(heads=QUICK_HEADS, embedding=default)
    for run in list_runs(workspace, name):
        if run.summary.get("kind") == "heads" and run.summary.get("embedding") in cached:
            return TrainConfig(heads=QUICK_HEADS, embedding=run.summary["embedding"])
    return None


def quick_heads_recipe(workspace, name: str) -> str | None:
    """The recipe identity (see :meth:`RunInfo.recipe`) of the quick heads' runs: the line "did the fix help" follows."""
    from core.runs import recipe_identity

    config = quick_heads_config(workspace, name)
    return None if config is None else recipe_identity(config.to_dict())

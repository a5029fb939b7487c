"""The heads family: classifier heads on embeddings, cross-validated, the best retrained on everything.

The recipe: k-NN (k = min(5, n_train - 1), cosine), logistic regression (C
1.0, balanced class weights, max_iter 1000) and an MLP (in -> 256 -> 128 ->
classes, ReLU, dropout 0.3 / 0.2, Adam lr 1e-3, weight decay 1e-4, batch
32, up to 100 epochs, early stopping on validation accuracy with patience
15, class-weighted loss), stratified k-fold with k = max(2, min(5, smallest
class)), seed 42; the best mean CV accuracy is retrained on all labelled
data (the MLP with a 90/10 split for early stopping, up to 200 epochs).
``softmax`` is one more head: softmax regression trained like the MLP with
no hidden layer and its own patience. It is the pipeline this project
started from, measured on the demo data set in ``bench/bench_train.py``.

The models themselves are in ``labelloop.train.head_models``.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelloop.compute.measured import record
from labelloop.compute.neighbours import EXACT_LIMIT, nearest_neighbours
from labelloop.compute.reduction import PcaReduction
from labelloop.data.runs import ModelConfig
from labelloop.errors import UserError
from labelloop.train.common import inner_split
from labelloop.train.family import (
    Family,
    FamilyResult,
    LabelledData,
    TrainingJob,
    duration,
)
from labelloop.train.head_models import (
    KnnHead,
    LogisticHead,
    MlpTraining,
    fit_many,
    fit_mlps,
    mlp_predict_proba,
    sequential_mlp,
)
from labelloop.train.settings import (
    CLASS_WEIGHTINGS,
    OPTIMIZERS,
    FamilySettings,
    setting,
)

HEADS = ("knn", "logreg", "mlp", "softmax")
TRAINED_HEADS = ("mlp", "softmax")  # trained by gradient descent: the epoch and optimiser settings are theirs


@dataclass(frozen=True)
class HeadsSettings(FamilySettings):
    family = "heads"

    heads: tuple[str, ...] = setting(("knn", "logreg", "mlp"), "Heads", "Candidates; the best mean CV accuracy wins and is retrained on all labelled data.", choices=HEADS)
    embedding: str | None = setting(None, "Embedding", "The vectors the heads train on.", none="the default embedder's")
    folds: int | None = setting(None, "Folds", "Cross-validation folds; automatic: max(2, min(5, smallest class count)).", minimum=2, maximum=20, none="automatic")
    knn_k: int = setting(5, "k-NN: k", "Neighbours (cosine); at most n_train - 1.", minimum=1, maximum=1000)
    logreg_c: float = setting(1.0, "Logistic regression: C", "Inverse L2 strength.", minimum=1e-6, maximum=1e6)
    logreg_max_iter: int = setting(1000, "Logistic regression: iterations", "lbfgs iterations at most.", minimum=1, maximum=100_000)
    class_weighting: str = setting("balanced", "Class weighting", "balanced: each class weighs the same in the loss (logistic regression, MLP, softmax).", choices=CLASS_WEIGHTINGS)
    mlp_hidden: tuple[int, ...] = setting((256, 128), "MLP hidden units", "Units per hidden layer, comma-separated.", minimum=1, maximum=65_536)
    mlp_dropout: tuple[float, ...] = setting((0.3, 0.2), "MLP dropout", "One per hidden layer, after it.", minimum=0.0, maximum=0.95)
    epochs: int = setting(100, "Epochs per fold", "MLP / softmax epochs at most in each fold; early stopping may end sooner.", minimum=1, maximum=10_000)
    final_epochs: int = setting(200, "Final epochs", "MLP / softmax epochs at most when retraining on everything.", minimum=1, maximum=10_000)
    batch_size: int = setting(32, "Batch size", "MLP / softmax.", minimum=1, maximum=65_536)
    learning_rate: float = setting(1e-3, "Learning rate", "MLP / softmax.", minimum=1e-7, maximum=10.0, aliases=("--lr",))
    optimizer: str = setting("adam", "Optimizer", "MLP / softmax; SGD uses momentum 0.9.", choices=OPTIMIZERS)
    weight_decay: float = setting(1e-4, "Weight decay", "MLP / softmax (the softmax head's L2).", minimum=0.0, maximum=1.0)
    patience: int = setting(15, "MLP patience", "Epochs without a better validation accuracy before the MLP stops.", minimum=1, maximum=10_000)
    softmax_patience: int = setting(25, "Softmax patience", "The same for the softmax head.", minimum=1, maximum=10_000)
    validation_split: float = setting(0.1, "Validation split", "Share of each training set held out for the MLP's / softmax's early stopping.", minimum=0.02, maximum=0.5)
    issue_neighbours: int = setting(10, "Label-issue neighbours", "Neighbours whose labels the label-issue score compares with.", minimum=1, maximum=1000)
    reduce_dims: int = setting(0, "Reduce to (PCA)", "Principal components of the embedding the heads see (fitted on up to 20,000 vectors, labels unread); 0 keeps every dimension.", minimum=0, maximum=8192)

    def check(self) -> None:
        if len(self.mlp_dropout) != len(self.mlp_hidden):
            self.refuse(f"give one MLP dropout per hidden layer ({len(self.mlp_hidden)}), not {len(self.mlp_dropout)}.")

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        data = super().upgrade(data)
        for old, new in (("hidden_units", "mlp_hidden"), ("dropout", "mlp_dropout")):
            if old in data:
                data.setdefault(new, data.pop(old))
        return data


_CANDIDATES_PER_K = 4  # neighbour candidates searched per k: with 5 folds a fifth are in the sample's own fold


def knn_out_of_fold(neighbours: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int, folds, k: int) -> np.ndarray:
    """Each sample's k-NN class shares among the samples of the other folds, from one shared search.

    ``neighbours[i]`` are sample i's nearest samples (itself excluded, nearest
    first). The first ``k`` of them outside i's fold are exactly what a k-NN
    fitted on the other folds finds; the rare sample with fewer than ``k``
    such candidates is answered by that fold's own k-NN.
    """
    fold_of = np.empty(len(y), dtype=np.int64)
    for number, (_, test) in enumerate(folds):
        fold_of[test] = number
    probabilities = np.zeros((len(y), n_classes), dtype=np.float32)
    outside = fold_of[neighbours] != fold_of[:, None]
    enough = outside.sum(axis=1) >= k
    first = np.argsort(~outside[enough], axis=1, kind="stable")[:, :k]  # positions of the first k from other folds
    chosen = np.take_along_axis(neighbours[enough], first, axis=1)
    rows = np.flatnonzero(enough)
    np.add.at(probabilities, (rows[:, None], y[chosen]), 1.0 / k)
    for number, (train, _) in enumerate(folds):
        short = np.flatnonzero(~enough & (fold_of == number))
        if len(short):
            probabilities[short] = KnnHead(min(k, len(train) - 1)).fit(X[train], y[train], n_classes).predict_proba(X[short])
    return probabilities


def _mlp_training(settings: HeadsSettings, max_epochs: int, head: str) -> MlpTraining:
    linear = head == "softmax"  # softmax regression: the same trainer with no hidden layer
    return MlpTraining(
        hidden=() if linear else settings.mlp_hidden,
        dropout=() if linear else settings.mlp_dropout,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        optimizer=settings.optimizer,
        batch_size=settings.batch_size,
        max_epochs=max_epochs,
        patience=settings.softmax_patience if linear else settings.patience,
        balanced=settings.class_weighting == "balanced",
        seed=settings.seed,
    )


def _logistic(settings: HeadsSettings) -> LogisticHead:
    return LogisticHead(settings.logreg_c, settings.logreg_max_iter, settings.class_weighting == "balanced")


@dataclass
class _Final:
    """The best head retrained on every labelled sample."""

    predict: Callable[[np.ndarray], np.ndarray]
    model: object
    best_epoch: int | None


def head_work(head: str, settings: HeadsSettings, n: int, dims: int, classes: int, folds: int) -> float:
    """The multiply-adds a head's cross-validation does at most: the unit this machine's pace is measured in, per
    head, so a run of another size (samples, dimensions, classes, epochs) can be estimated from the last one."""
    train, test = n * (folds - 1) / folds, n / folds  # per fold
    if head == "knn":
        return folds * train * test * dims  # every held-out sample against every training sample
    if head == "logreg":
        return folds * train * dims * classes * settings.logreg_max_iter
    layers = [dims, *(() if head == "softmax" else settings.mlp_hidden), classes]
    return folds * train * settings.epochs * 3 * sum(a * b for a, b in zip(layers, layers[1:]))  # forward and backward


def estimate_seconds(workspace, settings: HeadsSettings, n: int, dims: int, classes: int, folds: int) -> tuple[float, list[str], list[str]]:
    """How long the heads' cross-validation should take here: (seconds, the heads measured here, the heads estimated
    from their FLOPs at the speed this machine embeds at). A head of neither kind adds nothing (no embedding yet)."""
    from labelloop.compute.measured import last_rate
    from labelloop.embed.models import DEFAULT_MODEL, RECOMMENDED

    dims = settings.reduce_dims or dims
    total, measured, from_flops = 0.0, [], []
    embedding = last_rate(workspace, f"embed {DEFAULT_MODEL}")
    flops_per_second = None if embedding is None else embedding.per_second * next(r.facts.gflops for r in RECOMMENDED if r.name == DEFAULT_MODEL) * 1e9
    for head in settings.heads:
        work = head_work(head, settings, n, dims, classes, folds)
        rate = last_rate(workspace, f"heads {head}")
        if rate is not None:
            total += work / 1e6 / rate.per_second
            measured.append(head)
        elif flops_per_second and head in ("mlp", "softmax"):
            total += 2 * work / flops_per_second
            from_flops.append(head)
    return total, measured, from_flops


class Heads(Family):
    name = "heads"
    title = "Heads on embeddings"
    help = "k-NN, logistic regression, an MLP or softmax regression on the embeddings: stratified k-fold, the best retrained on everything."
    settings_class = HeadsSettings
    model_types = HEADS
    run_label = "heads"

    def fit(self, job: TrainingJob) -> FamilyResult:
        from sklearn.model_selection import StratifiedKFold

        embeddings, data = job.embedded(folds=job.settings.folds)
        settings: HeadsSettings = job.settings
        key, vectors = settings.embedding, embeddings.vectors
        embedding_dim, reduction = vectors.shape[1], None
        if 0 < settings.reduce_dims < embedding_dim:
            job.report(f"reducing the {embedding_dim}-d vectors to {settings.reduce_dims} principal components", 0.0)
            reduction = PcaReduction().fit(vectors, settings.reduce_dims, settings.seed)
            vectors = reduction.transform(vectors)
            embeddings.vectors = None  # never read again: at a million 1280-d images that frees 5 GB for the rest
        X, y, labelled = vectors[data.labelled], data.y, data.labelled
        n_classes = data.n_classes
        torch.manual_seed(settings.seed)
        folds = list(StratifiedKFold(n_splits=data.folds, shuffle=True, random_state=settings.seed).split(X, y))
        neighbours = None
        if len(X) > EXACT_LIMIT:
            # One approximate search serves every fold's k-NN and the label-issue score: building an index per
            # fold cost most of a refresh at 100,000 images. A fold's k-NN keeps the candidates from other folds.
            job.report(f"finding the nearest neighbours of {len(X):,} labelled samples", 0.0)
            neighbours = nearest_neighbours(X, None, min(len(X) - 1, max(_CANDIDATES_PER_K * settings.knn_k + 10, settings.issue_neighbours)))
        accuracies: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        oof: dict[str, np.ndarray] = {}
        for number, head in enumerate(settings.heads):
            job.report(f"cross-validating {head}", number / (len(settings.heads) + 1))
            started = time.perf_counter()
            oof[head] = self._cross_validate(job, head, number, X, y, n_classes, folds, neighbours)
            accuracies[head] = [float((oof[head][test].argmax(1) == y[test]).mean()) for _, test in folds]
            seconds[head] = time.perf_counter() - started
            record(job.workspace, f"heads {head}", int(head_work(head, settings, len(y), X.shape[1], n_classes, len(folds)) / 1e6), seconds[head])
        best = max(settings.heads, key=lambda h: np.mean(accuracies[h]))

        job.report(f"retraining {best} on all {len(y)} labelled samples", len(settings.heads) / (len(settings.heads) + 1))
        final = self._retrain(job, best, X, y, n_classes)

        # Per-sample outputs: out of fold for labelled samples, the final model for the rest.
        probabilities = np.zeros((len(data.frame), n_classes), dtype=np.float32)
        probabilities[labelled] = oof[best]
        others = np.flatnonzero(~data.trainable)
        if len(others):
            probabilities[others] = final.predict(vectors[others])
        # Issue scores use every cross-validated head: their mean out-of-fold probabilities find
        # flipped labels better than the best head alone (bench/bench_train.py measures both).
        ensemble = probabilities.copy()
        ensemble[labelled] = np.mean([oof[head] for head in settings.heads], axis=0)
        fold_column = np.full(len(data.frame), -1, dtype=np.int64)
        role = np.full(len(data.frame), "not trained on", dtype=object)
        for number, (_, test) in enumerate(folds):
            fold_column[labelled[test]] = number
        role[labelled] = "out of fold"
        job.write_samples(data, probabilities, vectors, trained_on=data.trainable, role=role, fold=fold_column, issue_probabilities=ensemble, neighbours=neighbours)
        job.write_evaluation(y, oof[best].argmax(1), data.label_names, "predicted label (out of fold)")
        job.write_cv(data.folds, accuracies, seconds, best)
        model = self._save(job, best, final, data, embedding_dim, key, reduction)
        return FamilyResult(
            best_model=best, held_out_accuracy=float(np.mean(accuracies[best])), accuracy_by_model={h: round(float(np.mean(a)), 4) for h, a in accuracies.items()},
            folds=data.folds, n_labelled=len(y), n_samples=len(data.frame), not_embedded=embeddings.missing, model=model, embedding=key,
        )

    @staticmethod
    def _cross_validate(job: TrainingJob, head: str, number: int, X, y, n_classes: int, folds, neighbours: np.ndarray | None = None) -> np.ndarray:
        """Out-of-fold class probabilities of ``head`` for every labelled sample (``neighbours``: see :func:`knn_out_of_fold`)."""
        settings: HeadsSettings = job.settings
        probabilities = np.zeros((len(y), n_classes), dtype=np.float32)
        if head == "knn":
            if neighbours is not None:
                return knn_out_of_fold(neighbours, X, y, n_classes, folds, settings.knn_k)
            for train, test in folds:
                probabilities[test] = KnnHead(min(settings.knn_k, len(train) - 1)).fit(X[train], y[train], n_classes).predict_proba(X[test])
            return probabilities
        if head == "logreg":
            models = fit_many(lambda: _logistic(settings), X, y, n_classes, [t for t, _ in folds])
            for model, (_, test) in zip(models, folds):
                probabilities[test] = model.predict_proba(X[test])
            return probabilities
        splits = [inner_split(train, y, settings.validation_split, settings.seed) for train, _ in folds]
        share = len(settings.heads) + 1

        started = time.perf_counter()

        def on_epoch(epoch: int, losses: np.ndarray, accuracies: np.ndarray) -> None:
            job.curve({"stage": f"{head} cv (mean of folds)", "epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": float(np.mean(accuracies))}, keep=False)
            # How long the rest may take, from this machine's pace on this very work so far: every fold's epochs
            # left, then the final retrain on all samples (one model, a fold's share of the work per epoch).
            per_epoch = (time.perf_counter() - started) / epoch
            left = per_epoch * (settings.epochs - epoch + settings.final_epochs / len(folds))
            job.report(f"cross-validating {head}: epoch {epoch} of at most {settings.epochs} (val acc {np.mean(accuracies):.3f}); "
                       f"at most {duration(left)} more at this pace, less if early stopping ends it", (number + min(epoch / settings.epochs, 1)) / share)

        result = fit_mlps(X, y, n_classes, [s[0] for s in splits], [s[1] for s in splits], _mlp_training(settings, settings.epochs, head), on_epoch=on_epoch, should_stop=job.should_stop, device=job.device)
        job.curves += [{"head": head, "stage": "cv", "fold": row["model"], **row} for row in result.curves]
        for fold, (_, test) in enumerate(folds):
            probabilities[test] = mlp_predict_proba(result.model, fold, X[test])
        return probabilities

    @staticmethod
    def _retrain(job: TrainingJob, best: str, X, y, n_classes: int) -> _Final:
        settings: HeadsSettings = job.settings
        if best == "knn":
            model = KnnHead(min(settings.knn_k, len(y) - 1)).fit(X, y, n_classes)
            return _Final(model.predict_proba, model, None)
        if best == "logreg":
            model = _logistic(settings).fit(X, y, n_classes)
            return _Final(model.predict_proba, model, None)
        train, val = inner_split(np.arange(len(y)), y, settings.validation_split, settings.seed)
        result = fit_mlps(X, y, n_classes, [train], [val], _mlp_training(settings, settings.final_epochs, best), should_stop=job.should_stop, device=job.device)
        job.curves += [{"head": best, "stage": "final", "fold": row["model"], **row} for row in result.curves]
        return _Final(lambda vectors: mlp_predict_proba(result.model, 0, vectors), result.model, result.best_epoch[0])

    @staticmethod
    def _save(job: TrainingJob, best: str, final: _Final, data: LabelledData, dim: int, key: str, reduction: PcaReduction | None) -> ModelConfig:
        settings: HeadsSettings = job.settings
        if best in TRAINED_HEADS:
            from safetensors.torch import save_file

            save_file({k: v.cpu() for k, v in final.model.single(0).items()}, str(job.builder.model_dir / "model.safetensors"))
            linear = best == "softmax"
            architecture = {"hidden_units": [] if linear else list(settings.mlp_hidden), "dropout": [] if linear else list(settings.mlp_dropout), "epochs_trained_best": final.best_epoch}
            layout = "torch.nn.Sequential state dict (Linear, ReLU, Dropout per hidden layer)"
        else:
            np.savez(job.builder.model_dir / "model.npz", **final.model.arrays())
            architecture, layout = {}, "numpy .npz arrays (no pickle)"
        if reduction is not None:  # the head reads principal components, not the embedding itself
            np.savez(job.builder.model_dir / "reduction.npz", **reduction.arrays())
            architecture["reduced_to"] = reduction.dims
            layout += "; reduction.npz: PCA mean and components applied to the embedding first"
        return ModelConfig(best, data.label_names, layout, embedding=key, input_dim=dim, architecture=architecture)

    # ------------------------------------------------------------------ loading

    def classifier(self, run_dir: Path, model: ModelConfig, models_dir: Path, device: torch.device = torch.device("cpu")):
        from labelloop.data.workspace import DatasetPaths
        from labelloop.embed import Embedder, EmbedderConfig, load_embedder

        predict_vectors = load_head(run_dir / "model", model)
        paths = DatasetPaths(run_dir.parent.parent.parent, run_dir.parent.parent.name)
        meta_path = paths.embedding(model.embedding) / "meta.json"
        if not meta_path.exists():
            raise UserError(f"The embedder '{model.embedding}' this model needs is not recorded beside the run; re-run `embed` in its data set.")
        # The embedder that made the vectors it trained on, run on ``device``; the head itself is small and stays on the CPU.
        embedder = load_embedder(EmbedderConfig(**{**json.loads(meta_path.read_text(encoding="utf-8"))["config"], "device": str(device)}), models_dir)
        if embedder.dim != model.input_dim:
            raise UserError(f"The model expects {model.input_dim}-d embeddings but '{embedder.key}' gives {embedder.dim}-d.")
        return Embedder(f"run-{run_dir.name}", f"{model.model_type} on {embedder.key}", embedder.resolution, model.n_classes, embedder.runtime, lambda images: predict_vectors(embedder.embed_batch(images)))


def load_head(model_dir: Path, model: ModelConfig) -> Callable[[np.ndarray], np.ndarray]:
    """predict_proba on embedding vectors of a saved head (through its PCA reduction, if it has one)."""
    head = _load_head_itself(model_dir, model)
    if not model.architecture.get("reduced_to"):
        return head
    reduction = PcaReduction.from_arrays(_read_npz(model_dir / "reduction.npz", "PCA reduction"))
    if reduction.components.shape != (model.architecture["reduced_to"], model.input_dim):
        raise UserError(f"The PCA reduction in {model_dir} does not match its model_config.json; the run folder is damaged. Train again.")
    return lambda vectors: head(reduction.transform(vectors))


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        return dict(np.load(path, allow_pickle=False))  # never unpickles
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"The model file {path} cannot be read as a {what} ({type(exc).__name__}: {exc}); the run folder is damaged. Train again.") from exc


def _load_head_itself(model_dir: Path, model: ModelConfig) -> Callable[[np.ndarray], np.ndarray]:
    input_dim = model.architecture.get("reduced_to") or model.input_dim
    if model.model_type in TRAINED_HEADS:
        from safetensors.torch import load_file

        net = sequential_mlp(input_dim, tuple(model.architecture["hidden_units"]), model.n_classes, tuple(model.architecture["dropout"])).eval()
        try:
            net.load_state_dict(load_file(model_dir / "model.safetensors"))
        except (OSError, RuntimeError) as exc:
            raise UserError(f"The model file in {model_dir} does not match its model_config.json ({str(exc).splitlines()[0][:200]}).") from exc

        def predict(vectors: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch.softmax(net(torch.from_numpy(np.asarray(vectors, np.float32))), 1).numpy()

        return predict
    arrays = _read_npz(model_dir / "model.npz", f"{model.model_type} model")
    try:
        head = (LogisticHead if model.model_type == "logreg" else KnnHead).from_arrays(arrays)
    except KeyError as exc:
        raise UserError(f"The model file in {model_dir} cannot be read as a {model.model_type} model (KeyError: {exc}); the run folder is damaged. Train again.") from exc
    if head.n_classes_ != model.n_classes:
        raise UserError(f"The model in {model_dir} has {head.n_classes_} classes but its config names {model.n_classes}; the folder is inconsistent.")
    return head.predict_proba


FAMILY = Heads()

"""Classifier heads on embeddings: k-NN, logistic regression, MLP (and softmax
regression, an MLP with no hidden layer).

``KnnHead`` and ``LogisticHead`` have ``fit(X, y, n_classes)`` and
``predict_proba``; ``fit_many`` fits one per training set (the folds of a
cross-validation). ``fit_mlps`` trains one MLP per (training, validation)
set pair at once. Labels are integer codes 0..n_classes-1. Saved models are
plain arrays (``.npz`` / ``.safetensors``), never pickles.

Speed without changing the recipe:

* Logistic regressions of different folds fit in parallel processes
  (scikit-learn's lbfgs keeps one core busy).
* The MLPs of all folds train together as one stacked model (batched matrix
  products): each keeps its own weights, Adam state, shuffling, class
  weights and early stopping, but Python's per-step overhead is paid once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from labelloop.compute.neighbours import nearest_neighbours, unit_rows
from labelloop.errors import Cancelled
from labelloop.train.common import class_weights, make_optimizer

EpochCallback = Callable[[int, np.ndarray, np.ndarray], None]
"""on_epoch(epoch, train_loss per model, validation accuracy per model)."""


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- k-NN


@dataclass
class KnnHead:
    """k nearest neighbours by cosine similarity, probabilities = neighbour label shares.

    Settings first; what :meth:`fit` learns ends in ``_`` (scikit-learn's convention) and is checked
    before use (:func:`check_is_fitted`)."""

    k: int = 5
    n_classes_: int | None = None
    train_vectors_: np.ndarray | None = None
    train_labels_: np.ndarray | None = None

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> KnnHead:
        self.n_classes_ = n_classes
        self.train_vectors_ = unit_rows(X)
        self.train_labels_ = y.astype(np.int64)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        k = max(1, min(self.k, len(self.train_vectors_)))
        neighbour_labels = self.train_labels_[nearest_neighbours(self.train_vectors_, X, k)]
        probabilities = np.zeros((len(X), self.n_classes_), dtype=np.float32)
        np.add.at(probabilities, (np.arange(len(X))[:, None], neighbour_labels), 1.0 / k)
        return probabilities

    def arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)  # the file keys stay those of earlier releases: old runs still open
        return {"train_vectors": self.train_vectors_, "train_labels": self.train_labels_, "k": np.array(self.k), "n_classes": np.array(self.n_classes_)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KnnHead:
        return cls(int(arrays["k"]), int(arrays["n_classes"]), arrays["train_vectors"], arrays["train_labels"])


# --------------------------------------------------------------------------- logistic regression


@dataclass
class LogisticHead:
    """scikit-learn's LogisticRegression (lbfgs), kept as its coefficients: saved as arrays, not a pickle.

    Settings first; what :meth:`fit` learns ends in ``_`` and is checked before use (:func:`check_is_fitted`)."""

    c: float = 1.0
    max_iter: int = 1000
    balanced: bool = True
    n_classes_: int | None = None
    coef_: np.ndarray | None = None  # (n_classes, d), or (1, d) for two classes
    intercept_: np.ndarray | None = None
    classes_: np.ndarray | None = None  # the codes seen in training (a fold may lack none: stratified)

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=self.c, max_iter=self.max_iter, class_weight="balanced" if self.balanced else None)
        model.fit(np.asarray(X, dtype=np.float32), y)
        self.n_classes_ = n_classes
        self.coef_ = model.coef_.astype(np.float32)
        self.intercept_ = model.intercept_.astype(np.float32)
        self.classes_ = model.classes_.astype(np.int64)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        scores = np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:  # scikit-learn's binary case: one score for the second class
            p = 1 / (1 + np.exp(-scores[:, 0]))
            seen = np.stack([1 - p, p], axis=1)
        else:
            seen = _softmax(scores)
        probabilities = np.zeros((len(X), self.n_classes_), dtype=np.float32)
        probabilities[:, self.classes_] = seen
        return probabilities

    def arrays(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)  # the file keys stay those of earlier releases: old runs still open
        return {"coef": self.coef_, "intercept": self.intercept_, "classes": self.classes_, "n_classes": np.array(self.n_classes_)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LogisticHead:
        return cls(n_classes_=int(arrays["n_classes"]), coef_=arrays["coef"], intercept_=arrays["intercept"], classes_=arrays["classes"])


class NotFittedError(RuntimeError):
    """A head asked to predict or to be saved before it learned anything: a bug in the caller, not the user's doing."""


def check_is_fitted(head) -> None:
    """Raise :class:`NotFittedError` unless every learned attribute of ``head`` (a name ending in ``_``) is set."""
    missing = [f.name for f in fields(head) if f.name.endswith("_") and getattr(head, f.name) is None]
    if missing:
        raise NotFittedError(f"{type(head).__name__} has not been fitted (no {', '.join(missing)}): call fit() before predicting or saving it.")


def _fit_one(head, X, y, n_classes):
    return head.fit(X, y, n_classes)


def fit_many(make_head: Callable[[], object], X: np.ndarray, y: np.ndarray, n_classes: int, train_sets: list[np.ndarray], n_jobs: int = 2) -> list:
    """Fit one head per training set, ``n_jobs`` processes at a time (scikit-learn's lbfgs uses one core)."""
    from joblib import Parallel, delayed

    if n_jobs <= 1 or len(train_sets) == 1:
        return [make_head().fit(X[t], y[t], n_classes) for t in train_sets]
    return Parallel(n_jobs=n_jobs)(delayed(_fit_one)(make_head(), X[t], y[t], n_classes) for t in train_sets)


# --------------------------------------------------------------------------- MLP


class StackedMLP(torch.nn.Module):
    """``n_models`` independent MLPs (in -> hidden... -> classes) evaluated with batched products."""

    def __init__(self, n_models: int, d_in: int, hidden: tuple[int, ...], n_classes: int, dropout: tuple[float, ...], generator: torch.Generator):
        super().__init__()
        sizes = [d_in, *hidden, n_classes]
        self.dropout = list(dropout)
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            self.weights.append(torch.nn.Parameter((torch.rand(n_models, fan_in, fan_out, generator=generator) * 2 - 1) * bound))
            self.biases.append(torch.nn.Parameter((torch.rand(n_models, 1, fan_out, generator=generator) * 2 - 1) * bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (models, batch, d_in)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                x = torch.nn.functional.dropout(torch.relu(x), self.dropout[i], self.training)
        return x

    def single(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index`` as a torch.nn.Sequential state dict (Linear weights are out x in)."""
        state = {}
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            position = layer * 3  # Linear, ReLU, Dropout per hidden layer
            state[f"{position}.weight"] = weight[index].detach().T.contiguous().clone()
            state[f"{position}.bias"] = bias[index, 0].detach().clone()  # on the model's device (saved through .cpu())
        return state


def sequential_mlp(d_in: int, hidden: tuple[int, ...], n_classes: int, dropout: tuple[float, ...]) -> torch.nn.Sequential:
    """The plain PyTorch module a saved MLP state dict loads into."""
    layers: list[torch.nn.Module] = []
    sizes = [d_in, *hidden]
    for fan_in, fan_out, p in zip(sizes[:-1], sizes[1:], dropout):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU(), torch.nn.Dropout(p)]
    layers.append(torch.nn.Linear(sizes[-1], n_classes))
    return torch.nn.Sequential(*layers)


@dataclass
class MlpTraining:
    """Settings of one stacked MLP fit (taken from the heads family's settings)."""

    hidden: tuple[int, ...] = (256, 128)
    dropout: tuple[float, ...] = (0.3, 0.2)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 15
    balanced: bool = True
    seed: int = 42


@dataclass
class MlpResult:
    model: StackedMLP
    best_epoch: list[int] = field(default_factory=list)
    best_accuracy: list[float] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)  # one row per (model, epoch)


def fit_mlps(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    train_sets: list[np.ndarray],
    val_sets: list[np.ndarray],
    settings: MlpTraining,
    *,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device = torch.device("cpu"),
) -> MlpResult:
    """Train one MLP per (train set, validation set) pair, all at once.

    Each stops early on its own validation accuracy (``patience`` epochs
    without improvement) and ends with its best weights. Models that stopped
    keep being stepped while others train (the batched product needs them),
    but their kept weights are frozen at their best epoch.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    n_models = len(train_sets)
    # The data, the models and their batches live on ``device``; the shuffles are drawn on the CPU, so a
    # seed orders the batches the same on every device.
    X_t = torch.from_numpy(np.asarray(X, dtype=np.float32)).to(device)
    y_t = torch.from_numpy(y.astype(np.int64)).to(device)
    model = StackedMLP(n_models, X_t.shape[1], settings.hidden, n_classes, settings.dropout, generator).to(device)
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.learning_rate, settings.weight_decay)
    weights = torch.stack([
        torch.from_numpy(class_weights(y[t], n_classes) if settings.balanced else np.ones(n_classes, np.float32)) for t in train_sets
    ]).to(device)  # (models, classes)
    train_sets_t = [torch.from_numpy(t.astype(np.int64)) for t in train_sets]
    longest = max(len(t) for t in train_sets)
    steps = math.ceil(longest / settings.batch_size)
    best_state = [model.single(m) for m in range(n_models)]
    best_accuracy = [-1.0] * n_models
    best_epoch = [0] * n_models
    done = [False] * n_models
    curves: list[dict] = []
    val_x = [X_t[torch.from_numpy(v.astype(np.int64)).to(device)] for v in val_sets]
    val_y = [y_t[torch.from_numpy(v.astype(np.int64)).to(device)] for v in val_sets]

    for epoch in range(1, settings.max_epochs + 1):
        if should_stop and should_stop():
            raise Cancelled(f"Training stopped at epoch {epoch}.")
        loss_sum = _train_one_epoch(model, optimizer, X_t, y_t, weights, train_sets_t, steps, settings.batch_size, n_classes, generator)
        model.eval()
        with torch.no_grad():
            accuracies = np.array([
                float((_forward_one(model, m, vx).argmax(1) == vy).float().mean()) if len(vy) else 0.0
                for m, (vx, vy) in enumerate(zip(val_x, val_y))
            ])
        train_loss = (loss_sum / steps).cpu().numpy()
        for m in range(n_models):
            if done[m]:
                continue
            curves.append({"model": m, "epoch": epoch, "train_loss": float(train_loss[m]), "val_accuracy": float(accuracies[m])})
            if accuracies[m] > best_accuracy[m]:
                best_accuracy[m], best_epoch[m] = float(accuracies[m]), epoch
                best_state[m] = model.single(m)
            elif epoch - best_epoch[m] >= settings.patience:
                done[m] = True
        if on_epoch:
            on_epoch(epoch, train_loss, accuracies)
        if all(done):
            break

    # Put every model's best weights back into the stacked model.
    with torch.no_grad():
        for m, state in enumerate(best_state):
            for layer in range(len(model.weights)):
                model.weights[layer][m] = state[f"{layer * 3}.weight"].T
                model.biases[layer][m, 0] = state[f"{layer * 3}.bias"]
    return MlpResult(model.eval(), best_epoch, best_accuracy, curves)


def _train_one_epoch(model: StackedMLP, optimizer, X_t: torch.Tensor, y_t: torch.Tensor, weights: torch.Tensor, train_sets_t: list[torch.Tensor],
                     steps: int, batch_size: int, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch of every model at once; the summed loss of each model's steps."""
    device = X_t.device
    n_models = len(train_sets_t)
    model.train()
    # Each model shuffles its own set; a shorter set wraps around so every step has a full batch for every model.
    orders = []
    for t in train_sets_t:
        order = t[torch.randperm(len(t), generator=generator)]
        repeats = math.ceil(steps * batch_size / len(order))
        orders.append(order.repeat(repeats)[: steps * batch_size])
    order_matrix = torch.stack(orders).view(n_models, steps, batch_size).to(device)
    loss_sum = torch.zeros(n_models, device=device)
    for step in range(steps):
        batch = order_matrix[:, step]  # (models, batch)
        logits = model(X_t[batch])
        targets = y_t[batch]
        per_sample = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), targets.reshape(-1), reduction="none").view(n_models, -1)
        sample_weights = torch.gather(weights, 1, targets)
        losses = (per_sample * sample_weights).sum(1) / sample_weights.sum(1).clamp_min(1e-12)  # PyTorch's weighted mean, per model
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        loss_sum += losses.detach()
    return loss_sum


def _forward_one(model: StackedMLP, index: int, x: torch.Tensor) -> torch.Tensor:
    """Logits of model ``index`` alone (evaluation mode: no dropout)."""
    last = len(model.weights) - 1
    for i, (weight, bias) in enumerate(zip(model.weights, model.biases)):
        x = x @ weight[index] + bias[index, 0]
        if i < last:
            x = torch.relu(x)
    return x


def mlp_predict_proba(model: StackedMLP, index: int, X: np.ndarray) -> np.ndarray:
    """Class probabilities of model ``index`` for the rows of ``X``, computed where the model is."""
    device = model.biases[-1].device
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(X, dtype=np.float32))
        parts = [torch.softmax(_forward_one(model, index, x[s : s + 8192].to(device)), dim=1).cpu() for s in range(0, len(x), 8192)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, model.biases[-1].shape[-1]), np.float32)

"""Seed 004: a pretrained backbone kept frozen, with a new classification head.

The head is Dropout(0.5), Linear(features, 512), ReLU, Dropout(0.5),
Linear(512, classes), trained with AdamW (lr 5e-4, weight decay 1e-4) and
cosine annealing over the epochs; the checkpoint with the best validation
accuracy is kept.

Two ways to train, chosen by the settings, with the same result where both apply:

* **Features once** (no augmentation, never unfrozen): a frozen backbone maps
  an image to the same vector every epoch, so the vectors come from the data
  set's embedding cache (the same backbone, computed once, shared with the
  map) and only the head trains. Seconds instead of hours on a CPU.
* **Images every epoch** (RandAugment or the seed-001 augmentation, or
  gradual unfreezing): every batch goes through the backbone. With
  ``unfreeze_from = E`` the backbone's parameters are split into ten groups
  in definition order (input to output) and from epoch E on one more group,
  starting at the output end, trains each epoch, at a tenth of the head's
  learning rate; BatchNorm statistics stay frozen throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import Cancelled
from core.train.heads import make_optimizer, validation_scores

UNFREEZE_GROUPS = 10


def build_head(d_in: int, hidden: int, n_classes: int, dropout: tuple[float, float]) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Dropout(dropout[0]), torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout[1]), torch.nn.Linear(hidden, n_classes),
    )


class BackboneClassifier(torch.nn.Module):
    """uint8 N x S x S x 3 images -> logits; ``backbone`` maps the same images to features."""

    def __init__(self, backbone: torch.nn.Module | None, head: torch.nn.Sequential):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # BatchNorm statistics of a pretrained backbone stay as they are
        return self


@dataclass(frozen=True)
class FrozenSettings:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    hidden: int = 512
    dropout: tuple[float, float] = (0.5, 0.5)
    augmentation: str = "none"  # none | randaugment | seed-001
    unfreeze_from: int = 0  # 0: the backbone never trains
    balanced: bool = False
    seed: int = 42

    @property
    def needs_images(self) -> bool:
        return self.augmentation != "none" or self.unfreeze_from > 0


def image_transform(augmentation: str, size: int):
    """A transform on uint8 C x H x W tensors; the backbone normalises by itself."""
    from torchvision.transforms import v2

    if augmentation == "randaugment":
        return v2.RandAugment()
    if augmentation == "seed-001":
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip(), v2.RandomRotation(10),
            v2.RandomAffine(degrees=0, shear=8, scale=(0.85, 1.15)), v2.ColorJitter(0.15, 0.15, 0.15),
        ])
    return None


def parameter_groups(backbone: torch.nn.Module, groups: int = UNFREEZE_GROUPS) -> list[list[torch.nn.Parameter]]:
    """The backbone's parameters in ``groups`` runs of definition order, output end first."""
    parameters = list(backbone.parameters())
    bounds = np.linspace(0, len(parameters), groups + 1).round().astype(int)
    return [parameters[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])][::-1]


@dataclass
class FrozenResult:
    model: BackboneClassifier
    best_epoch: int
    best_accuracy: float
    curves: list[dict]
    seconds_per_epoch: float
    backbone_trained: bool


def _inputs(data: np.ndarray, chosen: np.ndarray, transform) -> torch.Tensor:
    batch = torch.from_numpy(np.ascontiguousarray(data[chosen]))
    if transform is None:
        return batch
    # v2 transforms work on C x H x W; the backbone takes N x H x W x C.
    return torch.stack([transform(image.permute(2, 0, 1)).permute(1, 2, 0) for image in batch])


def train_frozen(
    data: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    train: np.ndarray,
    val: np.ndarray,
    backbone: torch.nn.Module | None,
    settings: FrozenSettings,
    *,
    class_weight: np.ndarray | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FrozenResult:
    """Train the head on ``data[train]``: feature vectors when ``backbone`` is None, else uint8 images.

    Keeps the epoch with the best accuracy on ``data[val]``.
    """
    torch.manual_seed(settings.seed)
    order_rng = np.random.default_rng(settings.seed)
    d_in = data.shape[1] if backbone is None else _feature_dim(backbone, data[:1])
    model = BackboneClassifier(backbone, build_head(d_in, settings.hidden, n_classes, settings.dropout))
    if backbone is not None:
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
    optimizer = make_optimizer(settings.optimizer, model.head.parameters(), settings.learning_rate, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    groups = parameter_groups(backbone) if backbone is not None and settings.unfreeze_from > 0 else []
    transform = image_transform(settings.augmentation, data.shape[1]) if backbone is not None else None
    forward = model if backbone is not None else model.head
    weight = torch.from_numpy(class_weight.astype(np.float32)) if class_weight is not None else None
    labels = torch.from_numpy(y.astype(np.int64))
    best_state, best_accuracy, best_epoch, unfrozen = None, -1.0, 0, 0
    curves: list[dict] = []
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        if groups and epoch >= settings.unfreeze_from and unfrozen < len(groups):
            for parameter in groups[unfrozen]:
                parameter.requires_grad_(True)
            # The new group joins at a tenth of the head's rate, following the same schedule.
            optimizer.add_param_group({"params": groups[unfrozen], "lr": optimizer.param_groups[0]["lr"] / 10, "initial_lr": settings.learning_rate / 10})
            scheduler.base_lrs.append(settings.learning_rate / 10)
            unfrozen += 1
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        permuted = order_rng.permutation(train)
        for start in range(0, len(permuted), settings.batch_size):
            if should_stop and should_stop():
                raise Cancelled(f"Training stopped in epoch {epoch}.")
            chosen = permuted[start : start + settings.batch_size]
            logits = forward(_inputs(data, chosen, transform) if backbone is not None else torch.from_numpy(data[chosen]))
            loss = torch.nn.functional.cross_entropy(logits, labels[chosen], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(chosen)
            correct += int((logits.detach().argmax(1) == labels[chosen]).sum())
            seen += len(chosen)
        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()
        probabilities = predict_frozen(model, data, val, features=backbone is None)
        val_accuracy, val_loss = validation_scores(probabilities, y[val])
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "val_loss": val_loss, "val_accuracy": val_accuracy, "learning_rate": learning_rate, "unfrozen_groups": unfrozen}
        curves.append(row)
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch = val_accuracy, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(row)
    model.load_state_dict(best_state)
    return FrozenResult(model.eval(), best_epoch, best_accuracy, curves, (time.perf_counter() - started) / settings.epochs, bool(unfrozen))


def _feature_dim(backbone: torch.nn.Module, sample: np.ndarray) -> int:
    with torch.inference_mode():
        return int(backbone.eval()(torch.from_numpy(np.ascontiguousarray(sample))).shape[1])


def predict_frozen(model: BackboneClassifier, data: np.ndarray, indices: np.ndarray, *, features: bool, batch_size: int = 64) -> np.ndarray:
    """Class probabilities for ``data[indices]`` (feature vectors if ``features``, else uint8 images)."""
    model.eval()
    forward = model.head if features else model
    out = []
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            chosen = np.asarray(indices[start : start + batch_size])
            out.append(torch.softmax(forward(torch.from_numpy(np.ascontiguousarray(data[chosen]))), 1).numpy())
    n_classes = model.head[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)

"""Seed 001: ResNet-18 trained from scratch on the images (no pretrained weights needed).

torchvision ``resnet18(weights=None)`` with the seed's head (512 -> 256 ->
128 -> classes, BatchNorm, ReLU, dropout 0.3), AdamW, cosine annealing with
warm restarts (T_0 10, T_mult 2) stepped per epoch, gradient clipping at
1.0, the seed's augmentation, samples of weight 0 never trained on, and the
checkpoint with the best validation accuracy kept. Afterwards every sample
gets probabilities and the 512-d penultimate features, which become an
embedding source of their own (key ``trained-<run id>``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import Cancelled
from core.train.heads import validation_scores

LOAD_SIZE = 136  # images are decoded at this size, then cropped to 128
INPUT_SIZE = 128


@dataclass(frozen=True)
class ResnetSettings:
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 5e-4
    seed: int = 42
    augmentation: str = "seed-001"  # or "none"


def build_model(n_classes: int) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Sequential(
        torch.nn.Linear(512, 256), torch.nn.BatchNorm1d(256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(256, 128), torch.nn.BatchNorm1d(128), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(128, n_classes),
    )
    return model


def _transforms(augmentation: str):
    from torchvision.transforms import v2

    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    evaluation = v2.Compose([v2.CenterCrop(INPUT_SIZE), *normalise])
    if augmentation == "none":
        return evaluation, evaluation
    training = v2.Compose([
        v2.RandomResizedCrop(INPUT_SIZE, scale=(0.8, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(10),
        v2.RandomAffine(degrees=0, shear=8, scale=(0.85, 1.15)),
        v2.ColorJitter(0.15, 0.15, 0.15),
        *normalise,
        v2.RandomErasing(p=0.05),
    ])
    return training, evaluation


def _batches(images: np.ndarray, indices: np.ndarray, transform, size: int):
    for start in range(0, len(indices), size):
        chosen = indices[start : start + size]
        tensors = torch.from_numpy(images[chosen]).permute(0, 3, 1, 2)  # uint8 NCHW
        yield chosen, torch.stack([transform(t) for t in tensors])


@dataclass
class ResnetResult:
    model: torch.nn.Module
    best_epoch: int
    best_accuracy: float
    curves: list[dict]
    seconds_per_epoch: float


def train_resnet(
    images: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    train: np.ndarray,
    val: np.ndarray,
    settings: ResnetSettings,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ResnetResult:
    """Train on ``images[train]`` (uint8 N x 136 x 136 x 3), keep the best epoch by accuracy on ``images[val]``."""
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model = build_model(n_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=10, T_mult=2)
    train_transform, eval_transform = _transforms(settings.augmentation)
    labels = torch.from_numpy(y.astype(np.int64))
    best_state, best_accuracy, best_epoch = None, -1.0, 0
    curves: list[dict] = []
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = generator.permutation(train)
        loss_sum, correct, seen = 0.0, 0, 0
        for chosen, batch in _batches(images, order, train_transform, settings.batch_size):
            if should_stop and should_stop():
                raise Cancelled(f"Training stopped in epoch {epoch}.")
            if len(chosen) < 2:  # BatchNorm cannot train on a single sample
                continue
            target = labels[chosen]
            logits = model(batch)
            loss = torch.nn.functional.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_sum += float(loss.detach()) * len(chosen)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(chosen)
        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()
        probabilities = predict(model, images, val, eval_transform)
        val_accuracy, val_loss = validation_scores(probabilities, y[val])
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "val_loss": val_loss, "val_accuracy": val_accuracy, "learning_rate": learning_rate}
        curves.append(row)
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch = val_accuracy, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch:
            on_epoch(row)
    model.load_state_dict(best_state)
    return ResnetResult(model.eval(), best_epoch, best_accuracy, curves, (time.perf_counter() - started) / max(settings.epochs, 1))


def predict(model: torch.nn.Module, images: np.ndarray, indices: np.ndarray, transform=None, with_features: bool = False):
    """Probabilities (and the 512-d penultimate features) for ``images[indices]``, in evaluation mode."""
    transform = transform or _transforms("none")[1]
    model.eval()
    probabilities, features = [], []
    captured = {}
    hook = model.fc.register_forward_hook(lambda module, inputs, output: captured.__setitem__("features", inputs[0])) if with_features else None
    try:
        with torch.inference_mode():
            for _, batch in _batches(images, np.asarray(indices), transform, 64):
                probabilities.append(torch.softmax(model(batch), 1).numpy())
                if with_features:
                    features.append(captured["features"].numpy().copy())
    finally:
        if hook:
            hook.remove()
    n_classes = model.fc[-1].out_features
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, n_classes), np.float32)
    if with_features:
        return probs, (np.concatenate(features) if features else np.zeros((0, 512), np.float32))
    return probs

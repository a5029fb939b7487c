"""The resnet18-scratch family: ResNet-18 trained from scratch on the images (no pretrained weights needed).

torchvision ``resnet18(weights=None)`` with a head of 512 -> 256 -> 128 ->
classes (BatchNorm, ReLU, dropout 0.3), AdamW (lr 5e-4, weight decay 5e-4,
batch 16), cosine annealing with warm restarts (T_0 10, T_mult 2) stepped per
epoch, gradient clipping at 1.0, the crop-flip-jitter augmentation, samples
of weight 0 never trained on, and the checkpoint with the best validation
accuracy kept: the recipe this project started from for a model that needs
nothing downloaded. Afterwards every sample gets probabilities and the 512-d
penultimate features, which become an embedding source of their own (key
``trained-<run id>``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelloop.compute.device import autocast, prepare_model
from labelloop.data.runs import ModelConfig, RunInfo
from labelloop.errors import Cancelled
from labelloop.train.common import (
    BestEpoch,
    Replica,
    augmentation,
    batches,
    inner_split,
    load_weights,
    make_optimizer,
    validation_scores,
)
from labelloop.train.family import Family, FamilyResult, PublishedEmbedding, TrainingJob
from labelloop.train.settings import (
    IMAGE_AUGMENTATIONS,
    OPTIMIZERS,
    FamilySettings,
    setting,
)

LOAD_SIZE = 136  # images are decoded at this size, then cropped to 128
INPUT_SIZE = 128


@dataclass(frozen=True)
class ResnetScratchSettings(FamilySettings):
    family = "resnet18-scratch"

    epochs: int = setting(10, "Epochs", "The best epoch by validation accuracy is kept.", minimum=1, maximum=10_000)
    batch_size: int = setting(16, "Batch size", "Images per step.", minimum=2, maximum=65_536)
    learning_rate: float = setting(5e-4, "Learning rate", "At the start of each cosine cycle.", minimum=1e-7, maximum=10.0, aliases=("--lr",))
    optimizer: str = setting("adamw", "Optimizer", "SGD uses momentum 0.9.", choices=OPTIMIZERS)
    weight_decay: float = setting(5e-4, "Weight decay", "", minimum=0.0, maximum=1.0)
    validation_split: float = setting(0.1, "Validation split", "Share of the labelled images held out to pick the best epoch and measure accuracy.", minimum=0.02, maximum=0.5)
    augmentation: str = setting("crop-flip-jitter", "Augmentation", "crop-flip-jitter: random crop, flip, rotation, shear, colour jitter, erasing; randaugment: torchvision's RandAugment.", choices=IMAGE_AUGMENTATIONS)
    issue_neighbours: int = setting(10, "Label-issue neighbours", "Neighbours whose labels the label-issue score compares with.", minimum=1, maximum=1000)


def build_model(n_classes: int) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Sequential(
        torch.nn.Linear(512, 256), torch.nn.BatchNorm1d(256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(256, 128), torch.nn.BatchNorm1d(128), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(128, n_classes),
    )
    return model


def _transforms(name: str):
    """(training, evaluation) transforms of uint8 C x 136 x 136 tensors to normalised 128 x 128 inputs."""
    from torchvision.transforms import v2

    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    evaluation = v2.Compose([v2.CenterCrop(INPUT_SIZE), *normalise])
    random = augmentation(name, INPUT_SIZE)
    if random is None:
        return evaluation, evaluation
    erasing = [v2.RandomErasing(p=0.05)] if name == "crop-flip-jitter" else []
    return v2.Compose([random, *normalise, *erasing]), evaluation


def _make_inputs(images: np.ndarray, transform) -> Callable[[np.ndarray], torch.Tensor]:
    """indices -> the transformed batch of ``images[indices]`` (uint8 N x H x W x 3 in, float N x 3 x 128 x 128 out)."""

    def make(chosen: np.ndarray) -> torch.Tensor:
        tensors = torch.from_numpy(images[chosen]).permute(0, 3, 1, 2)  # uint8 NCHW
        return torch.stack([transform(t) for t in tensors])

    return make


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
    settings: ResnetScratchSettings,
    *,
    device: torch.device = torch.device("cpu"),
    replica: Replica = Replica(),
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ResnetResult:
    """Train on ``images[train]`` (uint8 N x 136 x 136 x 3), keep the best epoch by accuracy on ``images[val]``.

    The one training loop of this family: run locally (``replica`` = the whole job) or as one of
    Ray Train's data-parallel workers (``labelloop.train.on_ray.train_on_ray``), where each replica trains on
    its share of every epoch's batches and DDP averages the gradients.
    """
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model = prepare_model(build_model(n_classes), device)
    trained = replica.wrap(model, device)
    optimizer = make_optimizer(settings.optimizer, model.parameters(), settings.learning_rate, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=10, T_mult=2)
    train_transform, eval_transform = _transforms(settings.augmentation)
    labels = torch.from_numpy(y.astype(np.int64)).to(device)
    best = BestEpoch()
    curves: list[dict] = []
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        trained.train()
        order = replica.shard(generator.permutation(train), settings.batch_size)
        loss_sum, correct, seen = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device, dtype=torch.long), 0
        for chosen, batch in batches(order, settings.batch_size, _make_inputs(images, train_transform), device):
            if should_stop and should_stop():
                raise Cancelled(f"Training stopped in epoch {epoch}.")
            if len(chosen) < 2:  # BatchNorm cannot train on a single sample
                continue
            target = labels[torch.from_numpy(chosen).to(device)]
            with autocast(device):
                logits = trained(batch)
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss_sum += loss.detach() * len(chosen)
            correct += (logits.argmax(1) == target).sum()
            seen += len(chosen)
        loss_total, correct_total, seen_total = replica.sum([float(loss_sum), float(correct), float(seen)], device)
        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()
        probabilities = predict(model, images, val, eval_transform, device=device)
        val_accuracy, val_loss = validation_scores(probabilities, y[val])
        row = {"epoch": epoch, "train_loss": loss_total / max(seen_total, 1), "train_accuracy": correct_total / max(seen_total, 1), "val_loss": val_loss, "val_accuracy": val_accuracy, "learning_rate": learning_rate}
        curves.append(row)
        best.offer(model, epoch, val_accuracy)
        if on_epoch:
            on_epoch(row)
    return ResnetResult(best.restore(model), best.epoch, best.accuracy, curves, (time.perf_counter() - started) / max(settings.epochs, 1))


def predict(model: torch.nn.Module, images: np.ndarray, indices: np.ndarray, transform=None, with_features: bool = False, *, device: torch.device | None = None):
    """Probabilities (and the 512-d penultimate features) for ``images[indices]``, in evaluation mode, on ``device``
    (default: where the model is)."""
    transform = transform or _transforms("none")[1]
    device = device or next(model.parameters()).device
    model.eval()
    probabilities, features = [], []
    captured = {}
    hook = model.fc.register_forward_hook(lambda module, inputs, output: captured.__setitem__("features", inputs[0])) if with_features else None
    try:
        with torch.inference_mode():
            for _, batch in batches(np.asarray(indices), 64, _make_inputs(images, transform), device):
                with autocast(device):
                    logits = model(batch)
                probabilities.append(torch.softmax(logits.float(), 1).cpu().numpy())
                if with_features:
                    features.append(captured["features"].float().cpu().numpy().copy())
    finally:
        if hook:
            hook.remove()
    n_classes = model.fc[-1].out_features
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, n_classes), np.float32)
    if with_features:
        return probs, (np.concatenate(features) if features else np.zeros((0, 512), np.float32))
    return probs


class ResnetScratch(Family):
    name = "resnet18-scratch"
    title = "ResNet-18 from scratch"
    help = "ResNet-18 trained from scratch on the images at 128 px; nothing is downloaded. Its features become an embedding (a map of their own)."
    settings_class = ResnetScratchSettings
    model_types = ("resnet18-scratch",)
    run_label = "resnet18"
    trains_on_ray = True

    def fit(self, job: TrainingJob) -> FamilyResult:
        settings: ResnetScratchSettings = job.settings
        images, readable = job.images(LOAD_SIZE)
        data = job.labelled(job.rows, readable=readable, folds=None)
        train, val = inner_split(data.labelled, data.codes, settings.validation_split, settings.seed)

        def on_epoch(row: dict) -> None:
            job.curve({"stage": "resnet18", **row})
            job.report(f"epoch {row['epoch']} of {settings.epochs}: val acc {row['val_accuracy']:.3f}" + job.time_left(row["epoch"], settings.epochs), 0.1 + 0.8 * row["epoch"] / settings.epochs)

        result = job.launch(train_resnet, images, data.codes, data.n_classes, train, val, settings, on_epoch=on_epoch, batch_size=settings.batch_size)
        job.report("scoring every sample", 0.92)
        kept = np.flatnonzero(readable)
        probabilities, features = predict(result.model, images, kept, with_features=True)
        role = np.full(len(data.frame), "not trained on", dtype=object)
        role[train], role[val] = "train", "validation"
        job.write_samples(data.subset(kept), probabilities, features, trained_on=np.isin(kept, train), role=role[kept], fold=np.full(len(kept), -1))
        job.write_evaluation(data.given[val], predict(result.model, images, val).argmax(1), data.label_names, "predicted label (validation set)")
        job.write_cv(0, {self.name: [result.best_accuracy]}, {self.name: result.seconds_per_epoch * settings.epochs}, self.name)
        job.builder.weights("model.safetensors", result.model)
        model = ModelConfig(self.name, data.label_names, "torchvision resnet18 with this family's head, safetensors state dict", architecture={
            "input_size": INPUT_SIZE, "load_size": LOAD_SIZE, "best_val_accuracy": result.best_accuracy, "best_epoch": result.best_epoch,
        })
        return FamilyResult(
            best_model=self.name, held_out_accuracy=result.best_accuracy, accuracy_by_model={self.name: round(result.best_accuracy, 4)}, folds=0,
            n_labelled=int(data.trainable.sum()), n_samples=len(job.rows), not_embedded=int((~readable).sum()), model=model,
            best_epoch=result.best_epoch, seconds_per_epoch=round(result.seconds_per_epoch, 2),
            note="accuracy is on the held-out validation split; per-sample scores of training samples are in-sample",
            published=PublishedEmbedding("trained-{run_id}", "ResNet-18 trained here (run {run_id})", job.rows["content_hash"].to_numpy()[kept], features, "trained"),
        )

    def classifier(self, run_dir: Path, model: ModelConfig, models_dir: Path, device: torch.device = torch.device("cpu")):
        from labelloop.embed import Embedder

        net = prepare_model(load_weights(build_model(model.n_classes), run_dir / "model" / "model.safetensors"), device).eval()
        return Embedder(f"run-{run_dir.name}", "ResNet-18 trained here", LOAD_SIZE, model.n_classes, f"torch {device}", lambda images: predict(net, images, np.arange(len(images))))

    def describe(self, run: RunInfo) -> str:
        s = run.summary
        return f"best epoch {s.best_epoch} ({s.seconds_per_epoch:.1f} s per epoch); features saved as embedding 'trained-{run.run_id}'; model in {run.path / 'model'}"


FAMILY = ResnetScratch()

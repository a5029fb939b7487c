"""The frozen-backbone family: a pretrained backbone kept frozen, with a new classification head.

The head is Dropout(0.5), Linear(features, 512), ReLU, Dropout(0.5),
Linear(512, classes), trained with AdamW (lr 5e-4, weight decay 1e-4) and
cosine annealing over the epochs; the checkpoint with the best validation
accuracy is kept: the recipe this project started from for pretrained models.

Two ways to train, chosen by the settings, with the same result where both apply:

* **Features once** (no augmentation, never unfrozen): a frozen backbone maps
  an image to the same vector every epoch, so the vectors come from the data
  set's embedding cache (the same backbone, computed once, shared with the
  map) and only the head trains. Seconds instead of hours on a CPU.
* **Images every epoch** (RandAugment or the crop-flip-jitter augmentation, or
  gradual unfreezing): every batch goes through the backbone. With
  ``unfreeze_from = E`` the backbone's parameters are split into ten groups
  in definition order (input to output) and from epoch E on one more group,
  starting at the output end, trains each epoch, at a tenth of the head's
  learning rate; BatchNorm statistics stay frozen throughout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from labelloop.compute.device import autocast, prepare_model, to_device
from labelloop.data.runs import ModelConfig, RunInfo
from labelloop.errors import Cancelled
from labelloop.train.common import (
    BestEpoch,
    Replica,
    augmentation,
    batches,
    class_weights,
    inner_split,
    load_weights,
    make_optimizer,
    validation_scores,
)
from labelloop.train.family import Family, FamilyResult, PublishedEmbedding, TrainingJob
from labelloop.train.settings import (
    CLASS_WEIGHTINGS,
    IMAGE_AUGMENTATIONS,
    OPTIMIZERS,
    FamilySettings,
    setting,
)

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
class FrozenBackboneSettings(FamilySettings):
    family = "frozen-backbone"

    backbone: str = setting(
        "efficientnet-lite0", "Backbone", "A model by name: efficientnet-lite0 (ships with the app), torchvision:resnet50:IMAGENET1K_V2, "
        "open_clip:ViT-B-32:laion2b_s34b_b79k, timm:vit_small_patch14_dinov2.lvd142m. Published weights download once into the library's cache.",
    )
    backbone_weights: str | None = setting(None, "Weights file", "A checkpoint on this machine to load into the backbone instead of published weights.", none="no file")
    image_size: int | None = setting(None, "Image size", "Smaller is faster on a CPU; 0: the backbone's own input size.", minimum=16, maximum=1024, none="its own")
    unfreeze_from: int = setting(0, "Unfreeze from epoch", "From this epoch one more tenth of the backbone trains each epoch, at a tenth of the rate; 0: never.", minimum=0, maximum=10_000)
    folds: int | None = setting(None, "Folds", "k-fold gives every labelled sample an out-of-fold score (k times the cost).", minimum=2, maximum=20, none="one validation split")
    epochs: int = setting(15, "Epochs", "The best epoch by validation accuracy is kept.", minimum=1, maximum=10_000)
    batch_size: int = setting(32, "Batch size", "", minimum=1, maximum=65_536)
    learning_rate: float = setting(5e-4, "Learning rate", "Of the head; cosine annealing over the epochs.", minimum=1e-7, maximum=10.0, aliases=("--lr",))
    optimizer: str = setting("adamw", "Optimizer", "SGD uses momentum 0.9.", choices=OPTIMIZERS)
    weight_decay: float = setting(1e-4, "Weight decay", "", minimum=0.0, maximum=1.0)
    head_hidden: int = setting(512, "Head hidden units", "The head's one hidden layer.", minimum=1, maximum=65_536)
    head_dropout: tuple[float, ...] = setting((0.5, 0.5), "Head dropout", "Two: before the hidden layer and before the output.", minimum=0.0, maximum=0.95)
    validation_split: float = setting(0.1, "Validation split", "Share of each training set held out to pick the best epoch.", minimum=0.02, maximum=0.5)
    augmentation: str = setting("none", "Augmentation", "Anything but none runs every image through the backbone each epoch (slow on a CPU).", choices=IMAGE_AUGMENTATIONS)
    class_weighting: str = setting("none", "Class weighting", "balanced: each class weighs the same in the loss.", choices=CLASS_WEIGHTINGS)
    issue_neighbours: int = setting(10, "Label-issue neighbours", "Neighbours whose labels the label-issue score compares with.", minimum=1, maximum=1000)

    @property
    def needs_images(self) -> bool:
        return self.augmentation != "none" or self.unfreeze_from > 0

    def check(self) -> None:
        if len(self.head_dropout) != 2:
            self.refuse(f"the head takes two dropouts (before the hidden layer and before the output), not {self.head_dropout}.")
        if self.unfreeze_from > self.epochs:
            self.refuse(f"unfreeze from epoch must be 0 (never) to the number of epochs ({self.epochs}), not {self.unfreeze_from}.")
        self.backbone_config().validate()

    def backbone_config(self):
        """The embedder that is this family's frozen backbone."""
        from labelloop.embed.config import EmbedderConfig, parse_model_name

        return EmbedderConfig(**parse_model_name(self.backbone), weights=self.backbone_weights, resolution=self.image_size)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        data = super().upgrade(data)
        if "backbone_arch" in data:  # before published weights: a kind and an architecture, as one model name now
            arch = data.pop("backbone_arch")
            data["backbone"] = f"{data.get('backbone', 'efficientnet-lite0')}:{arch}" if arch else data.get("backbone", "efficientnet-lite0")
        if "hidden_units" in data:
            data.setdefault("head_hidden", data.pop("hidden_units")[0])
        if "dropout" in data:
            data.setdefault("head_dropout", data.pop("dropout"))
        return data


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


def _make_inputs(data: np.ndarray, transform) -> Callable[[np.ndarray], torch.Tensor]:
    """indices -> the batch of ``data[indices]``: feature vectors, or uint8 N x H x W x C images through ``transform``."""

    def make(chosen: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(data[chosen]))
        if transform is None:
            return batch
        # v2 transforms work on C x H x W; the backbone takes N x H x W x C.
        return torch.stack([transform(image.permute(2, 0, 1)).permute(1, 2, 0) for image in batch])

    return make


def train_frozen(
    data: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    train: np.ndarray,
    val: np.ndarray,
    backbone: torch.nn.Module | None,
    settings: FrozenBackboneSettings,
    *,
    class_weight: np.ndarray | None = None,
    device: torch.device = torch.device("cpu"),
    replica: Replica = Replica(),
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FrozenResult:
    """Train the head on ``data[train]``: feature vectors when ``backbone`` is None, else uint8 images.

    Keeps the epoch with the best accuracy on ``data[val]``. The one loop of this family, local or as
    one of Ray Train's data-parallel replicas (see :class:`labelloop.train.common.Replica`).
    """
    torch.manual_seed(settings.seed)
    order_rng = np.random.default_rng(settings.seed)
    d_in = data.shape[1] if backbone is None else _feature_dim(backbone, data[:1])
    model = prepare_model(BackboneClassifier(backbone, build_head(d_in, settings.head_hidden, n_classes, tuple(settings.head_dropout))), device)
    if backbone is not None:
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
    optimizer = make_optimizer(settings.optimizer, model.head.parameters(), settings.learning_rate, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    groups = parameter_groups(model.backbone) if backbone is not None and settings.unfreeze_from > 0 else []
    transform = augmentation(settings.augmentation, data.shape[1]) if backbone is not None else None
    # What trains: the head alone (its input the features, or the frozen backbone's output under no_grad),
    # or with unfreezing the whole model. DDP syncs the parameters that train when it wraps them, so a
    # replica wraps the model again each time a group unfreezes.
    trained = replica.wrap(model if groups else model.head, device)
    weight = torch.from_numpy(class_weight.astype(np.float32)).to(device) if class_weight is not None else None
    labels = torch.from_numpy(y.astype(np.int64)).to(device)
    make_inputs = _make_inputs(data, transform)
    best, unfrozen = BestEpoch(), 0
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
            trained = replica.wrap(model, device) if replica.world > 1 else trained
        model.train()
        loss_sum, correct, seen = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device, dtype=torch.long), 0
        for chosen, inputs in batches(replica.shard(order_rng.permutation(train), settings.batch_size), settings.batch_size, make_inputs, device):
            if should_stop and should_stop():
                raise Cancelled(f"Training stopped in epoch {epoch}.")
            target = labels[torch.from_numpy(chosen).to(device)]
            with autocast(device):
                if backbone is not None and not groups:  # the frozen backbone needs no graph: only the head trains
                    with torch.no_grad():
                        inputs = model.backbone(inputs)
                logits = trained(inputs)
            loss = torch.nn.functional.cross_entropy(logits.float(), target, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(chosen)
            correct += (logits.detach().argmax(1) == target).sum()
            seen += len(chosen)
        loss_total, correct_total, seen_total = replica.sum([float(loss_sum), float(correct), float(seen)], device)
        learning_rate = optimizer.param_groups[0]["lr"]
        scheduler.step()
        probabilities = predict_frozen(model, data, val, features=backbone is None, device=device)
        val_accuracy, val_loss = validation_scores(probabilities, y[val])
        row = {"epoch": epoch, "train_loss": loss_total / max(seen_total, 1), "train_accuracy": correct_total / max(seen_total, 1), "val_loss": val_loss, "val_accuracy": val_accuracy, "learning_rate": learning_rate, "unfrozen_groups": unfrozen}
        curves.append(row)
        best.offer(model, epoch, val_accuracy)
        if on_epoch:
            on_epoch(row)
    return FrozenResult(best.restore(model), best.epoch, best.accuracy, curves, (time.perf_counter() - started) / settings.epochs, bool(unfrozen))


def _feature_dim(backbone: torch.nn.Module, sample: np.ndarray) -> int:
    with torch.inference_mode():
        return int(backbone.eval()(torch.from_numpy(np.ascontiguousarray(sample))).shape[1])


def predict_frozen(model: BackboneClassifier, data: np.ndarray, indices: np.ndarray, *, features: bool, batch_size: int = 64, device: torch.device | None = None) -> np.ndarray:
    """Class probabilities for ``data[indices]`` (feature vectors if ``features``, else uint8 images), on ``device``
    (default: where the model is)."""
    device = device or next(model.head.parameters()).device
    model.eval()
    forward = model.head if features else model
    out = []
    with torch.inference_mode():
        for _, inputs in batches(np.asarray(indices), batch_size, _make_inputs(data, None), device):
            with autocast(device):
                logits = forward(inputs)
            out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    n_classes = model.head[-1].out_features
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def backbone_features(model: BackboneClassifier, images: np.ndarray, device: torch.device | None = None) -> np.ndarray:
    """The (possibly fine-tuned) backbone's features of uint8 images, as float32."""
    device = device or next(model.head.parameters()).device
    out = []
    with torch.inference_mode():
        for _, inputs in batches(np.arange(len(images)), 64, _make_inputs(images, None), device):
            with autocast(device):
                out.append(model.backbone(inputs).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head[1].in_features), np.float32)


def _training_inputs(job: TrainingJob, backbone_config, key: str) -> tuple[np.ndarray, object, int]:
    """(what the head trains on, the rows of the version it covers, how many samples are left out).

    uint8 images when every epoch goes through the backbone; else the backbone's features, which never
    change, from the embedding cache (computed once, shared with the map).
    """
    from labelloop.embed import embed_dataset, input_resolution

    if job.settings.needs_images:
        images, readable = job.images(input_resolution(backbone_config))
        kept = np.flatnonzero(readable)
        return images[kept], job.rows.iloc[kept], int((~readable).sum())
    embed_dataset(
        job.workspace, job.name, backbone_config, version=job.version, should_stop=job.should_stop,
        progress=lambda done, total: job.report(f"embedding with the backbone: {done:,} of {total:,}", 0.1 * done / max(total, 1)),
    )
    embeddings = job.embeddings(key)
    return embeddings.vectors, job.rows_of(embeddings.sample_ids), embeddings.missing


class FrozenBackbone(Family):
    name = "frozen-backbone"
    title = "Frozen pretrained backbone + new head"
    help = "A pretrained backbone kept frozen with a new head (Dropout, 512, ReLU, Dropout). Fast on cached features; augmentation or unfreezing go through the images every epoch (slow on a CPU)."
    settings_class = FrozenBackboneSettings
    model_types = ("frozen-backbone",)
    run_label = "frozen"
    trains_on_ray = True

    def fit(self, job: TrainingJob) -> FamilyResult:
        from sklearn.model_selection import StratifiedKFold

        from labelloop.embed import embedder_key, torch_feature_model

        settings: FrozenBackboneSettings = job.settings
        backbone_config = replace(settings.backbone_config(), device=job.compute.device)
        key = embedder_key(backbone_config)
        inputs, frame, missing = _training_inputs(job, backbone_config, key)
        data = job.labelled(frame, folds=settings.folds)
        labelled, codes, n_classes = data.labelled, data.codes, data.n_classes
        features = not settings.needs_images

        def fit(train: np.ndarray, val: np.ndarray, stage: str, share: tuple[float, float]) -> FrozenResult:
            def on_epoch(row: dict) -> None:
                job.curve({"stage": stage, **row})
                job.report(f"{stage}: epoch {row['epoch']} of {settings.epochs}, val acc {row['val_accuracy']:.3f}" + job.time_left(row["epoch"], settings.epochs), share[0] + (share[1] - share[0]) * row["epoch"] / settings.epochs)

            weights = class_weights(codes[train], n_classes) if settings.class_weighting == "balanced" else None
            backbone = torch_feature_model(backbone_config)[0] if settings.needs_images else None
            return job.launch(train_frozen, inputs, codes, n_classes, train, val, backbone, settings, class_weight=weights, on_epoch=on_epoch, batch_size=settings.batch_size)

        probabilities = np.zeros((len(data.frame), n_classes), dtype=np.float32)
        role = np.full(len(data.frame), "not trained on", dtype=object)
        fold_column = np.full(len(data.frame), -1, dtype=np.int64)
        k = settings.folds or 0
        if k:
            accuracies = []
            for number, (train_part, test_part) in enumerate(StratifiedKFold(n_splits=k, shuffle=True, random_state=settings.seed).split(labelled, codes[labelled])):
                train, test = labelled[train_part], labelled[test_part]
                inner_train, inner_val = inner_split(train, codes, settings.validation_split, settings.seed)
                result = fit(inner_train, inner_val, f"fold {number + 1}", (0.1 + 0.7 * number / (k + 1), 0.1 + 0.7 * (number + 1) / (k + 1)))
                probabilities[test] = predict_frozen(result.model, inputs, test, features=features)
                accuracies.append(float((probabilities[test].argmax(1) == codes[test]).mean()))
                fold_column[test] = number
            role[labelled], evaluated = "out of fold", labelled
        train, val = inner_split(labelled, codes, settings.validation_split, settings.seed)
        final = fit(train, val, "final", (0.1 + 0.7 * k / (k + 1), 0.85))
        unscored = np.setdiff1d(np.arange(len(data.frame)), labelled) if k else np.arange(len(data.frame))
        job.report("scoring every sample", 0.88)
        probabilities[unscored] = predict_frozen(final.model, inputs, unscored, features=features)
        if not k:
            role[train], role[val], evaluated = "train", "validation", val
            accuracies = [final.best_accuracy]
        vectors = inputs if features else backbone_features(final.model, inputs)
        job.write_samples(data, probabilities, vectors, trained_on=np.isin(np.arange(len(data.frame)), train), role=role, fold=fold_column)
        job.write_evaluation(codes[evaluated], probabilities[evaluated].argmax(1), data.label_names, "predicted label (out of fold)" if k else "predicted label (validation set)")
        accuracy = float(np.mean(accuracies))
        job.write_cv(k, {self.name: accuracies}, {}, self.name)
        job.builder.weights("head.safetensors", final.model.head)
        if final.backbone_trained:
            job.builder.weights("backbone.safetensors", final.model.backbone)
        model = ModelConfig(
            self.name, data.label_names,
            "head.safetensors: torch.nn.Sequential(Dropout, Linear, ReLU, Dropout, Linear) state dict" + ("; backbone.safetensors: the unfrozen backbone" if final.backbone_trained else "; the backbone is the unchanged pretrained one"),
            embedding=key, input_dim=int(final.model.head[1].in_features),
            architecture={
                "hidden": settings.head_hidden, "dropout": list(settings.head_dropout), "backbone_trained": final.backbone_trained, "best_cv_accuracy": accuracy, "best_epoch": final.best_epoch,
                "backbone": {"kind": backbone_config.kind, "arch": backbone_config.arch, "pretrained": backbone_config.pretrained, "weights": backbone_config.weights, "resolution": backbone_config.resolution},
            },
        )
        published = None
        if final.backbone_trained:
            published = PublishedEmbedding("trained-{run_id}", f"{backbone_config.model_name} fine-tuned here (run {{run_id}})", frame["content_hash"].to_numpy(), vectors, "trained")
        return FamilyResult(
            best_model=self.name, held_out_accuracy=accuracy, accuracy_by_model={self.name: round(accuracy, 4)}, folds=k,
            n_labelled=len(labelled), n_samples=len(job.rows), not_embedded=missing, model=model, embedding=key,
            best_epoch=final.best_epoch, seconds_per_epoch=round(final.seconds_per_epoch, 3),
            note="accuracy is out of fold" if k else "accuracy is on the held-out validation split; per-sample scores of training samples are in-sample",
            published=published,
        )

    def classifier(self, run_dir: Path, model: ModelConfig, models_dir: Path, device: torch.device = torch.device("cpu")):
        from labelloop.embed import (
            Embedder,
            EmbedderConfig,
            input_resolution,
            load_embedder,
            torch_feature_model,
        )

        backbone_config = EmbedderConfig(**model.architecture["backbone"], device=str(device))
        head = prepare_model(load_weights(build_head(model.input_dim, model.architecture["hidden"], model.n_classes, tuple(model.architecture["dropout"])), run_dir / "model" / "head.safetensors"), device).eval()
        if model.architecture.get("backbone_trained"):
            backbone = prepare_model(load_weights(torch_feature_model(backbone_config)[0], run_dir / "model" / "backbone.safetensors"), device).eval()
            features = lambda images: backbone(to_device(torch.from_numpy(np.ascontiguousarray(images)), device))  # noqa: E731
            resolution = input_resolution(backbone_config)
        else:  # the unchanged pretrained backbone: the runtime the embeddings came from
            embedder = load_embedder(backbone_config, models_dir)
            features = lambda images: torch.from_numpy(embedder.embed_batch(images)).to(device)  # noqa: E731
            resolution = embedder.resolution

        def classify(images: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), autocast(device):
                return torch.softmax(head(features(images)).float(), 1).cpu().numpy()

        return Embedder(f"run-{run_dir.name}", f"{backbone_config.model_name} with a trained head", resolution, model.n_classes, f"torch {device}", classify)

    def describe(self, run: RunInfo) -> str:
        s = run.summary
        trained = f"; fine-tuned features saved as embedding 'trained-{run.run_id}'" if (run.path / "model" / "backbone.safetensors").exists() else ""
        return f"best epoch {s.best_epoch} ({s.seconds_per_epoch:.2f} s per epoch){trained}; model in {run.path / 'model'}"


FAMILY = FrozenBackbone()

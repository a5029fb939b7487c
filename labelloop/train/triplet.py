"""The triplet family: a triplet-loss encoder on embeddings, trained on the current labels.

A small network (in -> hidden -> out, unit-length output) learns to put
samples of one class close together and samples of other classes at least
``margin`` further away. Its output for every sample becomes another
embedding source (``triplet-<run id>``), so the 3D map shows the classes
pulled apart — and samples whose label disagrees with where the encoder puts
them stand out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelloop.data.runs import ModelConfig, RunInfo
from labelloop.errors import Cancelled, UserError
from labelloop.train.common import make_optimizer
from labelloop.train.family import Family, FamilyResult, PublishedEmbedding, TrainingJob
from labelloop.train.settings import OPTIMIZERS, FamilySettings, setting


@dataclass(frozen=True)
class TripletSettings(FamilySettings):
    family = "triplet"

    embedding: str | None = setting(None, "Embedding", "The vectors the encoder reads.", none="the default embedder's")
    encoder_hidden: int = setting(256, "Hidden units", "The encoder's one hidden layer.", minimum=1, maximum=65_536)
    output_dims: int = setting(64, "Output dimensions", "Size of the new embedding.", minimum=2, maximum=4096)
    margin: float = setting(0.2, "Margin", "How much further another class must be than the sample's own (unit-length outputs).", minimum=0.01, maximum=2.0)
    epochs: int = setting(30, "Epochs", "One triplet per labelled sample each epoch.", minimum=1, maximum=10_000)
    batch_size: int = setting(128, "Batch size", "Triplets per step.", minimum=1, maximum=65_536)
    learning_rate: float = setting(1e-3, "Learning rate", "", minimum=1e-7, maximum=10.0, aliases=("--lr",))
    optimizer: str = setting("adam", "Optimizer", "SGD uses momentum 0.9.", choices=OPTIMIZERS)
    weight_decay: float = setting(1e-4, "Weight decay", "", minimum=0.0, maximum=1.0)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        data = super().upgrade(data)
        if "hidden_units" in data:
            data["encoder_hidden"], data["output_dims"] = data.pop("hidden_units")
        return data


def build_encoder(d_in: int, settings: TripletSettings) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, settings.encoder_hidden), torch.nn.ReLU(), torch.nn.Linear(settings.encoder_hidden, settings.output_dims))


def encode(encoder: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    """Unit-length encoder outputs of the rows of ``X``, computed where the encoder is."""
    device = next(encoder.parameters()).device
    X = np.asarray(X, dtype=np.float32)
    with torch.no_grad():
        parts = [torch.nn.functional.normalize(encoder.eval()(torch.from_numpy(X[s : s + 65536]).to(device)), dim=1).cpu() for s in range(0, len(X), 65536)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, encoder[-1].out_features), np.float32)


def train_triplet_encoder(
    X: np.ndarray,
    y: np.ndarray,
    settings: TripletSettings,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: torch.device = torch.device("cpu"),
) -> tuple[torch.nn.Module, list[dict]]:
    """Train on labelled vectors ``X`` with integer labels ``y`` (every class needs 2 samples).

    Each epoch draws one triplet per sample: the sample as anchor, a random
    other sample of its class as positive, a random sample of another class
    as negative; the loss is the triplet margin loss on unit-length outputs.
    """
    generator = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    encoder = build_encoder(X.shape[1], settings).to(device)
    optimizer = make_optimizer(settings.optimizer, encoder.parameters(), settings.learning_rate, settings.weight_decay)
    loss_fn = torch.nn.TripletMarginLoss(margin=settings.margin)
    X_t = torch.from_numpy(np.asarray(X, dtype=np.float32)).to(device)
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    curves = []
    for epoch in range(1, settings.epochs + 1):
        if should_stop and should_stop():
            raise Cancelled(f"Training stopped at epoch {epoch}.")
        anchors = generator.permutation(len(y))
        positives = np.empty_like(anchors)
        negatives = np.empty_like(anchors)
        for i, anchor in enumerate(anchors):
            same = members[y[anchor]]
            positive = anchor
            while positive == anchor:
                positive = same[generator.integers(len(same))]
            positives[i] = positive
            negative = generator.integers(len(y))
            while y[negative] == y[anchor]:
                negative = generator.integers(len(y))
            negatives[i] = negative
        encoder.train()
        total, steps = 0.0, 0
        for start in range(0, len(anchors), settings.batch_size):
            part = slice(start, start + settings.batch_size)
            a, p, n = (torch.nn.functional.normalize(encoder(X_t[torch.from_numpy(idx[part]).to(device)]), dim=1) for idx in (anchors, positives, negatives))
            loss = loss_fn(a, p, n)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        row = {"epoch": epoch, "train_loss": total / max(steps, 1)}
        curves.append(row)
        if on_epoch:
            on_epoch(row)
    return encoder.eval(), curves


class Triplet(Family):
    name = "triplet"
    title = "Triplet-loss encoder"
    help = "A triplet-loss encoder on the embeddings; its output becomes a new embedding whose map pulls the classes apart. It classifies nothing by itself."
    settings_class = TripletSettings
    model_types = ("triplet-encoder",)
    run_label = "triplet"

    def fit(self, job: TrainingJob) -> FamilyResult:
        from labelloop.compute.neighbours import knn_accuracy

        embeddings, data = job.embedded()
        settings: TripletSettings = job.settings
        key = settings.embedding

        def on_epoch(row: dict) -> None:
            job.curve({"stage": "triplet", **row})
            job.report(f"epoch {row['epoch']} of {settings.epochs}: loss {row['train_loss']:.4f}" + job.time_left(row["epoch"], settings.epochs), row["epoch"] / settings.epochs)

        encoder, _ = train_triplet_encoder(embeddings.vectors[data.labelled], data.y, settings, on_epoch=on_epoch, should_stop=job.should_stop, device=job.device)
        encoded = encode(encoder, embeddings.vectors)
        job.builder.weights("model.safetensors", encoder)
        model = ModelConfig(
            "triplet-encoder", data.label_names, "torch.nn.Sequential(Linear, ReLU, Linear) state dict; outputs are L2-normalised",
            embedding=key, input_dim=int(embeddings.vectors.shape[1]), architecture={"hidden": settings.encoder_hidden, "output_dim": settings.output_dims},
        )
        return FamilyResult(
            best_model="triplet-encoder", held_out_accuracy=None, accuracy_by_model={}, folds=0, n_labelled=len(data.labelled), n_samples=len(data.frame),
            not_embedded=embeddings.missing, model=model, embedding=key,
            figures={"knn_input": knn_accuracy(embeddings.vectors[data.labelled], data.y), "knn_encoded": knn_accuracy(encoded[data.labelled], data.y)},
            note="10-NN accuracies are in-sample: the encoder was trained on these labels",
            published=PublishedEmbedding("triplet-{run_id}", f"triplet encoder trained here (run {{run_id}}) on '{key}'", embeddings.content_hashes, encoded, "triplet"),
        )

    def classifier(self, run_dir: Path, model: ModelConfig, models_dir: Path, device=None):
        raise UserError("A triplet-encoder run is an embedding, not a classifier: train heads on its embedding (`train NAME --embedding triplet-<run>`) and predict with that run.")

    def describe(self, run: RunInfo) -> str:
        figures = run.summary.figures
        return (f"encoder output saved as embedding 'triplet-{run.run_id}'; 10-NN accuracy of the labels {figures['knn_input']:.4f} in the input embedding "
                f"-> {figures['knn_encoded']:.4f} in the encoder's space (in-sample)")


FAMILY = Triplet()

"""Seed 002: a triplet-loss encoder on embeddings, trained on the current labels.

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

import numpy as np
import torch

from core.errors import Cancelled


@dataclass(frozen=True)
class TripletSettings:
    hidden: int = 256
    out_dim: int = 64
    margin: float = 0.2
    epochs: int = 30
    batch_size: int = 128  # triplets per step
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 42


def build_encoder(d_in: int, settings: TripletSettings) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d_in, settings.hidden), torch.nn.ReLU(), torch.nn.Linear(settings.hidden, settings.out_dim))


def encode(encoder: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = encoder.eval()(torch.from_numpy(np.asarray(X, dtype=np.float32)))
        return torch.nn.functional.normalize(out, dim=1).numpy()


def train_triplet_encoder(
    X: np.ndarray,
    y: np.ndarray,
    settings: TripletSettings,
    *,
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train on labelled vectors ``X`` with integer labels ``y`` (every class needs 2 samples).

    Each epoch draws one triplet per sample: the sample as anchor, a random
    other sample of its class as positive, a random sample of another class
    as negative; the loss is the triplet margin loss on unit-length outputs.
    """
    generator = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    encoder = build_encoder(X.shape[1], settings)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = torch.nn.TripletMarginLoss(margin=settings.margin)
    X_t = torch.from_numpy(np.asarray(X, dtype=np.float32))
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
            a, p, n = (torch.nn.functional.normalize(encoder(X_t[idx[part]]), dim=1) for idx in (anchors, positives, negatives))
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

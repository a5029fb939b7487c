"""The settings of a map, declared once: method, dimensions, PaCMAP's neighbours and phases, the fit size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelloop.errors import UserError

METHODS = ("pacmap", "tsne", "pca")


# Below this many points PaCMAP and t-SNE have too few neighbours to work
# with; the map falls back to PCA and says so.
MIN_POINTS_FOR_NEIGHBOUR_METHODS = 20


@dataclass(frozen=True)
class ProjectionConfig:
    """Every setting of a projection.

    ``iterations`` are PaCMAP's three phases (near-pair attraction, mid-near
    pairs, local refinement); pacmap reads a single integer as the last phase
    only, so they are always passed as a triple. ``pca_dims`` reduces the
    embedding with PCA first (0 = no reduction), which is most of the speed
    at 70k points. The defaults were chosen by bench/bench_project.py.
    """

    method: str = "pacmap"
    dims: int = 3
    n_neighbors: int = 10
    iterations: tuple[int, int, int] = (100, 100, 100)
    pca_dims: int = 100
    perplexity: float = 30.0  # t-SNE only
    seed: int = 0
    # The method is fitted on at most this many images (stratified by label); the rest are placed. PaCMAP's
    # optimiser runs on one core: at a million images on 2 cores a 200,000-image fit took 261 s of a 436 s
    # map, a 100,000-image one 81 s of 214 s, and placed the rest no worse (bench/bench_million.py).
    fit_points: int = 100_000

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"Unknown projection method '{self.method}': use one of {', '.join(METHODS)}.")
        if self.dims not in (2, 3):
            raise UserError(f"A map has 2 or 3 dimensions, not {self.dims}.")
        if not 2 <= self.n_neighbors <= 200:
            raise UserError(f"n_neighbors {self.n_neighbors} is out of range: use 2 to 200.")
        if len(self.iterations) != 3 or any((not isinstance(i, (int, np.integer))) or i < 0 for i in self.iterations) or sum(self.iterations) == 0:
            raise UserError(f"iterations must be three whole numbers of 0 or more (PaCMAP's three phases), not {self.iterations}.")
        if self.pca_dims < 0 or self.pca_dims == 1:
            raise UserError(f"pca_dims must be 0 (no reduction) or at least 2, not {self.pca_dims}.")
        if not 1 <= self.perplexity <= 500:
            raise UserError(f"perplexity {self.perplexity} is out of range: use 1 to 500.")
        if not 100 <= self.fit_points <= 5_000_000:
            raise UserError(f"fit_points {self.fit_points} is out of range: fit on 100 to 5,000,000 images.")

    def key(self) -> str:
        if self.method == "pca":
            return f"pca-{self.dims}d-fit{self.fit_points}"
        if self.method == "tsne":
            return f"tsne-{self.dims}d-p{self.perplexity:g}-pca{self.pca_dims}-s{self.seed}-fit{self.fit_points}"
        phases = "-".join(str(i) for i in self.iterations)
        return f"pacmap-{self.dims}d-n{self.n_neighbors}-it{phases}-pca{self.pca_dims}-s{self.seed}-fit{self.fit_points}"

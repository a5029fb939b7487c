"""The settings of a map, declared once: method, dimensions, PaCMAP's neighbours and phases, the fit size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from labelloop.settings import Settings, setting

METHODS = ("pacmap", "tsne", "pca")


# Below this many points PaCMAP and t-SNE have too few neighbours to work
# with; the map falls back to PCA and says so.
MIN_POINTS_FOR_NEIGHBOUR_METHODS = 20


@dataclass(frozen=True)
class ProjectionConfig(Settings):
    """Every setting of a projection.

    ``iterations`` are PaCMAP's three phases (near-pair attraction, mid-near
    pairs, local refinement); pacmap reads a single integer as the last phase
    only, so they are always passed as a triple. ``pca_dims`` reduces the
    embedding with PCA first (0 = no reduction), which is most of the speed
    at 70k points. The defaults were chosen by bench/bench_project.py.
    """

    subject: ClassVar[str] = "map"

    method: str = setting("pacmap", "Method", "PaCMAP keeps both clusters and their layout; t-SNE keeps clusters; PCA is linear and instant.", choices=METHODS)
    dims: int = setting(3, "Dimensions", "3 to rotate the cloud, 2 for a flat map.", choices=(2, 3))
    n_neighbors: int = setting(10, "Neighbours", "PaCMAP's neighbours per point: more keeps more of the global layout, fewer sharpens clusters.",
                               minimum=2, maximum=200, flag="--neighbors")
    iterations: tuple[int, int, int] = setting((100, 100, 100), "Iterations", "PaCMAP's three phases: near pairs, mid-near pairs, local refinement.",
                                               minimum=0, maximum=10_000, length=3)
    pca_dims: int = setting(100, "PCA dimensions", "Reduce the embedding with PCA first (0: no reduction): most of the speed at 70k points.",
                            minimum=0, maximum=4096, flag="--pca")
    perplexity: float = setting(30.0, "Perplexity", "t-SNE only: the effective number of neighbours.", minimum=1, maximum=500)
    seed: int = setting(0, "Seed", "Same seed, same embedding: the same map.", minimum=0, maximum=2**31 - 1)
    # The method is fitted on at most this many images (stratified by label); the rest are placed. PaCMAP's
    # optimiser runs on one core: at a million images on 2 cores a 200,000-image fit took 261 s of a 436 s
    # map, a 100,000-image one 81 s of 214 s, and placed the rest no worse (bench/bench_million.py).
    fit_points: int = setting(100_000, "Fit on", "Fit on at most this many images, stratified by label; the rest are placed on the map.",
                              minimum=100, maximum=5_000_000)

    def check(self) -> None:
        if sum(self.iterations) == 0:
            self.refuse("Iterations: at least one of PaCMAP's three phases needs iterations.")
        if self.pca_dims == 1:
            self.refuse("PCA dimensions must be 0 (no reduction) or at least 2, not 1.")

    def key(self) -> str:
        if self.method == "pca":
            return f"pca-{self.dims}d-fit{self.fit_points}"
        if self.method == "tsne":
            return f"tsne-{self.dims}d-p{self.perplexity:g}-pca{self.pca_dims}-s{self.seed}-fit{self.fit_points}"
        phases = "-".join(str(i) for i in self.iterations)
        return f"pacmap-{self.dims}d-n{self.n_neighbors}-it{phases}-pca{self.pca_dims}-s{self.seed}-fit{self.fit_points}"

"""Principal components of an embedding: what k-NN and logistic regression heads and the map's
neighbour search read when a 1280-d embedding is too wide to be fast."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PcaReduction:
    """Principal components of an embedding: what the heads see when a run reduces its vectors.

    Fitted on at most ``max_rows`` vectors (a seeded sample): the components of
    a 1280-d embedding settle long before 20,000 rows, and the fit then costs
    the same at 100,000 images as at a million. Unsupervised: labels are never
    read, so fitting it on every image (held-out folds included) leaks nothing
    a fold could learn its labels from.
    """

    mean: np.ndarray | None = None  # (d,)
    components: np.ndarray | None = None  # (dims, d)

    def fit(self, X: np.ndarray, dims: int, seed: int, max_rows: int = 20_000) -> PcaReduction:
        from sklearn.decomposition import PCA

        rows = np.random.default_rng(seed).choice(len(X), size=min(max_rows, len(X)), replace=False)
        sample = np.asarray(X[np.sort(rows)], dtype=np.float32)
        pca = PCA(n_components=min(dims, len(sample), X.shape[1]), svd_solver="randomized", random_state=seed).fit(sample)
        self.mean = pca.mean_.astype(np.float32)
        self.components = pca.components_.astype(np.float32)
        return self

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    def transform(self, X: np.ndarray, block: int = 65_536) -> np.ndarray:
        """Project in blocks: never more than one block of float32 copies beside the result."""
        out = np.empty((len(X), self.dims), dtype=np.float32)
        for start in range(0, len(X), block):
            out[start : start + block] = (np.asarray(X[start : start + block], dtype=np.float32) - self.mean) @ self.components.T
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pca_mean": self.mean, "pca_components": self.components}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PcaReduction:
        return cls(arrays["pca_mean"], arrays["pca_components"])

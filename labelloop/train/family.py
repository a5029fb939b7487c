"""What a training family is, and the work every family shares.

A family (``labelloop/train/heads.py``, ``resnet.py``, ``frozen.py``,
``triplet.py``) is one module with one :class:`Family` object: its name and
help text, its settings class (``labelloop.train.settings``), how it trains
(:meth:`Family.fit`), how its saved model loads for prediction
(:meth:`Family.classifier`) and how it describes a finished run. The
registry (``labelloop.train.registry``) lists them; the CLI, the Train page and
``labelloop.train.predict`` are built from it.

:func:`labelloop.train.pipeline.train` is the skeleton every run goes through:
validate the settings, open the version, give the family a
:class:`TrainingJob`, then save what it returns as a run (or nothing, if it
fails).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.compute.device import Compute, resolve_device
from labelloop.data.runs import ModelConfig, RunBuilder, RunInfo
from labelloop.data.schema import trainable_mask
from labelloop.data.workspace import DatasetPaths
from labelloop.errors import Cancelled, UserError
from labelloop.train.settings import FamilySettings

Progress = Callable[[str, float], None]
"""progress(stage description, fraction done in [0, 1])."""


@dataclass
class LabelledData:
    """The samples of a version a family works on, and which of them it may train on.

    ``frame`` holds one row per sample in the order of the family's data (embedding rows or images);
    ``given`` is each row's class code (an index into ``label_names``), -1 where it may not train:
    undefined, weight 0 (excluded), or unreadable.
    """

    frame: pd.DataFrame
    trainable: np.ndarray
    label_names: list[str]
    given: np.ndarray
    folds: int  # the cross-validation folds the smallest class allows (or the ones asked for)

    @property
    def labelled(self) -> np.ndarray:
        return np.flatnonzero(self.trainable)

    @property
    def y(self) -> np.ndarray:
        """Class codes of the labelled rows, in ``labelled`` order."""
        return self.given[self.trainable]

    @property
    def codes(self) -> np.ndarray:
        """Every row's class code, 0 where it has none (use with ``trainable``)."""
        return np.where(self.given >= 0, self.given, 0)

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def subset(self, positions: np.ndarray) -> LabelledData:
        """The rows at ``positions`` only (the readable images, say), with the same classes."""
        return LabelledData(self.frame.iloc[positions].reset_index(drop=True), self.trainable[positions], self.label_names, self.given[positions], self.folds)


@dataclass
class PublishedEmbedding:
    """A trained model's output for every sample, offered as an embedding once the run has finished."""

    key: str
    description: str
    content_hashes: np.ndarray
    vectors: np.ndarray
    kind: str  # "trained" (a network's features) or "triplet" (an encoder's output)


@dataclass
class FamilyResult:
    """What a family's :meth:`Family.fit` hands back for the run's record (its files are already written)."""

    best_model: str
    held_out_accuracy: float | None
    accuracy_by_model: dict[str, float]
    folds: int
    n_labelled: int
    n_samples: int
    not_embedded: int
    model: ModelConfig
    embedding: str | None = None
    best_epoch: int | None = None
    seconds_per_epoch: float | None = None
    note: str = ""
    figures: dict = field(default_factory=dict)
    published: PublishedEmbedding | None = None


def check_trainable(labels: np.ndarray, class_list: list[str], folds: int | None) -> tuple[list[str], int]:
    """(label names in code order, number of folds), or a UserError saying what to fix."""
    if len(labels) == 0:
        raise UserError("No labelled samples to train on: every sample is undefined or excluded. Label some first (for example with the lasso on the Map page).")
    counts = pd.Series(labels).value_counts()
    if len(counts) < 2:
        raise UserError(f"Training needs at least 2 classes with labelled samples; only '{counts.index[0]}' has any. Label samples of another class.")
    lonely = counts[counts < 2]
    if len(lonely):
        raise UserError(
            f"Class(es) {', '.join(repr(c) for c in lonely.index)} have a single labelled sample; cross-validation needs at least 2 per class. "
            "Label more samples of them, or exclude that sample."
        )
    n_folds = folds or max(2, min(5, int(counts.min())))
    if n_folds > counts.min():
        raise UserError(f"{n_folds} folds need at least {n_folds} samples per class, but '{counts.idxmin()}' has {counts.min()}. Use fewer folds.")
    names = [c for c in class_list if c in counts.index] + sorted(set(counts.index) - set(class_list))
    return names, n_folds


def duration(seconds: float) -> str:
    """Seconds as a person says them: "40 s", "12 min"."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class TrainingJob:
    """One run in the making: the version's rows, the settings, progress, and the run's staging folder."""

    def __init__(self, dataset: DatasetPaths, version: int, table, rows: pd.DataFrame, settings: FamilySettings, builder: RunBuilder,
                 progress: Progress | None, should_stop: Callable[[], bool] | None, on_curve: Callable[[dict], None] | None,
                 compute: Compute = Compute()):
        self.dataset, self.version, self.table, self.rows = dataset, version, table, rows
        self.workspace, self.name = dataset.workspace, dataset.name  # resolved once, by whoever made the DatasetPaths
        self.settings = settings  # a family may resolve a setting (the default embedding); the run records this
        self.builder = builder
        self.compute = compute
        self.device = resolve_device(compute.device)  # where this process's torch work runs (and Ray Train's result is scored)
        self.launcher = "local"  # what ran the training loop: set by launch
        self.should_stop = should_stop
        self._progress, self._on_curve = progress, on_curve
        self.curves: list[dict] = []
        self._epoch_clock: tuple[int, float] | None = None  # (an epoch, when it ended): the pace of this run's epochs

    def time_left(self, epoch: int, epochs: int) -> str:
        """"; about N min more at this pace" for a loop at the end of ``epoch`` of ``epochs``, from this run's own
        epochs so far ("" until a second one has ended; a loop starting again at epoch 1 starts a new count)."""
        now = time.perf_counter()
        if self._epoch_clock is None or epoch <= self._epoch_clock[0]:
            self._epoch_clock = (epoch, now)
            return ""
        first, when = self._epoch_clock
        left = (now - when) / (epoch - first) * max(epochs - epoch, 0)
        return f"; about {duration(left)} more at this pace" if left > 0 else ""

    def report(self, stage: str, fraction: float) -> None:
        """One call per stage: raises Cancelled if the user asked to stop, else reports progress."""
        if self.should_stop and self.should_stop():
            raise Cancelled(f"Training cancelled during: {stage}.")
        if self._progress:
            self._progress(stage, fraction)

    def launch(self, loop: Callable, *args, on_epoch: Callable[[dict], None], batch_size: int, **kwargs):
        """Run a family's training loop (``train_resnet``, ``train_frozen``): here on the job's device, or, when the
        job has a Ray address, as Ray Train's data-parallel workers (``labelloop.train.on_ray.train_on_ray``). One loop, two
        launchers; either way it returns the loop's result with the best epoch's weights, here."""
        from labelloop.compute.device import out_of_memory_as_user_error

        if self.compute.ray is None:
            with out_of_memory_as_user_error(self.device, batch_size):
                return loop(*args, device=self.device, on_epoch=on_epoch, should_stop=self.should_stop, **kwargs)
        from labelloop.train.on_ray import train_on_ray

        result, self.launcher = train_on_ray(loop, args, kwargs, self.compute, on_epoch=on_epoch, should_stop=self.should_stop, batch_size=batch_size)
        return result

    def curve(self, row: dict, *, keep: bool = True) -> None:
        """One epoch of a curve: shown live and (``keep``) saved with the run as curves.parquet. Each row says
        how many epochs are planned (``planned_epochs``, where the family has an epochs setting), so a live
        chart's axis is right from the first point."""
        planned = getattr(self.settings, "epochs", None)
        if planned is not None and "planned_epochs" not in row:
            row = {**row, "planned_epochs": int(planned)}
        if keep:
            self.curves.append(row)
        if self._on_curve:
            self._on_curve(row)

    # ------------------------------------------------------------------ the data

    def labelled(self, frame: pd.DataFrame, *, readable: np.ndarray | None = None, folds: int | None = None) -> LabelledData:
        """The trainable samples of ``frame`` (rows of this version) as class codes, or a UserError saying what to fix."""
        trainable = trainable_mask(frame)
        if readable is not None:
            trainable &= readable
        label_names, n_folds = check_trainable(frame["label"].to_numpy()[trainable], self.table.classes(self.version), folds)
        code_of = {label: i for i, label in enumerate(label_names)}
        given = np.array([code_of.get(label, -1) for label in frame["label"]], dtype=np.int64)
        given[~trainable] = -1
        return LabelledData(frame.reset_index(drop=True), trainable, label_names, given, n_folds)

    def embeddings(self, key: str):
        """The cached embeddings ``key`` of this version's samples, or a UserError saying how to make them."""
        from labelloop.embed import load_embeddings

        try:
            return load_embeddings(self.dataset, None, key, self.version, rows=self.rows)
        except UserError:
            raise UserError(f"'{self.name}' has no embeddings '{key}' yet. Make them with `labelloop embed {self.name}` (or the Embed button), then train.") from None

    def embedded(self, *, folds: int | None = None):
        """(embeddings, their labelled data) of the embedding the settings name; with none named, the default
        embedder's, and the settings record which (so the run's config says what it trained on)."""
        from dataclasses import replace

        from labelloop.embed import EmbedderConfig, embedder_key

        key = self.settings.embedding or embedder_key(EmbedderConfig())
        self.settings = replace(self.settings, embedding=key)
        embeddings = self.embeddings(key)
        return embeddings, self.labelled(self.rows_of(embeddings.sample_ids), folds=folds)

    def rows_of(self, sample_ids) -> pd.DataFrame:
        """This version's rows of ``sample_ids``, in that order, with sample_id as a column."""
        return self.rows.set_index("sample_id").loc[sample_ids].reset_index()

    def images(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 N x size x size x 3 images, readable mask) of every row, decoded as everywhere else."""
        from labelloop.data.images import ImageProblem, load_square

        rows = self.rows
        images = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
        readable = np.ones(len(rows), dtype=bool)
        for i, (path, content_hash) in enumerate(zip(rows["path"], rows["content_hash"])):
            if i % 500 == 0:
                self.report(f"loading images {i:,} of {len(rows):,}", 0.1 * i / len(rows))
            try:
                images[i] = load_square(path, size, content_hash)
            except ImageProblem:
                readable[i] = False
        return images, readable

    # ------------------------------------------------------------------ the run's files

    def write_evaluation(self, given: np.ndarray, predicted: np.ndarray, label_names: list[str], columns: str) -> None:
        """report.json and confusion.json for predictions that were not trained on (out of fold or validation)."""
        from sklearn.metrics import classification_report, confusion_matrix

        n_classes = len(label_names)
        self.builder.json("report.json", classification_report(given, predicted, labels=range(n_classes), target_names=label_names, output_dict=True, zero_division=0))
        self.builder.json("confusion.json", {"labels": label_names, "matrix": confusion_matrix(given, predicted, labels=range(n_classes)).tolist(), "rows": "given label", "columns": columns})

    def write_cv(self, folds: int, accuracies: dict[str, list[float]], seconds: dict[str, float], best: str) -> None:
        """cv.json: each candidate's held-out accuracy per fold (one entry for a validation split)."""
        heads = {model: {"fold_accuracy": values, "mean": float(np.mean(values)), "std": float(np.std(values)), "seconds": round(seconds.get(model, 0.0), 2)} for model, values in accuracies.items()}
        self.builder.json("cv.json", {"folds": folds, "heads": heads, "best": best})

    def write_samples(
        self, data: LabelledData, probabilities: np.ndarray, vectors: np.ndarray, *, trained_on: np.ndarray, role: np.ndarray, fold: np.ndarray,
        issue_probabilities: np.ndarray | None = None, neighbours: np.ndarray | None = None,
    ) -> None:
        """samples.parquet, the per-sample table every run stores: outputs, metrics and label-issue scores.

        ``issue_probabilities`` (default ``probabilities``) are what the label-issue scores read;
        ``neighbours`` the labelled samples' nearest labelled neighbours if they were searched already.
        """
        from labelloop.train.sample_scores import label_issue_scores, sample_metrics

        metrics = sample_metrics(probabilities, data.given)
        issues = label_issue_scores(probabilities if issue_probabilities is None else issue_probabilities, data.given, vectors, self.settings.issue_neighbours, neighbours)
        samples = pd.DataFrame({
            "sample_id": data.frame["sample_id"].to_numpy(), "label": data.frame["label"].to_numpy(), "trained_on": trained_on, "role": role, "fold": fold,
            "predicted_label": np.array(data.label_names, dtype=object)[metrics["predicted"].to_numpy()],
        })
        samples = pd.concat([samples, metrics.drop(columns=["predicted"]), issues], axis=1)
        samples["probabilities"] = list(probabilities)
        self.builder.table("samples.parquet", samples)


class Family:
    """A training family: subclass it in one module, give it a settings class, and list it in the registry."""

    name: str  # as the CLI and the run records spell it
    title: str  # as the Train page shows it
    help: str  # one or two sentences: what it trains, on what, how fast
    settings_class: type[FamilySettings]
    model_types: tuple[str, ...]  # the model_type values its model_config.json can carry
    run_label: str  # part of its run ids
    trains_on_ray: bool = False  # whether fit goes through TrainingJob.launch (Ray Train when the job has a Ray address)

    def fit(self, job: TrainingJob) -> FamilyResult:
        """Train on ``job``'s version, write the run's files through ``job``, return its record."""
        raise NotImplementedError

    def classifier(self, run_dir: Path, model: ModelConfig, models_dir: Path, device=None):
        """The saved model as a ``labelloop.embed.Embedder`` whose vectors are class probabilities of images,
        running on the torch ``device`` (``labelloop.compute.device.resolve_device``; the CPU by default)."""
        raise NotImplementedError

    def describe(self, run: RunInfo) -> str:
        """A line on a finished run, after its accuracy: what was kept and where it went."""
        return f"best: {run.summary.best_model}, retrained on all {run.summary.n_labelled} labelled samples; model in {run.path / 'model'}"

"""Training runs on disk: config, table version, curves, CV scores, report, confusion matrix,
per-sample outputs and model files, under ``<data set>/runs/<run id>/``.

A run is built in a hidden staging folder and renamed into place when it
finishes, so a cancelled or killed run never lists as finished.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from labelloop.data.workspace import (
    DatasetPaths,
    WorkspaceOrDataset,
    as_dataset,
    remove_abandoned_staging,
    staging_folder,
)
from labelloop.data.write_steps import reached
from labelloop.errors import UserError


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass(frozen=True)
class RunSummary:
    """What a finished run says about itself: its ``run.json``, written and read only here."""

    dataset: str
    version: int
    kind: str  # the model family (labelloop.train.registry)
    best_model: str  # the model kept: a head's name, or the family's
    held_out_accuracy: float | None  # of best_model, against the version's own labels (out of fold or validation)
    accuracy_by_model: dict[str, float]  # every candidate's held-out accuracy (heads: mean over folds)
    folds: int  # 0: one validation split instead of cross-validation
    n_labelled: int
    n_samples: int
    not_embedded: int  # samples left out because they have no embedding or cannot be read
    embedding: str | None  # the embedding trained on (None: the images themselves)
    train_seconds: float
    best_epoch: int | None = None
    seconds_per_epoch: float | None = None
    note: str = ""  # what the accuracy measures, where it is not plain cross-validation
    figures: dict = field(default_factory=dict)  # family-specific measurements (the triplet encoder's 10-NN accuracies)
    device: str = ""  # where it trained: "cpu (2 cores)", "cuda:0 (NVIDIA H200, 139 GiB)"; "" for runs from before it was recorded
    launcher: str = "local"  # "local", or how Ray ran it ("ray train: 2 workers, 1 GPU each (...)")
    # Set by RunBuilder.finish:
    run_id: str = ""
    trigger: str = "user"
    seconds: float = 0.0
    finished: str = ""

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict) -> RunSummary:
        """A summary from a run.json, this format or the untyped one runs wrote before."""
        data = dict(data)
        renamed = {"cv_accuracy": "held_out_accuracy", "cv": "accuracy_by_model"}
        for old, new in renamed.items():
            if old in data:
                data.setdefault(new, data.pop(old))
        figures = dict(data.get("figures") or {})
        for old in ("knn_input", "knn_encoded"):
            if old in data:
                figures[old] = data.pop(old)
        data["figures"] = figures
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data.setdefault("accuracy_by_model", {})
        data.setdefault("held_out_accuracy", None)
        data.setdefault("embedding", None)
        data.setdefault("not_embedded", 0)
        data.setdefault("train_seconds", data.get("seconds", 0.0))
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """A saved model's ``model/model_config.json``: what predict needs to rebuild it.

    The file is flat JSON (``architecture``'s keys sit beside the others), as the
    downloaded model zip has always had it.
    """

    model_type: str  # a head ("knn", "logreg", "mlp", "softmax") or a family's model ("resnet18-scratch", ...)
    label_names: list[str]
    format: str  # how the weight files are laid out, in words
    embedding: str | None = None  # the embedding the model reads (None: it reads images)
    input_dim: int | None = None
    architecture: dict = field(default_factory=dict)  # family-specific: hidden units, dropout, backbone, input size, ...

    FILENAME: ClassVar[str] = "model_config.json"

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def write(self, model_dir: Path) -> None:
        common = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "architecture"}
        _write_json(Path(model_dir) / self.FILENAME, {**common, "n_classes": self.n_classes, **self.architecture})

    @classmethod
    def read(cls, model_dir: str | os.PathLike) -> ModelConfig:
        """The config of a model folder written by a run, or a UserError saying it is not one."""
        path = Path(model_dir) / cls.FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            common = {f.name: data.pop(f.name) for f in fields(cls) if f.name in data and f.name != "architecture"}
            data.pop("n_classes", None)
            return cls(**common, architecture=data)
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{model_dir} is not a model folder written by this app (no readable {cls.FILENAME}).") from exc


class RunBuilder:
    """Collects a run's files in a staging folder; :meth:`finish` publishes them at once."""

    def __init__(self, dataset: DatasetPaths, label: str, *, trigger: str = "user"):
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{label}-{uuid.uuid4().hex[:6]}"
        runs_dir = dataset.runs
        self.final = runs_dir / self.run_id
        runs_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(runs_dir)
        self.path = staging_folder(runs_dir, self.run_id)
        self.model_dir.mkdir()
        self.started = time.time()
        self.trigger = trigger
        reached("run staged")

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def json(self, filename: str, data) -> None:
        _write_json(self.path / filename, data)
        reached("run file written")

    def table(self, filename: str, frame: pd.DataFrame) -> None:
        frame.to_parquet(self.path / filename, index=False)
        reached("run file written")

    def weights(self, filename: str, module) -> None:
        """A torch module's state dict as safetensors in the model folder (never a pickle)."""
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(self.model_dir / filename))

    def finish(self, summary: RunSummary) -> Path:
        summary = replace(summary, run_id=self.run_id, trigger=self.trigger, seconds=round(time.time() - self.started, 2), finished=datetime.now(UTC).isoformat())
        _write_json(self.path / "run.json", {**summary.to_json(), "status": "finished"})
        reached("run complete")  # every file written, not yet published
        os.rename(self.path, self.final)
        reached("run published")
        return self.final

    def abandon(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    summary: RunSummary

    @classmethod
    def open(cls, folder: Path) -> RunInfo:
        """A finished run's folder; a UserError if its run.json cannot be read."""
        try:
            data = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            return cls(folder.name, folder, RunSummary.from_json(data))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{folder} is not a finished run (its run.json cannot be read: {exc}).") from exc

    @property
    def version(self) -> int:
        return int(self.summary.version)

    @property
    def automatic(self) -> bool:
        """True for the quick heads the app retrains by itself after a commit (nobody pressed Start)."""
        return self.summary.trigger != "user"

    def model_config(self) -> ModelConfig | None:
        return ModelConfig.read(self.path / "model") if (self.path / "model" / ModelConfig.FILENAME).exists() else None

    def describe(self) -> str:
        s = self.summary
        accuracy = f"accuracy {s.held_out_accuracy:.4f}" if s.held_out_accuracy is not None else "no held-out accuracy"
        return f"{self.run_id}: v{s.version}, {s.best_model} {accuracy} ({s.n_labelled} labelled, {s.seconds:.0f} s)"


def list_runs(workspace: WorkspaceOrDataset, name: str | None = None, version: int | None = None) -> list[RunInfo]:
    """Finished runs of a data set (optionally of one version), newest first."""
    root = as_dataset(workspace, name).runs
    runs = []
    for folder in sorted(root.iterdir(), reverse=True) if root.is_dir() else []:
        if folder.name.startswith(".") or not (folder / "run.json").exists():
            continue
        try:
            run = RunInfo.open(folder)
        except UserError:
            continue  # a damaged run.json: the run is not listed rather than breaking every page
        if version is None or run.version == version:
            runs.append(run)
    return runs


def find_run(workspace: WorkspaceOrDataset, name: str | None = None, run_id: str | None = None, version: int | None = None, with_samples: bool = False) -> RunInfo:
    """A run by id, or the newest (of ``version`` if given; with per-sample scores if ``with_samples``)."""
    dataset = as_dataset(workspace, name)
    name = dataset.name
    runs = [r for r in list_runs(dataset, version=version) if not with_samples or (r.path / "samples.parquet").exists()]
    if run_id:
        for run in list_runs(dataset):
            if run.run_id == run_id:
                if with_samples and not (run.path / "samples.parquet").exists():
                    raise UserError(f"Run '{run_id}' ({run.summary.kind}) has no per-sample scores; pick a run of heads or ResNet-18.")
                return run
        raise UserError(f"No finished run '{run_id}' in '{name}'. See `labelloop runs {name}`.")
    if not runs:
        where = f" on version {version}" if version else ""
        raise UserError(f"'{name}' has no finished training run{where}. Train one with `labelloop train {name}`.")
    return runs[0]


def load_samples(run: RunInfo) -> pd.DataFrame:
    return pd.read_parquet(run.path / "samples.parquet")


def held_out(samples: pd.DataFrame) -> np.ndarray:
    """Mask of the samples a run predicted without training on them: out of fold or in the validation split.

    Only these predictions say anything about how well a model generalises;
    the rest (trained on, or unlabelled) are left out of every accuracy.
    """
    if "role" in samples:
        return samples["role"].isin(["out of fold", "validation"]).to_numpy()
    return (samples["trained_on"].astype(bool) & (samples["fold"] >= 0)).to_numpy()


def load_json(run: RunInfo, filename: str):
    return json.loads((run.path / filename).read_text(encoding="utf-8"))

"""Training runs on disk: config, table version, curves, CV scores, report, confusion matrix,
per-sample outputs and model files, under ``<data set>/runs/<run id>/``.

A run is built in a hidden staging folder and renamed into place when it
finishes, so a cancelled or killed run never lists as finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.workspace import DatasetPaths, remove_abandoned_staging, staging_folder


def _runs_dir(workspace, name: str) -> Path:
    return DatasetPaths(workspace, name).root / "runs"


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


class RunBuilder:
    """Collects a run's files in a staging folder; :meth:`finish` publishes them at once."""

    def __init__(self, workspace, name: str, label: str, *, trigger: str = "user"):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{label}-{uuid.uuid4().hex[:6]}"
        runs_dir = _runs_dir(workspace, name)
        self.final = runs_dir / self.run_id
        runs_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(runs_dir)
        self.path = staging_folder(runs_dir, self.run_id)
        (self.path / "model").mkdir()
        self.started = time.time()
        self.trigger = trigger

    def json(self, filename: str, data) -> None:
        _write_json(self.path / filename, data)

    def table(self, filename: str, frame: pd.DataFrame) -> None:
        frame.to_parquet(self.path / filename, index=False)

    def finish(self, summary: dict) -> Path:
        summary = {**summary, "run_id": self.run_id, "trigger": self.trigger, "status": "finished", "seconds": round(time.time() - self.started, 2), "finished": datetime.now(timezone.utc).isoformat()}
        _write_json(self.path / "run.json", summary)
        os.rename(self.path, self.final)
        return self.final

    def abandon(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    path: Path
    summary: dict

    @property
    def version(self) -> int:
        return int(self.summary["version"])

    @property
    def automatic(self) -> bool:
        """True for the quick heads the app retrains by itself after a commit (nobody pressed Start)."""
        return self.summary.get("trigger", "user") != "user"

    def recipe(self) -> tuple[str, str]:
        """(identity, readable name) of the settings this run trained with.

        Two runs share an identity only if every setting in their ``config.json``
        (family, heads, embedding, seed, folds, ...) is the same: the condition
        for comparing their numbers across versions.
        """
        config = load_json(self, "config.json") if (self.path / "config.json").exists() else {"family": self.summary.get("kind")}
        identity = recipe_identity(config)
        family = config.get("family") or self.summary.get("kind")
        if family == "heads":
            name = "heads " + "+".join(HEAD_NAMES.get(h, h) for h in config.get("heads", ()))
        else:
            name = str(family)
        return identity, name

    def describe(self) -> str:
        s = self.summary
        accuracy = f"accuracy {s['cv_accuracy']:.4f}" if s.get("cv_accuracy") is not None else "no held-out accuracy"
        return f"{self.run_id}: v{s['version']}, {s['best_model']} {accuracy} ({s['n_labelled']} labelled, {s['seconds']:.0f} s)"


def list_runs(workspace, name: str, version: int | None = None) -> list[RunInfo]:
    """Finished runs of a data set (optionally of one version), newest first."""
    root = _runs_dir(workspace, name)
    runs = []
    for folder in sorted(root.iterdir(), reverse=True) if root.is_dir() else []:
        if folder.name.startswith(".") or not (folder / "run.json").exists():
            continue
        try:
            summary = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        except ValueError:
            continue
        if version is None or summary.get("version") == version:
            runs.append(RunInfo(folder.name, folder, summary))
    return runs


def find_run(workspace, name: str, run_id: str | None = None, version: int | None = None, with_samples: bool = False) -> RunInfo:
    """A run by id, or the newest (of ``version`` if given; with per-sample scores if ``with_samples``)."""
    runs = [r for r in list_runs(workspace, name, version) if not with_samples or (r.path / "samples.parquet").exists()]
    if run_id:
        for run in list_runs(workspace, name):
            if run.run_id == run_id:
                if with_samples and not (run.path / "samples.parquet").exists():
                    raise UserError(f"Run '{run_id}' ({run.summary.get('kind')}) has no per-sample scores; pick a run of heads or ResNet-18.")
                return run
        raise UserError(f"No finished run '{run_id}' in '{name}'. See `python -m core runs {name}`.")
    if not runs:
        where = f" on version {version}" if version else ""
        raise UserError(f"'{name}' has no finished training run{where}. Train one with `python -m core train {name}`.")
    return runs[0]


def recipe_identity(config: dict) -> str:
    """A short digest of a run's complete settings (its ``config.json``): equal settings, equal identity."""
    return hashlib.blake2b(json.dumps(config, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


HEAD_NAMES = {"knn": "k-NN", "logreg": "logistic regression", "mlp": "MLP", "softmax": "softmax"}


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


def measured_speed(runs: list[RunInfo], family: str) -> str | None:
    """How long the newest finished run of ``family`` took on this machine, in words; None if there is none.

    Pages quote this instead of a promised figure: it is what this machine
    measured, on this data, the last time.
    """
    # Runs someone started: the automatic quick heads are a lighter recipe of the same family.
    run = next((r for r in runs if r.summary.get("kind") == family and not r.automatic), None)
    if run is None:
        return None
    s = run.summary
    when = f"{run.recipe()[1]}, v{s.get('version')}, {s.get('n_labelled', 0):,} labelled samples"
    if s.get("seconds_per_epoch"):
        return f"{s['seconds_per_epoch']:.1f} s per epoch, {s['seconds']:.0f} s in all ({when})"
    return f"{s['seconds']:.0f} s ({when})"

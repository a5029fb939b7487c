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

    def __init__(self, workspace, name: str, label: str):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{label}-{uuid.uuid4().hex[:6]}"
        runs_dir = _runs_dir(workspace, name)
        self.final = runs_dir / self.run_id
        runs_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(runs_dir)
        self.path = staging_folder(runs_dir, self.run_id)
        (self.path / "model").mkdir()
        self.started = time.time()

    def json(self, filename: str, data) -> None:
        _write_json(self.path / filename, data)

    def table(self, filename: str, frame: pd.DataFrame) -> None:
        frame.to_parquet(self.path / filename, index=False)

    def finish(self, summary: dict) -> Path:
        summary = {**summary, "run_id": self.run_id, "status": "finished", "seconds": round(time.time() - self.started, 2), "finished": datetime.now(timezone.utc).isoformat()}
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


def load_samples(run: RunInfo) -> pd.DataFrame:
    return pd.read_parquet(run.path / "samples.parquet")


def load_json(run: RunInfo, filename: str):
    return json.loads((run.path / filename).read_text(encoding="utf-8"))


def accuracy_by_version(workspace, name: str) -> pd.DataFrame:
    """version, kind, best_model, accuracy, run: the best finished run of each kind on each version."""
    records = [
        {"version": r.version, "kind": r.summary.get("kind"), "best_model": r.summary.get("best_model"), "accuracy": r.summary.get("cv_accuracy"), "run": r.run_id}
        for r in list_runs(workspace, name)
        if r.summary.get("cv_accuracy") is not None
    ]
    if not records:
        return pd.DataFrame(columns=["version", "kind", "best_model", "accuracy", "run"])
    frame = pd.DataFrame(records).sort_values("accuracy", ascending=False)
    return frame.drop_duplicates(["version", "kind"]).sort_values(["kind", "version"]).reset_index(drop=True)

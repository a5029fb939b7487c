"""Sweeps: several settings of one family, each tried as a normal run, with Ray Tune.

A sweep is a grid (``--grid lr=1e-3,5e-4 --grid batch_size=16,32``) over
the settings of one family (``labelloop.train.registry``), each combination
trained ``samples`` times with seeds seed, seed + 1, ... Every trial goes
through :func:`labelloop.train.pipeline.train`, so it is a run like any other:
listed, comparable on the Compare page, its model usable by ``predict``. The
trials run as Ray Tune trials on a Ray (``local`` by default: this machine's
cores); ASHA early stopping (``asha=True``) ends the trials whose validation
accuracy trails at each rung, and an ended trial leaves no run. The sweep's
record (which trial had which settings, its run, its accuracy, the best)
is saved under ``<data set>/sweeps/<sweep id>.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from labelloop.data.workspace import DatasetPaths, open_table
from labelloop.errors import Cancelled, UserError

Progress = Callable[[str, float], None]


def parse_grid(family: str, items: list[str]) -> dict[str, list]:
    """``["lr=1e-3,5e-4", "batch_size=16,32"]`` as {setting name: [values]}, or a UserError naming what is wrong.

    A key is a setting's name or its CLI flag without dashes (``lr``, ``batch-size``). Values are separated by
    commas; a setting that is itself a list (hidden units) separates its alternatives by ``;``
    (``mlp_hidden=256,128;512``).
    """
    from labelloop.train.registry import get_family

    infos = get_family(family).settings_class.settings()
    grid: dict[str, list] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise UserError(f"--grid '{item}': write NAME=VALUE1,VALUE2 (for example lr=1e-3,5e-4).")
        spelled = "--" + key.replace("_", "-")
        info = next((i for i in infos if key == i.name or spelled == i.flag or spelled in i.aliases or "--" + key in i.aliases), None)
        if info is None:
            raise UserError(f"--grid {key}: {family} has no such setting. Its settings: {', '.join(sorted(i.name for i in infos))}.")
        if info.name == "seed":
            raise UserError("--grid seed: use --samples N to train every combination with N seeds.")
        parts = text.split(";") if (";" in text or info.is_tuple) else text.split(",")
        values = [info.parse(part.strip()) for part in parts if part.strip()]
        if info.name in grid:
            raise UserError(f"--grid {key} is given twice; give all its values in one --grid.")
        grid[info.name] = list(dict.fromkeys(values))
    if not grid:
        raise UserError("A sweep needs at least one --grid NAME=VALUE1,VALUE2.")
    return grid


def combinations(grid: dict[str, list]) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


@dataclass
class Trial:
    params: dict
    seed: int
    status: str  # "finished", "stopped early" (ASHA) or "failed"
    run_id: str | None = None
    accuracy: float | None = None  # the run's held-out accuracy (what `runs` and Compare show)
    epochs_reported: int = 0  # epochs it trained (a stopped trial: up to the last one it reported)
    error: str = ""


@dataclass
class SweepRecord:
    sweep_id: str
    dataset: str
    version: int
    family: str
    grid: dict
    base: dict
    samples: int
    asha: bool
    device: str
    ray: str
    trials: list[Trial] = field(default_factory=list)
    best_run: str | None = None
    seconds: float = 0.0
    finished: str = ""

    def frame(self) -> pd.DataFrame:
        """One row per trial, best accuracy first; the best is marked."""
        rows = [{**t.params, "seed": t.seed, "accuracy": t.accuracy, "status": t.status, "run": t.run_id or "", "best": t.run_id is not None and t.run_id == self.best_run, "error": t.error} for t in self.trials]
        frame = pd.DataFrame(rows)
        return frame.sort_values("accuracy", ascending=False, na_position="last", kind="stable").reset_index(drop=True) if len(frame) else frame

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> SweepRecord:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["trials"] = [Trial(**t) for t in data.get("trials", [])]
        return cls(**data)


def sweeps_dir(workspace, name: str) -> Path:
    return DatasetPaths(workspace, name).local / "sweeps"


def list_sweeps(workspace, name: str) -> list[SweepRecord]:
    """The data set's finished sweeps, newest first."""
    folder = sweeps_dir(workspace, name)
    records = []
    for path in sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []:
        try:
            records.append(SweepRecord.read(path))
        except (OSError, ValueError, TypeError):
            continue
    return records


def _trial(config: dict) -> None:
    """One Tune trial: a normal training run with the trial's settings, its curve reported to Tune as it trains."""
    from ray import tune

    from labelloop.compute.device import Compute
    from labelloop.train.pipeline import train
    from labelloop.train.registry import default_settings

    settings = default_settings(config["family"], **config["base"], **config["params"], seed=config["seed"])
    last_epoch = int(settings.to_dict().get("epochs") or 0)
    trained = [0]

    def on_curve(row: dict) -> None:
        if row.get("val_accuracy") is None or not row.get("epoch"):
            return
        trained[0] = int(row["epoch"])
        # The last epoch is not an intermediate result: ASHA could stop the trial at a rung there, after it
        # did all the work, and the finished run would be lost. Its outcome is the final report below.
        if trained[0] < last_epoch:
            tune.report({"val_accuracy": float(row["val_accuracy"]), "epoch": trained[0], "final": False})

    run = train(config["workspace"], config["name"], settings, version=config["version"], on_curve=on_curve, compute=Compute(device=config["device"]))
    accuracy = run.summary.held_out_accuracy
    tune.report({"val_accuracy": float(accuracy if accuracy is not None else 0.0), "accuracy": accuracy, "run_id": run.run_id, "epochs_reported": trained[0], "final": True})


def run_sweep(
    workspace,
    name: str,
    family: str,
    grid: dict[str, list],
    *,
    base: dict | None = None,
    samples: int = 1,
    asha: bool = False,
    ray: str = "local",
    device: str = "auto",
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepRecord:
    """Train every combination of ``grid`` (``samples`` seeds each) as Ray Tune trials; returns the saved record.

    ``base`` holds settings every trial shares. Every combination is validated before Ray starts,
    so a bad value fails in a second with the setting named.
    """
    from labelloop.compute.ray_cluster import ray_cluster
    from labelloop.train.registry import default_settings

    base, combos = _checked_grid(workspace, name, family, grid, dict(base or {}), samples, device)
    first_seed = default_settings(family, **base).seed
    version = version or open_table(workspace, name).head_version()
    sweep_id = f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{family}-{uuid.uuid4().hex[:6]}"
    n_trials = len(combos) * samples
    started = time.perf_counter()

    from ray import tune

    storage = sweeps_dir(workspace, name) / ".tune"
    if progress:
        progress(f"starting {n_trials} trials on Ray ({ray})", 0.0)
    with ray_cluster(ray) as info:
        if progress:
            progress(f"{n_trials} trials on {info.describe()}", 0.0)
        gpus = 1.0 if info.gpus and device != "cpu" else 0.0
        space = {
            "workspace": str(workspace) if workspace is not None else None, "name": name, "version": version, "family": family, "base": base, "device": device,
            "trial": tune.grid_search([{"params": combo, "seed": first_seed + s} for combo in combos for s in range(samples)]),
        }
        scheduler = _asha(family, base, combos) if asha else None
        tuner = tune.Tuner(
            tune.with_resources(_unpack_trial, {"cpu": 1, "gpu": gpus}),
            param_space=space,
            tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, metric=None if asha else "val_accuracy", mode=None if asha else "max"),
            run_config=tune.RunConfig(name=sweep_id, storage_path=str(storage), callbacks=[_progress_callback(sweep_id, n_trials)], stop=_cancel_stopper(sweep_id), verbose=0),
        )
        _LIVE[sweep_id] = (progress, should_stop)
        try:
            results = tuner.fit()
        finally:
            _LIVE.pop(sweep_id, None)
        if should_stop and should_stop():
            raise Cancelled("Sweep cancelled; the trials that finished are runs of their own.")
        trials = [_trial_of(result) for result in results]
    shutil.rmtree(storage / sweep_id, ignore_errors=True)  # every trial's outcome is in its run and in the record
    finished = [t for t in trials if t.status == "finished" and t.accuracy is not None]
    best = max(finished, key=lambda t: t.accuracy, default=None)
    record = SweepRecord(
        sweep_id, name, version, family, grid, base, samples, asha, device, ray, trials, best.run_id if best else None,
        round(time.perf_counter() - started, 1), datetime.now(timezone.utc).isoformat(),
    )
    record.write(sweeps_dir(workspace, name) / f"{sweep_id}.json")
    return record


def _checked_grid(workspace, name: str, family: str, grid: dict[str, list], base: dict, samples: int, device: str) -> tuple[dict, list[dict]]:
    """(the settings every trial shares, the grid's combinations), each combination validated before Ray starts."""
    from labelloop.compute.device import validate_device
    from labelloop.train.registry import default_settings, get_family

    if not 1 <= samples <= 100:
        raise UserError(f"--samples {samples} is out of range: use 1 to 100.")
    validate_device(device)
    combos = combinations(grid)
    for combo in combos:
        default_settings(family, **base, **combo).validate()
    if "embedding" in {info.name for info in get_family(family).settings_class.settings()} and "embedding" not in base and "embedding" not in grid:
        from labelloop.embed import preferred_embedding

        # What the Train page's form starts from: the embedding cached here (the default embedder's when there is one).
        base["embedding"] = preferred_embedding(workspace, name)
        if base["embedding"] is None:
            raise UserError(f"'{name}' has no embeddings yet: the {family} family trains on them. Run `labelloop embed {name}` (or the Embed button) first.")
    return base, combos


def _asha(family: str, base: dict, combos: list[dict]):
    """ASHA early stopping on validation accuracy, rungs at 1, 2, 4, ... results."""
    from ray.tune.schedulers import ASHAScheduler

    from labelloop.train.registry import default_settings

    epochs = max(int(default_settings(family, **base, **combo).to_dict().get("epochs", 1) or 1) for combo in combos)
    # A trial reports epochs 1 .. epochs - 1, then its finished run: at most ``epochs`` results.
    return ASHAScheduler(time_attr="training_iteration", metric="val_accuracy", mode="max", max_t=max(epochs, 2), grace_period=1, reduction_factor=2)


# A Tuner pickles its callbacks and stopper with its state; the job's progress callback and stop flag
# (which hold locks) stay here, looked up by sweep id.
_LIVE: dict[str, tuple] = {}


def _live(sweep_id: str) -> tuple:
    """(progress, should_stop) of a running sweep. A module function, so the Tune classes pickle it by name."""
    return _LIVE.get(sweep_id, (None, None))


def _progress_callback(sweep_id: str, n_trials: int):
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            progress = _live(sweep_id)[0]
            if progress:
                progress(f"{self.done} of {n_trials} trials finished", self.done / n_trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.on_trial_complete(iteration, trials, trial)

    return Progress()


def _cancel_stopper(sweep_id: str):
    from ray import tune

    class Cancel(tune.Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            should_stop = _live(sweep_id)[1]
            return bool(should_stop and should_stop())

    return Cancel()


def _unpack_trial(config: dict) -> None:
    trial = config["trial"]
    _trial({**{k: v for k, v in config.items() if k != "trial"}, "params": trial["params"], "seed": trial["seed"]})


def _trial_of(result) -> Trial:
    """A Tune result as the record's trial."""
    trial = result.config["trial"]
    metrics = result.metrics or {}
    if result.error is not None:
        from labelloop.train.on_ray import root_message

        return Trial(trial["params"], trial["seed"], "failed", error=root_message(result.error))
    if metrics.get("final"):
        return Trial(trial["params"], trial["seed"], "finished", metrics.get("run_id"), metrics.get("accuracy"), int(metrics.get("epochs_reported", 0)))
    return Trial(trial["params"], trial["seed"], "stopped early", epochs_reported=int(metrics.get("epoch", 0) or 0))

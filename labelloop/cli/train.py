"""The commands on training: train a family, sweep its settings, list runs, predict a folder."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from labelloop.cli.common import (
    add_compute_flags,
    add_setting_flag,
    compute_of,
    given_settings,
    print_table,
    progress_bar,
)
from labelloop.data.workspace import open_table
from labelloop.errors import UserError


def _given_settings(args: argparse.Namespace) -> dict:
    """The family's settings given on the command line; an option the family does not read is refused."""
    from labelloop.train.registry import FAMILIES

    every = {info.name: info for family in FAMILIES.values() for info in family.settings_class.settings()}
    given = given_settings(args, list(every.values()))
    reads = {info.name for info in FAMILIES[args.family].settings_class.settings()}
    foreign = [every[name].flag for name in given if name not in reads]
    if foreign:
        raise UserError(f"{', '.join(foreign)}: not a setting of the {args.family} family. Its settings: {', '.join(sorted(i.flag for i in FAMILIES[args.family].settings_class.settings()))}.")
    return given


def _add_setting_flags(parser: argparse.ArgumentParser, families: dict) -> None:
    """One option per training setting of any family, with its default in each family that reads it."""
    seen: dict[str, list] = {}
    for family in families.values():
        for info in family.settings_class.settings():
            seen.setdefault(info.name, []).append((family.name, info))
    for uses in seen.values():
        add_setting_flag(parser, uses[0][1], default=", ".join(f"{family} {info.shown()}" for family, info in uses))


def cmd_train(args: argparse.Namespace) -> None:
    from labelloop.train.pipeline import train
    from labelloop.train.registry import FAMILIES, default_settings

    settings = default_settings(args.family, **_given_settings(args))
    settings.validate()
    compute = compute_of(args)
    from tqdm import tqdm

    bar = None

    def progress(stage: str, fraction: float) -> None:
        nonlocal bar
        if bar is None:  # created on first use, so an early error prints one clean line
            bar = tqdm(total=100, desc="training", unit="%", file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        bar.set_description(stage[:60])
        bar.update(max(0, round(fraction * 100) - bar.n))

    try:
        run = train(args.workspace, args.name, settings, version=args.version, progress=progress, compute=compute)
    finally:
        if bar is not None:
            bar.close()
    s = run.summary
    measure = f"CV accuracy, {s.folds} folds" if s.folds else "validation accuracy"
    accuracies = ", ".join(f"{model} {accuracy:.4f}" for model, accuracy in s.accuracy_by_model.items())
    print(f"run {run.run_id} on version {run.version}" + (f": {accuracies} ({measure})" if accuracies else ""))
    print(FAMILIES[args.family].describe(run))
    print(f"trained on {s.device}" + (f"; {s.launcher}" if s.launcher != "local" else ""))


def cmd_sweep(args: argparse.Namespace) -> None:
    from labelloop.train.sweep import parse_grid, run_sweep

    open_table(args.workspace, args.name)
    grid = parse_grid(args.family, args.grid)
    base = _given_settings(args)
    overlap = sorted(set(base) & set(grid))
    if overlap:
        raise UserError(f"{', '.join(overlap)} is both a fixed setting and a --grid; give it once.")
    compute = compute_of(args)
    with progress_bar("sweep") as bar:
        record = run_sweep(
            args.workspace, args.name, args.family, grid, base=base, samples=args.samples, asha=args.asha, ray=compute.ray or "local", device=compute.device,
            version=args.version, progress=lambda stage, fraction: bar(round(fraction * 1000), 1000),
        )
    frame = record.frame()
    print(f"sweep {record.sweep_id} on version {record.version}: {len(record.trials)} trials in {record.seconds:.0f} s")
    print_table(frame.drop(columns=["error"] if not frame["error"].astype(bool).any() else []))
    if record.best_run:
        best = frame[frame["best"]].iloc[0]
        print(f"best: run {record.best_run}, accuracy {best['accuracy']:.4f}")
    else:
        print("no trial finished")


def cmd_runs(args: argparse.Namespace) -> None:
    from labelloop.data.runs import list_runs

    rows = [
        {"run": r.run_id, "version": r.version, "best": r.summary.best_model, "accuracy": round(r.summary.held_out_accuracy, 4) if r.summary.held_out_accuracy is not None else "-", "labelled": r.summary.n_labelled, "seconds": r.summary.seconds}
        for r in list_runs(args.workspace, args.name, args.version)
    ]
    print_table(pd.DataFrame(rows, columns=["run", "version", "best", "accuracy", "labelled", "seconds"]))


def cmd_predict(args: argparse.Namespace) -> None:
    from labelloop.train.predict import predict_folder

    with progress_bar("predicting") as progress:
        out, rows, skipped = predict_folder(args.run, args.folder, args.out, args.workspace, probabilities=args.probabilities, progress=progress, compute=compute_of(args))
    print(f"wrote {rows} predictions to {out}")
    for path, reason in skipped[:20]:
        print(f"skipped: {path}: {reason}")


COMMANDS = ("train", "sweep", "runs", "predict")  # what register() adds, known without importing what the commands use


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add this group's commands to the parser."""
    from labelloop.train.registry import FAMILIES

    p = sub.add_parser("train", parents=[common], help="train a model family on a version: " + "; ".join(f"{f.name}: {f.title}" for f in FAMILIES.values()))
    p.add_argument("name")
    p.add_argument("--family", default="heads", choices=list(FAMILIES), help="what to train (default heads); each family starts from its own recipe, and takes only its own settings")
    p.add_argument("--version", type=int, help="version to train on (default: the latest)")
    _add_setting_flags(p, FAMILIES)
    add_compute_flags(p, ray="train the image models (resnet18-scratch, frozen-backbone) with Ray Train", workers=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", parents=[common], help="train a grid of settings of one family as separate runs, with Ray Tune; the best is named")
    p.add_argument("name")
    p.add_argument("--family", default="heads", choices=list(FAMILIES), help="what to train (default heads)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2", help="a setting and its values (repeat for more settings); list settings separate values by ';'")
    p.add_argument("--samples", type=int, default=1, help="train every combination with this many seeds (default 1)")
    p.add_argument("--asha", action="store_true", help="ASHA early stopping: end trials whose validation accuracy trails")
    p.add_argument("--version", type=int, help="version to train on (default: the latest)")
    _add_setting_flags(p, FAMILIES)
    add_compute_flags(p, ray="run the trials (default: a Ray started on this machine)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("runs", parents=[common], help="list the training runs of a data set")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="only runs on this version")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("predict", parents=[common], help="label a folder of new images with a trained run: filename,label CSV")
    p.add_argument("run", help="run id (see `runs NAME`) or run folder")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="CSV to write (never overwritten)")
    p.add_argument("--probabilities", action="store_true", help="add one probability column per class")
    add_compute_flags(p, ray="run the model on a Ray Data actor pool")
    p.set_defaults(func=cmd_predict)

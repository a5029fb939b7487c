"""`labelloop ...`: every job of the app, scriptable without the UI.

Errors a user can cause print one line starting with ``error:`` and exit
with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from labelloop.data import storage
from labelloop.data.workspace import (
    WORKSPACE_ENV,
    DatasetPaths,
    list_datasets,
    open_table,
    resolve_workspace,
)
from labelloop.errors import ConflictError, UserError


@contextmanager
def progress_bar(description: str, unit: str = "img"):
    """A callback for core's progress(done, total) that draws a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _print_table(frame: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160, "display.max_colwidth", 80):
        print(frame.to_string(index=False) if not frame.empty else "(none)")


# --------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> None:
    from labelloop.data.demo import DEMO_NAME, DemoSettings, build_demo

    workspace = resolve_workspace(args.workspace)
    if args.if_missing and list_datasets(workspace):
        print(f"workspace {workspace} already has data sets: {', '.join(list_datasets(workspace))}")
        return
    settings = DemoSettings(per_class=args.per_class, seed=args.seed)
    with progress_bar("checking demo images") as progress:
        table, report = build_demo(workspace, args.name or DEMO_NAME, settings, progress=progress)
    print(f"built demo data set '{args.name or DEMO_NAME}' in {workspace}: {report.describe()}")
    print(f"(the {len(report.skipped)} skipped files are broken on purpose, to show what the import report looks like)")


APP_SCRIPT = Path(__file__).resolve().parent.parent / "app" / "main.py"  # found by path: the CLI never imports the app


def cmd_app(args: argparse.Namespace, streamlit_args: Sequence[str] = ()) -> None:
    """Start the web app: Streamlit on the app's entry script, in this process (the Streamlit server replaces it).

    The app's own settings (bound to 127.0.0.1, static files served) live beside the script in
    ``.streamlit/config.toml``, where Streamlit reads them first; ``streamlit_args`` (``--server.address ...``)
    go to ``streamlit run`` and win over them.
    """
    if not APP_SCRIPT.exists():
        raise UserError(f"The app is missing from this installation ({APP_SCRIPT}): reinstall labelloop.")
    workspace = resolve_workspace(args.workspace)
    if not storage.is_remote(workspace):
        Path(workspace).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, WORKSPACE_ENV: str(workspace)}
    command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), "--server.port", str(args.port), *streamlit_args]
    print(f"Starting the app on the data sets in {workspace}: open http://127.0.0.1:{args.port} in your browser (Ctrl+C stops it).", flush=True)
    os.execve(sys.executable, command, env)


def cmd_list(args: argparse.Namespace) -> None:
    names = list_datasets(args.workspace)
    rows = []
    for name in names:
        table = open_table(args.workspace, name)
        info = table.version_info()
        rows.append({"name": name, "versions": info.version, "samples": info.n_samples, "classes": len(info.classes), "last message": info.message})
    _print_table(pd.DataFrame(rows, columns=["name", "versions", "samples", "classes", "last message"]))


def cmd_import(args: argparse.Namespace) -> None:
    from labelloop.data.ingest import add_images, import_dataset

    with progress_bar("checking images") as progress:
        if args.add:
            version, report = add_images(args.path, args.name, args.workspace, parent=args.parent, layout=args.layout, message=args.message, progress=progress, workers=args.workers)
            print(f"'{args.name}' version {version}: {report.describe()}")
        else:
            _, report = import_dataset(args.path, args.name, args.workspace, layout=args.layout, message=args.message, progress=progress, workers=args.workers)
            print(f"'{args.name}' version 1: {report.describe()}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for item in report.skipped[: args.show_skipped]:
        print(f"skipped: {item.path}: {item.reason}")
    if len(report.skipped) > args.show_skipped:
        print(f"... and {len(report.skipped) - args.show_skipped} more skipped (see {storage.join(DatasetPaths(args.workspace, args.name).root, 'imports')})")
    for group in report.duplicate_groups[:10]:
        print("duplicates: " + " = ".join(group))


def cmd_history(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    rows = [
        {
            "version": info.version,
            "time (UTC)": info.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            "samples": info.n_samples,
            "message": info.message,
            "changes": info.describe(),
        }
        for info in table.history()
    ]
    _print_table(pd.DataFrame(rows))


def cmd_classes(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    _print_table(table.class_counts(args.version).reset_index())


def cmd_diff(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    diff = table.diff(args.a, args.b)
    counts = {k: v for k, v in diff.counts().items() if v}
    print(f"version {args.a} -> {args.b}: " + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "no sample changed"))
    if diff.classes_added or diff.classes_removed:
        print(f"classes added: {diff.classes_added or '-'}; removed: {diff.classes_removed or '-'}")
    flow = diff.label_flow()
    if not flow.empty:
        print("\nlabel flow (rows: old label, columns: new label):")
        print(flow.to_string())
    if args.out:
        diff.samples.to_csv(args.out, index=False)
        print(f"\nper-sample changes written to {args.out}")
    elif args.samples:
        print()
        _print_table(diff.samples.head(args.samples))


def cmd_restore(args: argparse.Namespace) -> None:
    table = open_table(args.workspace, args.name)
    parent = args.parent or table.head_version()
    version = table.restore(args.version, parent=parent, message=args.message)
    print(f"'{args.name}' version {version}: restored version {args.version} ({table.version_info(version).describe()})")


def cmd_apply(args: argparse.Namespace) -> None:
    from labelloop.data.exchange import read_change_file

    table = open_table(args.workspace, args.name)
    changes = read_change_file(args.changes, args.new_class)
    version = table.commit(changes, parent=args.parent, message=args.message)
    print(f"'{args.name}' version {version}: {table.version_info(version).describe()}")


def cmd_export(args: argparse.Namespace) -> None:
    from labelloop.data.exchange import default_export_path, export_version

    table = open_table(args.workspace, args.name)
    version = args.version or table.head_version()
    out = args.out or default_export_path(DatasetPaths(args.workspace, args.name), version, args.format)
    path, description = export_version(table, version, args.format, out)
    print(f"exported version {version} of '{args.name}' as {args.format}: {description} -> {path}")


def _embedder_config(args: argparse.Namespace):
    from labelloop.embed import EmbedderConfig
    from labelloop.embed.models import model_from_flags

    return EmbedderConfig(
        **model_from_flags(model=args.model, kind=args.embedder, arch=args.arch, pretrained=args.pretrained, weights=args.weights),
        resolution=args.resolution,
        runtime=args.runtime,
        precision=args.precision,
        batch_size=args.batch_size,
        device=args.device,
    )


def _add_compute_flags(p: argparse.ArgumentParser, *, ray: str, workers: bool = False) -> None:
    """--device and --ray (and for training, --workers and --gpus-per-worker): where the job runs."""
    from labelloop.compute.device import DEVICE_HELP
    from labelloop.compute.ray_cluster import ADDRESS_HELP

    p.add_argument("--device", default="auto", help=f"where torch runs: {DEVICE_HELP}")
    p.add_argument("--ray", metavar="ADDRESS", help=f"{ray} on Ray: {ADDRESS_HELP}. Default: everything in this process")
    if workers:
        p.add_argument("--workers", type=int, default=1, help="Ray Train data-parallel workers for the image models (default 1; needs --ray)")
        p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray Train worker takes (default 0: CPUs)")


def _compute(args: argparse.Namespace):
    from labelloop.compute.device import Compute

    compute = Compute(device=args.device, ray=args.ray, workers=getattr(args, "workers", 1), gpus_per_worker=getattr(args, "gpus_per_worker", 0.0))
    compute.validate()
    return compute


def cmd_embed(args: argparse.Namespace) -> None:
    from labelloop.embed import embed_dataset

    open_table(args.workspace, args.name)  # a clear error before any model loads
    config, compute = _embedder_config(args), _compute(args)
    config.validate()
    with progress_bar("embedding") as progress:
        report = embed_dataset(args.workspace, args.name, config, version=args.version, progress=progress, ray=compute.ray)
    print(f"embeddings '{report.key}': {report.describe()}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for row in report.failures.head(20).itertuples():
        print(f"not embedded: sample {row.sample_id} {row.path}: {row.reason}")
    if len(report.failures) > 20:
        print(f"... and {len(report.failures) - 20} more")


def cmd_thumbnails(args: argparse.Namespace) -> None:
    from labelloop.data.ingest import make_missing_thumbnails

    open_table(args.workspace, args.name)
    with progress_bar("thumbnails") as progress:
        made, problems = make_missing_thumbnails(args.workspace, args.name, args.version, progress=progress)
    print(f"made {made} thumbnail(s) in {DatasetPaths(args.workspace, args.name).thumbs}")
    for problem in problems[:20]:
        print(f"not readable: {problem.path}: {problem.reason}")
    if len(problems) > 20:
        print(f"... and {len(problems) - 20} more")


def cmd_embeddings(args: argparse.Namespace) -> None:
    from labelloop.embed import EmbeddingCache, list_embeddings

    rows = []
    for meta in list_embeddings(args.workspace, args.name):
        cache = EmbeddingCache(DatasetPaths(args.workspace, args.name).embedding(meta["key"]))
        rows.append({"key": meta["key"], "dims": meta["dim"], "vectors": len(cache.load()[0]), "description": meta["description"]})
    _print_table(pd.DataFrame(rows, columns=["key", "dims", "vectors", "description"]))


def cmd_models(args: argparse.Namespace) -> None:
    from labelloop.embed.models import model_choices

    names = [(name, name, "") for name in args.names] if args.names else None
    rows = []
    for choice in model_choices(args.workspace, names):
        facts = choice.facts
        rows.append({
            "model": choice.name, "parameters (M)": f"{facts.parameters / 1e6:.1f}" if facts else "?", "GFLOPs": f"{facts.gflops:.1f}" if facts else "?",
            "input": f"{facts.input_size}px" if facts else "?", "images/s here": choice.speed(), "weights": "cached" if choice.cached else "not cached",
        })
    _print_table(pd.DataFrame(rows))
    print("Speeds are measured here once a model has embedded a data set; before that they are estimated from the default model's measured rate and FLOPs.")


def _default_embedding_key(workspace, name: str) -> str:
    from labelloop.embed import EmbedderConfig, embedder_key, list_embeddings

    available = [meta["key"] for meta in list_embeddings(workspace, name)]
    default = embedder_key(EmbedderConfig())
    if default in available or not available:
        return default
    if len(available) == 1:
        return available[0]
    raise UserError(f"'{name}' has several embeddings ({', '.join(available)}); choose one with --embedding.")


def cmd_similar(args: argparse.Namespace) -> None:
    from labelloop.embed.similar import more_like_this

    table = open_table(args.workspace, args.name)
    version = args.version or table.head_version()
    key = args.embedding or _default_embedding_key(args.workspace, args.name)
    found = more_like_this(args.workspace, args.name, key, args.sample_ids, k=args.k, version=version)
    paths = table.read(version).set_index("sample_id")["path"]
    found["similarity"] = found["similarity"].round(4)
    found["path"] = paths.reindex(found["sample_id"]).to_numpy()
    _print_table(found)
    print(f"{len(found) - int(found['is_query'].sum())} samples nearest to {', '.join(f'#{i}' for i in args.sample_ids)} in '{key}' (cosine), version {version}")


def cmd_health(args: argparse.Namespace) -> None:
    from labelloop.scores.health import compute_health, describe

    with progress_bar("data health", unit="%") as update:
        report = compute_health(args.workspace, args.name, version=args.version, embedding=args.embedding, run_id=args.run,
                                progress=lambda stage, fraction: update(round(100 * fraction), 100))
    summary = report.summary()
    _print_table(summary.drop(columns=["note"]))
    for row in summary[summary["note"] != ""].itertuples():
        print(f"{row.title}: {row.note}")
    print(describe(report))
    if args.out:
        out = Path(args.out)
        frame = report.samples.assign(health=report.issue_types().to_numpy())
        frame.to_parquet(out, index=False) if out.suffix == ".parquet" else frame.to_csv(out, index=False)
        print(f"every sample's scores ({len(frame):,} rows; low score = more severe) written to {out}")


def cmd_project(args: argparse.Namespace) -> None:
    from labelloop.maps.project import ProjectionConfig, project_dataset

    open_table(args.workspace, args.name)
    key = args.embedding or _default_embedding_key(args.workspace, args.name)
    try:
        iterations = tuple(int(part) for part in args.iterations.split(","))
    except ValueError:
        raise UserError(f"--iterations takes three whole numbers like 100,100,100, not '{args.iterations}'.") from None
    config = ProjectionConfig(method=args.method, dims=args.dims, n_neighbors=args.neighbors, iterations=iterations, pca_dims=args.pca, perplexity=args.perplexity, seed=args.seed, fit_points=args.fit_points)
    with progress_bar("projecting", unit="step") as progress:
        projection = project_dataset(args.workspace, args.name, key, config, version=args.version, progress=progress, refit=args.refit)
    print(f"'{args.name}' {key}: {projection.describe()}")
    if projection.missing:
        print(f"warning: {projection.missing} samples have no embedding and are not on the map; run `embed {args.name}` to add them")


def cmd_train(args: argparse.Namespace) -> None:
    from labelloop.train.pipeline import train
    from labelloop.train.registry import FAMILIES, default_settings

    settings = default_settings(args.family, **_given_settings(args))
    settings.validate()
    compute = _compute(args)
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


def _given_settings(args: argparse.Namespace) -> dict:
    """The family's settings given on the command line; an option the family does not read is refused."""
    from labelloop.train.registry import FAMILIES

    every = {info.name: info for family in FAMILIES.values() for info in family.settings_class.settings()}
    given = {name: info.parse(getattr(args, name)) for name, info in every.items() if getattr(args, name) is not None}
    reads = {info.name for info in FAMILIES[args.family].settings_class.settings()}
    foreign = [every[name].flag for name in given if name not in reads]
    if foreign:
        raise UserError(f"{', '.join(foreign)}: not a setting of the {args.family} family. Its settings: {', '.join(sorted(i.flag for i in FAMILIES[args.family].settings_class.settings()))}.")
    return given


def cmd_sweep(args: argparse.Namespace) -> None:
    from labelloop.train.sweep import parse_grid, run_sweep

    open_table(args.workspace, args.name)
    grid = parse_grid(args.family, args.grid)
    base = _given_settings(args)
    overlap = sorted(set(base) & set(grid))
    if overlap:
        raise UserError(f"{', '.join(overlap)} is both a fixed setting and a --grid; give it once.")
    compute = _compute(args)
    with progress_bar("sweep") as bar:
        record = run_sweep(
            args.workspace, args.name, args.family, grid, base=base, samples=args.samples, asha=args.asha, ray=compute.ray or "local", device=compute.device,
            version=args.version, progress=lambda stage, fraction: bar(round(fraction * 1000), 1000),
        )
    frame = record.frame()
    print(f"sweep {record.sweep_id} on version {record.version}: {len(record.trials)} trials in {record.seconds:.0f} s")
    _print_table(frame.drop(columns=["error"] if not frame["error"].astype(bool).any() else []))
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
    _print_table(pd.DataFrame(rows, columns=["run", "version", "best", "accuracy", "labelled", "seconds"]))


def cmd_accuracy(args: argparse.Namespace) -> None:
    from labelloop.data.demo import load_demo_truth
    from labelloop.scores.fair_accuracy import accuracy_per_version
    from labelloop.train.pipeline import quick_heads_config, quick_heads_recipe, train

    open_table(args.workspace, args.name)
    recipe = quick_heads_recipe(args.workspace, args.name)
    if recipe is None:
        raise UserError(f"'{args.name}' has no embedding to run the quick heads on. Embed it first: `labelloop embed {args.name}`.")
    truth = load_demo_truth(args.workspace, args.name)

    def measure():
        return accuracy_per_version(args.workspace, args.name, reference_version=args.reference, test_split_only=args.test_split, main_recipe=recipe, truth=truth)

    fair = measure()
    if fair.missing and args.score_missing:
        config = quick_heads_config(args.workspace, args.name)
        for version in fair.missing:
            print(f"training the quick heads on v{version} ...", flush=True)
            train(args.workspace, args.name, config, version=version, trigger="after commit")
        fair = measure()
    print(f"Held-out accuracy of the quick heads (k-NN, logistic regression; the same settings on every version), against {fair.reference}" + (" and the true labels" if truth is not None else "") + ":")
    main = fair.line[fair.line["recipe"] == recipe]
    table = main.pivot_table(index="version", columns="reference", values=["accuracy", "low", "high", "n"], aggfunc="first")
    rows = []
    for version in fair.versions:
        row = {"version": version}
        for reference in main["reference"].unique():
            if version in table.index and not pd.isna(table.loc[version, ("accuracy", reference)]):
                row[reference] = f"{table.loc[version, ('accuracy', reference)]:.4f} [{table.loc[version, ('low', reference)]:.4f}, {table.loc[version, ('high', reference)]:.4f}] n={int(table.loc[version, ('n', reference)]):,}"
            else:
                row[reference] = "no run" if version not in table.index else "no shared samples"
        rows.append(row)
    _print_table(pd.DataFrame(rows))
    if fair.first_to_last:
        d = fair.first_to_last
        print(f"v{d['from']} -> v{d['to']}: {d['before']:.4f} -> {d['after']:.4f}, {100 * d['difference']:+.2f} points (95% bootstrap interval {100 * d['low']:+.2f} to {100 * d['high']:+.2f}) on the same {d['n']:,} samples")
    if fair.missing:
        print(f"versions without a point: {', '.join(f'v{v}' for v in fair.missing)} (add --score-missing to train the quick heads on them)")
    others = fair.line[(fair.line["recipe"] != recipe) & (fair.line["reference"] == fair.reference)]
    if len(others):
        print("Other recipes (each its own line, never mixed with the above):")
        _print_table(others[["recipe_name", "recipe", "version", "accuracy", "n", "run"]].round(4))


def cmd_issues(args: argparse.Namespace) -> None:
    from labelloop.data.runs import find_run, load_samples

    open_table(args.workspace, args.name)
    run = find_run(args.workspace, args.name, args.run, with_samples=True)
    samples = load_samples(run)
    suspicious = samples[samples["trained_on"]].sort_values("issue_score", ascending=False)
    paths = open_table(args.workspace, args.name).read(run.version).set_index("sample_id")["path"]
    top = suspicious.head(args.top).assign(path=lambda f: paths.loc[f["sample_id"]].to_numpy())
    print(f"run {run.run_id} (version {run.version}): {int(samples['flagged'].sum())} flagged of {int(samples['trained_on'].sum())} labelled; most suspicious first:")
    columns = ["sample_id", "label", "predicted_label", "given_confidence", "knn_disagreement", "issue_score", "flagged", "path"]
    _print_table(top[columns].round(3))
    if args.out:
        suspicious.drop(columns=["probabilities"]).to_csv(args.out, index=False)
        print(f"all {len(suspicious)} labelled samples, ranked, written to {args.out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from labelloop.train.predict import predict_folder

    with progress_bar("predicting") as progress:
        out, rows, skipped = predict_folder(args.run, args.folder, args.out, args.workspace, probabilities=args.probabilities, progress=progress, compute=_compute(args))
    print(f"wrote {rows} predictions to {out}")
    for path, reason in skipped[:20]:
        print(f"skipped: {path}: {reason}")


# --------------------------------------------------------------------------- parser


def _add_setting_flags(parser: argparse.ArgumentParser, families: dict) -> None:
    """One option per training setting of any family, with its default in each family that reads it."""
    seen: dict[str, list] = {}
    for family in families.values():
        for info in family.settings_class.settings():
            seen.setdefault(info.name, []).append((family.name, info))
    for name, uses in seen.items():
        info = uses[0][1]
        defaults = ", ".join(f"{family} {_shown(i)}" for family, i in uses)
        choices = f" ({', '.join(map(str, info.choices))})" if info.choices else ""
        listing = " comma-separated" if info.is_tuple else ""
        text = f"{info.label}{listing}{choices}. {info.help} Default: {defaults}".replace("%", "%%")
        parser.add_argument(info.flag, *info.aliases, dest=name, metavar=name.upper() if not info.choices or info.is_tuple else None,
                            choices=info.choices if info.choices and not info.is_tuple else None, help=text)


def _shown(info) -> str:
    if info.default is None:
        return info.none or "none"
    return ",".join(map(str, info.default)) if info.is_tuple else str(info.default)



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelloop", description="Versioned image label tables: import, edit, compare, export.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", help="folder (or s3:// prefix) holding the data sets (default: $LABELLOOP_WORKSPACE, else tables/ in a source checkout, else ~/labelloop)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_table_commands(sub, common)
    _add_model_commands(sub, common)
    return parser


def _add_table_commands(sub, common: argparse.ArgumentParser) -> None:
    """The commands on label tables: build, import, inspect, change, export."""
    p = sub.add_parser("demo", parents=[common], help="build the Fashion-MNIST demo data set")
    p.add_argument("--name", default=None, help="data set name (default: fashion-demo)")
    p.add_argument("--if-missing", action="store_true", help="do nothing if the workspace already has a data set")
    p.add_argument("--per-class", type=int, default=600, help="images per class (default 600)")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of images, undefined and flipped labels")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("app", parents=[common], help="start the web app (further --section.option flags go to streamlit run)")
    p.add_argument("--port", type=int, default=int(os.environ.get("LABELLOOP_PORT") or 8501), help="port to serve on (default 8501, or $LABELLOOP_PORT)")
    p.set_defaults(func=cmd_app, passes_unknown=True)

    p = sub.add_parser("list", parents=[common], help="list the data sets in the workspace")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("import", parents=[common], help="import a folder or a CSV/Parquet manifest as a data set")
    p.add_argument("path", help="folder of class sub-folders, flat folder, or manifest (path,label[,split])")
    p.add_argument("--name", required=True, help="name of the data set to create (or to add to, with --add)")
    p.add_argument("--layout", default="auto", choices=["auto", "class-folders", "flat"], help="how to read a folder (default: auto)")
    p.add_argument("--add", action="store_true", help="add the images the data set does not have yet, as a new version")
    p.add_argument("--parent", type=int, help="with --add: the version to add to (default: the latest)")
    p.add_argument("-m", "--message", help="version message (default: describes the import)")
    p.add_argument("--workers", type=int, help="processes checking images (default: one per core)")
    p.add_argument("--show-skipped", type=int, default=20, help="how many skipped files to list (default 20)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("history", parents=[common], help="list the versions of a data set")
    p.add_argument("name")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("classes", parents=[common], help="class counts of a version")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version (default: the latest)")
    p.set_defaults(func=cmd_classes)

    p = sub.add_parser("diff", parents=[common], help="what changed between two versions")
    p.add_argument("name")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.add_argument("--samples", type=int, default=0, help="also list the first N changed samples")
    p.add_argument("--out", help="write every changed sample to this CSV")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("restore", parents=[common], help="commit a new version equal to an old one")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("--parent", type=int, help="fail unless this is still the latest version (default: the latest)")
    p.add_argument("-m", "--message", help="version message (default: 'restore version N')")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("apply", parents=[common], help="commit a CSV of sample_id,label and/or sample_id,weight as one version")
    p.add_argument("name")
    p.add_argument("changes", help="CSV with sample_id and any of label, weight, split (empty cell = unchanged)")
    p.add_argument("--parent", type=int, required=True, help="the version the changes were made against")
    p.add_argument("-m", "--message", required=True, help="what the changes are and why")
    p.add_argument("--new-class", action="append", default=[], metavar="NAME", help="allow this new class name (repeatable)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("export", parents=[common], help="write a version's labels as CSV, Parquet or an ImageFolder tree")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version (default: the latest)")
    p.add_argument("--format", required=True, choices=["csv", "parquet", "imagefolder"])
    p.add_argument("--out", help="output file or folder (default: <data set>/exports/<name>-v<N>[.csv|.parquet])")
    p.set_defaults(func=cmd_export)


def _add_model_commands(sub, common: argparse.ArgumentParser) -> None:
    """The commands on models: embed, map, train, measure, predict."""
    from labelloop.embed import EMBEDDER_KINDS, PRECISIONS, RUNTIMES
    from labelloop.maps.project import METHODS, ProjectionConfig

    p = sub.add_parser("embed", parents=[common], help="embed the images of a data set (cached: only new images are computed)")
    p.add_argument("name")
    p.add_argument("--model", help="a model by name: efficientnet-lite0 (default), torchvision:ARCH:WEIGHTS, open_clip:ARCH:TAG, "
                   "timm:NAME.TAG, or KIND:hf-hub:ORG/REPO; see `models` for recommended ones")
    p.add_argument("--embedder", choices=EMBEDDER_KINDS, help="the library, when giving --arch (default: the one that knows --arch)")
    p.add_argument("--arch", help="torchvision architecture (resnet50), open_clip model (ViT-B-32) or timm model (vit_small_patch14_dinov2.lvd142m)")
    p.add_argument("--pretrained", help="published weights: a torchvision weights name (IMAGENET1K_V2, DEFAULT) or an open_clip tag (laion2b_s34b_b79k)")
    p.add_argument("--weights", help="a local checkpoint file (for torchvision, a weights name works here too)")
    p.add_argument("--resolution", type=int, help="input size in pixels (default: the model's own; pixels: 32)")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES, help="auto = the fastest measured (openvino bf16 where the CPU has it, else onnxruntime); torch = the reference")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto = bf16 where the CPU has it natively (openvino), else fp32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--version", type=int, help="version whose images to embed (default: the latest)")
    _add_compute_flags(p, ray="run the model on a Ray Data actor pool (the vectors land in the same cache)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("thumbnails", parents=[common], help="make the thumbnails this machine lacks (a workspace in S3 opened on another machine)")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version whose images to cover (default: the latest)")
    p.set_defaults(func=cmd_thumbnails)

    p = sub.add_parser("models", parents=[common], help="the recommended models (or the ones named): size, speed here, whether their weights are cached")
    p.add_argument("names", nargs="*", help="model names, e.g. torchvision:convnext_tiny:DEFAULT (default: the recommended list)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embeddings", parents=[common], help="list the embeddings cached for a data set")
    p.add_argument("name")
    p.set_defaults(func=cmd_embeddings)

    p = sub.add_parser("similar", parents=[common], help="more like this: the samples nearest to one (or several) in an embedding")
    p.add_argument("name")
    p.add_argument("sample_ids", nargs="+", type=int, metavar="SAMPLE_ID", help="several: nearest to their mean")
    p.add_argument("--k", type=int, default=50, help="how many similar samples (default 50)")
    p.add_argument("--embedding", help="embedding key (see `embeddings NAME`; default: the default embedder's)")
    p.add_argument("--version", type=int, help="version whose samples to search (default: the latest)")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("health", parents=[common], help="data health: outliers, near duplicates, poor images, label issues (cleanlab Datalab + cleanvision); cached")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version to check (default: the latest)")
    p.add_argument("--embedding", help="embedding key the embedding and label checks read (default: the default embedder's)")
    p.add_argument("--run", help="run whose probabilities the label checks read (default: the newest with per-sample scores)")
    p.add_argument("--out", help="write every sample's scores to this CSV (or .parquet)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("project", parents=[common], help="project embeddings to a 2D/3D map (cached)")
    p.add_argument("name")
    p.add_argument("--embedding", help="embedding key (see `embeddings NAME`; default: the default embedder's)")
    p.add_argument("--method", default="pacmap", choices=METHODS)
    p.add_argument("--dims", type=int, default=3, choices=[2, 3])
    p.add_argument("--neighbors", type=int, default=10, help="PaCMAP n_neighbors (default 10)")
    p.add_argument("--iterations", default=",".join(str(i) for i in ProjectionConfig().iterations), help="PaCMAP's three phases (default %(default)s)")
    p.add_argument("--pca", type=int, default=ProjectionConfig().pca_dims, help="PCA dimensions before projecting, 0 = none (default %(default)s)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-points", type=int, default=ProjectionConfig().fit_points, help="fit on at most this many images, stratified by label; the rest are placed on the map (default %(default)s)")
    p.add_argument("--refit", action="store_true", help="fit the map again on this version (otherwise images added since the fit are placed on it)")
    p.add_argument("--version", type=int, help="version to map (default: the latest)")
    p.set_defaults(func=cmd_project)

    from labelloop.train.registry import FAMILIES

    p = sub.add_parser("train", parents=[common], help="train a model family on a version: " + "; ".join(f"{f.name}: {f.title}" for f in FAMILIES.values()))
    p.add_argument("name")
    p.add_argument("--family", default="heads", choices=list(FAMILIES), help="what to train (default heads); each family starts from its own recipe, and takes only its own settings")
    p.add_argument("--version", type=int, help="version to train on (default: the latest)")
    _add_setting_flags(p, FAMILIES)
    _add_compute_flags(p, ray="train the image models (resnet18-scratch, frozen-backbone) with Ray Train", workers=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", parents=[common], help="train a grid of settings of one family as separate runs, with Ray Tune; the best is named")
    p.add_argument("name")
    p.add_argument("--family", default="heads", choices=list(FAMILIES), help="what to train (default heads)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2", help="a setting and its values (repeat for more settings); list settings separate values by ';'")
    p.add_argument("--samples", type=int, default=1, help="train every combination with this many seeds (default 1)")
    p.add_argument("--asha", action="store_true", help="ASHA early stopping: end trials whose validation accuracy trails")
    p.add_argument("--version", type=int, help="version to train on (default: the latest)")
    _add_setting_flags(p, FAMILIES)
    _add_compute_flags(p, ray="run the trials (default: a Ray started on this machine)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("runs", parents=[common], help="list the training runs of a data set")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="only runs on this version")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("accuracy", parents=[common], help="did the fixes help: every version's held-out accuracy against one reference labelling")
    p.add_argument("name")
    p.add_argument("--reference", type=int, help="the version whose labels are the reference (default: the latest)")
    p.add_argument("--test-split", action="store_true", help="score only the reference's test split")
    p.add_argument("--score-missing", action="store_true", help="first train the quick heads on every version that has no point")
    p.set_defaults(func=cmd_accuracy)

    p = sub.add_parser("issues", parents=[common], help="the most suspicious labels of a run")
    p.add_argument("name")
    p.add_argument("--run", help="run id (default: the newest)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", help="write every labelled sample, ranked, to this CSV")
    p.set_defaults(func=cmd_issues)

    p = sub.add_parser("predict", parents=[common], help="label a folder of new images with a trained run: filename,label CSV")
    p.add_argument("run", help="run id (see `runs NAME`) or run folder")
    p.add_argument("folder", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="CSV to write (never overwritten)")
    p.add_argument("--probabilities", action="store_true", help="add one probability column per class")
    _add_compute_flags(p, ray="run the model on a Ray Data actor pool")
    p.set_defaults(func=cmd_predict)

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.func(args, unknown) if unknown else args.func(args)
    except ConflictError as exc:
        print(f"error: conflict: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written is kept", file=sys.stderr)
        return 130
    return 0

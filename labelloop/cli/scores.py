"""The commands on what the runs and checks say: label issues, data health, did the fixes help."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from labelloop.cli.common import print_table, progress_bar
from labelloop.data.workspace import DatasetPaths, open_table
from labelloop.errors import UserError


def cmd_issues(args: argparse.Namespace) -> None:
    from labelloop.data.runs import find_run, load_samples
    from labelloop.scores.review import load_kept, ranked_label_issues

    table = open_table(args.workspace, args.name)
    run = find_run(args.workspace, args.name, args.run, with_samples=True)
    head = table.head_version()
    # The labels the Review page shows by default (the newest version's): a label fixed since the run is no issue.
    rows = table.read(head, columns=["sample_id", "path", "label", "weight"])
    ranked = ranked_label_issues(load_samples(run), rows, load_kept(DatasetPaths(args.workspace, args.name).kept_labels))
    print(f"run {run.run_id} (trained on v{run.version}), labels of v{head}: {int(ranked['label_issue'].sum()):,} label issues open "
          f"(the run's ranking flags them, the label still differs from its prediction, no reviewer kept it) of {len(ranked):,} labelled; most suspicious first:")
    columns = ["sample_id", "label", "predicted_label", "given_confidence", "knn_disagreement", "issue_score", "label_issue", "path"]
    print_table(ranked.head(args.top)[columns].round(3))
    if args.out:
        ranked.to_csv(args.out, index=False)
        print(f"all {len(ranked)} labelled samples, ranked, written to {args.out}")


def cmd_health(args: argparse.Namespace) -> None:
    from labelloop.scores.checks import describe
    from labelloop.scores.health import compute_health

    with progress_bar("data health", unit="%") as update:
        report = compute_health(args.workspace, args.name, version=args.version, embedding=args.embedding, run_id=args.run,
                                progress=lambda stage, fraction: update(round(100 * fraction), 100))
    summary = report.summary()
    print_table(summary.drop(columns=["note"]))
    for row in summary[summary["note"] != ""].itertuples():
        print(f"{row.title}: {row.note}")
    print(describe(report))
    if args.out:
        out = Path(args.out)
        frame = report.samples.assign(health=report.issue_types().to_numpy())
        frame.to_parquet(out, index=False) if out.suffix == ".parquet" else frame.to_csv(out, index=False)
        print(f"every sample's scores ({len(frame):,} rows; low score = more severe) written to {out}")


def cmd_accuracy(args: argparse.Namespace) -> None:
    from labelloop.data.demo import load_demo_truth
    from labelloop.scores.fair_accuracy import accuracy_per_version
    from labelloop.train.pipeline import quick_heads_config, quick_heads_recipe, train

    dataset = DatasetPaths(args.workspace, args.name)
    open_table(dataset)
    recipe = quick_heads_recipe(dataset)
    if recipe is None:
        raise UserError(f"'{args.name}' has no embedding to run the quick heads on. Embed it first: `labelloop embed {args.name}`.")
    truth = load_demo_truth(args.workspace, args.name)

    def measure():
        return accuracy_per_version(args.workspace, args.name, reference_version=args.reference, test_split_only=args.test_split, main_recipe=recipe, truth=truth)

    fair = measure()
    if fair.missing and args.score_missing:
        config = quick_heads_config(dataset)
        for version in fair.missing:
            print(f"training the quick heads on v{version} ...", flush=True)
            train(dataset, None, config, version=version, trigger="after commit")
        fair = measure()
    print(f"Held-out accuracy of the quick heads (k-NN, logistic regression; the same settings on every version), against {fair.reference}" + (" and the true labels" if truth is not None else "")
          + ", on the same samples in every version (those every version's quick heads predicted held out and the reference labels):")
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
    print_table(pd.DataFrame(rows))
    if fair.first_to_last:
        d = fair.first_to_last
        print(f"v{d['from']} -> v{d['to']}: {d['before']:.4f} -> {d['after']:.4f}, {100 * d['difference']:+.2f} points (95% bootstrap interval {100 * d['low']:+.2f} to {100 * d['high']:+.2f}) on the same {d['n']:,} samples")
    if fair.missing:
        print(f"versions without a point: {', '.join(f'v{v}' for v in fair.missing)} (add --score-missing to train the quick heads on them)")
    others = fair.line[(fair.line["recipe"] != recipe) & (fair.line["reference"] == fair.reference)]
    if len(others):
        print("Other recipes (each its own line, never mixed with the above):")
        print_table(others[["recipe_name", "recipe", "version", "accuracy", "n", "run"]].round(4))


COMMANDS = ("issues", "health", "accuracy")  # what register() adds, known without importing what the commands use


def register(sub, common: argparse.ArgumentParser) -> None:
    """Add this group's commands to the parser."""
    p = sub.add_parser("issues", parents=[common], help="the most suspicious labels of a run")
    p.add_argument("name")
    p.add_argument("--run", help="run id (default: the newest)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", help="write every labelled sample, ranked, to this CSV")
    p.set_defaults(func=cmd_issues)

    p = sub.add_parser("health", parents=[common], help="data health: outliers, near duplicates, poor images, label issues (cleanlab Datalab + cleanvision); cached")
    p.add_argument("name")
    p.add_argument("--version", type=int, help="version to check (default: the latest)")
    p.add_argument("--embedding", help="embedding key the embedding and label checks read (default: the default embedder's)")
    p.add_argument("--run", help="run whose probabilities the label checks read (default: the newest with per-sample scores)")
    p.add_argument("--out", help="write every sample's scores to this CSV (or .parquet)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("accuracy", parents=[common], help="did the fixes help: every version's held-out accuracy against one reference labelling")
    p.add_argument("name")
    p.add_argument("--reference", type=int, help="the version whose labels are the reference (default: the latest)")
    p.add_argument("--test-split", action="store_true", help="score only the reference's test split")
    p.add_argument("--score-missing", action="store_true", help="first train the quick heads on every version that has no point")
    p.set_defaults(func=cmd_accuracy)

"""Did the fix help, on the demo: the accuracy line before and after fixing flipped labels.
Prints figures; asserts nothing.

    .venv/bin/python bench/bench_fair_accuracy.py [--fixes 50] [--rounds 2] [--keep DIR]

Builds the demo (6,000 Fashion-MNIST images, 8% of the labelled ones flipped)
in a scratch workspace, embeds it with the default embedder (EfficientNet-Lite0,
1280-d), trains the quick heads (k-NN and logistic regression, the recipe the
app retrains after every commit) on v1, then, ``--rounds`` times, fixes
``--fixes`` flipped labels the way a reviewer would (the most suspicious
flagged samples of the latest run whose label is truly wrong, set to the true
label) and retrains. It prints, per version:

- the held-out accuracy against each version's *own* labels (what a naive
  line shows: not comparable across versions);
- the fair line: the same held-out predictions scored against one reference
  (the latest labels) and against the true labels, with n and 95% intervals;
- the paired first-to-last difference with its bootstrap interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.data.changes import ChangeSet  # noqa: E402
from labelloop.data.demo import build_demo, load_demo_truth  # noqa: E402
from labelloop.data.runs import list_runs, load_samples  # noqa: E402
from labelloop.data.workspace import DatasetPaths  # noqa: E402
from labelloop.embed import EmbedderConfig, embed_dataset  # noqa: E402
from labelloop.scores.fair_accuracy import accuracy_per_version  # noqa: E402
from labelloop.train.pipeline import quick_heads_config, quick_heads_recipe, train  # noqa: E402
from labelloop.train.registry import run_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixes", type=int, default=50, help="flipped labels fixed per round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (to open it in the app: labelloop app --workspace DIR)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workspace = args.keep or Path(folder)
        started = time.perf_counter()
        table, _ = build_demo(workspace)
        name = "fashion-demo"
        embed_dataset(workspace, name, EmbedderConfig())
        print(f"demo built and embedded in {time.perf_counter() - started:.0f} s")
        truth = load_demo_truth(workspace, name)
        true_label = truth.set_index("sample_id")["true_label"]
        config = quick_heads_config(DatasetPaths(workspace, name))
        recipe = quick_heads_recipe(DatasetPaths(workspace, name))
        started = time.perf_counter()
        run = train(workspace, name, config, version=1, trigger="after commit")
        print(f"quick heads on v1: {time.perf_counter() - started:.1f} s (best: {run.summary.best_model})")
        for _ in range(args.rounds):
            version = table.head_version()
            rows = table.read(version).set_index("sample_id")
            samples = load_samples(run)
            flagged = samples[samples["flagged"] & samples["trained_on"]].sort_values("issue_score", ascending=False)
            wrong = flagged[flagged["sample_id"].map(lambda i: rows.at[i, "label"] != true_label[i])]
            fix = wrong["sample_id"].head(args.fixes).to_numpy()
            print(f"v{version}: {len(flagged)} flagged, {len(wrong)} of them truly wrong; fixing the top {len(fix)}")
            new = table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": fix, "label": true_label[fix].to_numpy()})), parent=version, message=f"fix {len(fix)} flips")
            run = train(workspace, name, config, version=new, trigger="after commit")
        own = {r.version: r.summary.held_out_accuracy for r in list_runs(workspace, name) if run_recipe(r)[0] == recipe}
        fair = accuracy_per_version(workspace, name, main_recipe=recipe, truth=truth)
        print("\nversion  own labels (naive)  " + "  ".join(f"vs {ref:<28}" for ref in fair.line["reference"].unique()))
        for version in fair.versions:
            cells = []
            for reference in fair.line["reference"].unique():
                point = fair.main(reference).set_index("version").loc[version]
                cells.append(f"{point['accuracy']:.4f} [{point['low']:.4f}, {point['high']:.4f}] n={int(point['n']):,}")
            print(f"v{version:<7} {own[version]:.4f}              " + "  ".join(f"{c:<31}" for c in cells))
        d = fair.first_to_last
        print(f"\nv{d['from']} -> v{d['to']} against {fair.reference}: {100 * d['difference']:+.2f} points (95% bootstrap {100 * d['low']:+.2f} to {100 * d['high']:+.2f}) on {d['n']:,} samples")


if __name__ == "__main__":
    main()

"""The heads recipe on the demo data set, and how well it finds the demo's flipped labels.
Prints figures; asserts nothing.

    .venv/bin/python bench/bench_train.py

Builds the demo (6,000 Fashion-MNIST images, 30% undefined, 8% of the
labelled ones flipped) in a scratch workspace, embeds it with the default
embedder, runs `train` with the heads family's default settings, and prints:
wall time and CV accuracy per head, the whole CV + retrain time, and the
precision / recall / F1 of the top-k flagged samples (k = how many
cleanlab's find_label_issues flags by default) for cleanlab alone, k-NN
disagreement alone and the fused ranking, all on the same probabilities.
CV accuracy is measured against the given (partly flipped) labels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.data.demo import build_demo, load_demo_truth  # noqa: E402
from labelloop.data.runs import load_json, load_samples  # noqa: E402
from labelloop.embed import EmbedderConfig, embed_dataset  # noqa: E402
from labelloop.train.frozen import FrozenBackboneSettings  # noqa: E402
from labelloop.train.heads import HeadsSettings  # noqa: E402
from labelloop.train.pipeline import train  # noqa: E402
from labelloop.train.resnet import ResnetScratchSettings  # noqa: E402
from labelloop.train.sample_scores import precision_recall_f1  # noqa: E402


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:k]] = True
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--resnet-epochs", type=int, default=3, help="epochs of the short ResNet-18 run (0 skips it)")
    parser.add_argument("--frozen-image-epochs", type=int, default=1, help="epochs of the frozen-backbone run with RandAugment and unfreezing (0 skips it)")
    args = parser.parse_args()
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        workspace = Path(tmp)
        build_demo(workspace)
        started = time.perf_counter()
        report = embed_dataset(workspace, "fashion-demo", EmbedderConfig())
        print(f"embedding: {report.describe()} ({time.perf_counter() - started:.1f} s)")
        started = time.perf_counter()
        run = train(workspace, "fashion-demo", HeadsSettings())
        total = time.perf_counter() - started
        cv = load_json(run, "cv.json")
        print(f"heads recipe on {run.summary.n_labelled:,} labelled demo images, {cv['folds']} folds, {report.key}:")
        for head, values in cv["heads"].items():
            extra = f", retrain {values['retrain_seconds']:.1f} s" if "retrain_seconds" in values else ""
            print(f"  {head:<7} CV accuracy {values['mean']:.4f} ± {values['std']:.4f}   {values['seconds']:6.1f} s{extra}")
        print(f"  best: {cv['best']}; whole CV + retrain + issue scores: {total:.1f} s")

        samples = load_samples(run)
        truth = load_demo_truth(workspace, "fashion-demo").set_index("sample_id")
        labelled = samples[samples["trained_on"]].reset_index(drop=True)
        wrong = (labelled["label"].to_numpy() != truth.loc[labelled["sample_id"], "true_label"].to_numpy())
        cleanlab = labelled["cleanlab_issue"].to_numpy()
        k = int(cleanlab.sum())
        print(f"label issues: {int(wrong.sum())} flipped among {len(labelled):,} labelled; k = {k} (cleanlab's default count)")
        for name, flagged in (
            ("cleanlab find_label_issues", cleanlab),
            ("k-NN disagreement (k=10)", top_k(labelled["knn_disagreement"].to_numpy(), k)),
            ("fused ranking", labelled["flagged"].to_numpy()),
        ):
            precision, recall, f1 = precision_recall_f1(flagged, wrong)
            print(f"  {name:<28} precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}")

        started = time.perf_counter()
        run = train(workspace, "fashion-demo", FrozenBackboneSettings())
        print(f"frozen EfficientNet-Lite0 + the frozen-backbone head, {run.summary.best_epoch} best of 15 epochs on cached features: "
              f"validation accuracy {run.summary.held_out_accuracy:.4f}, {run.summary.seconds_per_epoch:.2f} s per epoch, whole run {time.perf_counter() - started:.1f} s")
        if args.frozen_image_epochs:
            epochs = args.frozen_image_epochs
            started = time.perf_counter()
            run = train(workspace, "fashion-demo", FrozenBackboneSettings(epochs=epochs, augmentation="randaugment", unfreeze_from=1))
            print(f"frozen EfficientNet-Lite0 at 224 px with RandAugment, unfreezing from epoch 1, {epochs} epoch(s): validation accuracy {run.summary.held_out_accuracy:.4f}, "
                  f"{run.summary.seconds_per_epoch:.1f} s per epoch, whole run {time.perf_counter() - started:.0f} s")

        if args.resnet_epochs:
            started = time.perf_counter()
            run = train(workspace, "fashion-demo", ResnetScratchSettings(epochs=args.resnet_epochs))
            curves = run.path / "curves.parquet"
            import pandas as pd

            table = pd.read_parquet(curves)
            print(f"ResNet-18 from scratch (its recipe: 128 px, batch 16), {args.resnet_epochs} epochs on {run.summary.n_labelled:,} labelled demo images:")
            for row in table.itertuples():
                print(f"  epoch {row.epoch}: train loss {row.train_loss:.3f}, train acc {row.train_accuracy:.3f}, val acc {row.val_accuracy:.3f}, lr {row.learning_rate:.2e}")
            print(f"  {run.summary.seconds_per_epoch:.1f} s per epoch; best validation accuracy {run.summary.held_out_accuracy:.4f} at epoch {run.summary.best_epoch}; whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

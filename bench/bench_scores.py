"""Scores that keep up: the quick heads after a commit, exact and reduced, on the demo and at scale. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_scores.py                    # demo F1, then 100,000 x 1280-d
    .venv/bin/python bench/bench_scores.py --images 0         # the demo only

1. The demo data set (6,000 Fashion-MNIST images, 8% of the labelled ones
   flipped), embedded with the default EfficientNet-Lite0 (1280-d): the quick
   heads (k-NN and logistic regression) with every dimension and reduced by
   PCA, and the precision / recall / F1 of the samples each flags against
   the flips the demo made: the reduction must not cost more than 0.01 F1.
2. ``--images`` synthetic 1280-d vectors (class clusters with a shared
   low-rank structure and noise, 8% of labels flipped), stored as a real
   data set (label table + embedding cache): seconds and peak memory of the
   whole refresh a commit triggers (train() with the quick heads' settings,
   issue scores included), in a process of its own.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLASSES = [f"class{i}" for i in range(10)]


def demo_f1(scratch: Path, reduce_dims: int) -> None:
    from labelloop.data.demo import build_demo, load_demo_truth
    from labelloop.data.runs import load_samples
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import QUICK_HEADS, train
    from labelloop.train.sample_scores import precision_recall_f1

    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        workspace = Path(tmp)
        build_demo(workspace)
        report = embed_dataset(workspace, "fashion-demo", EmbedderConfig())
        truth = load_demo_truth(workspace, "fashion-demo").set_index("sample_id")
        print(f"demo: {report.key}, quick heads {', '.join(QUICK_HEADS)}")
        for dims in (0, reduce_dims):
            started = time.perf_counter()
            run = train(workspace, "fashion-demo", HeadsSettings(heads=QUICK_HEADS, embedding=report.key, reduce_dims=dims))
            seconds = time.perf_counter() - started
            samples = load_samples(run)
            labelled = samples[samples["trained_on"]].reset_index(drop=True)
            wrong = labelled["label"].to_numpy() != truth.loc[labelled["sample_id"], "true_label"].to_numpy()
            what = "every dimension" if not dims else f"PCA to {dims}"
            line = [f"  {what:<16} {seconds:5.1f} s, CV accuracy {run.summary.held_out_accuracy:.4f}"]
            for name, flagged in (("fused", labelled["flagged"].to_numpy()), ("cleanlab", labelled["cleanlab_issue"].to_numpy())):
                precision, recall, f1 = precision_recall_f1(flagged, wrong)
                line.append(f"{name} P {precision:.3f} R {recall:.3f} F1 {f1:.3f}")
            print("; ".join(line))


def synthetic_dataset(workspace: Path, n: int, dim: int = 1280, seed: int = 0) -> str:
    """A data set of ``n`` rows whose embedding is synthetic; returns the embedding key."""
    from labelloop.data.tables import LabelTable
    from labelloop.data.workspace import DatasetPaths
    from labelloop.embed.cache import EmbeddingCache

    rng = np.random.default_rng(seed)
    paths = DatasetPaths(workspace, "big")
    truth = rng.integers(0, len(CLASSES), size=n)
    given = truth.copy()
    flip = rng.random(n) < 0.08
    given[flip] = (truth[flip] + rng.integers(1, len(CLASSES), size=int(flip.sum()))) % len(CLASSES)
    hashes = np.array([f"{i:032x}" for i in range(n)])
    rows = pd.DataFrame({"path": [f"/data/{i:08d}.jpg" for i in range(n)], "label": np.asarray(CLASSES)[given], "content_hash": hashes})
    LabelTable.create(paths.labels, rows, CLASSES, lock_path=paths.commit_lock)
    key = "synthetic-1280"
    cache = EmbeddingCache(paths.embedding(key))
    cache.write_meta({"key": key, "description": "synthetic clusters", "dim": dim, "config": {"kind": "pixels"}, "warnings": []})
    centres = rng.normal(size=(len(CLASSES), dim)).astype(np.float32)
    basis = rng.normal(size=(64, dim)).astype(np.float32) / 8  # variation shared by every class
    for start in range(0, n, 50_000):
        part = slice(start, min(n, start + 50_000))
        m = part.stop - part.start
        vectors = centres[truth[part]] * 0.6 + rng.normal(size=(m, 64)).astype(np.float32) @ basis + rng.normal(size=(m, dim)).astype(np.float32) * 0.5
        cache.append(list(hashes[part]), vectors.astype(np.float32))
    return key


def refresh(workspace: str, key: str, reduce_dims: int) -> None:
    """The refresh a commit triggers, timed, in this process; prints seconds and peak memory."""
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import QUICK_HEADS, train

    started = time.perf_counter()
    stages: list[tuple[str, float]] = []

    def progress(stage: str, fraction: float) -> None:
        if not stages or stages[-1][0] != stage:
            stages.append((stage, time.perf_counter()))

    run = train(workspace, "big", HeadsSettings(heads=QUICK_HEADS, embedding=key, reduce_dims=reduce_dims), progress=progress)
    seconds = time.perf_counter() - started
    stages.append(("done", time.perf_counter()))
    for (stage, at), (_, then) in zip(stages, stages[1:]):
        print(f"    {then - at:6.1f} s  {stage}")
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1e6
    print(f"  {'every dimension' if not reduce_dims else f'PCA to {reduce_dims}':<16} {seconds:6.1f} s, peak memory <= {peak:.1f} GB "
          f"(this process + its largest helper), CV accuracy {run.summary.held_out_accuracy:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="synthetic rows (0 skips)")
    parser.add_argument("--reduce-dims", type=int, default=128)
    parser.add_argument("--exact-too", action="store_true", help="also time every dimension at scale (slow)")
    parser.add_argument("--scratch", default=str(REPO / "bench" / "out"))
    parser.add_argument("--refresh", nargs=2, metavar=("WORKSPACE", "KEY"), help=argparse.SUPPRESS)
    parser.add_argument("--keep", metavar="FOLDER", help="build the synthetic data set in FOLDER and keep it (re-time it with --refresh FOLDER synthetic-1280)")
    args = parser.parse_args()
    if args.refresh:
        refresh(args.refresh[0], args.refresh[1], args.reduce_dims)
        return
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        print(f"built {synthetic_dataset(Path(args.keep), args.images)} with {args.images:,} rows in {args.keep}")
        return
    demo_f1(scratch, args.reduce_dims)
    if args.images:
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            key = synthetic_dataset(Path(tmp), args.images)
            print(f"{args.images:,} synthetic 1280-d vectors, quick heads refresh:")
            for dims in ([0] if args.exact_too else []) + [args.reduce_dims]:
                subprocess.run([sys.executable, __file__, "--refresh", tmp, key, "--reduce-dims", str(dims)], check=True)


if __name__ == "__main__":
    main()

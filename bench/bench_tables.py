"""Benchmarks for the foundation: import throughput and commit time. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_tables.py [--images 10000] [--rows 100000]

1. Import of N Fashion-MNIST images (28x28 PNG, as the demo writes them) and
   of N/5 larger JPEG photos-like images (512x384): images/s end to end,
   i.e. discovery, full decode check, hashing, thumbnails and the table write.
2. A 100,000-row label table: time to create it, to read a version, to commit
   a relabel of 10,000 rows, and to diff two versions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.data.changes import ChangeSet  # noqa: E402
from labelloop.data.demo import load_source_images  # noqa: E402
from labelloop.data.ingest import import_dataset  # noqa: E402
from labelloop.data.tables import LabelTable  # noqa: E402


def write_fashion_pngs(folder: Path, n: int) -> None:
    source = load_source_images()
    for i in range(n):
        label = source.class_names[source.labels[i]]
        target = folder / label / f"{i:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.images[i], "L").save(target)


def write_photo_jpegs(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small, "RGB").resize((512, 384), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
        target = folder / f"class{i % 5}" / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)


def bench_import(root: Path, n: int, label: str, workspace: Path) -> None:
    started = time.perf_counter()
    table, report = import_dataset(root, label, workspace)
    seconds = time.perf_counter() - started
    print(f"import {report.n_imported:>6,} {label:<28} {seconds:7.2f} s   {report.n_imported / seconds:8.0f} images/s")


def bench_table(rows: int, relabel: int, workspace: Path) -> None:
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(20)]
    frame = pd.DataFrame({
        "path": [f"/data/images/{i:07d}.jpg" for i in range(rows)],
        "label": rng.choice(classes, size=rows),
        "width": np.full(rows, 224), "height": np.full(rows, 224), "mode": "RGB",
        "file_size": rng.integers(10_000, 90_000, size=rows),
        "content_hash": [f"{i:032x}" for i in range(rows)],
    })
    started = time.perf_counter()
    table = LabelTable.create(workspace / "big" / "labels", frame, classes)
    print(f"create a {rows:,}-row table                 {time.perf_counter() - started:7.3f} s")
    started = time.perf_counter()
    table.read()
    print(f"read the head version                      {time.perf_counter() - started:7.3f} s")
    timings = []
    for trial in range(5):
        ids = rng.choice(np.arange(1, rows + 1), size=relabel, replace=False)
        head = table.head_version()
        started = time.perf_counter()
        table.commit(ChangeSet.relabel(ids, classes[trial]), parent=head, message=f"relabel {relabel}")
        timings.append(time.perf_counter() - started)
    print(f"commit relabelling {relabel:,} of {rows:,} rows    {statistics.median(timings):7.3f} s (median of 5; min {min(timings):.3f}, max {max(timings):.3f})")
    started = time.perf_counter()
    diff = table.diff(1, table.head_version())
    print(f"diff version 1 against {table.head_version()}                    {time.perf_counter() - started:7.3f} s ({diff.counts()['relabelled']:,} relabelled)")
    size = sum(f.stat().st_size for f in (workspace / "big" / "labels").rglob("*") if f.is_file())
    print(f"table on disk after {table.head_version()} versions             {size / 1e6:7.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--relabel", type=int, default=10_000)
    parser.add_argument("--scratch", default=str(Path(__file__).resolve().parent / "out"), help="folder for the temporary files")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    # Under the project rather than /tmp: on these machines creating files in
    # /tmp costs ~20x more than on the disk where a workspace lives.
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        tmp = Path(tmp)
        write_fashion_pngs(tmp / "fashion", args.images)
        write_photo_jpegs(tmp / "photos", args.images // 5)
        bench_import(tmp / "fashion", args.images, "fashion-mnist-png-28px", tmp / "ws")
        bench_import(tmp / "photos", args.images // 5, "jpeg-512x384", tmp / "ws")
        bench_table(args.rows, args.relabel, tmp / "ws")


if __name__ == "__main__":
    main()

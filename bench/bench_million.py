"""A million images: what commits, reads and diffs cost at 1,000,000 and 10,000,000 rows. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_million.py                   # label tables at 1M and 10M rows
    .venv/bin/python bench/bench_million.py --rows 1000000 --no-ten-million
    .venv/bin/python bench/bench_million.py --map-only         # the 3D map of 1,000,000 x 1280-d vectors
    .venv/bin/python bench/bench_million.py --s3-only          # a 100,000-row label table in S3 (a local moto server)

The rows are synthetic (paths, hashes and sizes like an import writes them);
no images are needed to measure the label table. Sample ids follow the
import's order: class folder by class folder, so one folder's images have
neighbouring ids.

Which rows an edit touches decides what a commit costs, because a commit
rewrites every data file (IDS_PER_FILE ids) that holds a changed row. Each
figure therefore names its pattern:

* **clustered**: the rows lie in one stretch of ids, as when a user fixes
  part of one imported folder (10,000 rows drawn from a window of 20,000 ids;
  100 rows from a window of 1,000 ids);
* **scattered**: rows drawn from the whole table, as a lasso across many
  folders or a review queue's top picks are. Delta Lake as the deltalake
  package writes it has no row-level deletes (deletion vectors), so a
  scattered edit rewrites nearly every file it touches: the cost of a
  copy-on-write table, printed so nobody mistakes the clustered figure for it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labelloop.data.changes import ChangeSet  # noqa: E402
from labelloop.data.tables import IDS_PER_FILE, LabelTable  # noqa: E402

CLASSES = [f"class{i:02d}" for i in range(20)]


def synthetic_rows(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    folder = np.arange(n) * len(CLASSES) // n
    return pd.DataFrame({
        "path": [f"/data/photos/{CLASSES[f]}/{i:08d}.jpg" for i, f in enumerate(folder)],
        "label": np.asarray(CLASSES)[folder],
        "width": np.full(n, 640), "height": np.full(n, 480), "mode": "RGB",
        "file_size": rng.integers(20_000, 200_000, size=n),
        "content_hash": [hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest() for i in range(n)],
    })


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clustered(rng: np.random.Generator, n_rows: int, k: int, window: int) -> np.ndarray:
    start = int(rng.integers(1, n_rows - window + 2))
    return start + rng.choice(window, size=k, replace=False)


def scattered(rng: np.random.Generator, n_rows: int, k: int) -> np.ndarray:
    return 1 + rng.choice(n_rows, size=k, replace=False)


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def relabel(table: LabelTable, ids: np.ndarray, trial: int) -> tuple[float, int]:
    """Commit a relabel of ``ids``; return (seconds, bytes the commit added to the table folder)."""
    before = folder_bytes(table.path)
    head = table.head_version()
    _, seconds = timed(lambda: table.commit(ChangeSet.relabel(ids, CLASSES[trial % len(CLASSES)]), parent=head, message=f"relabel {len(ids)}"))
    return seconds, folder_bytes(table.path) - before


def bench_relabels(table: LabelTable, n_rows: int, k: int, rng: np.random.Generator, trials: int = 3) -> None:
    first = folder_bytes(table.path)
    for name, pick in (("clustered", lambda: clustered(rng, n_rows, k, 2 * k)), ("scattered", lambda: scattered(rng, n_rows, k))):
        figures = [relabel(table, pick(), trial) for trial in range(trials)]
        seconds = statistics.median(f[0] for f in figures)
        added = statistics.median(f[1] for f in figures)
        print(f"  relabel {k:,} rows, {name:<9}: commit {seconds:6.2f} s (median of {trials}), "
              f"new bytes {added / 1e6:6.1f} MB = {100 * added / first:5.1f}% of the table")
        head = table.head_version()
        diff, seconds = timed(lambda: LabelTable(table.path).diff(head - 1, head))
        print(f"  diff the two versions of that {name} relabel: {seconds:6.2f} s ({diff.counts()['relabelled']:,} relabelled)")


def bench_table(n_rows: int, scratch: Path, small_commits: int) -> None:
    print(f"\n{n_rows:,}-row label table ({IDS_PER_FILE} sample ids per data file)")
    rows, seconds = timed(lambda: synthetic_rows(n_rows))
    table, seconds = timed(lambda: LabelTable.create(scratch / f"t{n_rows}" / "labels", rows, CLASSES))
    first = folder_bytes(table.path)
    print(f"  create version 1: {seconds:6.2f} s, {first / 1e6:.1f} MB in {len(table.data_files(1).files)} files")
    for attempt in ("first", "again"):
        _, seconds = timed(lambda: LabelTable(table.path).read())
        print(f"  open the head and read every row ({attempt}): {seconds:6.2f} s")
    _, seconds = timed(lambda: LabelTable(table.path).read(columns=["label", "weight"]))
    print(f"  read the labels and weights only: {seconds:6.2f} s")
    rng = np.random.default_rng(1)
    bench_relabels(table, n_rows, 10_000, rng)
    head = table.head_version()
    diff, seconds = timed(lambda: LabelTable(table.path).diff(1, head))
    print(f"  diff version 1 against {head}: {seconds:6.2f} s ({diff.counts()['relabelled']:,} relabelled)")
    if not small_commits:
        return
    for name, pick in (("clustered", lambda: clustered(rng, n_rows, 100, 1_000)), ("scattered", lambda: scattered(rng, n_rows, 100))):
        count = small_commits if name == "clustered" else max(1, small_commits // 20)
        start = folder_bytes(table.path)
        times = [relabel(table, pick(), trial)[0] for trial in range(count)]
        grown = folder_bytes(table.path) - start
        line = f"  {count:,} commits of 100 rows, {name:<9}: median {statistics.median(times):5.2f} s each, folder grew {grown / 1e6:7.1f} MB = {grown / first:5.2f}x version 1"
        if count < small_commits:
            line += f" (so {small_commits:,} would grow it about {grown / first * small_commits / count:.0f}x)"
        print(line)


def synthetic_dataset(workspace: Path, name: str, n: int) -> str:
    """A data set of ``n`` synthetic rows with 1280-d vectors (class clusters sharing a low-rank
    structure) in its embedding cache, made without images; returns the embedding key."""
    from labelloop.data.workspace import DatasetPaths
    from labelloop.embed.cache import EmbeddingCache

    rng = np.random.default_rng(0)
    paths = DatasetPaths(workspace, name)
    labels = rng.integers(0, len(CLASSES), size=n)
    hashes = np.array([f"{i:032x}" for i in range(n)])
    LabelTable.create(paths.labels, pd.DataFrame({"path": [f"/p/{i}.jpg" for i in range(n)], "label": np.asarray(CLASSES)[labels], "content_hash": hashes}), CLASSES, lock_path=paths.commit_lock)
    cache = EmbeddingCache(paths.embedding("synthetic-1280"))
    cache.write_meta({"key": "synthetic-1280", "description": "synthetic clusters", "dim": 1280, "config": {"kind": "pixels"}, "warnings": []})
    centres = rng.normal(size=(len(CLASSES), 1280)).astype(np.float32)
    basis = rng.normal(size=(64, 1280)).astype(np.float32) / 8
    for start in range(0, n, 50_000):
        m = min(n, start + 50_000) - start
        part = labels[start : start + m]
        cache.append(list(hashes[start : start + m]), (centres[part] * 0.6 + rng.normal(size=(m, 64)).astype(np.float32) @ basis + rng.normal(size=(m, 1280)).astype(np.float32) * 0.5).astype(np.float32))
    return "synthetic-1280"


def bench_map(n: int, scratch: Path) -> None:
    """A 3D map of ``n`` synthetic 1280-d vectors: the sample fit, the placement of the rest, and the
    server-side lasso over every point."""
    from labelloop.maps.lasso import lasso_select
    from labelloop.maps.project import project_dataset

    synthetic_dataset(scratch / "ws", "big", n)
    projection, seconds = timed(lambda: project_dataset(scratch / "ws", "big", "synthetic-1280"))
    print(f"\n3D map of {n:,} x 1280-d vectors: {seconds:.0f} s (fit + placement + quality); {projection.describe()}")
    print(f"  where the time went (s): {projection.steps_seconds}")
    from labelloop.app.components.scatter3d import _normalised

    points = _normalised(projection.coords)
    matrix = [2.14, 0, 0, 0, 0, 2.14, 0, 0, 0, 0, -1.002, -1, 0, 0, 2.8, 3]  # a camera 3 units away, 50 degrees
    for name, polygon in (("a quarter of the view", [(200, 150), (600, 150), (600, 450), (200, 450)]), ("nothing", [(-900, -900), (-800, -900), (-800, -800)]),
                          ("everything", [(-1e5, -1e5), (1e5, -1e5), (1e5, 1e5), (-1e5, 1e5)])):
        chosen, seconds = timed(lambda: lasso_select(points, matrix, 800, 600, polygon))
        print(f"  server lasso over all {n:,} points, {name}: {seconds:.2f} s ({len(chosen):,} selected)")


def bench_s3(n: int) -> None:
    """Commits to a label table in S3: moto's server on this machine (so no network latency; a real
    bucket adds a round trip per request: about 6 for a commit, plus one per rewritten file)."""
    import boto3

    from tests.s3 import aws_env, s3_server

    with s3_server() as endpoint:
        os.environ.update(aws_env(endpoint))
        boto3.client("s3").create_bucket(Bucket="bench")
        uri = "s3://bench/ws/big/labels"
        table, seconds = timed(lambda: LabelTable.create(uri, synthetic_rows(n), CLASSES))
        print(f"\nlabel table of {n:,} rows in S3 (local moto server): created in {seconds:.2f} s")
        rng = np.random.default_rng(0)
        for k, pattern, ids in ((100, "clustered", lambda: clustered(rng, n, 100, 1000)), (1000, "clustered", lambda: clustered(rng, n, 1000, 2000)), (1000, "scattered", lambda: scattered(rng, n, 1000))):
            times = []
            for trial in range(3):
                head, chosen = table.head_version(), ids()
                _, seconds = timed(lambda: table.commit(ChangeSet.relabel(chosen, CLASSES[trial]), parent=head, message=f"relabel {k}"))
                times.append(seconds)
            print(f"  commit relabelling {k:,} rows, {pattern}: median {statistics.median(times):.2f} s (of 3)")
        _, seconds = timed(lambda: LabelTable(uri).read())
        print(f"  open the head, every row: {seconds:.2f} s")
        head = table.head_version()
        _, seconds = timed(lambda: table.diff(head - 1, head))
        print(f"  diff the last two versions: {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-commits", type=int, default=1_000, help="how many 100-row commits to measure growth with")
    parser.add_argument("--no-ten-million", action="store_true", help="skip the 10,000,000-row table")
    parser.add_argument("--map-only", action="store_true", help="only the 3D map of --rows 1280-d vectors")
    parser.add_argument("--s3-only", action="store_true", help="only a 100,000-row label table in S3 (moto's server on this machine)")
    parser.add_argument("--scratch", default=str(REPO / "bench" / "out"), help="folder for the temporary files")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=args.scratch))
    try:
        if args.map_only:
            bench_map(args.rows, scratch)
            return
        if args.s3_only:
            bench_s3(100_000)
            return
        bench_table(args.rows, scratch, args.small_commits)
        if not args.no_ten_million:
            bench_table(10 * args.rows, scratch, 0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

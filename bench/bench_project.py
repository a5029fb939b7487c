"""Projection speed and quality, and the cost of re-opening a map after a relabel. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_project.py              # 10k and 70k Fashion-MNIST points
    .venv/bin/python bench/bench_project.py --sizes 10000

For each size, on raw 784-d pixels: PaCMAP 3D with its own defaults, and the
app's default ProjectionConfig, measured in the same run: wall time and the
leave-one-out 10-NN accuracy of the labels in the map (5,000 queries).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_embed import fashion_arrays  # noqa: E402
from labelloop.compute.neighbours import knn_accuracy  # noqa: E402
from labelloop.maps.config import ProjectionConfig  # noqa: E402
from labelloop.maps.fit import project_vectors  # noqa: E402


def reopen_after_relabel(scratch: Path) -> None:
    from PIL import Image

    from labelloop.data.changes import ChangeSet
    from labelloop.data.ingest import import_dataset
    from labelloop.data.workspace import open_table
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.maps.project import project_dataset

    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        tmp = Path(tmp)
        images, labels = fashion_arrays(3000)
        for i, (image, label) in enumerate(zip(images, labels)):
            target = tmp / "images" / f"class{label}" / f"{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target)
        import_dataset(tmp / "images", "reopen", tmp / "ws")
        config = EmbedderConfig()
        key = embed_dataset(tmp / "ws", "reopen", config).key
        project_dataset(tmp / "ws", "reopen", key)
        table = open_table(tmp / "ws", "reopen")
        version = table.commit(ChangeSet.relabel(table.read()["sample_id"][:500], "class0"), parent=1, message="relabel 500")
        started = time.perf_counter()
        report = embed_dataset(tmp / "ws", "reopen", config, version=version)
        projection = project_dataset(tmp / "ws", "reopen", key, version=version, compute=False)
        seconds = time.perf_counter() - started
        print(
            f"re-open after relabelling 500 of 3,000: {seconds:.2f} s; embedded {report.n_computed} images, "
            f"map {'from the cache' if not projection.computed_now else 'RECOMPUTED'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,70000")
    parser.add_argument("--scratch", default=str(Path(__file__).resolve().parent / "out"))
    args = parser.parse_args()
    import pacmap

    logging.getLogger("pacmap").setLevel(logging.ERROR)
    images, labels = fashion_arrays(70_000)
    pixels = images.reshape(len(images), -1).astype(np.float32)
    print(f"app default: {ProjectionConfig()}")
    for n in (int(s) for s in args.sizes.split(",")):
        x, y = pixels[:n], labels[:n]
        started = time.perf_counter()
        reference = pacmap.PaCMAP(n_components=3, random_state=0).fit_transform(x, init="pca")
        reference_s = time.perf_counter() - started
        reference_knn = knn_accuracy(reference, y)
        started = time.perf_counter()
        ours, _, _ = project_vectors(x, ProjectionConfig())
        ours_s = time.perf_counter() - started
        ours_knn = knn_accuracy(ours, y)
        print(f"{n:>6,} points  PaCMAP defaults {reference_s:6.1f} s, 10-NN {reference_knn:.4f}   "
              f"app default {ours_s:6.1f} s, 10-NN {ours_knn:.4f}   ({(ours_knn - reference_knn) * 100:+.2f} points, "
              f"{ours_s / n * 10_000:.1f} s per 10k points)")
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    reopen_after_relabel(scratch)


if __name__ == "__main__":
    main()

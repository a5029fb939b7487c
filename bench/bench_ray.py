"""Ray's overhead on this machine: embedding images/s locally and through Ray Data on the same cores, and the
time to start a local Ray. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_ray.py                 # 10,000 Fashion-MNIST images
    .venv/bin/python bench/bench_ray.py --images 2000

Both paths run the app's default embedder (EfficientNet-Lite0, the runtime ``auto`` picks here) over the same
PNG files on disk into a fresh cache, so the figures are end to end: decoding, the model, the cache. Ray's
run includes starting a local Ray (``--ray local``), which is also timed on its own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.data.ingest import import_dataset  # noqa: E402
from labelloop.embed import EmbedderConfig, embed_dataset, load_embeddings  # noqa: E402


def write_images(root: Path, n: int) -> None:
    from PIL import Image

    from labelloop.data.demo import load_source_images

    source = load_source_images()
    for i in range(n):
        target = root / source.class_names[source.labels[i]] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.images[i], "L").save(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; {args.images:,} images")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_images(tmp / "images", args.images)
        import_dataset(str(tmp / "images"), "bench", tmp / "ws")
        config = EmbedderConfig()

        # A warm-up on 64 images, so both runs find the ONNX/OpenVINO export made (it is cached per workspace).
        warm = tmp / "warm"
        write_images(warm / "images", 64)
        import_dataset(str(warm / "images"), "warm", tmp / "ws")
        embed_dataset(tmp / "ws", "warm", config)

        started = time.perf_counter()
        local = embed_dataset(tmp / "ws", "bench", config)
        local_s = time.perf_counter() - started
        local_vectors = load_embeddings(tmp / "ws", "bench", local.key).vectors
        shutil.rmtree(tmp / "ws" / "bench" / "embeddings")
        print(f"local:        {local.n_computed / local_s:7.1f} images/s ({local_s:.1f} s; {local.description})")

        import ray

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        start_s = time.perf_counter() - started
        ray.shutdown()
        print(f"start a local Ray (ray.init and shutdown's start half): {start_s:.1f} s")

        started = time.perf_counter()
        on_ray = embed_dataset(tmp / "ws", "bench", config, ray="local")
        ray_s = time.perf_counter() - started
        ray_vectors = load_embeddings(tmp / "ws", "bench", on_ray.key).vectors
        cosine = (local_vectors * ray_vectors).sum(1) / (np.linalg.norm(local_vectors, axis=1) * np.linalg.norm(ray_vectors, axis=1))
        print(f"ray local:    {on_ray.n_computed / ray_s:7.1f} images/s ({ray_s:.1f} s, starting Ray included; same key: {on_ray.key == local.key}; min cosine {cosine.min():.6f})")
        steady = on_ray.n_computed / max(ray_s - start_s, 1e-9)
        print(f"ray overhead: {100 * (ray_s / local_s - 1):.0f}% end to end; {100 * (local.n_computed / local_s / steady - 1):.0f}% without Ray's start ({steady:.1f} images/s)")


if __name__ == "__main__":
    main()

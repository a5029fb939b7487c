"""CPU against GPU on this machine, in one run: embedding images/s and ResNet-18 seconds per epoch.
Prints "no GPU" and exits where torch sees none. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_gpu.py                  # 5,000 Fashion-MNIST images
    .venv/bin/python bench/bench_gpu.py --images 20000

Embedding: the app's default embedder end to end (PNG files -> the cache): on the CPU with the runtime
``auto`` picks there, on the GPU with torch in bf16 autocast (and fp32, for the precision's cost).
ResNet-18 from scratch: its recipe (128 px, batch 16, crop-flip-jitter) for 2 epochs on each device, and on
the GPU also at batch 128 (what a GPU is for).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch sees no CUDA device here, so there is nothing to compare")
        return

    from bench.bench_ray import write_images
    from labelloop.compute.device import Compute, describe_device
    from labelloop.data.ingest import import_dataset
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.train.pipeline import train
    from labelloop.train.registry import default_settings

    print(f"GPU: {describe_device(torch.device('cuda', 0))}; CPU: {describe_device(torch.device('cpu'))}; {args.images:,} images")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_images(tmp / "images", args.images)
        import_dataset(str(tmp / "images"), "bench", tmp / "ws")
        for label, config in (("cpu (auto runtime)", EmbedderConfig(device="cpu")), ("cuda bf16", EmbedderConfig(device="cuda")), ("cuda fp32", EmbedderConfig(device="cuda", precision="fp32", batch_size=128))):
            shutil.rmtree(tmp / "ws" / "bench" / "embeddings", ignore_errors=True)
            started = time.perf_counter()
            report = embed_dataset(tmp / "ws", "bench", config)
            seconds = time.perf_counter() - started
            print(f"embed {label:20s} {report.n_computed / seconds:8.1f} images/s end to end ({report.description})")
        for label, device, batch in (("cpu, batch 16", "cpu", 16), ("cuda, batch 16", "cuda", 16), ("cuda, batch 128", "cuda", 128)):
            settings = default_settings("resnet18-scratch", epochs=args.epochs, batch_size=batch)
            run = train(tmp / "ws", "bench", settings, compute=Compute(device=device))
            print(f"resnet18 {label:17s} {run.summary.seconds_per_epoch:8.2f} s per epoch of {run.summary.n_labelled:,} images; val accuracy {run.summary.held_out_accuracy:.3f}")


if __name__ == "__main__":
    main()

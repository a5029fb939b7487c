"""Embedding speed on this machine, and what the fast runtime costs in accuracy. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_embed.py            # 10,000 images end to end
    .venv/bin/python bench/bench_embed.py --full     # all 70,000 Fashion-MNIST images end to end

Measured in one run, so the figures compare:
  * the machine's fp32 matmul rate (torch, 2048 x 2048),
  * EfficientNet-Lite0's FLOPs per 224-px image (torch's FLOP counter),
  * model-only images/s: a plain torch eager loop, ONNX Runtime, OpenVINO fp32, OpenVINO bf16,
  * end to end (PNG files on disk -> vectors in the cache) with the app's default settings,
  * bf16 against fp32 features: cosine, and a linear probe's accuracy on labelled images.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.data.images import load_square  # noqa: E402
from labelloop.data.ingest import import_dataset  # noqa: E402
from labelloop.embed import (  # noqa: E402
    EmbedderConfig,
    embed_dataset,
    load_embedder,
    torch_feature_model,
)


def rate(run, batch: int, seconds: float = 6.0) -> float:
    run()
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        run()
        done += batch
    return done / (time.perf_counter() - started)


def matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9)
    return best


def fashion_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    folder = Path("/usr/share/datasets/fashion-mnist")
    images, labels = [], []
    for part in ("train", "t10k"):
        with gzip.open(folder / f"{part}-images-idx3-ubyte.gz") as handle:
            images.append(np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28))
        with gzip.open(folder / f"{part}-labels-idx1-ubyte.gz") as handle:
            labels.append(np.frombuffer(handle.read(), np.uint8, offset=8))
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="images for the end-to-end run")
    parser.add_argument("--full", action="store_true", help="end to end on all 70,000 Fashion-MNIST images")
    parser.add_argument("--scratch", default=str(Path(__file__).resolve().parent / "out"))
    args = parser.parse_args()
    n_end_to_end = 70_000 if args.full else args.images
    import torch
    from PIL import Image

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    gflops = matmul_gflops()
    print(f"fp32 matmul 2048x2048 (torch):         {gflops:8.1f} GFLOP/s")

    module, _, _ = torch_feature_model(EmbedderConfig())
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
    flops = counter.get_total_flops()
    print(f"EfficientNet-Lite0 at 224 px:          {flops / 1e9:8.3f} GFLOP per image")

    def line(name: str, images_per_s: float, baseline: float | None = None) -> None:
        share = flops * images_per_s / (gflops * 1e9)
        extra = f"  {images_per_s / baseline:4.1f}x torch eager" if baseline else ""
        print(f"{name:<39}{images_per_s:8.1f} img/s  = {share:4.2f} of the matmul rate{extra}")

    batch8 = torch.randn(8, 3, 224, 224)
    features = module.features.eval()
    with torch.inference_mode():
        eager = rate(lambda: features(batch8), 8)
    line("model only, torch eager (NCHW, batch 8)", eager)

    uint8_batch = np.random.default_rng(0).integers(0, 256, (64, 224, 224, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as models:
        try:
            import onnxruntime as ort

            from labelloop.embed.runtimes import export_onnx, probe_images

            onnx_path = Path(models) / "m.onnx"
            export_onnx(module, probe_images(224), onnx_path)
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            line("model only, ONNX Runtime (batch 64)", rate(lambda: session.run(None, {"images": uint8_batch}), 64), eager)
        except ImportError:
            print("model only, ONNX Runtime: not installed")
        for precision in ("fp32", "bf16"):
            try:
                embedder = load_embedder(EmbedderConfig(precision=precision), models)
            except Exception as exc:  # bf16 needs CPU support
                print(f"model only, OpenVINO {precision}: unavailable ({exc})")
                continue
            line(f"model only, OpenVINO {precision} (batch 64)", rate(lambda: embedder.embed_batch(uint8_batch), 64), eager)

        # bf16 against fp32 on real labelled images.
        images, labels = fashion_arrays(5000)
        inputs = np.stack([np.asarray(Image.fromarray(i).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)) for i in images])
        vectors = {}
        for precision in ("fp32", "bf16"):
            try:
                embedder = load_embedder(EmbedderConfig(precision=precision), models)
            except Exception:
                continue
            vectors[precision] = np.concatenate([embedder.embed_batch(inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
        if len(vectors) == 2:
            a, b = vectors["fp32"], vectors["bf16"]
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            print(f"bf16 vs fp32 features, 5,000 images:   cosine min {cosine.min():.4f}, mean {cosine.mean():.4f}")
            from sklearn.linear_model import LogisticRegression

            for precision, x in vectors.items():
                probe = LogisticRegression(max_iter=2000).fit(x[:4000], labels[:4000])
                print(f"linear probe, {precision} features (4k train / 1k test): {probe.score(x[4000:], labels[4000:]):.4f}")

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        tmp = Path(tmp)
        images, labels = fashion_arrays(n_end_to_end)
        for i, (image, label) in enumerate(zip(images, labels)):
            target = tmp / "images" / f"class{label}" / f"{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target)
        import_dataset(tmp / "images", "bench", tmp / "ws")
        started = time.perf_counter()
        load_embedder(EmbedderConfig(), tmp / "ws" / ".models")  # first use: export, check, compile
        print(f"first model load (export + check + compile): {time.perf_counter() - started:.1f} s")
        from tqdm import tqdm

        bar = tqdm(total=n_end_to_end, unit="img", file=sys.stderr, desc="end to end", mininterval=10)
        started = time.perf_counter()
        report = embed_dataset(tmp / "ws", "bench", EmbedderConfig(), progress=lambda done, total: bar.update(done - bar.n))
        seconds = time.perf_counter() - started
        bar.close()
        line(f"end to end, {report.n_computed:,} PNGs -> cache", report.n_computed / seconds, eager)
        print(f"end to end wall time for {report.n_computed:,} images: {seconds:.1f} s ({report.key})")
        started = time.perf_counter()
        again = embed_dataset(tmp / "ws", "bench", EmbedderConfig())
        print(f"second run (all cached): {time.perf_counter() - started:.2f} s, {again.n_computed} embedded")
        one = load_square(str(next((tmp / "images").rglob("*.png"))), 224)
        started = time.perf_counter()
        for path in list((tmp / "images").rglob("*.png"))[:2000]:
            load_square(str(path), 224)
        print(f"decoding alone (one process): {2000 / (time.perf_counter() - started):.0f} img/s; input {one.shape}")


if __name__ == "__main__":
    main()

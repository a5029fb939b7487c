"""The recommended models on this machine: size, FLOPs, and images/s end to end. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_models.py              # every recommended model: 1,000 images (100 over 10 GFLOPs, 20 over 100)
    .venv/bin/python bench/bench_models.py --skip-large # without ViT-L/16 SWAG (362 GFLOPs an image: minutes on a CPU)

This machine cannot download published weights, so each model's real
architecture is saved with random weights into a temporary TORCH_HOME /
HF_HOME laid out as its library's cache, and loaded from there by name with
the hub offline: the same code path, the same tensor shapes and FLOPs, so the
same speed as the published weights (speed does not depend on the values).
Images: Fashion-MNIST PNGs on disk, through the app's embedding (decoding in
a separate process, the auto runtime: OpenVINO where the CPU has it, the
export checked against torch first).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelloop.data.ingest import import_dataset  # noqa: E402
from labelloop.embed import embed_dataset, embedding_cache  # noqa: E402
from labelloop.embed.models import RECOMMENDED, config_of, model_choices  # noqa: E402
from tests import model_caches  # noqa: E402
from tests.conftest import write_fashion_folders  # noqa: E402


def place_random_weights(name: str, torch_home: Path, hub_cache: Path) -> None:
    """The model's real architecture with random weights, where its library caches the published file."""
    config = config_of(name)
    if config.kind == "torchvision":
        model_caches.torchvision_checkpoint(torch_home, config.arch, config.pretrained)
    elif config.kind == "timm":
        model_caches.timm_snapshot(hub_cache, config.arch)
    elif config.kind == "open_clip":
        model_caches.open_clip_tag_snapshot(hub_cache, config.arch, config.pretrained)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000, help="images for the models under 10 GFLOPs an image")
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-models-"))
    torch_home, hub_cache = root / "torch", root / "hf" / "hub"
    os.environ["TORCH_HOME"] = str(torch_home)
    from huggingface_hub import constants

    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(hub_cache), True
    workspace = root / "workspace"
    workspace.mkdir()
    # Fewer images for slower models, so each takes a minute or so; enough that loading the model is a small part.
    tiers = [(10.0, max(10, args.images // 10 * 10)), (100.0, 100), (float("inf"), 20)]
    for limit, count in tiers:
        import_dataset(write_fashion_folders(root / f"images-{count}", count // 10), f"bench-{count}", workspace)
    print(f"Fashion-MNIST PNGs: {tiers[0][1]} for models under 10 GFLOPs, 100 under 100, 20 above; {os.cpu_count()} CPU cores; "
          f"weights: random, in each library's cache layout under {root}.\nimages/s: a second job, end to end (load the model, decode, embed, cache)\n")
    print(f"{'model':46} {'params (M)':>10} {'GFLOPs':>8} {'input':>6} {'runtime':>16} {'images/s':>9}")
    for recommended in RECOMMENDED:
        name = recommended.name
        if args.skip_large and recommended.facts.gflops > 100:
            print(f"{name:46} {recommended.facts.parameters / 1e6:10.1f} {recommended.facts.gflops:8.1f} {recommended.facts.input_size:5}px {'skipped':>16}")
            continue
        place_random_weights(name, torch_home, hub_cache)
        dataset = f"bench-{next(count for limit, count in tiers if recommended.facts.gflops < limit)}"
        started = time.perf_counter()
        report = embed_dataset(workspace, dataset, config_of(name))  # the first time: the ONNX export and its check too
        cold = time.perf_counter() - started
        shutil.rmtree(embedding_cache(workspace, dataset, report.key).folder)
        started = time.perf_counter()
        report = embed_dataset(workspace, dataset, config_of(name))  # as every later job: load, decode, embed, cache
        warm = time.perf_counter() - started
        runtime = report.description.split(" via ")[-1] if " via " in report.description else "torch fp32"  # torch: the export was refused
        print(f"{name:46} {recommended.facts.parameters / 1e6:10.1f} {recommended.facts.gflops:8.1f} {recommended.facts.input_size:5}px "
              f"{runtime:>16} {report.n_computed / warm:9.2f}   ({report.n_computed} images; the first job, with the export: {cold:.0f} s)")
    print("\nWhat the app's model list shows after this run (speeds measured here now):")
    for choice in model_choices(workspace):
        print(f"  {choice.label()}")


if __name__ == "__main__":
    main()

"""Every torch path on a CUDA GPU: each family trains a few steps there, and CUDA embeddings match the CPU's.

Skipped where torch sees no GPU (the project's CI machines); run on a GPU machine with
``.venv/bin/python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labelloop.compute.device import Compute
from labelloop.data.ingest import import_dataset
from labelloop.embed import EmbedderConfig, embed_dataset, load_embeddings
from labelloop.train.pipeline import train
from labelloop.train.predict import predict_folder
from labelloop.train.registry import default_settings
from tests.conftest import write_fashion_folders

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_fashion_folders(tmp_path_factory.mktemp("fashion") / "images", per_class=12)


@pytest.fixture
def fashion(images: Path, workspace: Path) -> Path:
    import_dataset(str(images), "fashion", workspace)
    return workspace


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cuda_embeddings_match_the_cpu_in_fp32(fashion: Path):
    cpu = embed_dataset(fashion, "fashion", EmbedderConfig(runtime="torch", precision="fp32", device="cpu"))
    cpu_vectors = load_embeddings(fashion, "fashion", cpu.key).vectors
    import shutil

    shutil.rmtree(fashion / "fashion" / "embeddings")
    gpu = embed_dataset(fashion, "fashion", EmbedderConfig(precision="fp32", device="cuda"))
    assert gpu.key == cpu.key and "cuda" in gpu.description
    assert _cosine(cpu_vectors, load_embeddings(fashion, "fashion", gpu.key).vectors).min() > 0.999


def test_bf16_embeddings_on_cuda_have_their_own_key(fashion: Path):
    report = embed_dataset(fashion, "fashion", EmbedderConfig(device="cuda"))
    if torch.cuda.is_bf16_supported():
        assert report.key.endswith("-bf16") and "torch on cuda:0 bf16" in report.description


@pytest.mark.parametrize("family,overrides", [
    ("heads", {"heads": ("mlp", "softmax"), "folds": 2, "epochs": 3, "final_epochs": 3}),
    ("resnet18-scratch", {"epochs": 2, "batch_size": 16}),
    ("frozen-backbone", {"epochs": 2}),
    ("frozen-backbone", {"epochs": 2, "augmentation": "crop-flip-jitter", "unfreeze_from": 2, "image_size": 96}),
    ("triplet", {"epochs": 2}),
])
def test_each_family_trains_on_cuda_and_predicts(fashion: Path, images: Path, tmp_path: Path, family: str, overrides: dict):
    embed_dataset(fashion, "fashion", EmbedderConfig(device="cuda"))
    settings = default_settings(family, **overrides)
    if family in ("heads", "triplet"):
        from dataclasses import replace

        from labelloop.embed import list_embeddings

        settings = replace(settings, embedding=list_embeddings(fashion, "fashion")[0]["key"])
    run = train(fashion, "fashion", settings, compute=Compute(device="cuda"))
    assert run.summary.device.startswith("cuda:0")
    if family != "triplet":
        out, rows, _ = predict_folder(run.run_id, images, tmp_path / "p.csv", fashion, compute=Compute(device="cuda"))
        assert rows == 120

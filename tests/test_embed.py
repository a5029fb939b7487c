"""Embedders on real images, the embedding cache, and every way a checkpoint or an image can be bad."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import add_images, import_dataset
from labelloop.embed import (
    EmbedderConfig,
    embed_dataset,
    embed_paths,
    embedder_key,
    embedding_cache,
    list_embeddings,
    load_embedder,
    load_embeddings,
)
from labelloop.errors import Cancelled, UserError
from tests.conftest import write_fashion_folders

PIXELS = EmbedderConfig(kind="pixels", resolution=16)


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    """A data set of 100 real Fashion-MNIST images, 10 per class."""
    import_dataset(write_fashion_folders(tmp_path / "fashion", 10), "fashion", workspace)
    return workspace


def test_pixels_embed_every_image_and_the_cache_is_keyed_by_content(fashion: Path):
    report = embed_dataset(fashion, "fashion", PIXELS)
    assert (report.n_images, report.n_computed, report.n_cached, len(report.failures)) == (100, 100, 0, 0)
    embeddings = load_embeddings(fashion, "fashion", report.key)
    assert embeddings.vectors.shape == (100, 16 * 16 * 3) and embeddings.vectors.dtype == np.float32
    assert embeddings.missing == 0 and np.isfinite(embeddings.vectors).all()
    assert 0.0 <= embeddings.vectors.min() and embeddings.vectors.max() <= 1.0
    # Different images, different vectors; the cache is per content, so rows with the same file share one.
    assert len(np.unique(embeddings.vectors.round(4), axis=0)) == 100


@pytest.mark.slow
def test_relabelling_never_re_embeds_and_adding_embeds_only_the_new_images(fashion: Path, tmp_path: Path):
    from labelloop.data.workspace import open_table

    embed_dataset(fashion, "fashion", PIXELS)
    table = open_table(fashion, "fashion")
    table.commit(ChangeSet.relabel(table.read()["sample_id"][:30], "bag"), parent=1, message="relabel 30")
    again = embed_dataset(fashion, "fashion", PIXELS)
    assert (again.n_cached, again.n_computed) == (100, 0)
    write_fashion_folders(tmp_path / "fashion", 10, offset=10)  # 100 more files in the same folders
    add_images(tmp_path / "fashion", "fashion", fashion)
    more = embed_dataset(fashion, "fashion", PIXELS)
    assert (more.n_images, more.n_cached, more.n_computed) == (200, 100, 100)
    assert load_embeddings(fashion, "fashion", more.key).vectors.shape[0] == 200


def test_an_image_changed_or_deleted_since_import_is_reported_and_skipped(fashion: Path):
    from labelloop.data.workspace import open_table

    rows = open_table(fashion, "fashion").read()
    changed, deleted = rows["path"].iloc[0], rows["path"].iloc[1]
    Path(changed).write_bytes(b"\x89PNG now garbage")
    os.remove(deleted)
    report = embed_dataset(fashion, "fashion", PIXELS)
    reasons = dict(zip(report.failures["path"], report.failures["reason"]))
    assert reasons[changed].startswith("changed since import")
    assert reasons[deleted].startswith("missing")
    assert report.n_computed == 98
    assert load_embeddings(fashion, "fashion", report.key).missing == 2


@pytest.mark.slow
def test_a_cancelled_run_keeps_its_work_and_the_next_one_resumes(tmp_path: Path, workspace: Path):
    import_dataset(write_fashion_folders(tmp_path / "many", 520), "many", workspace)  # 5,200 images: two cache chunks
    calls = {"n": 0}

    def stop_after_a_while() -> bool:
        calls["n"] += 1
        return calls["n"] > 150  # 150 batches of 32 = 4,800 images, past the first 4,096-vector chunk

    with pytest.raises(Cancelled, match="resume"):
        embed_dataset(workspace, "many", PIXELS, should_stop=stop_after_a_while)
    resumed = embed_dataset(workspace, "many", PIXELS)
    assert resumed.n_cached >= 4096 and resumed.n_cached + resumed.n_computed == 5200
    cache = embedding_cache(workspace, "many", resumed.key)
    hashes, vectors = cache.load()
    assert len(hashes) == 5200 and len(cache.chunks()) == 3  # 4,096 at the chunk size, 704 flushed on cancel, 400 on resume
    cache.compact(max_chunks=1)
    assert len(cache.chunks()) == 1
    merged_hashes, merged = cache.load()
    assert list(merged_hashes) == list(hashes) and np.array_equal(merged, vectors)


def test_a_damaged_cache_file_is_ignored_and_recomputed(fashion: Path):
    report = embed_dataset(fashion, "fashion", PIXELS)
    for chunk in embedding_cache(fashion, "fashion", report.key).chunks():
        chunk.write_bytes(b"not parquet")
    again = embed_dataset(fashion, "fashion", PIXELS)
    assert again.n_computed == 100


def test_a_cache_written_with_vectors_as_float_lists_still_loads_beside_new_chunks(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = embedding_cache(tmp_path, "old", "pixels")
    rng = np.random.default_rng(0)
    old_vectors, new_vectors = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(3, 7)).astype(np.float32)
    cache.folder.mkdir(parents=True)
    # The layout caches had before vectors were stored as fixed-width bytes: a list of 7 floats per row.
    pq.write_table(
        pa.table({"content_hash": [f"{i:032x}" for i in range(5)], "vector": pa.FixedSizeListArray.from_arrays(pa.array(old_vectors.ravel()), 7)}),
        cache.folder / "chunk-00000000000000000001-aaaaaaaa.parquet",
    )
    cache.append([f"{i:032x}" for i in range(5, 8)], new_vectors)
    assert pa.types.is_fixed_size_binary(pq.read_schema(cache.chunks()[-1]).field("vector").type)
    hashes, vectors = cache.load()
    assert list(hashes) == [f"{i:032x}" for i in range(8)]
    np.testing.assert_array_equal(vectors, np.concatenate([old_vectors, new_vectors]))  # bit for bit, both layouts


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [EmbedderConfig(), EmbedderConfig(runtime="onnxruntime"), EmbedderConfig(runtime="openvino", precision="fp32")],
    ids=["auto", "onnxruntime", "openvino-fp32"],
)
def test_efficientnet_lite0_fast_runtimes_match_torch_on_real_images(tmp_path: Path, config: EmbedderConfig):
    root = write_fashion_folders(tmp_path / "f", 2)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    fast = load_embedder(config, tmp_path / "models")
    reference = load_embedder(EmbedderConfig(runtime="torch"), tmp_path / "models")
    assert fast.dim == reference.dim == 1280
    assert fast.runtime in ("openvino-bf16", "onnxruntime-fp32", "openvino-fp32") and not fast.warnings
    assert fast.key == embedder_key(config)  # the key is known without loading the model
    a, failures_a = embed_paths(fast, paths, batch_size=8)
    b, failures_b = embed_paths(reference, paths, batch_size=8)
    assert not failures_a and not failures_b
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > (0.99 if fast.runtime == "openvino-bf16" else 0.9999)
    assert (tmp_path / "models" / "efficientnet-lite0-224px" / "model.onnx").exists()
    # Pretrained features separate classes: same-class images are closer than other-class ones on average.
    labels = [Path(p).parent.name for p in paths]
    same = [cosine_between(b, i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if labels[i] == labels[j]]
    other = [cosine_between(b, i, j) for i in range(len(paths)) for j in range(i + 1, len(paths)) if labels[i] != labels[j]]
    assert np.mean(same) > np.mean(other)


def cosine_between(vectors: np.ndarray, i: int, j: int) -> float:
    return float(vectors[i] @ vectors[j] / np.linalg.norm(vectors[i]) / np.linalg.norm(vectors[j]))


def test_resolution_is_a_setting_and_part_of_the_key(tmp_path: Path):
    small = load_embedder(EmbedderConfig(resolution=128, runtime="torch"), tmp_path)
    assert small.resolution == 128 and "128px" in small.key
    images = np.zeros((2, 128, 128, 3), np.uint8)
    assert small.embed_batch(images).shape == (2, 1280)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_without_weights_warns_that_features_are_untrained(tmp_path: Path):
    embedder = load_embedder(EmbedderConfig(kind="torchvision", arch="resnet18", runtime="torch"), tmp_path)
    assert embedder.dim == 512 and "untrained" in embedder.description
    assert any("untrained" in w for w in embedder.warnings)


def test_torchvision_loads_a_local_weights_file(tmp_path: Path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(net.fc.weight, 0.0)  # any real state dict of the architecture
    weights = tmp_path / "resnet18-mine.pth"
    torch.save(net.state_dict(), weights)
    embedder = load_embedder(EmbedderConfig(kind="torchvision", arch="resnet18", weights=str(weights), runtime="torch"), tmp_path)
    assert embedder.warnings == [] and "resnet18-mine.pth" in embedder.description
    assert embedder.key.startswith("torchvision-resnet18-224px-w")
    net.eval().fc = torch.nn.Identity()
    image = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    expected = net(((torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    assert np.allclose(embedder.embed_batch(image), expected.detach().numpy(), atol=1e-4)


def test_bad_checkpoints_get_clear_errors(tmp_path: Path):
    import torchvision

    other_arch = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other_arch)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(UserError, match="is not a checkpoint for torchvision resnet18"):
        load_embedder(EmbedderConfig(kind="torchvision", arch="resnet18", weights=str(other_arch), runtime="torch"), tmp_path)
    with pytest.raises(UserError, match="Cannot read .* as a PyTorch checkpoint"):
        load_embedder(EmbedderConfig(kind="torchvision", arch="resnet18", weights=str(not_a_checkpoint), runtime="torch"), tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_embedder(EmbedderConfig(kind="torchvision", arch="resnet18", weights=str(tmp_path / "nope.pth")), tmp_path)
    with pytest.raises(UserError, match="Unknown torchvision architecture"):
        load_embedder(EmbedderConfig(kind="torchvision", arch="resnet9000"), tmp_path)


@pytest.mark.slow
def test_weights_full_of_nan_are_caught_not_cached(fashion: Path, tmp_path: Path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    weights = tmp_path / "broken.pth"
    torch.save(state, weights)
    report = embed_dataset(fashion, "fashion", EmbedderConfig(kind="torchvision", arch="resnet18", weights=str(weights), runtime="torch", resolution=32))
    assert len(report.failures) == 100 and report.n_computed == 0
    assert report.failures["reason"].str.contains("NaN").all()
    assert load_embeddings(fashion, "fashion", report.key).vectors.shape[0] == 0


# --------------------------------------------------------------------------- open_clip


@pytest.fixture
def tiny_clip(tmp_path: Path) -> str:
    """A small randomly initialised open_clip model, registered and saved like a user's checkpoint."""
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    model = open_clip.create_model("tiny-test-clip")
    checkpoint = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return str(checkpoint)


@pytest.mark.slow
def test_open_clip_loads_a_local_checkpoint(tiny_clip: str, fashion: Path):
    config = EmbedderConfig(kind="open_clip", arch="tiny-test-clip", weights=tiny_clip, runtime="torch")
    report = embed_dataset(fashion, "fashion", config)
    assert report.n_computed == 100 and "open_clip tiny-test-clip" in report.description
    vectors = load_embeddings(fashion, "fashion", report.key).vectors
    assert vectors.shape == (100, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)  # CLIP features are unit length
    assert report.key == embedder_key(config) and "32px" in report.key  # the model's own input size


def test_open_clip_refuses_the_wrong_checkpoint_or_architecture(tiny_clip: str, tmp_path: Path):
    import torchvision

    resnet = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(UserError, match="is not a checkpoint for open_clip tiny-test-clip"):
        load_embedder(EmbedderConfig(kind="open_clip", arch="tiny-test-clip", weights=str(resnet), runtime="torch"), tmp_path)
    with pytest.raises(UserError, match="does not know the architecture"):
        load_embedder(EmbedderConfig(kind="open_clip", arch="no-such-model", weights=tiny_clip), tmp_path)
    with pytest.raises(UserError, match="needs weights: a pretrained tag"):
        load_embedder(EmbedderConfig(kind="open_clip", arch="ViT-B-32"), tmp_path)


@pytest.mark.parametrize(
    "config, match",
    [
        (EmbedderConfig(kind="clip"), "Invalid embedder setting: Embedder: 'clip' is not one of efficientnet-lite0"),
        (EmbedderConfig(runtime="gpu"), "Runtime: 'gpu' is not one of auto, openvino"),
        (EmbedderConfig(resolution=4), "Resolution must be 8 to 1,024, not 4"),
        (EmbedderConfig(batch_size=0), "Batch size must be 1 to 1,024, not 0"),
        (EmbedderConfig(kind="pixels", weights="/etc/hostname"), "takes no weights"),
    ],
)
def test_bad_settings_are_refused(config: EmbedderConfig, match: str, tmp_path: Path):
    with pytest.raises(UserError, match=match):
        load_embedder(config, tmp_path)


def test_embeddings_are_listed_with_their_description(fashion: Path):
    embed_dataset(fashion, "fashion", PIXELS)
    listed = list_embeddings(fashion, "fashion")
    assert [m["key"] for m in listed] == ["pixels-16px"] and listed[0]["dim"] == 768
    with pytest.raises(UserError, match="no embeddings"):
        load_embeddings(fashion, "fashion", "efficientnet-lite0-224px-fp32")

"""Pretrained models by name, offline: tiny random models of the real architectures in each library's own cache.

Each library loads them through its own code (torchvision's weights enums and
torch.hub, timm's and open_clip's Hugging Face hub loading) with the hub in
offline mode; names that are not cached must fail in seconds with a message
that says which file, where, and what to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from labelloop.compute.measured import record
from labelloop.data.ingest import import_dataset
from labelloop.data.workspace import open_table
from labelloop.embed import (
    EmbedderConfig,
    embed_dataset,
    embedder_key,
    list_embeddings,
    load_embedder,
    load_embeddings,
)
from labelloop.embed.config import parse_model_name
from labelloop.embed.models import (
    RECOMMENDED,
    config_of,
    model_choices,
    model_facts,
    model_from_flags,
)
from labelloop.embed.text import closest_to_text, zero_shot
from labelloop.errors import UserError
from labelloop.train.frozen import FrozenBackboneSettings
from labelloop.train.pipeline import train
from labelloop.train.predict import predict_folder
from tests import model_caches
from tests.conftest import REPO, write_fashion_folders

TORCHVISION = "torchvision:mobilenet_v3_small:IMAGENET1K_V1"
TIMM = "timm:test_vit.r160_in1k"
TINY_CLIP = f"open_clip:hf-hub:{model_caches.TINY_CLIP_REPO}"
UNCACHED = {
    "torchvision:vit_l_16:IMAGENET1K_SWAG_E2E_V1": ("vit_l_16_swag-4f3808c9.pth", "hub/checkpoints"),
    "open_clip:ViT-B-32:laion2b_s34b_b79k": ("open_clip_model.safetensors", "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"),
    "timm:vit_small_patch14_dinov2.lvd142m": ("model.safetensors", "models--timm--vit_small_patch14_dinov2.lvd142m"),
}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    """TORCH_HOME and HF_HOME holding the three tiny models, as each library leaves its downloads."""
    root = tmp_path_factory.mktemp("model-caches")
    model_caches.torchvision_checkpoint(root / "torch", "mobilenet_v3_small", "IMAGENET1K_V1")
    model_caches.timm_snapshot(root / "hf" / "hub", "test_vit.r160_in1k")
    model_caches.open_clip_snapshot(root / "hf" / "hub")
    return root


@pytest.fixture
def offline(caches: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The libraries pointed at the caches, the hub in offline mode (as HF_HUB_OFFLINE=1 does at start-up)."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(caches / "torch"))
    monkeypatch.setenv("HF_HOME", str(caches / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(caches / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return caches


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    """60 real Fashion-MNIST images, 6 per class."""
    import_dataset(write_fashion_folders(tmp_path / "fashion", 6), "fashion", workspace)
    return workspace


def test_model_names_read_back_as_written():
    for name in [r.name for r in RECOMMENDED] + [TORCHVISION, TIMM, TINY_CLIP, "pixels"]:
        assert config_of(name).model_name == name
    assert parse_model_name("timm:hf-hub:timm/test_vit.r160_in1k") == {"kind": "timm", "arch": "hf-hub:timm/test_vit.r160_in1k", "pretrained": None}
    with pytest.raises(UserError, match="does not name a model"):
        parse_model_name("vit_l_16")
    # The CLI's spellings: torchvision's weights name given as --weights, the library found from --arch.
    assert model_from_flags(model=None, kind=None, arch="vit_l_16", pretrained=None, weights="IMAGENET1K_SWAG_E2E_V1") == {
        "kind": "torchvision", "arch": "vit_l_16", "pretrained": "IMAGENET1K_SWAG_E2E_V1", "weights": None}
    assert model_from_flags(model=None, kind=None, arch="ViT-B-32", pretrained="laion2b_s34b_b79k", weights=None)["kind"] == "open_clip"
    assert model_from_flags(model=None, kind=None, arch="vit_small_patch14_dinov2.lvd142m", pretrained=None, weights=None)["kind"] == "timm"
    # A run recorded before models had names (a kind and an architecture) reads as the same backbone.
    old = FrozenBackboneSettings.from_dict({"family": "frozen-backbone", "backbone": "torchvision", "backbone_arch": "resnet18", "backbone_weights": None})
    assert old.backbone == "torchvision:resnet18" and old.backbone_config().arch == "resnet18"


def test_two_weights_of_one_architecture_never_share_an_embedding_key():
    keys = {embedder_key(config_of(f"torchvision:mobilenet_v3_large:{w}", runtime="torch")) for w in ("IMAGENET1K_V1", "IMAGENET1K_V2")}
    assert len(keys) == 2 and all("IMAGENET1K_V" in k for k in keys)
    # DEFAULT is keyed by the weights it stands for today, so the key keeps its meaning when torchvision moves DEFAULT.
    assert embedder_key(config_of("torchvision:resnet50:DEFAULT", runtime="torch")) == embedder_key(config_of("torchvision:resnet50:IMAGENET1K_V2", runtime="torch"))
    with pytest.raises(UserError, match="has no weights named 'IMAGENET9K'.*IMAGENET1K_V1, IMAGENET1K_V2"):
        embedder_key(config_of("torchvision:resnet50:IMAGENET9K"))
    with pytest.raises(UserError, match="no pretrained tag 'laion9b'"):
        embedder_key(config_of("open_clip:ViT-B-32:laion9b"))


@pytest.mark.slow
def test_torchvision_weights_by_name_load_from_torch_cache_with_their_own_transforms(offline: Path, fashion: Path):
    import torchvision
    from PIL import Image

    report = embed_dataset(fashion, "fashion", config_of(TORCHVISION, runtime="torch"))
    assert report.n_computed == 60 and report.key == "torchvision-mobilenet_v3_small-IMAGENET1K_V1-256px-fp32"
    assert report.description == "torchvision mobilenet_v3_small IMAGENET1K_V1" and not report.warnings
    embeddings = load_embeddings(fashion, "fashion", report.key)
    # The same image through torchvision itself: the enum's weights and transforms (resize 256, crop 224, its mean/std).
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    net = torchvision.models.mobilenet_v3_small(weights=weights).eval()
    net.classifier[3] = torch.nn.Identity()
    row = open_table(fashion, "fashion").read().iloc[0]
    with torch.inference_mode():
        reference = net(weights.transforms()(Image.open(row["path"]).convert("RGB"))[None]).numpy()[0]
    ours = embeddings.vectors[list(embeddings.sample_ids).index(row["sample_id"])]
    cosine = float(ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference)))
    assert cosine > 0.99, cosine  # bicubic decoding instead of torchvision's bilinear: close, not identical


def test_timm_weights_by_name_load_from_the_hugging_face_cache(offline: Path, fashion: Path):
    report = embed_dataset(fashion, "fashion", config_of(TIMM, runtime="torch"))
    # test_vit.r160_in1k: input 160 px at crop_pct 0.95, so images are decoded at floor(160 / 0.95) = 168 and centre-cropped.
    assert report.n_computed == 60 and report.key == "timm-test_vit.r160_in1k-168px-fp32"
    vectors = load_embeddings(fashion, "fashion", report.key).vectors
    assert vectors.shape == (60, 64) and np.isfinite(vectors).all() and len(np.unique(vectors.round(5), axis=0)) == 60


@pytest.mark.slow
def test_an_open_clip_pretrained_tag_loads_from_the_hub_repository_it_names(offline: Path, tmp_path: Path):
    """ViT-B-32's laion2b_s34b_b79k tag is the repository laion/CLIP-ViT-B-32-laion2B-s34B-b79K: random weights placed there load by the tag."""
    model_caches.open_clip_tag_snapshot(offline / "hf" / "hub", "ViT-B-32", "laion2b_s34b_b79k")
    try:
        config = config_of("open_clip:ViT-B-32:laion2b_s34b_b79k", runtime="torch")
        assert config.published().cached
        embedder = load_embedder(config, tmp_path / "models")
        assert embedder.key == "open_clip-ViT-B-32-laion2b_s34b_b79k-224px-fp32" and embedder.dim == 512
        vectors = embedder.embed_batch(np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    finally:  # 600 MB: not kept for the other tests
        import shutil

        shutil.rmtree(offline / "hf" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K")


def test_an_uncached_name_offline_fails_in_seconds_saying_which_file_and_where(offline: Path, tmp_path: Path):
    # A download that broke off leaves partial files behind; neither library's partial file counts as the weights.
    partial = offline / "hf" / "hub" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "blobs"
    partial.mkdir(parents=True)
    (partial / "0123abcd.incomplete").write_bytes(b"\0" * 1000)
    (offline / "torch" / "hub" / "checkpoints" / "vit_l_16_swag-4f3808c9.pth.3f2a9c.partial").write_bytes(b"\0" * 1000)
    for name, (file_name, folder) in UNCACHED.items():
        started = time.perf_counter()
        with pytest.raises(UserError) as caught:
            load_embedder(config_of(name), tmp_path / "models")
        message = str(caught.value)
        assert time.perf_counter() - started < 5, name
        assert file_name in message and folder in message and str(offline) in message, message
        assert "not on this machine" in message and "On a machine with internet" in message, message


def test_without_a_network_the_message_says_the_host_cannot_be_reached(offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Hub offline mode off: the host is tried once, with a bounded time-out, and the message says so."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens on the discard port: refused at once, on any machine
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"open_clip_model.safetensors .*cannot be reached \(through the proxy 127.0.0.1:9\)"):
        load_embedder(config_of("open_clip:ViT-B-32:laion2b_s34b_b79k"), tmp_path / "models")
    assert time.perf_counter() - started < 10


def test_clip_by_hub_name_embeds_searches_by_text_and_suggests_zero_shot_labels(offline: Path, fashion: Path):
    report = embed_dataset(fashion, "fashion", config_of(TINY_CLIP, runtime="torch"))
    assert report.n_computed == 60
    vectors = load_embeddings(fashion, "fashion", report.key).vectors
    assert vectors.shape == (60, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    found = closest_to_text(fashion, "fashion", report.key, "a blurry photo", top=10)
    assert len(found) == 10 and found["similarity"].is_monotonic_decreasing
    assert found["sample_id"].is_unique and set(found["sample_id"]) <= set(load_embeddings(fashion, "fashion", report.key).sample_ids)
    # The ranking is the cosine with the text tower's vector: the same as computing it by hand.
    from labelloop.embed.kinds.open_clip_models import KIND

    query = KIND.text_encoder(config_of(TINY_CLIP))(["a blurry photo"])[0]
    assert np.isclose(found["similarity"].iloc[0], (vectors @ query).max(), atol=1e-5)
    classes = ["T-shirt", "Trouser", "Bag"]
    suggestions = zero_shot(fashion, "fashion", report.key, classes)
    assert len(suggestions) == 60 and set(suggestions["zero_shot_label"]) <= set(classes)
    assert ((suggestions["zero_shot_confidence"] >= 1 / 3 - 1e-6) & (suggestions["zero_shot_confidence"] <= 1)).all()
    with pytest.raises(UserError, match="not made by a CLIP model"):
        closest_to_text(fashion, "fashion", embed_dataset(fashion, "fashion", config_of(TIMM, runtime="torch")).key, "a dog")


@pytest.mark.slow
def test_the_frozen_backbone_family_trains_on_a_backbone_named_by_the_hub(offline: Path, fashion: Path, tmp_path: Path):
    settings = FrozenBackboneSettings(backbone=TIMM, epochs=2, batch_size=16)
    run = train(fashion, "fashion", settings)
    assert run.summary.embedding == embedder_key(config_of(TIMM))
    assert run.summary.embedding in [m["key"] for m in list_embeddings(fashion, "fashion")]
    _, rows, _ = predict_folder(run.run_id, write_fashion_folders(tmp_path / "new", 1, offset=100), tmp_path / "p.csv", fashion)
    assert rows == 10


@pytest.mark.slow
def test_model_facts_count_the_real_architecture_without_downloading(offline: Path, workspace: Path):
    facts = model_facts("torchvision:resnet50:IMAGENET1K_V2", workspace / ".models")
    assert facts.parameters == 23_508_032  # resnet50 without its 1000-class layer (25,557,032 - 2,049,000)
    assert abs(facts.gflops - 4.09) < 0.05 and (facts.input_size, facts.decoded_size) == (224, 232)
    for recommended in RECOMMENDED:  # the list's stored figures are what counting gives
        counted = model_facts(recommended.name, workspace / ".models")
        assert (counted.parameters, counted.input_size, counted.decoded_size) == (recommended.facts.parameters, recommended.facts.input_size, recommended.facts.decoded_size)
        assert abs(counted.gflops - recommended.facts.gflops) < 0.01, recommended.name
    choices = {c.name: c for c in model_choices(workspace, [(TORCHVISION, "MobileNet", ""), ("torchvision:resnet50:IMAGENET1K_V2", "ResNet-50", ""),
                                                           ("efficientnet-lite0", "Lite0", "")])}
    assert choices[TORCHVISION].cached and not choices["torchvision:resnet50:IMAGENET1K_V2"].cached and choices["efficientnet-lite0"].cached
    assert choices["efficientnet-lite0"].per_second is None and "not known" in choices["efficientnet-lite0"].speed()
    record(workspace, "embed efficientnet-lite0", 1000, 4.0)  # 250 images/s measured for the bundled model
    choices = {c.name: c for c in model_choices(workspace, [("efficientnet-lite0", "Lite0", ""), ("torchvision:resnet50:IMAGENET1K_V2", "ResNet-50", "")])}
    assert choices["efficientnet-lite0"].speed() == "250 img/s measured here"
    estimate = choices["torchvision:resnet50:IMAGENET1K_V2"]
    assert not estimate.measured and estimate.speed().endswith("estimated") and estimate.per_second < 250 / 5


def test_the_cli_embeds_by_name_with_the_caches_set_by_environment(caches: Path, tmp_path: Path, workspace: Path):
    """A fresh process finds the caches through TORCH_HOME and HF_HOME alone, as a user's shell sets them."""
    env = {**os.environ, "TORCH_HOME": str(caches / "torch"), "HF_HOME": str(caches / "hf"), "HF_HUB_OFFLINE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "labelloop", *args, "--workspace", str(workspace)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert cli("import", str(write_fashion_folders(tmp_path / "f", 2)), "--name", "f").returncode == 0
    done = cli("embed", "f", "--arch", "mobilenet_v3_small", "--weights", "IMAGENET1K_V1", "--runtime", "torch")
    assert done.returncode == 0 and "torchvision mobilenet_v3_small IMAGENET1K_V1: 20 images" in done.stdout, done.stderr
    done = cli("embed", "f", "--model", TINY_CLIP, "--runtime", "torch")
    assert done.returncode == 0 and "20 embedded" in done.stdout, done.stderr
    refused = cli("embed", "f", "--arch", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k")
    assert refused.returncode == 2 and "HF_HUB_OFFLINE=1" in refused.stderr and str(caches / "hf" / "hub") in refused.stderr, refused.stderr
    listed = cli("models", TORCHVISION, "open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if ":" in line.split()[0]}
    assert lines[TORCHVISION].endswith(" cached") and lines["open_clip:ViT-B-32:laion2b_s34b_b79k"].endswith("not cached")


# --------------------------------------------------------------------------- the pages


@pytest.mark.slow
def test_the_map_page_embeds_with_a_model_picked_from_the_list_or_named(offline: Path, fashion: Path):
    from tests.test_app import run_until
    from tests.test_app_pages import page

    app = page("map")
    picker = next(s for s in app.selectbox if s.label == "Model")
    assert picker.value == "efficientnet-lite0" and picker.options[0].startswith("EfficientNet-Lite0 (bundled) · 5 M params, 0.4 GFLOPs at 224 px")
    assert picker.options[0].endswith("· ready") and picker.options[1].endswith("· downloads ~605 MB")
    picker.set_value("Other model (type its name below)").run()
    next(t for t in app.text_input if t.label == "Other model name").input(TIMM).run()
    next(b for b in app.main.button if b.label == "Embed the images").click().run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    run_until(app, lambda a: any("Project to 3D" in b.label for b in a.main.button) and not any(b.label == "Cancel" for b in a.main.button))
    assert [m["key"].rsplit("-", 1)[0] for m in list_embeddings(fashion, "fashion")] == ["timm-test_vit.r160_in1k-168px"]  # the auto runtime's precision after
    # An uncached name: the job stops with the offline message, on the page, and caches nothing.
    picker = next(s for s in app.selectbox if s.label == "Model")
    picker.set_value("open_clip:ViT-B-32:laion2b_s34b_b79k").run()
    next(b for b in app.main.button if b.label == "Embed the images").click().run()
    run_until(app, lambda a: any("not on this machine" in e.value for e in a.error))
    assert len(list_embeddings(fashion, "fashion")) == 1


def test_clip_text_search_on_the_map_and_zero_shot_on_the_review_page(offline: Path, fashion: Path):
    from labelloop.data.changes import ChangeSet
    from labelloop.data.schema import UNDEFINED
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset
    from labelloop.train.heads import HeadsSettings
    from tests.test_app_pages import page

    clip = embed_dataset(fashion, "fashion", config_of(TINY_CLIP, runtime="torch")).key
    project_dataset(fashion, "fashion", clip, ProjectionConfig(dims=3))
    app = page("map")
    next(t for t in app.text_input if t.label == "Find images by description").input("a blurry photo")
    next(n for n in app.number_input if n.label == "How many").set_value(7)
    next(b for b in app.button if b.label == "Select").click().run()
    assert not app.exception, app.exception
    assert "**7 selected**" in [m.value for m in app.markdown]
    assert any("closest to 'a blurry photo'" in c.value for c in app.caption)

    table = open_table(fashion, "fashion")
    unlabelled = table.read()["sample_id"][::10]
    table.commit(ChangeSet.relabel(unlabelled, UNDEFINED), parent=1, message="6 to label")
    embed_dataset(fashion, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("knn",)))
    app = page("review")
    view = app.dataframe[0].value  # the editable table
    assert list(view.columns[3:5]) == ["predicted_label", "zero_shot"], view.columns
    undefined = view["label"] == UNDEFINED
    assert undefined.any() and view.loc[undefined, "zero_shot"].str.match(r"^\S.* \d\.\d\d$").all()
    assert (view.loc[~undefined, "zero_shot"] == "").all()


@pytest.mark.slow
def test_the_train_page_trains_a_frozen_backbone_named_in_its_picker(offline: Path, fashion: Path):
    from labelloop.data.runs import list_runs
    from tests.test_app import run_until
    from tests.test_app_pages import page

    app = page("train")
    next(s for s in app.selectbox if s.label == "Model family").set_value("frozen-backbone").run()
    backbone = next(s for s in app.selectbox if s.label == "Backbone")
    assert backbone.value == "efficientnet-lite0" and len(backbone.options) == len(RECOMMENDED) + 1
    backbone.set_value("Other model (type its name below)")
    next(t for t in app.text_input if t.label.startswith("Other model name")).input(TIMM)
    next(n for n in app.number_input if n.label == "Epochs").set_value(2)
    app.button(key="FormSubmitter:settings-frozen-backbone-Start training").click().run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    run_until(app, lambda a: bool(list_runs(fashion, "fashion")))
    run = list_runs(fashion, "fashion")[0]
    assert run.summary.embedding.startswith("timm-test_vit.r160_in1k-168px-")

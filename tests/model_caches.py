"""Tiny models of real architectures with random weights, saved where each library's cache expects them.

The hub libraries then load them by name with the network off, through their
own code: torchvision's ``$TORCH_HOME/hub/checkpoints/<file name of the enum's
URL>``, and the Hugging Face hub's ``hub/models--<org>--<repo>/snapshots/<revision>/``
with ``refs/main`` naming the revision (what timm and open_clip download into).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

TINY_CLIP_REPO = "labelloop-tests/tiny-clip"
TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def torchvision_checkpoint(torch_home: Path, arch: str, member: str) -> Path:
    """Random weights of torchvision ``arch`` saved as the file its ``member`` weights download to."""
    import os
    from urllib.parse import urlparse

    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch)[member]
    extra = {"image_size": weights.transforms().crop_size[0]} if arch.startswith("vit_") else {}
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=len(weights.meta["categories"]), **extra)
    target = torch_home / "hub" / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), target)
    return target


def hf_snapshot(hf_hub_cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Files of a Hugging Face hub repository laid out as hf_hub_download leaves them; returns the snapshot folder."""
    revision = hashlib.sha1(repo.encode()).hexdigest()  # 40 hex digits, as a commit hash is
    folder = hf_hub_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def _safetensors(state_dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state_dict.items()})


def timm_snapshot(hf_hub_cache: Path, name: str) -> Path:
    """Random weights of the timm model ``name`` (with its tag) in its hub repository's cache folder."""
    import timm
    import torch

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False)
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    return hf_snapshot(hf_hub_cache, repo, {"model.safetensors": _safetensors(net.state_dict())})


def open_clip_snapshot(hf_hub_cache: Path, repo: str = TINY_CLIP_REPO) -> Path:
    """A tiny CLIP (a 1-layer ViT image tower and a 1-layer text tower) with random weights, as an hf-hub: open_clip repository."""
    import open_clip
    import torch

    torch.manual_seed(0)
    path = hf_hub_cache.parent / "tiny-clip-config.json"
    model = open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"])
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return hf_snapshot(hf_hub_cache, repo, {"open_clip_config.json": path.read_bytes(), "open_clip_model.safetensors": _safetensors(model.state_dict())})


def open_clip_tag_snapshot(hf_hub_cache: Path, arch: str, tag: str) -> Path:
    """Random weights of open_clip ``arch`` where its pretrained ``tag`` downloads to (the hub repository the tag names)."""
    import os

    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    repo, filename = os.path.split(open_clip.get_pretrained_cfg(arch, tag)["hf_hub"])
    name = (filename[:-4] + ".safetensors") if filename else "open_clip_model.safetensors"
    return hf_snapshot(hf_hub_cache, repo, {name: _safetensors(model.state_dict())})

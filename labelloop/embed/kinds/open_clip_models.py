"""open_clip image towers by name: an architecture with a pretrained tag, a hub repository, or a local checkpoint.

``arch`` is an open_clip model name (``ViT-B-32``) and ``pretrained`` one of the
tags ``open_clip.list_pretrained_tags_by_model(arch)`` lists
(``laion2b_s34b_b79k``); or ``arch`` is ``hf-hub:<org>/<repo>`` (a repository
with an ``open_clip_config.json``), which brings its own weights; or
``weights`` is a checkpoint file on this machine. open_clip downloads the
weights (into ``$HF_HOME/hub``, or ``~/.cache/clip`` for tags published by
URL only). Features are the image tower's output, unit length, so they are
comparable with the text tower's (:func:`text_encoder`): text search and
zero-shot labels use that. Images are resized (shorter side) and centre
cropped to the model's input size, as open_clip's "shortest" resize mode does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import numpy as np

from labelloop.embed.hub import PublishedWeights
from labelloop.embed.kinds.base import EmbedderKind, first_line, normalised
from labelloop.errors import UserError

HUB_PREFIX = "hf-hub:"
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # the order open_clip tries them in


def _unknown(arch: str) -> UserError:
    import open_clip

    return UserError(f"open_clip does not know the architecture '{arch}'. Known ones include: {', '.join(open_clip.list_models()[:12])}, ...")


class OpenClipModel(EmbedderKind):
    name = "open_clip"

    def validate(self, config) -> None:
        import open_clip

        if not config.arch:
            raise UserError("open_clip needs an architecture name (--arch), e.g. ViT-B-32, or hf-hub:<org>/<repo>.")
        if config.arch.startswith(HUB_PREFIX):
            if config.pretrained or config.weights:
                raise UserError("An hf-hub: open_clip model brings its own weights: give no pretrained tag or weights file.")
            return
        if config.arch not in open_clip.list_models():
            raise _unknown(config.arch)
        if config.pretrained and config.weights:
            raise UserError("Give a pretrained tag or a weights file, not both.")
        tags = open_clip.list_pretrained_tags_by_model(config.arch)
        if not config.pretrained and not config.weights:
            raise UserError(f"open_clip {config.arch} needs weights: a pretrained tag (--pretrained, one of {', '.join(tags[:8]) or 'none published'}) "
                            "or a local checkpoint (--weights).")
        if config.pretrained and config.pretrained not in tags:
            raise UserError(f"open_clip has no pretrained tag '{config.pretrained}' for {config.arch}: use one of {', '.join(tags) or '(none)'}.")

    def published(self, config) -> PublishedWeights | None:
        if config.arch.startswith(HUB_PREFIX):
            return PublishedWeights(f"open_clip {config.arch}", hf_repo=config.arch[len(HUB_PREFIX):], hf_files=(("open_clip_config.json",), HF_WEIGHTS))
        if not config.pretrained:
            return None
        import open_clip

        cfg = open_clip.get_pretrained_cfg(config.arch, config.pretrained)
        what = f"open_clip {config.arch} {config.pretrained}"
        if cfg.get("hf_hub"):
            repo, filename = os.path.split(cfg["hf_hub"])
            if not filename:
                files = HF_WEIGHTS
            elif filename.endswith((".bin", ".pth")):
                files = (filename[:-4] + ".safetensors", filename)
            else:
                files = (filename,)
            return PublishedWeights(what, hf_repo=repo, hf_files=(files,))
        return PublishedWeights(what, url=cfg["url"], url_cache=Path("~/.cache/clip").expanduser(), url_cache_note="open_clip keeps its URL downloads there")

    def _model_config(self, config) -> dict:
        import open_clip

        if config.arch.startswith(HUB_PREFIX):
            self.published(config).require()
            from open_clip.factory import _get_hf_config

            return _get_hf_config(config.arch[len(HUB_PREFIX):])["model_cfg"]
        model_config = open_clip.get_model_config(config.arch)
        if model_config is None:
            raise _unknown(config.arch)
        return model_config

    def resolution(self, config) -> int:
        if config.resolution:
            return config.resolution
        size = self._model_config(config).get("vision_cfg", {}).get("image_size", 224)
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    def architecture(self, config):
        import open_clip

        with _quiet_open_clip():  # it logs that no weights were loaded: that is the point here
            model = open_clip.create_model(config.arch, pretrained=None, load_weights=False, device="meta")
        return image_tower(model.visual, published=model)

    def feature_model(self, config):
        model, preprocess = load_clip(config)  # its own copy: frozen-backbone training may unfreeze and change it
        mean = tuple(preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = tuple(preprocess.get("std", (0.26862954, 0.26130258, 0.27577711)))
        return normalised(image_tower(model.visual), mean, std), f"open_clip {config.arch}" + (f" {config.pretrained}" if config.pretrained else "") + (f" ({Path(config.weights).name})" if config.weights else ""), []

    def text_encoder(self, config):
        """A function from texts to unit-length vectors in the image features' space."""
        import torch

        model, _ = shared_clip(config)
        tokenizer = _tokenizer(config.arch)

        def encode(texts: list[str]) -> np.ndarray:
            with torch.inference_mode():
                vectors = model.encode_text(tokenizer(list(texts)))
                return torch.nn.functional.normalize(vectors.float(), dim=-1).numpy()

        return encode


def image_tower(visual, *, published=None):
    """An open_clip model's image tower (``model.visual``, what ``encode_image`` runs) as a module: images -> unit-length features.

    Only the image tower: frozen-backbone training unfreezes the backbone's parameters from the
    output end, which must be the image tower's, not the text tower's. ``published``: the whole
    model, held (never run) so that counting parameters counts what its weights file holds.
    """
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = visual
            self.published = published

        def forward(self, x):
            # Unit length, as CLIP features are compared by cosine (and with the text tower's).
            return torch.nn.functional.normalize(self.visual(x), dim=-1)

    return ImageTower()


@contextlib.contextmanager
def _quiet_open_clip():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.lru_cache(maxsize=2)
def _tokenizer(arch: str):
    import open_clip

    return open_clip.get_tokenizer(arch)


_shared_clips: dict[tuple, tuple] = {}  # (arch, pretrained, weights) -> load_clip's answer; at most two kept


def shared_clip(config):
    """One model per process for text (typing a search must not reload it); never trained, never changed."""
    key = (config.arch, config.pretrained, config.weights)
    if key not in _shared_clips:
        if len(_shared_clips) >= 2:
            _shared_clips.pop(next(iter(_shared_clips)))
        _shared_clips[key] = load_clip(config)
    return _shared_clips[key]


def load_clip(config):
    """(the whole open_clip model in eval mode on the CPU, its preprocess config), loaded by open_clip's own code."""
    import open_clip

    arch, pretrained = config.arch, config.pretrained
    weights = str(Path(config.weights).expanduser()) if config.weights else None
    published = KIND.published(config)
    if published is not None:
        published.require()
    try:
        model = open_clip.create_model(arch, pretrained=weights or pretrained)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "not found" in str(exc).lower():
            raise _unknown(arch) from None
        raise UserError(f"{weights or pretrained or arch} is not a checkpoint for open_clip {arch}: {first_line(exc)}.") from None
    except Exception as exc:  # unpickling errors, zip errors, ...
        raise UserError(f"Cannot load {weights or pretrained or arch} as open_clip {arch} weights ({type(exc).__name__}: {first_line(exc)}).") from None
    return model.eval(), open_clip.get_model_preprocess_cfg(model)


KIND = OpenClipModel()

"""timm models by name, with the weights timm publishes (on the Hugging Face hub), or a local file.

``arch`` is a timm model name with its pretrained tag (``vit_small_patch14_dinov2.lvd142m``;
without a tag, timm's default tag for the architecture) or a hub repository
(``hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``, or any repository
with a timm ``config.json``). The model is ``timm.create_model(name,
pretrained=True, num_classes=0)``: its pooled features, with the images going
through the weights' own data config (input size, ``crop_pct``, mean, std).
timm downloads the weights into ``$HF_HOME/hub`` (or, for weights published
by URL only, ``$TORCH_HOME/hub/checkpoints``).
"""

from __future__ import annotations

import math
from pathlib import Path

from labelloop.embed.hub import PublishedWeights, torch_checkpoints
from labelloop.embed.kinds.base import EmbedderKind, first_line, normalised
from labelloop.errors import UserError

HUB_PREFIX = "hf-hub:"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the order timm tries them in


def model_name(config) -> str:
    return f"{config.arch}.{config.pretrained}" if config.pretrained else config.arch


class TimmModel(EmbedderKind):
    name = "timm"

    def validate(self, config) -> None:
        import timm

        if not config.arch:
            raise UserError("timm needs a model name (--arch), e.g. vit_small_patch14_dinov2.lvd142m or hf-hub:timm/<name>.")
        name = model_name(config)
        if name.startswith(HUB_PREFIX):
            if config.weights:
                raise UserError("An hf-hub: model brings its own weights; give a timm model name to load a weights file into.")
            return
        if not timm.is_model(name):
            raise UserError(f"timm has no model named '{name}'. See timm.list_models('*dinov2*') (or another pattern) for names.")
        if not config.weights:
            try:
                cfg = _registered_cfg(name)
            except RuntimeError:
                cfg = None
            if cfg is None or not (cfg.hf_hub_id or cfg.url):
                tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
                raise UserError(f"timm publishes no weights named '{name}'" + (f": use one of {', '.join(tags[:8])}." if tags else "; give a weights file."))

    def published(self, config) -> PublishedWeights | None:
        if config.weights:
            return None
        name = model_name(config)
        if name.startswith(HUB_PREFIX):
            return PublishedWeights(f"timm {name}", hf_repo=name[len(HUB_PREFIX):], hf_files=(("config.json",), HF_WEIGHTS))
        cfg = _registered_cfg(name)
        if cfg.hf_hub_id:
            files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else HF_WEIGHTS
            repo, _, revision = cfg.hf_hub_id.partition("@")
            return PublishedWeights(f"timm {name}", hf_repo=repo, hf_files=(files,), hf_revision=revision or None)
        return PublishedWeights(f"timm {name}", url=cfg.url, url_cache=torch_checkpoints())

    def _data_config(self, config) -> dict:
        """input_size, crop_pct, mean, std of the weights (read without loading them)."""
        name = model_name(config)
        if name.startswith(HUB_PREFIX):
            self.published(config).require()
            from timm.models._hub import load_model_config_from_hf

            cfg, _, _ = load_model_config_from_hf(name[len(HUB_PREFIX):])
            return cfg
        cfg = _registered_cfg(name)
        return cfg.to_dict() if cfg is not None else {}

    def _geometry(self, config) -> tuple[int, int]:
        """(decoded side, crop side) from the weights' data config: timm resizes to floor(size / crop_pct) and crops ``size``."""
        data = self._data_config(config)
        size = int(data.get("input_size", (3, 224, 224))[-1])
        if config.resolution:
            return config.resolution, config.resolution
        return int(math.floor(size / float(data.get("crop_pct", 0.875)))), size

    def resolution(self, config) -> int:
        return self._geometry(config)[0]

    def crop(self, config) -> int:
        return self._geometry(config)[1]

    def _create(self, config, *, pretrained: bool):
        import timm

        name = model_name(config)
        options: dict = {"num_classes": 0}
        if config.resolution and self._data_config(config).get("fixed_input_size"):
            options["img_size"] = config.resolution  # a ViT's position embeddings are resampled to the new size
        if config.weights:
            options["pretrained_cfg_overlay"] = {"file": str(Path(config.weights).expanduser())}
        try:
            return timm.create_model(name, pretrained=pretrained, **options)
        except TypeError as exc:
            raise UserError(f"timm {name} cannot take another input size ({first_line(exc)}); leave the resolution unset.") from None

    def architecture(self, config):
        return self._create(config, pretrained=False)

    def feature_model(self, config):
        name = model_name(config)
        published = self.published(config)
        if published is not None:
            published.require()
        try:
            net = self._create(config, pretrained=True)
        except UserError:
            raise
        except Exception as exc:  # a damaged or foreign weights file
            source = config.weights or name
            raise UserError(f"Cannot load the weights of timm {name} from {source} ({type(exc).__name__}: {first_line(exc)}).") from None
        data = net.pretrained_cfg
        _, crop = self._geometry(config)
        description = f"timm {name}" + (f" ({Path(config.weights).name})" if config.weights else "")
        return normalised(net, tuple(data.get("mean", (0.485, 0.456, 0.406))), tuple(data.get("std", (0.229, 0.224, 0.225))), crop=crop), description, []


def _registered_cfg(name: str):
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(name)



KIND = TimmModel()

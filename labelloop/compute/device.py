"""Where torch work runs: the one ``device`` setting every torch path honours, and what CUDA gets.

``auto`` is CUDA when torch sees a GPU, else the CPU; ``cpu``; ``cuda`` (the
first GPU) or ``cuda:N``. On CUDA the paths use what people expect there:
bf16 autocast where the GPU has bf16 (:func:`autocast`), channels-last
images, and a data loader with worker processes and pinned memory
(:func:`loader_options`), so augmentation keeps the GPU busy. On the CPU
nothing changes from what the paths did before: same numbers, same seeds.

Asking for CUDA where torch sees none is a :class:`~labelloop.errors.UserError`
naming what torch does see; a GPU out of memory becomes one that suggests a
smaller batch (:func:`out_of_memory`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from labelloop.compute.ray_cluster import ADDRESS_HELP, validate_address
from labelloop.errors import UserError
from labelloop.settings import Settings, setting

if TYPE_CHECKING:  # torch is imported by the functions that use it: checking a setting needs no torch
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # and cuda:N
DEVICE_HELP = "auto: a CUDA GPU when torch sees one, else the CPU; cpu; cuda (the first GPU) or cuda:N."


@dataclass(frozen=True)
class Compute(Settings):
    """Where a job runs: the torch ``device``, and optionally a Ray cluster (``labelloop.compute.ray_cluster``).

    ``ray`` is None (everything in this process, as always), ``local`` (a Ray started for the job on
    this machine's cores), ``auto`` (the running cluster, or ``RAY_ADDRESS``) or ``host:port`` (its GCS address).
    ``workers`` data-parallel training workers on Ray, each with ``gpus_per_worker`` GPUs.
    """

    subject: ClassVar[str] = "compute"

    device: str = setting("auto", "Device", f"Where torch runs: {DEVICE_HELP}")
    ray: str | None = setting(None, "Ray address", f"{ADDRESS_HELP}. Embedding, prediction, the image models and sweeps then run there; "
                              "the images must be readable by every worker (a shared folder or s3://).", none="everything in this process")
    workers: int = setting(1, "Training workers", "Ray Train data-parallel workers for the image models (ResNet-18, the frozen backbone); needs a Ray address.",
                           minimum=1, maximum=1024)
    gpus_per_worker: float = setting(0.0, "GPUs per worker", "GPUs each Ray Train worker takes (0: CPUs).", minimum=0, maximum=64)

    def check(self) -> None:
        validate_device(self.device)
        if self.ray is None and (self.workers > 1 or self.gpus_per_worker):
            raise UserError("Training workers and GPUs per worker need a Ray cluster: give a Ray address (--ray local: this machine, "
                            "--ray auto or --ray HEAD:6379).")
        if self.ray is not None:
            validate_address(self.ray)


def validate_device(name: str) -> None:
    """A UserError for a device name that is none of auto, cpu, cuda, cuda:N (checks no hardware)."""
    if name not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+", name or ""):
        raise UserError(f"Unknown device '{name}': use auto, cpu, cuda or cuda:N (N = a GPU number, from 0).")


def what_torch_sees() -> str:
    """One line on the GPUs torch can use here, for error messages and the compute setting."""
    import torch

    build = f"torch {torch.__version__}, " + (f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return f"torch sees no CUDA GPU ({build}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count))
    return f"torch sees {count} CUDA GPU{'s' if count > 1 else ''}: {names} ({build})"


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device ``name`` means on this machine, or a UserError saying what torch sees instead."""
    import torch

    validate_device(name)
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    if not available:
        raise UserError(f"--device {name} asks for a GPU, but {what_torch_sees()}. Use --device cpu (or auto, which takes the CPU here).")
    device = torch.device(name if ":" in name else "cuda:0")
    if device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there is no GPU {device.index}; {what_torch_sees()}.")
    return device


def describe_device(device: torch.device) -> str:
    """What a run records and the pages show: ``cpu (2 cores)`` or ``cuda:0 (NVIDIA H200, 139 GiB)``."""
    import torch

    if device.type != "cuda":
        return f"cpu ({os.cpu_count() or 1} cores)"
    properties = torch.cuda.get_device_properties(device)
    return f"{device} ({properties.name}, {properties.total_memory / 2**30:.0f} GiB)"


def bf16_autocast_available(device: torch.device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that has bf16; nothing on the CPU (the CPU paths stay fp32, as measured)."""
    import torch

    if enabled and bf16_autocast_available(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``; on CUDA in channels-last memory layout (faster convolutions with autocast)."""
    import torch

    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``: non-blocking from pinned memory; float N x C x H x W batches in channels-last
    (uint8 N x H x W x C images, what the embedders take, already are once permuted)."""
    import torch

    if device.type != "cuda":
        return batch
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 and batch.is_floating_point() else batch


def loader_options(device: torch.device) -> dict:
    """torch DataLoader settings for ``device``: worker processes and pinned memory on CUDA, none on the CPU.

    On the CPU the model and augmentation share the same cores, so workers would only add copying, and
    batches made in this process keep a seed's numbers exactly what they were before devices existed.
    On CUDA, augmentation in the workers draws from generators torch seeds per worker from the run's seed.
    """
    if device.type != "cuda":
        return {"num_workers": 0}
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    return {"num_workers": workers, "pin_memory": True, "prefetch_factor": 4}


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def out_of_memory(exc: BaseException, device: torch.device, batch_size: int, what: str = "--batch-size") -> UserError:
    """The UserError a GPU out of memory becomes: where, with which batch, and what to try."""
    smaller = max(1, batch_size // 2)
    return UserError(
        f"The GPU {device} ran out of memory with a batch of {batch_size}. Try a smaller batch ({what} {smaller}), "
        "a smaller image size, or --device cpu. Nothing of this job was saved as finished."
    )


@contextlib.contextmanager
def out_of_memory_as_user_error(device: torch.device, batch_size: int, what: str = "--batch-size") -> Iterator[None]:
    """Turn a GPU out-of-memory error inside the block into :func:`out_of_memory`'s message, freeing the cache."""
    import torch

    try:
        yield
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise out_of_memory(exc, device, batch_size, what) from None

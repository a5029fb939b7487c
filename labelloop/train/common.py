"""Pieces of training every family uses: class weights, optimisers, validation scores, inner splits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """1/count per class, normalised to sum to the number of classes (0 for an absent class)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return (weights * n_classes / weights.sum()).astype(np.float32)


def validation_scores(probabilities: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of class probabilities against labels; (0, 0) for no samples."""
    if not len(y):
        return 0.0, 0.0
    accuracy = float((probabilities.argmax(1) == y).mean())
    loss = float(-np.log(np.maximum(probabilities[np.arange(len(y)), y], 1e-12)).mean())
    return accuracy, loss


def make_optimizer(name: str, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)


def inner_split(indices: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``share`` of ``indices`` (rows of ``y``) for early stopping, stratified when every class allows it."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y[indices])
    n_classes = int((counts > 0).sum())
    n_val = max(1, round(share * len(indices)))
    stratify = None
    if counts[counts > 0].min() >= 2 and len(indices) - n_classes >= n_classes:
        # Small sets: hold out at least one sample of every class rather than give up stratifying.
        n_val, stratify = max(n_val, n_classes), y[indices]
    train, val = train_test_split(indices, test_size=n_val, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(val)


def augmentation(name: str, size: int):
    """The random transform of augmentation ``name`` (``labelloop.train.settings.IMAGE_AUGMENTATIONS``) on
    uint8 C x H x W tensors, giving ``size`` x ``size``; None for "none"."""
    from torchvision.transforms import v2

    if name == "randaugment":
        return v2.Compose([v2.RandAugment(), v2.CenterCrop(size)])
    if name == "crop-flip-jitter":
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True), v2.RandomHorizontalFlip(), v2.RandomRotation(10),
            v2.RandomAffine(degrees=0, shear=8, scale=(0.85, 1.15)), v2.ColorJitter(0.15, 0.15, 0.15),
        ])
    return None


def load_weights(module: torch.nn.Module, path) -> torch.nn.Module:
    """``module`` with the safetensors state dict at ``path``, or a UserError saying the run folder is damaged."""
    from safetensors.torch import load_file

    from labelloop.errors import UserError

    try:
        state = load_file(path)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"Cannot read the model weights {path} ({str(exc).splitlines()[0][:200]}); the run folder is damaged. Train again.") from exc
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"The weights in {path} do not match its model_config.json ({str(exc).splitlines()[0][:200]}).") from exc
    return module


class BestEpoch:
    """The weights of the epoch with the best validation accuracy so far (the first of equals), to end a training with."""

    def __init__(self) -> None:
        self.accuracy, self.epoch, self._state = -1.0, 0, None

    def offer(self, model: torch.nn.Module, epoch: int, accuracy: float) -> None:
        if accuracy > self.accuracy:
            self.accuracy, self.epoch = accuracy, epoch
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` with the best epoch's weights, in evaluation mode."""
        model.load_state_dict(self._state)
        return model.eval()


class _Batches(torch.utils.data.Dataset):
    """Batch ``number`` of ``order``: (its indices, ``make_inputs(indices)``). One item is one batch, so
    a loader's worker builds whole batches (augmentation included) while the GPU runs the last one."""

    def __init__(self, order: np.ndarray, batch_size: int, make_inputs: Callable[[np.ndarray], torch.Tensor]):
        self.order, self.batch_size, self.make_inputs = np.asarray(order), batch_size, make_inputs

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.order[number * self.batch_size : (number + 1) * self.batch_size]
        return torch.from_numpy(chosen), self.make_inputs(chosen)


def batches(order: np.ndarray, batch_size: int, make_inputs: Callable[[np.ndarray], torch.Tensor], device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(indices, inputs on ``device``) for consecutive batches of ``order``.

    On the CPU the batches are made in this process, in order, exactly as before devices existed; on
    CUDA by a data loader's worker processes into pinned memory (:func:`labelloop.compute.device.loader_options`).
    """
    from labelloop.compute.device import loader_options, to_device

    dataset = _Batches(order, batch_size, make_inputs)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, **loader_options(device))
    for chosen, inputs in loader:
        yield chosen.numpy(), to_device(inputs, device)


@dataclass(frozen=True)
class Replica:
    """This process's part in a data-parallel training: replica ``rank`` of ``world``.

    The default is the whole job in one process (the local path). Under Ray Train each worker is one
    replica of a torch.distributed process group that Ray has already set up: the model is wrapped in
    DDP, each replica trains on its own share of every epoch's order, and epoch sums are added up
    over all replicas, so the curves describe the whole epoch.
    """

    rank: int = 0
    world: int = 1

    @property
    def leads(self) -> bool:
        """Whether this replica reports curves and writes the result (rank 0)."""
        return self.rank == 0

    def shard(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """This replica's share of an epoch's order: the same number of samples on every replica (DDP needs
        every replica to take the same steps), rank r taking positions r, r + world, ..."""
        if self.world == 1:
            return order
        usable = len(order) - len(order) % self.world
        return order[:usable][self.rank :: self.world]

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` as this replica trains it: itself alone, or inside DistributedDataParallel."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` added up over every replica (the values themselves with one)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

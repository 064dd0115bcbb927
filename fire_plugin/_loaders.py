"""Resumable training loaders: :func:`epoch_loader` (one set) and :func:`mixed_loader` (original + extra data).

Both are re-exported by :mod:`fire_plugin.data`, where users import them. Their batches and augmentation depend only
on ``(seed, epoch)`` (the batch samplers' ``set_epoch``, which :func:`fire_plugin.engine.fit` calls), never on the
global RNG or the number of workers, so a resumed run sees the batches of an uninterrupted one; under torchrun the
engine gives each rank every ``world_size``-th batch (the samplers' ``shard``).

Example:
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long))
    >>> [len(y) for _, y in epoch_loader(data, batch_size=4, seed=0)]
    [4, 2]
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["epoch_loader", "mixed_loader"]

_logger = logging.getLogger("fire_plugin.data")  # the logger of the module users import these from

# --------------------------------------------------------------------------------------------------
# one set, and original + extra (e.g. generated) data in every batch



class _NpzImages(Dataset):
    """``(image, label)`` pairs from uint8 ``(N, H, W, C)`` images, as float32 ``(C, H, W)`` in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].permute(2, 0, 1).float().div_(255.0), int(self.labels[index])


def _item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed of ``(seed, epoch, index)`` (distinct triples give unrelated seeds)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Transformed(Dataset):
    """Apply ``transform`` to the images (when given); labels become ints (tensor and int labels mix in a batch).

    Items are read by ``(epoch, index)`` keys (what the epoch samplers yield) or plain indices. With a key the
    transform's random draws come from torch's generator seeded with ``(seed, epoch, index)`` (the global state is
    restored afterwards): an image gets the same augmentation whatever the worker, the rank, or a resume.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None,
                 seed: int = 0) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        x, y = self.dataset[index]
        if self.transform is not None:
            if epoch is None:
                x = self.transform(x)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(_item_seed(self.seed, epoch, index))
                    x = self.transform(x)
        return x, int(y)


class _EpochBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys from a permutation of ``range(n)`` drawn from ``(seed, epoch)``.

    ``set_epoch`` chooses the epoch (:func:`fire_plugin.engine.fit` calls it); ``shard(num_replicas, rank)`` gives
    every ``num_replicas``-th batch (equal counts per rank: the last incomplete round is dropped with
    ``drop_last``, padded with the first batches without).
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, shuffle: bool = True, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, num_replicas: int, rank: int) -> _EpochBatchSampler:
        """The batches of ``rank`` out of ``num_replicas``."""
        return _EpochBatchSampler(self.n, self.batch_size, self.seed, shuffle=self.shuffle, drop_last=self.drop_last,
                                  num_replicas=num_replicas, rank=rank)

    def _total(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        total = self._total()
        return total // self.num_replicas if self.drop_last else -(-total // self.num_replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, -1))
        order = (torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)).tolist()
        total = self._total()
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(total)]
        per_rank = len(self)
        for j in range(per_rank):
            i = (j * self.num_replicas + self.rank) % max(total, 1)
            yield [(self.epoch, k) for k in batches[i]]


def epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose batches and augmentation depend only on ``(seed, epoch)``: resumable bit for bit.

    The order of an epoch is a permutation drawn from ``(seed, epoch)``; ``transform`` (a random augmentation of
    one ``(C, H, W)`` image) draws from ``(seed, epoch, index)``. Neither touches the global RNG nor depends on
    the number of workers (persistent when ``num_workers > 0``), so a run resumed by
    :func:`fire_plugin.engine.fit` (which calls ``set_epoch``) sees the batches of an uninterrupted one; under
    torchrun the engine gives each rank every ``world_size``-th batch.

    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10, dtype=torch.long))
    >>> loader = epoch_loader(data, batch_size=4, seed=0, drop_last=True)
    >>> loader.batch_sampler.set_epoch(3)
    >>> first = [x.flatten().tolist() for x, _ in loader]
    >>> loader.batch_sampler.set_epoch(3)
    >>> len(first), first == [x.flatten().tolist() for x, _ in loader]
    (2, True)
    """
    _check_seed(seed)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: an int >= 1")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset is empty")
    sampler = _EpochBatchSampler(n, batch_size, seed, shuffle=shuffle, drop_last=drop_last)
    return DataLoader(_Transformed(dataset, transform, seed), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def _check_seed(seed: object) -> None:
    """An int >= 0 (a float such as 0.5 was truncated to 0 before: another seed, silently)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed; allowed: an int >= 0")


class _MixedBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batches of ``n_base`` indices of ``[0, n_orig)`` then ``n_extra`` of ``[n_orig, n_orig + n_more)``.

    Each stream walks through successive random permutations (a new one when it runs out), drawn from a generator
    seeded with ``(seed, epoch)``: an epoch's batches depend only on the seed and :meth:`set_epoch`.
    """

    def __init__(self, n_orig: int, n_more: int, n_base: int, n_extra: int, batches: int, seed: int,
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.n_orig, self.n_more, self.n_base, self.n_extra = n_orig, n_more, n_base, n_extra
        self.batches, self.seed, self.num_replicas, self.rank = batches, seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, num_replicas: int, rank: int) -> _MixedBatchSampler:
        """The batches of ``rank`` out of ``num_replicas`` (every ``num_replicas``-th batch; equal counts)."""
        return _MixedBatchSampler(self.n_orig, self.n_more, self.n_base, self.n_extra, self.batches, self.seed,
                                  num_replicas, rank)

    def __len__(self) -> int:
        return -(-self.batches // self.num_replicas)

    @staticmethod
    def _stream(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
        perms = [torch.randperm(n, generator=gen) for _ in range(-(-count // n))] if count else []
        return torch.cat(perms)[:count] if perms else torch.zeros(0, dtype=torch.long)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = len(self) * self.num_replicas  # padded so that every rank gets as many batches
        base = self._stream(self.n_orig, total * self.n_base, gen).view(total, self.n_base)
        extra = self._stream(self.n_more, total * self.n_extra, gen).view(total, self.n_extra) + self.n_orig
        for i in range(self.rank, total, self.num_replicas):
            yield [(self.epoch, k) for k in base[i].tolist() + extra[i].tolist()]


_NPZ_FORMAT = "an .npz with 'image' (uint8, N x H x W x C) and 'label' (N integers)"


def _load_extra_npz(path: Path, image_shape: tuple[int, ...], num_classes: int | None = None) -> _NpzImages:
    import zipfile

    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(
            f"extra data {str(path)!r} does not exist; expected {_NPZ_FORMAT}, the format of the generated data of "
            "the top RobustBench entries"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"extra data {str(path)!r} is not a readable .npz archive ({type(err).__name__}); "
                         f"expected {_NPZ_FORMAT}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"extra data {str(path)!r} is a single .npy array, not an .npz archive; expected "
                         f"{_NPZ_FORMAT} (np.savez(path, image=..., label=...))")
    with npz:
        missing = [k for k in ("image", "label") if k not in npz.files]
        if missing:
            raise ValueError(f"extra data {str(path)!r} lacks the keys {missing}; it has {sorted(npz.files)}; "
                             f"allowed: {_NPZ_FORMAT}")
        try:
            images, labels = npz["image"], npz["label"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"extra data {str(path)!r}: its arrays cannot be read ({type(err).__name__}: {err}); "
                             f"expected {_NPZ_FORMAT}") from None
    c, h, w = image_shape
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (h, w, c):
        raise ValueError(f"extra data {str(path)!r}: 'image' is {images.dtype} of shape {images.shape}; allowed: "
                         f"uint8 of shape (N, {h}, {w}, {c}) to match the training images (C, H, W) = {image_shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"extra data {str(path)!r}: 'label' is {labels.dtype} of shape {labels.shape}; allowed: "
                         f"{len(images)} integers, one per image")
    _check_labels(torch.from_numpy(labels.astype(np.int64)), num_classes, f"extra data {str(path)!r}, key 'label'")
    return _NpzImages(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def _check_labels(labels: torch.Tensor, num_classes: int | None, where: str) -> None:
    """Class indices in ``[0, num_classes)`` (``>= 0`` when ``num_classes`` is None): cross-entropy ignores -100
    silently and fails on ``num_classes`` only at the first batch."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        allowed = f"[0, {num_classes})" if num_classes is not None else "integers >= 0"
        raise ValueError(f"{where} holds labels in [{low}, {high}]; allowed: class indices in {allowed}")


def mixed_loader(
    dataset: Dataset,
    extra: Dataset | str | os.PathLike[str],
    *,
    batch_size: int,
    extra_fraction: float = 0.7,
    batches_per_epoch: int | None = None,
    seed: int = 0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    num_classes: int | None = None,
) -> DataLoader:
    """A loader whose every batch holds ``round(batch_size * extra_fraction)`` extra images, the rest original.

    This is how extra data trains robust models: the 500k 80M-TI images of Carmon et al. (RST, 0.5 extra) and the
    generated images of Gowal et al. / Rebuffi et al. / Wang et al. (0.7 extra). Each of the two streams walks
    through fresh random permutations of its set; an epoch's batches depend only on ``seed`` and the epoch
    (:func:`fire_plugin.engine.fit` calls the batch sampler's ``set_epoch``), so a resumed run sees the same
    batches. Under torchrun the engine gives each rank every ``world_size``-th batch.

    Args:
        dataset: the original training set of ``(image, label)`` pairs, images float ``(C, H, W)`` in [0, 1].
        extra: a dataset of the same kind, or the path of an ``.npz`` with ``"image"`` (uint8 ``(N, H, W, C)``)
            and ``"label"`` (N integers).
        batch_size: images per batch.
        extra_fraction: share of extra images in every batch, in [0, 1).
        batches_per_epoch: batches per epoch; by default ``ceil(len(dataset) / batch_size)`` (RST's epoch: as many
            batches as the original set alone gives).
        seed: seed of the permutations.
        transform: per-image augmentation of both sets (e.g. random crop and flip), applied in the workers.
        num_workers, pin_memory: as in ``DataLoader`` (persistent workers when ``num_workers > 0``).
        num_classes: the extra labels must lie in ``[0, num_classes)`` (when None: be >= 0).

    With ``extra_fraction > 0`` every batch holds at least one image of each set: a setting that rounds to 0
    original or 0 extra images per batch is refused (the message says which and what would work).

    Returns:
        A ``DataLoader`` of ``(x, y)`` batches, the original images first in each batch.

    Raises:
        FileNotFoundError: the ``.npz`` does not exist. ValueError: a bad argument or file (named).

    >>> from torch.utils.data import TensorDataset
    >>> base = TensorDataset(torch.rand(10, 1, 4, 4), torch.zeros(10, dtype=torch.long))
    >>> more = TensorDataset(torch.rand(30, 1, 4, 4), torch.ones(10 * 3, dtype=torch.long))
    >>> x, y = next(iter(mixed_loader(base, more, batch_size=10, extra_fraction=0.7)))
    >>> tuple(x.shape), int(y.sum())
    ((10, 1, 4, 4), 7)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: an int >= 2")
    if isinstance(extra_fraction, bool) or not isinstance(extra_fraction, (int, float)) or not (
            0.0 <= extra_fraction < 1.0):
        raise ValueError(f"extra_fraction={extra_fraction!r} is not allowed; allowed: a number in [0, 1)")
    if batches_per_epoch is not None and (isinstance(batches_per_epoch, bool) or not isinstance(
            batches_per_epoch, int) or batches_per_epoch < 1):
        raise ValueError(f"batches_per_epoch={batches_per_epoch!r} is not allowed; allowed: a positive int or None")
    _check_seed(seed)
    n_extra = int(round(batch_size * extra_fraction))
    if extra_fraction > 0 and n_extra == 0:
        raise ValueError(f"batch_size={batch_size} with extra_fraction={extra_fraction!r} gives 0 extra images per "
                         f"batch (round({batch_size} * {extra_fraction!r}) = 0); allowed: extra_fraction > "
                         f"{0.5 / batch_size:.3g} for this batch size, or a larger batch_size")
    if n_extra >= batch_size:
        raise ValueError(f"batch_size={batch_size} with extra_fraction={extra_fraction!r} gives 0 original images per "
                         f"batch (round({batch_size} * {extra_fraction!r}) = {n_extra} extra); allowed: extra_fraction "
                         f"< {1 - 0.5 / batch_size:.3g} for this batch size (at least one original image), or a larger "
                         "batch_size")
    n_orig = len(dataset)  # type: ignore[arg-type]
    if n_orig == 0:
        raise ValueError("dataset is empty")
    image_shape = tuple(dataset[0][0].shape)
    if isinstance(extra, (str, os.PathLike)):
        extra = _load_extra_npz(Path(extra), image_shape, num_classes)
    elif len(extra) > 0:  # type: ignore[arg-type]
        extra_shape = tuple(extra[0][0].shape)
        if extra_shape != image_shape:
            raise ValueError(f"the extra images have shape {extra_shape}, the original ones {image_shape}; allowed: "
                             "extra images of the training images' shape (C, H, W)")
        labels = getattr(extra, "tensors", (None, None))[1]
        if isinstance(labels, torch.Tensor):
            _check_labels(labels, num_classes, "the extra dataset")
    n_more = len(extra)  # type: ignore[arg-type]
    if n_more == 0 and n_extra > 0:
        raise ValueError("the extra dataset is empty")
    batches = batches_per_epoch or -(-n_orig // batch_size)
    sampler = _MixedBatchSampler(n_orig, n_more, batch_size - n_extra, n_extra, batches, seed)
    data = _Transformed(torch.utils.data.ConcatDataset([dataset, extra]), transform, seed)
    _logger.info("mixed loader: %d original + %d extra images, %d + %d per batch, %d batches per epoch",
                 n_orig, n_more, batch_size - n_extra, n_extra, batches)
    return DataLoader(data, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))

"""Datasets as [0, 1] image tensors: sklearn's embedded 8x8 digits, and MNIST/CIFAR through torchvision.

Every dataset returned by :func:`load_dataset` yields ``(image, label)`` pairs with ``image`` a float32
tensor of shape ``(C, H, W)`` in [0, 1] and ``label`` an integer class index. The ``digits`` dataset ships
inside scikit-learn and works offline; MNIST, CIFAR-10 and CIFAR-100 are read from ``data_dir`` and
downloaded there when the machine is online. Offline, a missing dataset raises
:class:`DatasetNotFoundError` naming the files to place under ``data_dir``; a damaged MNIST file raises
:class:`CorruptDatasetError` naming it.

The resumable training loaders :func:`epoch_loader` and :func:`mixed_loader` (original + extra data in every
batch) are defined in ``fire_plugin._loaders`` and importable from here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fire_plugin._loaders import epoch_loader, mixed_loader

__all__ = [
    "DATASETS",
    "CorruptDatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "dataset_to_tensors",
    "epoch_loader",
    "load_dataset",
    "mixed_loader",
]

_logger = logging.getLogger(__name__)

_SPLITS = ("train", "test")
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What models need to know about a dataset.

    Attributes:
        name: the name accepted by :func:`load_dataset`.
        num_classes: number of labels.
        in_chans: image channels.
        image_size: height (= width) of the images.
        mean: per-channel mean of the training images, for a model's input normalization.
        std: per-channel standard deviation of the training images.
        robustbench: whether RobustBench has a leaderboard for the dataset.

    >>> DATASETS["cifar10"].num_classes
    10
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    robustbench: bool


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3052,), (0.3760,), False),
    "mnist": DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), False),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
}

# Files torchvision looks for, relative to data_dir, and where they come from.
_TORCHVISION_FILES: dict[str, tuple[list[str], str]] = {
    "mnist": (
        [
            "MNIST/raw/train-images-idx3-ubyte",
            "MNIST/raw/train-labels-idx1-ubyte",
            "MNIST/raw/t10k-images-idx3-ubyte",
            "MNIST/raw/t10k-labels-idx1-ubyte",
        ],
        "the four gunzipped files of https://ossci-datasets.s3.amazonaws.com/mnist/ "
        "(or http://yann.lecun.com/exdb/mnist/)",
    ),
    "cifar10": (
        [
            "cifar-10-batches-py/data_batch_1 ... data_batch_5",
            "cifar-10-batches-py/test_batch",
            "cifar-10-batches-py/batches.meta",
        ],
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted into data_dir",
    ),
    "cifar100": (
        [
            "cifar-100-python/train",
            "cifar-100-python/test",
            "cifar-100-python/meta",
        ],
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted into data_dir",
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A torchvision dataset is neither under ``data_dir`` nor downloadable (for example offline)."""


class CorruptDatasetError(ValueError):
    """A dataset file under ``data_dir`` exists but is damaged; the message names it and what to do."""


_MNIST_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UINT8 = 0x08


def _idx_shape(path: Path, ndim: int) -> tuple[int, ...]:
    """The shape in the header of an IDX file of uint8 (MNIST's format); a ValueError says what is wrong."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != _IDX_UINT8 or magic[3] != ndim:
            raise ValueError(
                f"it does not start with the IDX header of a {ndim}-d uint8 array (first bytes {magic!r}; "
                f"{size} bytes in all)"
            )
        raw_dims = handle.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"it ends inside its header ({size} bytes)")
    shape = struct.unpack(f">{ndim}I", raw_dims)
    expected = 4 + 4 * ndim + math.prod(shape)
    if size != expected:
        raise ValueError(f"it has {size} bytes where its header {shape} announces {expected} (truncated?)")
    return shape


def _check_mnist_files(data_dir: Path, split: str) -> None:
    """Check the split's MNIST files that exist (header, size, image size, counts, labels); missing ones are
    torchvision's to report."""
    raw = data_dir / "MNIST" / "raw"
    images_path, labels_path = (raw / f for f in _MNIST_SPLIT_FILES[split])
    if not (images_path.is_file() and labels_path.is_file()):
        return
    _, source = _TORCHVISION_FILES["mnist"]

    def corrupt(path: Path, problem: str) -> CorruptDatasetError:
        return CorruptDatasetError(
            f"MNIST file {str(path)!r} is corrupt: {problem}. Delete it and download it again (on a machine with "
            f"network access, load_dataset('mnist', split={split!r}, data_dir=...) does), or copy the gunzipped "
            f"file from {source} to that path"
        )

    shapes: dict[Path, tuple[int, ...]] = {}
    for path, ndim in ((images_path, 3), (labels_path, 1)):
        try:
            shapes[path] = _idx_shape(path, ndim)
        except ValueError as exc:
            raise corrupt(path, str(exc)) from None
    n_images, height, width = shapes[images_path]
    if (height, width) != (28, 28):
        raise corrupt(images_path, f"its images are {height}x{width}, MNIST's are 28x28")
    if shapes[labels_path][0] != n_images:
        raise corrupt(labels_path, f"it holds {shapes[labels_path][0]} labels for {n_images} images in {images_path}")
    labels = labels_path.read_bytes()[8:]
    if labels and max(labels) > 9:
        raise corrupt(labels_path, f"it holds the label {max(labels)}; MNIST's labels are 0 to 9")


def _check_name_split(name: str, split: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"name={name!r} is not a known dataset; allowed: {sorted(DATASETS)}")
    if split not in _SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed: {list(_SPLITS)}")


def _load_digits(split: str) -> TensorDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0  # (N, 8, 8), pixel values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)  # (N,)
    idx_train, idx_test = train_test_split(
        list(range(len(labels))),
        test_size=_DIGITS_TEST_FRACTION,
        random_state=_DIGITS_SPLIT_SEED,
        stratify=bunch.target,
    )
    idx = torch.as_tensor(sorted(idx_train if split == "train" else idx_test), dtype=torch.long)
    return TensorDataset(images[idx].unsqueeze(1).contiguous(), labels[idx])  # (n, 1, 8, 8), (n,)


def _snapshot(root: Path) -> set[Path]:
    if not root.exists():
        return set()
    return {p for p in root.rglob("*")}


def _remove_new(root: Path, before: set[Path], *, root_existed: bool) -> None:
    """Delete files and folders under ``root`` created since ``before`` (a failed download's leftovers)."""
    created = sorted(_snapshot(root) - before, key=lambda p: len(p.parts), reverse=True)
    if not root_existed and root.exists():
        created.append(root)
    for path in created:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


def _load_torchvision(name: str, split: str, data_dir: Path, download: bool) -> Dataset:
    import torchvision
    from torchvision import transforms

    cls = {
        "mnist": torchvision.datasets.MNIST,
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }[name]
    kwargs = {"root": str(data_dir), "train": split == "train", "transform": transforms.ToTensor()}
    if name == "mnist":
        _check_mnist_files(data_dir, split)  # torchvision's reader fails on damaged files with a bare assert
    try:
        return cls(download=False, **kwargs)  # type: ignore[no-any-return]
    except RuntimeError as exc:
        missing_error: Exception = exc
    if download:
        root_existed = data_dir.exists()
        before = _snapshot(data_dir)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                dataset = cls(download=True, **kwargs)
            _logger.info("downloaded %s into %s", name, data_dir)
            return dataset  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - any network/IO failure becomes one clear error
            missing_error = exc
            _remove_new(data_dir, before, root_existed=root_existed)
        finally:
            if captured.getvalue():
                _logger.debug("torchvision output: %s", captured.getvalue().strip())
    files, source = _TORCHVISION_FILES[name]
    listing = "\n".join(f"  {data_dir / f}" for f in files)
    how = "could not be downloaded" if download else "was not found and download=False"
    raise DatasetNotFoundError(
        f"dataset {name!r} ({split}) {how} ({type(missing_error).__name__}: {missing_error}).\n"
        f"Place these files under data_dir={str(data_dir)!r}:\n{listing}\n"
        f"They come from {source}; on a machine with network access, "
        f"load_dataset({name!r}, split={split!r}, data_dir=...) downloads them."
    ) from missing_error


def load_dataset(
    name: str,
    *,
    split: str,
    data_dir: str | os.PathLike[str] = "data",
    download: bool = True,
) -> Dataset:
    """Load a dataset of [0, 1] images.

    Args:
        name: ``"digits"`` (sklearn's 1,797 embedded 8x8 digits, offline), ``"mnist"``, ``"cifar10"`` or
            ``"cifar100"`` (torchvision).
        split: ``"train"`` or ``"test"``. For digits, a fixed stratified split: 25% test
            (``random_state=0``), 1,347 train and 450 test images.
        data_dir: folder of the torchvision datasets (ignored for digits).
        download: try to download a missing torchvision dataset into ``data_dir``.

    Returns:
        A ``Dataset`` of ``(image, label)`` pairs, ``image`` float32 ``(C, H, W)`` in [0, 1]. Digits come as
        a ``TensorDataset`` whose ``tensors`` are ``(x, y)`` with ``x`` of shape ``(N, 1, 8, 8)``.

    Raises:
        DatasetNotFoundError: a torchvision dataset is missing and cannot be downloaded; the message names
            the files to place under ``data_dir``.
        CorruptDatasetError: an MNIST file under ``data_dir`` is damaged (truncated, not MNIST's format, image
            and label counts that differ); the message names it and what to do.

    >>> ds = load_dataset("digits", split="test")
    >>> x, y = ds[0]
    >>> tuple(x.shape), x.dtype, len(ds)
    ((1, 8, 8), torch.float32, 450)
    """
    _check_name_split(name, split)
    if name == "digits":
        return _load_digits(split)
    return _load_torchvision(name, split, Path(data_dir), download)


def _batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[1]
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


def dataset_to_tensors(
    dataset: Dataset, *, n_examples: int | None = None, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the first ``n_examples`` of a dataset into tensors ``(x, y)``.

    Args:
        dataset: a dataset of ``(image, label)`` pairs, such as one from :func:`load_dataset`.
        n_examples: how many examples to take from the start; all when None.
        batch_size: how many examples to read at a time.

    Returns:
        ``x`` of shape ``(n, C, H, W)`` and ``y`` of shape ``(n,)`` (long).

    >>> x, y = dataset_to_tensors(load_dataset("digits", split="test"), n_examples=5)
    >>> tuple(x.shape), tuple(y.shape)
    ((5, 1, 8, 8), (5,))
    """
    if n_examples is not None and n_examples < 1:
        raise ValueError(f"n_examples={n_examples!r} is not allowed; allowed: a positive int or None")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: a positive int")
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    count = 0
    for xb, yb in _batches(dataset, batch_size):
        xs.append(xb)
        ys.append(torch.as_tensor(yb, dtype=torch.long))
        count += len(xb)
        if n_examples is not None and count >= n_examples:
            break
    if not xs:
        raise ValueError("dataset is empty")
    x, y = torch.cat(xs), torch.cat(ys)
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    return x, y

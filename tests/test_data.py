"""Tests of fire_plugin.data: digits against sklearn, torchvision datasets offline."""

from __future__ import annotations

import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from fire_plugin.data import DATASETS, CorruptDatasetError, DatasetNotFoundError, dataset_to_tensors, load_dataset


def test_digits_shapes_and_range(digits_train, digits_test):
    for (x, y), n in ((digits_train, 1347), (digits_test, 450)):
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.long
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert set(y.tolist()) == set(range(10))


def test_digits_match_sklearn(digits_train, digits_test):
    bunch = load_digits()
    reference = {
        (tuple(np.round(img / 16.0, 6).flatten()), int(t)) for img, t in zip(bunch.images, bunch.target, strict=True)
    }
    seen = []
    for x, y in (digits_train, digits_test):
        for img, t in zip(x.numpy(), y.tolist(), strict=True):
            seen.append((tuple(np.round(img.astype(np.float64), 6).flatten()), t))
    assert len(seen) == len(bunch.images)
    assert set(seen) <= reference


def test_digits_split_disjoint_stratified_fixed(digits_train, digits_test):
    (xtr, _), (xte, yte) = digits_train, digits_test
    rows_train = {tuple(r) for r in xtr.flatten(1).tolist()}
    rows_test = [tuple(r) for r in xte.flatten(1).tolist()]
    # sklearn's digits contain a handful of duplicate images; the split is by index, so allow them
    assert sum(r in rows_train for r in rows_test) <= 5
    counts_all = np.bincount(load_digits().target, minlength=10)
    counts_test = torch.bincount(yte, minlength=10).numpy()
    assert np.all(np.abs(counts_test - 0.25 * counts_all) <= 1.0)  # stratified
    again = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    assert torch.equal(again[0], xte) and torch.equal(again[1], yte)


def test_dataset_info_matches_digits(digits_train):
    x, _ = digits_train
    info = DATASETS["digits"]
    assert (info.in_chans, info.image_size, info.num_classes) == (1, 8, 10)
    assert abs(info.mean[0] - float(x.mean())) < 1e-3 and abs(info.std[0] - float(x.std())) < 1e-3


def test_dataset_to_tensors():
    ds = load_dataset("digits", split="test")
    x, y = dataset_to_tensors(ds, n_examples=7, batch_size=3)
    assert x.shape == (7, 1, 8, 8) and torch.equal(y, ds.tensors[1][:7])  # type: ignore[attr-defined]
    x_all, _ = dataset_to_tensors(ds)
    assert len(x_all) == 450
    with pytest.raises(ValueError, match="n_examples=0"):
        dataset_to_tensors(ds, n_examples=0)


@pytest.mark.parametrize(("kwargs", "message"), [({"name": "svhn"}, "name='svhn'"), ({"split": "val"}, "split='val'")])
def test_invalid_arguments(kwargs, message):
    args = {"name": "digits", "split": "train", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_dataset(args.pop("name"), **args)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "MNIST/raw/t10k-images-idx3-ubyte"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_torchvision_dataset_names_files(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, split="test", data_dir=tmp_path, download=False)
    assert str(tmp_path / expected) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_failed_download_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline_download(url, download_root, filename=None, md5=None, **kwargs):
        Path(download_root).mkdir(parents=True, exist_ok=True)  # as torchvision's download_url does
        partial = Path(download_root) / (filename or "partial")
        partial.write_bytes(b"half a tarball")
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline_download)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", split="train", data_dir=data_dir)
    message = str(err.value)
    assert "could not be downloaded" in message and "Name or service not known" in message
    assert str(data_dir / "cifar-10-batches-py" / "test_batch") in message
    assert "Traceback" not in message
    assert not data_dir.exists()  # no partial file (nor the folder the download created)


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28))
    labels = np.array([7, 0, 3])
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    ds = load_dataset("mnist", split="test", data_dir=tmp_path, download=False)
    x, y = dataset_to_tensors(ds)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0].numpy(), images / 255.0, rtol=0, atol=1e-6)
    assert y.tolist() == [7, 0, 3]


def _mnist_dir(tmp_path: Path, n: int = 3) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28))
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


def _damage(raw: Path, kind: str) -> Path:
    images, labels = raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"
    if kind == "truncated_images":
        images.write_bytes(images.read_bytes()[:500])
        return images
    if kind == "truncated_labels":
        labels.write_bytes(labels.read_bytes()[:9])
        return labels
    if kind == "empty_images":
        images.write_bytes(b"")
        return images
    if kind == "html_images":  # what a download that hit an error page saves
        images.write_bytes(b"<html><body>404 Not Found</body></html>")
        return images
    if kind == "gzipped_images":  # the .gz itself saved under the gunzipped name
        images.write_bytes(b"\x1f\x8b\x08\x00" + images.read_bytes()[4:])
        return images
    if kind == "count_mismatch":
        _write_idx(labels, np.array([1, 2]))
        return labels
    if kind == "label_out_of_range":
        _write_idx(labels, np.array([1, 2, 200]))
        return labels
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated_images",
        "truncated_labels",
        "empty_images",
        "html_images",
        "gzipped_images",
        "count_mismatch",
        "label_out_of_range",
    ],
)
def test_corrupt_mnist_file_is_named(tmp_path, kind):
    # Before: a bare AssertionError (html, gzip), ValueError "invalid literal for int()" (empty), a
    # DatasetNotFoundError saying "was not found" for files that exist (truncated), or a silent load of 3
    # images with 2 labels.
    bad = _damage(_mnist_dir(tmp_path), kind)
    for download in (False, True):
        with pytest.raises(CorruptDatasetError) as err:
            load_dataset("mnist", split="test", data_dir=tmp_path, download=download)
        message = str(err.value)
        assert str(bad) in message and "corrupt" in message and "Delete it" in message
        assert isinstance(err.value, ValueError)
    assert bad.exists()  # reported, not deleted
    # the other split is intact and still loads
    x, y = dataset_to_tensors(load_dataset("mnist", split="train", data_dir=tmp_path, download=False))
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 1, 2]


def test_data_dir_may_contain_dotdot(tmp_path):
    _mnist_dir(tmp_path / "data")
    ds = load_dataset("mnist", split="test", data_dir=tmp_path / "data" / ".." / "data", download=False)
    assert len(ds) == 3


# ----------------------------------------------------------------------------------------------- mixed / epoch loaders


def _sets(n_orig=12, n_more=20, shape=(1, 4, 4)):
    orig = TensorDataset(torch.rand(n_orig, *shape), torch.zeros(n_orig, dtype=torch.long))
    more = TensorDataset(torch.rand(n_more, *shape), torch.ones(n_more, dtype=torch.long))
    return orig, more


def test_mixed_loader_refuses_batches_without_original_or_without_extra_images():
    """round(batch_size * extra_fraction) gave 0 original (or 0 extra) images per batch, silently."""
    from fire_plugin.data import mixed_loader

    orig, more = _sets()
    with pytest.raises(ValueError, match=r"batch_size=10 with extra_fraction=0\.99 gives 0 original images"):
        mixed_loader(orig, more, batch_size=10, extra_fraction=0.99)
    with pytest.raises(ValueError, match=r"batch_size=10 with extra_fraction=0\.04 gives 0 extra images"):
        mixed_loader(orig, more, batch_size=10, extra_fraction=0.04)
    x, y = next(iter(mixed_loader(orig, more, batch_size=10, extra_fraction=0.9)))  # 1 original, 9 extra: fine
    assert int((y == 0).sum()) == 1 and len(y) == 10


def test_mixed_loader_refuses_extra_labels_outside_the_classes(tmp_path):
    """-100 was ignored by cross-entropy without a word; 10 crashed at the first batch."""
    from fire_plugin.data import mixed_loader

    orig, _ = _sets(shape=(3, 4, 4))
    images = np.zeros((6, 4, 4, 3), dtype=np.uint8)
    for bad in (-100, 10):
        path = tmp_path / f"labels{bad}.npz"
        np.savez(path, image=images, label=np.array([0, 1, 2, 3, 4, bad]))
        with pytest.raises(ValueError, match=rf"labels{bad}\.npz.*key 'label'.*labels in \[{min(bad, 0)}, "
                                             rf"{max(bad, 4)}\].*\[0, 10\)"):
            mixed_loader(orig, path, batch_size=4, extra_fraction=0.5, num_classes=10)
    with pytest.raises(ValueError, match=r"holds labels in \[-1, 1\]"):  # without num_classes: still >= 0
        mixed_loader(orig, TensorDataset(torch.rand(4, 3, 4, 4), torch.tensor([0, 1, -1, 0])), batch_size=4)


def test_mixed_loader_names_an_npy_and_a_random_bytes_file(tmp_path):
    from fire_plugin.data import mixed_loader

    orig, _ = _sets(shape=(3, 4, 4))
    np.save(tmp_path / "images.npy", np.zeros((6, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images\.npy' is a single \.npy array, not an \.npz archive"):
        mixed_loader(orig, tmp_path / "images.npy", batch_size=4)
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"noise\.npz' is not a readable \.npz archive"):
        mixed_loader(orig, tmp_path / "noise.npz", batch_size=4)


def test_mixed_loader_refuses_extra_images_of_another_shape():
    """Another shape crashed at the first batch in torch.stack, naming neither argument."""
    from fire_plugin.data import mixed_loader

    orig, _ = _sets()
    _, more = _sets(shape=(1, 5, 5))
    with pytest.raises(ValueError, match=r"extra images have shape \(1, 5, 5\), the original ones \(1, 4, 4\)"):
        mixed_loader(orig, more, batch_size=4)


@pytest.mark.parametrize("seed", [0.5, -1, True, "0"])
def test_loaders_refuse_a_seed_that_is_not_an_int(seed):
    """mixed_loader(seed=0.5) trained with seed 0."""
    from fire_plugin.data import epoch_loader, mixed_loader

    orig, more = _sets()
    with pytest.raises(ValueError, match=r"seed=.* is not allowed; allowed: an int >= 0"):
        mixed_loader(orig, more, batch_size=4, seed=seed)
    with pytest.raises(ValueError, match=r"seed=.* is not allowed"):
        epoch_loader(orig, batch_size=4, seed=seed)


def test_epoch_loader_batches_and_augmentation_depend_only_on_seed_and_epoch():
    """What makes presets resume exactly, also with persistent workers: no global RNG, no worker RNG involved."""
    from fire_plugin.data import epoch_loader

    orig, _ = _sets(n_orig=10)

    def noisy(x):  # a random augmentation drawing from torch's global generator, as random_crop_flip does
        return x + torch.rand(())

    def epoch(seed, e, shard=None):
        loader = epoch_loader(orig, batch_size=3, seed=seed, drop_last=True, transform=noisy)
        sampler = loader.batch_sampler if shard is None else loader.batch_sampler.shard(*shard)
        sampler.set_epoch(e)
        return [x for x, _ in torch.utils.data.DataLoader(loader.dataset, batch_sampler=sampler,
                                                          generator=loader.generator)]

    torch.manual_seed(0)
    a = epoch(1, 2)
    torch.manual_seed(123)  # the global RNG plays no part, and is left as it was
    state = torch.get_rng_state()
    b = epoch(1, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a) == 3 and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))  # 10 // 3 batches
    assert not torch.equal(torch.cat(epoch(1, 3)), torch.cat(a)) and not torch.equal(torch.cat(epoch(2, 2)),
                                                                                  torch.cat(a))
    ranks = [epoch(1, 2, (3, r)) for r in range(3)]  # one batch per rank, the same images as in one process
    assert sorted(torch.cat([torch.cat(r) for r in ranks]).flatten().tolist()) == sorted(
        torch.cat(a).flatten().tolist())

"""One checkpoint loader and one error type per failure, whoever reads the file (engine, load_pretrained)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from fire_plugin import engine, pretrained
from fire_plugin.engine import (
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
)


def test_pretrained_raises_the_engines_error_types():
    assert pretrained.CorruptCheckpointError is engine.CorruptCheckpointError
    assert pretrained.CheckpointNotFoundError is engine.CheckpointNotFoundError


@pytest.mark.parametrize("reader", ["engine", "pretrained"])
def test_every_reader_reports_a_damaged_file_with_one_type(tmp_path, reader):
    def read(path):
        if reader == "engine":
            return load_checkpoint(path)
        return pretrained.load_pretrained("lenet_pi", dataset="digits", checkpoint=path)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    for path in (empty, truncated):
        with pytest.raises(CorruptCheckpointError) as err:
            read(path)
        assert str(path) in str(err.value) and "delete it" in str(err.value)
        assert isinstance(err.value, ValueError) and "weights_only" not in str(err.value)
    with pytest.raises(CheckpointIsADirectoryError) as err:
        read(tmp_path)
    assert isinstance(err.value, IsADirectoryError) and isinstance(err.value, CheckpointNotFoundError)
    assert "'good.pt'" in str(err.value)  # the files inside it are named
    with pytest.raises(CheckpointNotFoundError, match="missing.pt' does not exist"):
        read(tmp_path / "missing.pt")


class _Hostile:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_file_that_could_run_code_is_refused_as_unsafe_by_every_reader(tmp_path):
    path = tmp_path / "hostile.pt"
    torch.save({"x": _Hostile()}, path)
    for read in (load_checkpoint, lambda p: pretrained.load_pretrained("lenet_pi", dataset="digits", checkpoint=p)):
        with pytest.raises(UnsafeCheckpointError, match="could run code") as err:
            read(path)
        assert isinstance(err.value, ValueError) and isinstance(err.value, pickle.UnpicklingError)

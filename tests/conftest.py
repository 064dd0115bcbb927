"""Shared fixtures: sklearn's embedded digits as [0, 1] tensors (offline)."""

from __future__ import annotations

import pytest
import torch

from fire_plugin.data import load_dataset

# The test models are tiny: one intra-op thread is as fast and does not stall when the 2 cores are busy.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits", split="train")
    x, y = ds.tensors  # type: ignore[attr-defined]
    return x.clone(), y.clone()


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits", split="test")
    x, y = ds.tensors  # type: ignore[attr-defined]
    return x.clone(), y.clone()

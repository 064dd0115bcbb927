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


def _train_digits_cnn(x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int = 0) -> torch.nn.Module:
    """A DigitsCNN trained by Adam (lr 1e-2, batch 128) for ``epochs`` epochs, deterministic; in eval mode."""
    import torch.nn.functional as F

    from fire_plugin.data import DATASETS
    from fire_plugin.models import DigitsCNN

    info = DATASETS["digits"]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsCNN(mean=info.mean, std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def train_digits_cnn():  # type: ignore[no-untyped-def]
    """``train_digits_cnn(x, y, epochs=..., seed=0)``: a deterministic Adam-trained DigitsCNN in eval mode."""
    return _train_digits_cnn

"""ART's own usage patterns on our trainers: fit keywords, generators, the classifier's loss, label checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator
from art.estimators.classification import PyTorchClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fire_plugin  # noqa: F401
from fire_plugin.trainers import FIRETrainer, TRADESTrainer


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _classifier(model: nn.Module, loss: nn.Module | None = None) -> PyTorchClassifier:
    return PyTorchClassifier(model, loss=loss if loss is not None else nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                             nb_classes=10, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                             clip_values=(0.0, 1.0))


@pytest.fixture()
def data(digits_train):
    x, y = digits_train
    return x[:96].numpy(), y[:96].numpy()


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_art_fit_keywords_are_accepted(data, caplog):
    x, y = data
    trainer = FIRETrainer(_classifier(_net()), lam=1.0, eps=0.1, eps_step=0.03, max_iter=2, verbose=True)
    with caplog.at_level(logging.DEBUG, logger="fire_plugin.trainers"):
        trainer.fit(x, y, nb_epochs=1, batch_size=32, verbose=False, training_mode=True, drop_last=True)
    assert any("training_mode" in r.getMessage() for r in caplog.records)
    # drop_last honoured: 96 = 3 * 32 full batches, and with batch 40 only 80 samples are seen
    trainer.fit(x, y, nb_epochs=1, batch_size=40, verbose=False, drop_last=True)
    assert trainer.history[-1]["samples_per_s"] > 0
    seen = {}
    trainer.fit(x, y, nb_epochs=1, batch_size=40, verbose=False, drop_last=True,
                on_epoch_end=lambda s: seen.setdefault("n", s.samples_per_s * s.seconds))
    assert seen["n"] == pytest.approx(80, rel=1e-6)


def test_classifier_loss_is_the_natural_term_by_default(data):
    """A label-smoothed classifier loss changes the weights (as in ART's TRADES trainer); natural_loss='ce' not."""
    x, y = data
    results = {}
    for name, loss, natural in (("plain", nn.CrossEntropyLoss(), "classifier"),
                                ("smooth", nn.CrossEntropyLoss(label_smoothing=0.3), "classifier"),
                                ("smooth_ce", nn.CrossEntropyLoss(label_smoothing=0.3), "ce")):
        model = _net()
        trainer = FIRETrainer(_classifier(model, loss), lam=1.0, eps=0.1, eps_step=0.03, max_iter=2,
                              natural_loss=natural, verbose=False)
        torch.manual_seed(1)
        trainer.fit(x, y, nb_epochs=1, batch_size=32, shuffle=False)
        results[name] = _weights(model)
    # two code paths of the same cross-entropy (ART's loss object, ours): measured 0 difference here (AVX512, AVX2
    # and default kernels), label smoothing moves the weights by 2.2e-3; bound 1e-6 (another CPU may round apart)
    assert (results["plain"] - results["smooth"]).abs().max() > 1e-3
    assert (results["plain"] - results["smooth_ce"]).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="natural_loss must be one of"):
        FIRETrainer(_classifier(_net()), natural_loss="mse")


def test_sum_reduction_classifier_loss_scales_the_natural_term(data):
    """reduction='sum' weighs the natural term batch_size times more; the loss the engine reports shows it."""
    x, y = data
    losses = {}
    for reduction in ("mean", "sum"):
        trainer = FIRETrainer(_classifier(_net(), nn.CrossEntropyLoss(reduction=reduction)), lam=0.0, eps=0.1,
                              eps_step=0.03, max_iter=1, verbose=False)
        trainer.module.model.eval()
        xb, yb = torch.tensor(x[:32]), torch.tensor(y[:32])
        with torch.no_grad():
            losses[reduction] = float(trainer.loss(trainer.module(xb), trainer.module(xb), yb))
    assert losses["sum"] == pytest.approx(32 * losses["mean"], rel=1e-5)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (lambda y: y[:, None], r"shape \(96, 1\).*\(96,\).*\(96, 10\)"),
        (lambda y: np.eye(9, dtype=np.float32)[np.minimum(y, 8)], r"shape \(96, 9\)"),
        (lambda y: np.where(np.arange(len(y)) == 3, 10, y), r"outside \[0, 10\)"),
        (lambda y: np.where(np.arange(len(y)) == 3, -1, y), r"outside \[0, 10\)"),
        (lambda y: y + 0.5, "integer class indices"),
    ],
)
def test_bad_labels_are_refused_before_training(data, labels, match):
    x, y = data
    model = _net()
    before = _weights(model)
    trainer = FIRETrainer(_classifier(model), lam=1.0, eps=0.1, eps_step=0.03, max_iter=1, verbose=False)
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, labels(y), nb_epochs=1, batch_size=32)
    assert torch.equal(before, _weights(model))


def test_nan_in_x_is_named(data):
    x, y = data
    x = x.copy()
    x[0, 0, 0, 0] = np.nan
    trainer = FIRETrainer(_classifier(_net()), lam=1.0, eps=0.1, eps_step=0.03, max_iter=1, verbose=False)
    with pytest.raises(ValueError, match="x contains NaN"):
        trainer.fit(x, y, nb_epochs=1)


def test_art_data_generators(data):
    x, y = data
    trainer = TRADESTrainer(_classifier(_net()), beta=6.0, eps=0.1, eps_step=0.03, max_iter=2, verbose=False)
    trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=32, shuffle=True), nb_epochs=1, verbose=False)
    loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=32, shuffle=True)
    trainer.fit_generator(PyTorchDataGenerator(loader, size=len(x), batch_size=32), nb_epochs=1,
                          training_mode=True)
    assert len(trainer.history) == 2 and all(0 <= r["nat_acc"] <= 1 for r in trainer.history)

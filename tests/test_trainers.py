"""FIRETrainer as an ART Trainer: pipelines, labels, schedulers, preprocessing, and robustness on digits."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchattacks
from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator
from art.defences.trainer import Trainer
from art.estimators.classification import PyTorchClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fire_plugin  # noqa: F401
from fire_plugin.trainers import FIRETrainer, HellingerTrainer, PartialIsometryTrainer, TRADESTrainer


class Net(nn.Module):  # a non-Sequential model
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _classifier(model: nn.Module, *, lr: float = 0.05, preprocessing=None, clip=(0.0, 1.0)) -> PyTorchClassifier:
    return PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), clip_values=clip,
        preprocessing=preprocessing,
    )


@pytest.fixture()
def small_digits(digits_train):
    x, y = digits_train
    return x[:160].numpy(), y[:160].numpy()


def test_is_an_art_trainer_and_fits_with_index_and_onehot(small_digits):
    torch.manual_seed(0)
    x, y = small_digits
    x0, y0 = x.copy(), y.copy()
    clf = _classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)))
    trainer = FIRETrainer(clf, lam=1.0, eps=0.1, eps_step=0.03, max_iter=3, verbose=False)
    assert isinstance(trainer, Trainer)
    sched = torch.optim.lr_scheduler.StepLR(clf._optimizer, step_size=1, gamma=0.5)
    trainer.fit(x, y, validation_data=(x[:64], y[:64]), batch_size=32, nb_epochs=2, scheduler=sched)
    onehot = np.eye(10, dtype=np.float32)[y]
    trainer.fit(x, onehot, batch_size=32, nb_epochs=1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert [r["epoch"] for r in trainer.history] == [0, 1, 2]
    first = trainer.history[0]
    assert {"loss", "nat_acc", "adv_acc", "val_nat_acc", "val_adv_acc", "seconds"} <= set(first)
    assert first["val_nat_acc"] is not None and 0 <= first["val_adv_acc"] <= first["val_nat_acc"] + 0.2
    assert trainer.history[1]["lr"] == pytest.approx(0.025)  # StepLR (a torch 2.x LRScheduler) was stepped
    assert trainer.get_classifier() is clf
    assert trainer.predict(x[:5]).shape == (5, 10)


def test_training_accuracy_is_read_from_logits_for_sequential(small_digits):
    """ART 1.20's TRADES trainer reports accuracy from the first layer's output of nn.Sequential models."""
    torch.manual_seed(0)
    x, y = small_digits
    clf = _classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), lr=0.1)
    trainer = TRADESTrainer(clf, beta=1.0, eps=0.05, eps_step=0.02, max_iter=2, verbose=False)
    trainer.fit(x, y, batch_size=32, nb_epochs=4)
    # independent check: accuracy of the trained model on the training set, from ART's predict
    acc = float((clf.predict(x).argmax(1) == y).mean())
    assert trainer.history[-1]["nat_acc"] == pytest.approx(acc, abs=0.15)
    assert acc > 0.5


def test_multisteplr_nonsequential_and_fit_generator(small_digits):
    torch.manual_seed(0)
    x, y = small_digits
    clf = _classifier(Net())
    trainer = HellingerTrainer(clf, lam=1.0, eps=0.1, eps_step=0.03, max_iter=2, verbose=False)
    sched = torch.optim.lr_scheduler.MultiStepLR(clf._optimizer, milestones=[1], gamma=0.1)
    trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=40, shuffle=True), nb_epochs=2, scheduler=sched)
    loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=40, shuffle=True)
    trainer.fit_generator(PyTorchDataGenerator(loader, size=len(x), batch_size=40), nb_epochs=1,
                          validation_data=(x[:40], y[:40]))
    assert len(trainer.history) == 3 and trainer.history[2]["val_nat_acc"] is not None
    assert trainer.history[1]["lr"] == pytest.approx(0.005)


def test_normalizing_classifier_applies_preprocessing_once_and_eps_in_pixels(small_digits):
    torch.manual_seed(0)
    x, y = small_digits
    mean, std = 0.3, 0.4
    model = Net()
    clf = _classifier(model, preprocessing=(mean, std))
    trainer = FIRETrainer(clf, lam=1.0, eps=0.1, eps_step=0.03, max_iter=3, verbose=False)
    xt = torch.tensor(x[:16])
    # the trainer's module sees [0, 1] images and normalizes exactly once, like ART's predict
    with torch.no_grad():
        ours = trainer.module(xt).numpy()
        direct = model((xt - mean) / std).numpy()
    np.testing.assert_allclose(ours, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, clf.predict(x[:16]), rtol=1e-5, atol=1e-5)
    adv = trainer.attack(xt, torch.tensor(y[:16]))
    assert (adv - xt).abs().max() <= 0.1 + 1e-6  # eps in pixel space, not in normalized space
    trainer.fit(x, y, batch_size=32, nb_epochs=1)
    assert np.isfinite(trainer.history[0]["loss"])


def test_clip_values_other_than_unit_interval(small_digits):
    x, y = small_digits
    x255 = x * 255.0
    clf = _classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), clip=(0.0, 255.0))
    trainer = FIRETrainer(clf, lam=1.0, eps=8.0, eps_step=2.0, max_iter=2, verbose=False)
    adv = trainer.attack(torch.tensor(x[:8]), torch.tensor(y[:8]))
    assert (adv - torch.tensor(x[:8])).abs().max() <= 8.0 / 255 + 1e-6
    trainer.fit(x255, y, batch_size=40, nb_epochs=1)
    with pytest.raises(ValueError, match="clip_values"):
        trainer.fit(x255 + 300, y, nb_epochs=1)


def test_bad_arguments(small_digits):
    clf = _classifier(Net())
    with pytest.raises(ValueError, match="divergence"):
        FIRETrainer(clf, divergence="js")
    with pytest.raises(ValueError, match="norm"):
        FIRETrainer(clf, norm="L1")
    with pytest.raises(ValueError, match="max_iter"):
        FIRETrainer(clf, max_iter=0)
    with pytest.raises(ValueError, match="classifier"):
        FIRETrainer(object())  # type: ignore[arg-type]
    trainer = FIRETrainer(clf, verbose=False)
    x, y = small_digits
    with pytest.raises(ValueError, match="scheduler"):
        trainer.fit(x, y, nb_epochs=1, scheduler=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same number of samples"):
        trainer.fit(x, y[:5], nb_epochs=1)


def _pgd20_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    model.eval()
    torch.manual_seed(0)
    adv = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)(x, y)
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


@pytest.mark.slow
def test_fire_is_more_robust_than_ce_on_digits(digits_train, digits_test):
    """Same model, data, optimizer, seed and 10 epochs; eps = 0.1 on [0, 1] digits; FIRE's attack: 5 steps of 0.05.

    Measured (CPU, torch 2.14.1): with 1 torch thread, as this test runs, CE clean 0.971 / PGD-20 0.571 and FIRE
    (lam = 6) clean 0.942 / PGD-20 0.729 (gap 0.158); an earlier run with 2 threads gave CE 0.969 / 0.580 and
    FIRE 0.898 / 0.678 (gap 0.098). The thread count changes the floating-point order and so the short training
    run. We assert a 0.05 gap, half of the smaller measured one.
    """
    x, y = digits_train
    xt, yt = digits_test
    results = {}
    for name in ("ce", "fire"):
        torch.manual_seed(0)
        model = timm.create_model("digits_cnn", num_classes=10)
        clf = _classifier(model, lr=0.05)
        if name == "ce":
            clf.fit(x.numpy(), y.numpy(), batch_size=64, nb_epochs=10, verbose=False)
        else:
            FIRETrainer(clf, lam=6.0, eps=0.1, eps_step=0.05, max_iter=5, verbose=False).fit(
                x.numpy(), y.numpy(), batch_size=64, nb_epochs=10)
        model.eval()
        with torch.no_grad():
            clean = float((model(xt).argmax(1) == yt).float().mean())
        results[name] = (clean, _pgd20_accuracy(model, xt, yt, 0.1))
    assert results["fire"][1] > results["ce"][1] + 0.05, results
    assert results["fire"][0] > 0.8, results


# ----------------------------------------------------------------------------------------------- partial isometry


def test_partial_isometry_trainer_fits_with_the_eta_schedule_and_ART_kwargs(small_digits, tmp_path):
    from fire_plugin.isometry import partial_isometry_penalty

    torch.manual_seed(0)
    x, y = small_digits
    clf = _classifier(Net(), lr=0.05)
    trainer = PartialIsometryTrainer(clf, epsilon=20.0, eta_min=0.01, eta_max=0.04, estimator="exact", verbose=False)
    assert isinstance(trainer, Trainer)
    sched = torch.optim.lr_scheduler.StepLR(clf._optimizer, step_size=1, gamma=0.5)
    trainer.fit(x, y, validation_data=(x[:32], y[:32]), batch_size=32, nb_epochs=3, scheduler=sched,
                training_mode=True)
    assert [r["epoch"] for r in trainer.history] == [0, 1, 2]
    assert trainer.history[2]["lr"] == pytest.approx(0.0125)
    assert trainer.history[0]["adv_acc"] is None and trainer.history[0]["val_nat_acc"] is not None
    # the loss of eq 15 with the last epoch's eta = 0.04, recomputed on the first batch of a fresh objective
    objective = trainer._objective()
    objective.set_epoch(2, 3)
    xt, yt = torch.tensor(x[:32]), torch.tensor(y[:32])
    out = objective(trainer.module, xt, yt)
    ce = nn.functional.cross_entropy(trainer.module(xt), yt)
    penalty = partial_isometry_penalty(trainer.module, xt, epsilon=20.0)
    assert out.loss.item() == pytest.approx((0.96 * ce + 0.04 * penalty).item(), rel=1e-5)
    # the generator path and a checkpointed, resumable run
    trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=40, shuffle=True), nb_epochs=1)
    assert len(trainer.history) == 4
    ckpt = PartialIsometryTrainer(_classifier(Net()), epsilon=20.0, estimator="hutchinson", verbose=False)
    ckpt.fit(x, y, batch_size=40, nb_epochs=1, checkpoint_dir=tmp_path)
    ckpt.fit(x, y, batch_size=40, nb_epochs=2, checkpoint_dir=tmp_path)
    assert [r["epoch"] for r in ckpt.history] == [0, 1]


def test_partial_isometry_trainer_epsilon_is_in_pixel_units(small_digits):
    """clip_values (0, 255) with a model that divides by 255 and epsilon * 255 trains like (0, 1) and epsilon."""
    x, y = small_digits

    class Scaled(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.inner(v / 255.0)

    weights = []
    for clip, scale in (((0.0, 1.0), 1.0), ((0.0, 255.0), 255.0)):
        torch.manual_seed(0)
        net = Net()
        model = net if scale == 1.0 else Scaled(net)
        clf = _classifier(model, lr=0.05, clip=clip)
        PartialIsometryTrainer(clf, epsilon=20.0 * scale, eta_min=0.05, eta_max=0.05, verbose=False).fit(
            x * scale, y, batch_size=40, nb_epochs=1, shuffle=False)
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_partial_isometry_trainer_bad_arguments():
    clf = _classifier(Net())
    for kwargs, name in (({"epsilon": 0.0}, "epsilon"), ({"epsilon": -1.0}, "epsilon"),
                         ({"epsilon": 1.0, "eta_min": 0.5, "eta_max": 0.1}, "eta_min"),
                         ({"epsilon": 1.0, "eta_max": 1.5}, "eta_max"),
                         ({"epsilon": 1.0, "estimator": "power"}, "estimator"),
                         ({"epsilon": 1.0, "n_probes": 0}, "n_probes")):
        with pytest.raises(ValueError, match=rf"\b{name}="):
            PartialIsometryTrainer(clf, **kwargs)
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    with pytest.raises(ValueError, match="BatchNorm"):
        PartialIsometryTrainer(_classifier(bn), epsilon=1.0)

"""ART ``Trainer`` subclasses over :mod:`fire_plugin.engine`.

:class:`FIRETrainer` drops into an ART pipeline where ``AdversarialTrainerTRADESPyTorch`` stands::

    trainer = AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0)   # before
    trainer = FIRETrainer(classifier, lam=6.0, eps=0.3, eps_step=0.01, max_iter=40)  # after

Unlike ART 1.20's TRADES trainer it accepts any ``torch.optim.lr_scheduler.LRScheduler``, reports accuracy from
the model's logits (also for ``nn.Sequential`` models), applies the classifier's preprocessing exactly once and
differentiably (the attack's ``eps`` and the classifier's ``clip_values`` stay in pixel space), and spends no
forward pass on bookkeeping.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from art.defences.trainer.trainer import Trainer
from art.estimators.classification import PyTorchClassifier
from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fire_plugin.attacks import NORMS, DivergencePGD
from fire_plugin.distances import DIVERGENCES
from fire_plugin.engine import IndexedDataset, SelfAdaptiveTargets, fit
from fire_plugin.losses import DivergenceRegularizedLoss

__all__ = ["FIRETrainer", "HellingerTrainer", "TRADESTrainer"]

_logger = logging.getLogger(__name__)


class _ClassifierModule(nn.Module):
    """``model(preprocess(lo + (hi - lo) * u))`` for images ``u`` in [0, 1]: the classifier seen in unit space.

    The classifier's ART PyTorch preprocessors (e.g. mean/std standardisation) are applied once, differentiably.
    """

    def __init__(self, model: nn.Module, preprocessors: list[PreprocessorPyTorch], low: float, high: float) -> None:
        super().__init__()
        self.model = model
        self.preprocessors = preprocessors
        self.low = low
        self.scale = high - low

    def forward(self, u: Tensor) -> Tensor:
        x = u if (self.low == 0.0 and self.scale == 1.0) else self.low + self.scale * u
        for op in self.preprocessors:
            x, _ = op.forward(x)
        return self.model(x)


def _is_identity(op: PreprocessorPyTorch) -> bool:
    return (
        isinstance(op, StandardisationMeanStdPyTorch)
        and bool(np.all(np.asarray(op.mean) == 0))
        and bool(np.all(np.asarray(op.std) == 1))
    )


class _GeneratorLoader:
    """Iterate an ART ``DataGenerator`` as torch ``(x, y)`` batches, one pass of ``ceil(size / batch_size)``."""

    def __init__(self, generator: Any, to_batch: Any) -> None:
        self.generator = generator
        self.to_batch = to_batch

    def __len__(self) -> int:
        return int(np.ceil(self.generator.size / self.generator.batch_size))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(len(self)):
            x, y = self.generator.get_batch()
            yield self.to_batch(x, y)


class FIRETrainer(Trainer):
    """Fisher-Rao regularized adversarial training (FIRE, eq. 7) as an ART ``Trainer``.

    Minimizes ``CE(f(x), y) + lam * mean d(f(x), f(x'))`` where ``d`` is the chosen divergence (``"fisher_rao"``:
    squared Fisher-Rao distance; ``"kl"``: TRADES; ``"hellinger"``: squared Hellinger distance) and ``x'``
    maximizes that same divergence by PGD (:class:`fire_plugin.attacks.DivergencePGD`).

    Args:
        classifier: an ART ``PyTorchClassifier`` with an optimizer. Its preprocessing, ``clip_values`` and device
            are used; images are expected within ``clip_values`` (``(0, 1)`` when unset).
        lam: weight of the divergence. Paper convention: multiplies ``d^2`` with ``d = 2 * arccos(BC)``; the
            authors' public code uses ``beta * arccos(BC)^2``, i.e. ``beta = 4 * lam``. For ``"kl"`` it is TRADES'
            beta.
        divergence: ``"fisher_rao"``, ``"kl"`` or ``"hellinger"``.
        eps: attack budget in pixel space (the classifier's input space).
        eps_step: PGD step size in pixel space.
        max_iter: PGD steps.
        norm: ``"Linf"`` or ``"L2"``.
        self_adaptive: self-adaptive soft targets (Huang et al., 2020) after ``sat_warmup`` epochs.
        sat_warmup: warm-up epochs of self-adaptive training.
        sat_momentum: EMA momentum of self-adaptive training.
        verbose: tqdm progress over epochs and batches.

    Example:
        >>> import numpy as np, torch
        >>> from art.estimators.classification import PyTorchClassifier
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
        ...                         optimizer=torch.optim.SGD(net.parameters(), lr=0.1), clip_values=(0.0, 1.0))
        >>> trainer = FIRETrainer(clf, lam=1.0, eps=0.1, eps_step=0.02, max_iter=5, verbose=False)
        >>> x, y = np.random.rand(32, 1, 8, 8).astype(np.float32), np.random.randint(0, 10, 32)
        >>> trainer.fit(x, y, nb_epochs=1, batch_size=16)
        >>> len(trainer.history)
        1
    """

    def __init__(
        self,
        classifier: PyTorchClassifier,
        *,
        lam: float = 6.0,
        divergence: str = "fisher_rao",
        eps: float = 8 / 255,
        eps_step: float = 2 / 255,
        max_iter: int = 10,
        norm: str = "Linf",
        self_adaptive: bool = False,
        sat_warmup: int = 10,
        sat_momentum: float = 0.9,
        verbose: bool = True,
    ) -> None:
        super().__init__(classifier)
        self.lam = lam
        self.divergence = divergence
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.self_adaptive = self_adaptive
        self.sat_warmup = sat_warmup
        self.sat_momentum = sat_momentum
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        self._check_params()

        model = classifier.model
        clip = classifier.clip_values
        self._low, self._high = (0.0, 1.0) if clip is None else (float(np.min(clip[0])), float(np.max(clip[1])))
        ops = [op for op in (classifier.preprocessing_operations or []) if op.apply_fit and not _is_identity(op)]
        self.module = _ClassifierModule(model, ops, self._low, self._high)
        scale = self._high - self._low
        self.attack = DivergencePGD(
            self.module, divergence=divergence, eps=eps / scale, alpha=eps_step / scale, steps=max_iter, norm=norm
        )
        self.loss = DivergenceRegularizedLoss(divergence, lam)

    # ------------------------------------------------------------------------------------------ validation

    def _check_params(self) -> None:
        if not isinstance(self._classifier, PyTorchClassifier):
            raise ValueError(
                f"classifier must be an art.estimators.classification.PyTorchClassifier, "
                f"got {type(self._classifier).__name__}"
            )
        if self._classifier._optimizer is None:
            raise ValueError("classifier has no optimizer: pass optimizer=... to PyTorchClassifier")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {self.divergence!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if not float(self.lam) >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam!r}")
        if not float(self.eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if not float(self.eps_step) >= 0:
            raise ValueError(f"eps_step must be >= 0, got {self.eps_step!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")

    # ------------------------------------------------------------------------------------------ data

    @property
    def _device(self) -> torch.device:
        return self._classifier._device

    def _to_unit(self, x: np.ndarray) -> Tensor:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"x must be a numeric numpy array, got {type(x).__name__}")
        lo, hi = self._low, self._high
        if x.size and (x.min() < lo - 1e-6 or x.max() > hi + 1e-6):
            raise ValueError(
                f"x must lie within the classifier's clip_values ({lo}, {hi}), got values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"
            )
        t = torch.tensor(x, dtype=torch.float32)  # copies: the caller's array is never touched
        return t if (lo == 0.0 and hi == 1.0) else (t - lo) / (hi - lo)

    def _to_labels(self, y: np.ndarray, n: int) -> Tensor:
        y = np.asarray(y)
        if y.shape[0] != n:
            raise ValueError(f"x and y must have the same number of samples, got {n} and {y.shape[0]}")
        if y.ndim == 2:
            y = np.argmax(y, axis=1)
        elif y.ndim != 1:
            n_cls = self._classifier.nb_classes
            raise ValueError(f"y must be class indices (N,) or one-hot (N, {n_cls}), got shape {y.shape}")
        return torch.tensor(y, dtype=torch.long)

    def _loader(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, index: bool) -> DataLoader:
        xt = self._to_unit(x)
        dataset: Any = TensorDataset(xt, self._to_labels(y, xt.shape[0]))
        if index:
            dataset = IndexedDataset(dataset)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)

    # ------------------------------------------------------------------------------------------ training

    def fit(  # type: ignore[override]
        self,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = 128,
        nb_epochs: int = 20,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        **kwargs: Any,
    ) -> None:
        """Train on ``x`` (images within ``clip_values``) with labels ``y`` (indices or one-hot).

        Args:
            x: training images, shape ``(N, *input_shape)``.
            y: labels, ``(N,)`` indices or ``(N, nb_classes)`` one-hot.
            validation_data: optional ``(x_val, y_val)``; natural and adversarial accuracy after each epoch.
            batch_size: batch size.
            nb_epochs: number of epochs.
            scheduler: any ``torch.optim.lr_scheduler.LRScheduler`` on the classifier's optimizer, stepped per epoch.
            **kwargs: passed to :func:`fire_plugin.engine.fit` (``checkpoint_dir``, ``resume``, ``amp``, ...).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        loader = self._loader(x, y, batch_size, shuffle=True, index=self.self_adaptive)
        val = None
        if validation_data is not None:
            val = self._loader(validation_data[0], validation_data[1], batch_size, shuffle=False, index=False)
        sat = SelfAdaptiveTargets(
            len(x), self._classifier.nb_classes, warmup=self.sat_warmup, momentum=self.sat_momentum
        ) if self.self_adaptive else None
        self._run(loader, nb_epochs, scheduler, val, sat, **kwargs)

    def fit_generator(  # type: ignore[override]
        self,
        generator: Any,
        nb_epochs: int = 20,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        """Train from an ART ``DataGenerator`` (e.g. ``PyTorchDataGenerator`` or ``NumpyDataGenerator``).

        Self-adaptive training needs sample indices and is only available through :meth:`fit`.
        """
        if self.self_adaptive:
            raise ValueError("self_adaptive=True needs sample indices; use fit(x, y) instead of fit_generator")
        for attr in ("get_batch", "size", "batch_size"):
            if not hasattr(generator, attr):
                raise ValueError(f"generator must be an ART DataGenerator (missing {attr!r}), got {type(generator)}")

        def to_batch(xb: Any, yb: Any) -> tuple[Tensor, Tensor]:
            xb = xb.detach().cpu().numpy() if isinstance(xb, Tensor) else np.asarray(xb)
            yb = yb.detach().cpu().numpy() if isinstance(yb, Tensor) else np.asarray(yb)
            xt = self._to_unit(xb)
            return xt, self._to_labels(yb, xt.shape[0])

        val = None
        if validation_data is not None:
            val = self._loader(validation_data[0], validation_data[1], generator.batch_size, shuffle=False, index=False)
        self._run(_GeneratorLoader(generator, to_batch), nb_epochs, scheduler, val, None, **kwargs)

    def _run(self, loader: Any, nb_epochs: int, scheduler: Any, val: Any, sat: Any, **kwargs: Any) -> None:
        history = fit(
            self.module,
            loader,
            epochs=nb_epochs,
            loss=self.loss,
            attack=self.attack,
            optimizer=self._classifier._optimizer,
            scheduler=scheduler,
            val_loader=val,
            self_adaptive=sat,
            verbose=self.verbose,
            **kwargs,
        )
        if kwargs.get("checkpoint_dir") is not None:
            self.history = history  # the checkpoint carries the history of the resumed run
        else:
            offset = len(self.history)
            for record in history:
                record["epoch"] += offset
            self.history.extend(history)
        self.module.eval()

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Predictions of the trained classifier (``classifier.predict``)."""
        return self._classifier.predict(x, **kwargs)


class TRADESTrainer(FIRETrainer):
    """TRADES (eq. 5) on the FIRE engine: ``CE + beta * KL(p_nat || p_adv)`` with a KL-maximizing PGD.

    Example:
        >>> TRADESTrainer.__mro__[1].__name__
        'FIRETrainer'
    """

    def __init__(self, classifier: PyTorchClassifier, *, beta: float = 6.0, **kwargs: Any) -> None:
        if "divergence" in kwargs:
            raise ValueError("TRADESTrainer fixes divergence='kl'; use FIRETrainer to choose the divergence")
        super().__init__(classifier, lam=beta, divergence="kl", **kwargs)


class HellingerTrainer(FIRETrainer):
    """Hellinger-regularized training (eq. 48): ``CE + lam * H^2`` with ``H^2 = 2 (1 - BC)``.

    Example:
        >>> HellingerTrainer.__mro__[1].__name__
        'FIRETrainer'
    """

    def __init__(self, classifier: PyTorchClassifier, *, lam: float = 6.0, **kwargs: Any) -> None:
        if "divergence" in kwargs:
            raise ValueError("HellingerTrainer fixes divergence='hellinger'; use FIRETrainer to choose")
        super().__init__(classifier, lam=lam, divergence="hellinger", **kwargs)

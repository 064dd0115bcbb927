"""ART ``Trainer`` subclasses over :mod:`fire_plugin.engine`.

:class:`FIRETrainer` drops into an ART pipeline where ``AdversarialTrainerTRADESPyTorch`` stands::

    trainer = AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0)   # before
    trainer = FIRETrainer(classifier, lam=3.0, eps=0.3, eps_step=0.01, max_iter=40)  # after

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
from fire_plugin.engine import AdversarialObjective, IndexedDataset, Objective, SelfAdaptiveTargets, fit
from fire_plugin.isometry import DEFAULT_ESTIMATOR, PartialIsometryObjective
from fire_plugin.losses import DivergenceRegularizedLoss

__all__ = ["EngineTrainer", "FIRETrainer", "HellingerTrainer", "PartialIsometryTrainer", "TRADESTrainer"]

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


_ENGINE_KWARGS = ("checkpoint_dir", "resume", "amp", "config", "sync_batchnorm", "seed", "on_epoch_end",
                  "val_attack")
_IGNORED_ART_KWARGS = ("training_mode", "nb_workers", "use_multiprocessing", "workers")


class EngineTrainer(Trainer):
    """Base of the ART trainers of this package: data handling, ``fit`` / ``fit_generator`` on the shared engine.

    Subclasses implement :meth:`_objective` (the :class:`fire_plugin.engine.Objective` they train) and
    :meth:`_run_config` (their hyperparameters, saved with checkpoints). Everything else, including ART's fit
    keyword arguments, label checks and history, lives here once.
    """

    def __init__(self, classifier: PyTorchClassifier, *, verbose: bool = True) -> None:
        super().__init__(classifier)
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []
        if not isinstance(classifier, PyTorchClassifier):
            raise ValueError(
                f"classifier must be an art.estimators.classification.PyTorchClassifier, "
                f"got {type(classifier).__name__}"
            )
        if classifier._optimizer is None:
            raise ValueError("classifier has no optimizer: pass optimizer=... to PyTorchClassifier")
        clip = classifier.clip_values
        self._low, self._high = (0.0, 1.0) if clip is None else (float(np.min(clip[0])), float(np.max(clip[1])))
        ops = [op for op in (classifier.preprocessing_operations or []) if op.apply_fit and not _is_identity(op)]
        self.module = _ClassifierModule(classifier.model, ops, self._low, self._high)

    # ------------------------------------------------------------------------------------------ hooks

    def _objective(self) -> Objective:
        raise NotImplementedError

    def _run_config(self) -> dict[str, Any]:
        return {"trainer": type(self).__name__}

    def _index_batches(self) -> bool:
        """Whether training batches must carry sample indices (self-adaptive training)."""
        return False

    def _self_adaptive(self, n: int) -> SelfAdaptiveTargets | None:
        return None

    # ------------------------------------------------------------------------------------------ data

    @property
    def _device(self) -> torch.device:
        return self._classifier._device

    def _to_unit(self, x: np.ndarray, name: str = "x") -> Tensor:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{name} must be a numeric numpy array, got {type(x).__name__}")
        if x.size and not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values; clean the data before training")
        lo, hi = self._low, self._high
        if x.size and (x.min() < lo - 1e-6 or x.max() > hi + 1e-6):
            raise ValueError(
                f"{name} must lie within the classifier's clip_values ({lo}, {hi}), got values in "
                f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"
            )
        t = torch.tensor(x, dtype=torch.float32)  # copies: the caller's array is never touched
        return t if (lo == 0.0 and hi == 1.0) else (t - lo) / (hi - lo)

    def _to_labels(self, y: Any, n: int, name: str = "y") -> Tensor:
        y = np.asarray(y)
        n_cls = self._classifier.nb_classes
        accepted = f"accepted: class indices of shape ({n},) or one-hot labels of shape ({n}, {n_cls})"
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"x and {name} must have the same number of samples, got {n} and shape {y.shape}; "
                             f"{accepted}")
        if y.ndim == 2 and y.shape[1] == n_cls and n_cls > 1:
            y = np.argmax(y, axis=1)
        elif y.ndim != 1:
            raise ValueError(f"{name} has shape {y.shape}; {accepted}")
        if not np.issubdtype(y.dtype, np.number) or (y.size and not np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= n_cls):
            raise ValueError(f"{name} holds labels in [{int(y.min())}, {int(y.max())}], outside [0, {n_cls}) "
                             f"(the classifier has nb_classes={n_cls})")
        return torch.tensor(y, dtype=torch.long)

    def _loader(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, index: bool,
                drop_last: bool = False, name: str = "x") -> DataLoader:
        xt = self._to_unit(x, name)
        if xt.shape[0] == 0:
            raise ValueError(f"{name} holds no samples (shape {tuple(xt.shape)}); pass at least one image")
        dataset: Any = TensorDataset(xt, self._to_labels(y, xt.shape[0], "y" if name == "x" else f"{name} labels"))
        if index:
            dataset = IndexedDataset(dataset)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)

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
            y: labels, ``(N,)`` indices or ``(N, nb_classes)`` one-hot (checked before training starts).
            validation_data: optional ``(x_val, y_val)``; natural and adversarial accuracy after each epoch.
            batch_size: batch size.
            nb_epochs: number of epochs.
            scheduler: any ``torch.optim.lr_scheduler.LRScheduler`` on the classifier's optimizer, stepped per epoch.
            **kwargs: ART's fit keywords: ``verbose`` (progress bars for this call), ``drop_last`` and ``shuffle``
                are honoured; ``training_mode`` and other ART keywords that mean nothing here are ignored (logged
                at debug level). The engine's keywords (``checkpoint_dir``, ``resume``, ``amp``, ``config``,
                ``sync_batchnorm``, ``seed``, ``on_epoch_end``, ``val_attack``) are passed to
                :func:`fire_plugin.engine.fit`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        drop_last = bool(kwargs.pop("drop_last", False))
        shuffle = bool(kwargs.pop("shuffle", True))
        index = self._index_batches()
        loader = self._loader(x, y, batch_size, shuffle=shuffle, index=index, drop_last=drop_last)
        val = None
        if validation_data is not None:
            val = self._loader(validation_data[0], validation_data[1], batch_size, shuffle=False, index=False,
                               name="validation_data x")
        self._run(loader, nb_epochs, scheduler, val, self._self_adaptive(len(x)), **kwargs)

    def fit_generator(  # type: ignore[override]
        self,
        generator: Any,
        nb_epochs: int = 20,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        """Train from an ART ``DataGenerator`` (e.g. ``PyTorchDataGenerator`` or ``NumpyDataGenerator``).

        Keyword arguments as in :meth:`fit`. Self-adaptive training needs sample indices and is only available
        through :meth:`fit`.
        """
        if self._index_batches():
            raise ValueError("self_adaptive=True needs sample indices; use fit(x, y) instead of fit_generator")
        for attr in ("get_batch", "size", "batch_size"):
            if not hasattr(generator, attr):
                raise ValueError(f"generator must be an ART DataGenerator (missing {attr!r}), got {type(generator)}")
        for key in ("drop_last", "shuffle"):
            if kwargs.pop(key, None) is not None:
                _logger.debug("fit_generator ignores %r: the generator decides its batches", key)

        def to_batch(xb: Any, yb: Any) -> tuple[Tensor, Tensor]:
            xb = xb.detach().cpu().numpy() if isinstance(xb, Tensor) else np.asarray(xb)
            yb = yb.detach().cpu().numpy() if isinstance(yb, Tensor) else np.asarray(yb)
            xt = self._to_unit(xb)
            return xt, self._to_labels(yb, xt.shape[0])

        val = None
        if validation_data is not None:
            val = self._loader(validation_data[0], validation_data[1], generator.batch_size, shuffle=False,
                               index=False, name="validation_data x")
        self._run(_GeneratorLoader(generator, to_batch), nb_epochs, scheduler, val, None, **kwargs)

    def _run(self, loader: Any, nb_epochs: int, scheduler: Any, val: Any, sat: Any, **kwargs: Any) -> None:
        verbose = bool(kwargs.pop("verbose", self.verbose))
        engine_kwargs = {k: kwargs.pop(k) for k in _ENGINE_KWARGS if k in kwargs}
        for key in kwargs:
            level = logging.DEBUG if key in _IGNORED_ART_KWARGS else logging.WARNING
            _logger.log(level, "%s.fit ignores the keyword %r (it has no meaning for this trainer)",
                        type(self).__name__, key)
        engine_kwargs["config"] = {**self._run_config(), **(engine_kwargs.get("config") or {})}
        history = fit(
            self.module,
            loader,
            epochs=nb_epochs,
            objective=self._objective(),
            optimizer=self._classifier._optimizer,
            scheduler=scheduler,
            val_loader=val,
            self_adaptive=sat,
            verbose=verbose,
            **engine_kwargs,
        )
        if engine_kwargs.get("checkpoint_dir") is not None:
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


NATURAL_LOSSES = ("classifier", "ce")


class FIRETrainer(EngineTrainer):
    """Fisher-Rao regularized adversarial training (FIRE, eq. 7) as an ART ``Trainer``.

    Minimizes ``natural(f(x), y) + lam * mean d(f(x), f(x'))`` where ``d`` is the chosen divergence
    (``"fisher_rao"``: squared Fisher-Rao distance; ``"kl"``: TRADES; ``"hellinger"``: squared Hellinger distance)
    and ``x'`` maximizes that same divergence by PGD (:class:`fire_plugin.attacks.DivergencePGD`).

    The natural term: with ``natural_loss="classifier"`` (default, as ART's TRADES trainer) it is the
    classifier's own loss (``classifier._loss``, e.g. a label-smoothed ``CrossEntropyLoss``) on class indices; with
    ``"ce"`` it is the plain mean cross-entropy of the paper's eq. 7. The regularizer is always a batch mean, so a
    classifier loss with ``reduction="sum"`` weighs the natural term ``batch_size`` times more (ART behaves so).

    Weights, matched by measurement on digits (natural accuracy close to TRADES at beta = 6, the paper's criterion;
    see the README's weight table): near equality ``d^2 ~ 2 KL ~ 4 H^2``, so ``lam`` on ``d^2`` acts like TRADES'
    ``beta = 2 lam`` and like ``4 lam`` on ``H^2``. The default ``lam = 3`` is the paper's "lambda = 12" in the
    authors' code convention (``beta_code * arccos(BC)^2``, ``beta_code = 4 lam``).

    Args:
        classifier: an ART ``PyTorchClassifier`` with an optimizer. Its preprocessing, ``clip_values`` and device
            are used; images are expected within ``clip_values`` (``(0, 1)`` when unset).
        lam: weight of the divergence. For ``"fisher_rao"`` it multiplies ``d^2`` with ``d = 2 * arccos(BC)``;
            for ``"kl"`` it is TRADES' beta; for ``"hellinger"`` it multiplies ``H^2 = 2 (1 - BC)``.
        divergence: ``"fisher_rao"``, ``"kl"`` or ``"hellinger"``.
        eps: attack budget in pixel space (the classifier's input space).
        eps_step: PGD step size in pixel space.
        max_iter: PGD steps.
        norm: ``"Linf"`` or ``"L2"``.
        natural_loss: ``"classifier"`` or ``"ce"`` (see above).
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
        >>> trainer = FIRETrainer(clf, lam=3.0, eps=0.1, eps_step=0.02, max_iter=5, verbose=False)
        >>> x, y = np.random.rand(32, 1, 8, 8).astype(np.float32), np.random.randint(0, 10, 32)
        >>> trainer.fit(x, y, nb_epochs=1, batch_size=16)
        >>> len(trainer.history)
        1
    """

    def __init__(
        self,
        classifier: PyTorchClassifier,
        *,
        lam: float = 3.0,
        divergence: str = "fisher_rao",
        eps: float = 8 / 255,
        eps_step: float = 2 / 255,
        max_iter: int = 10,
        norm: str = "Linf",
        natural_loss: str = "classifier",
        self_adaptive: bool = False,
        sat_warmup: int = 10,
        sat_momentum: float = 0.9,
        verbose: bool = True,
    ) -> None:
        super().__init__(classifier, verbose=verbose)
        self.lam = lam
        self.divergence = divergence
        self.eps = eps
        self.eps_step = eps_step
        self.max_iter = max_iter
        self.norm = norm
        self.natural_loss = natural_loss
        self.self_adaptive = self_adaptive
        self.sat_warmup = sat_warmup
        self.sat_momentum = sat_momentum
        self._check_params()

        scale = self._high - self._low
        self.attack = DivergencePGD(
            self.module, divergence=divergence, eps=eps / scale, alpha=eps_step / scale, steps=max_iter, norm=norm
        )
        natural = self._classifier._loss if natural_loss == "classifier" else None
        self.loss = DivergenceRegularizedLoss(divergence, lam, natural_loss=natural)

    def _check_params(self) -> None:
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {self.divergence!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.natural_loss not in NATURAL_LOSSES:
            raise ValueError(f"natural_loss must be one of {list(NATURAL_LOSSES)}, got {self.natural_loss!r}")
        if self.natural_loss == "classifier" and not callable(getattr(self._classifier, "_loss", None)):
            raise ValueError("natural_loss='classifier' needs a classifier with a loss; pass loss=... to "
                             "PyTorchClassifier or use natural_loss='ce'")
        if not float(self.lam) >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam!r}")
        if not float(self.eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")
        if not float(self.eps_step) >= 0:
            raise ValueError(f"eps_step must be >= 0, got {self.eps_step!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")

    def _objective(self) -> Objective:
        return AdversarialObjective(self.loss, self.attack)

    def _run_config(self) -> dict[str, Any]:
        return {"trainer": type(self).__name__, "lam": float(self.lam), "divergence": self.divergence,
                "eps": float(self.eps), "eps_step": float(self.eps_step), "max_iter": int(self.max_iter),
                "norm": self.norm, "natural_loss": self.natural_loss, "self_adaptive": bool(self.self_adaptive)}

    def _index_batches(self) -> bool:
        return bool(self.self_adaptive)

    def _self_adaptive(self, n: int) -> SelfAdaptiveTargets | None:
        if not self.self_adaptive:
            return None
        return SelfAdaptiveTargets(n, self._classifier.nb_classes, warmup=self.sat_warmup,
                                   momentum=self.sat_momentum)


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

    Near equality ``d^2 ~ 4 H^2``, so ``lam = 12`` on ``H^2`` matches FIRE's ``lam = 3`` on ``d^2`` and TRADES'
    ``beta = 6`` (the default, see :class:`FIRETrainer` for how the weights were chosen).

    Example:
        >>> HellingerTrainer.__mro__[1].__name__
        'FIRETrainer'
    """

    def __init__(self, classifier: PyTorchClassifier, *, lam: float = 12.0, **kwargs: Any) -> None:
        if "divergence" in kwargs:
            raise ValueError("HellingerTrainer fixes divergence='hellinger'; use FIRETrainer to choose")
        super().__init__(classifier, lam=lam, divergence="hellinger", **kwargs)


class PartialIsometryTrainer(EngineTrainer):
    """Partial-isometry regularized training (eq 15 of "Adversarial robustness with partial isometry").

    Minimizes ``(1 - eta) * CE(f(x), y) + eta * alpha(x)`` with ``alpha`` the penalty of eq 14
    (:func:`fire_plugin.isometry.partial_isometry_penalty`; its ``c(x)`` is derived from eq 12, see
    :mod:`fire_plugin.isometry`) and ``eta`` growing geometrically from ``eta_min`` (first epoch) to ``eta_max``
    (last epoch of each ``fit`` call), as in section 4.2. No attack is run; validation reports natural accuracy.

    ``epsilon`` is in the classifier's input space (pixels within ``clip_values``), like FIRETrainer's ``eps``: the
    penalty is computed on the classifier seen in [0, 1] units with ``epsilon / (clip_max - clip_min)``, which is
    the same penalty. The classifier's preprocessing (e.g. standardisation) is part of the differentiated map.
    Models with BatchNorm layers are refused (the per-sample Jacobian is undefined under batch statistics).

    Args:
        classifier: an ART ``PyTorchClassifier`` with an optimizer.
        epsilon: radius of eq 7 in input units; the paper's MNIST run uses
            ``delta_m(10) / fire_plugin.isometry.PAPER_DELTA_OVER_EPSILON`` (about 2498).
        eta_min: weight of the penalty at the first epoch (paper: 0.002).
        eta_max: weight at the last epoch (paper: 0.006).
        estimator: ``"hutchinson"`` (the default: ``n_probes`` Rademacher probes per sample, about 3.5x the cost
            of CE training; as robust as exact in a 5-seed comparison), ``"exact"`` (``m`` VJPs per batch, about
            12x), ``"orthogonal"`` (``n_probes`` orthogonal probes per sample) or ``"deflated"`` (the most probable
            class's column exactly and ``n_probes - 1`` probes); see
            :func:`fire_plugin.isometry.partial_isometry_penalty`.
        n_probes: probes per sample of the stochastic estimators.
        verbose: tqdm progress over epochs and batches.

    Example:
        >>> import numpy as np, torch
        >>> from art.estimators.classification import PyTorchClassifier
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> clf = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
        ...                         optimizer=torch.optim.SGD(net.parameters(), lr=0.1), clip_values=(0.0, 1.0))
        >>> trainer = PartialIsometryTrainer(clf, epsilon=10.0, verbose=False)
        >>> x, y = np.random.rand(32, 1, 8, 8).astype(np.float32), np.random.randint(0, 10, 32)
        >>> trainer.fit(x, y, nb_epochs=2, batch_size=16)
        >>> len(trainer.history)
        2
    """

    def __init__(
        self,
        classifier: PyTorchClassifier,
        *,
        epsilon: float,
        eta_min: float = 0.002,
        eta_max: float = 0.006,
        estimator: str = DEFAULT_ESTIMATOR,
        n_probes: int = 1,
        verbose: bool = True,
    ) -> None:
        super().__init__(classifier, verbose=verbose)
        self.epsilon = epsilon
        self.eta_min = eta_min
        self.eta_max = eta_max
        self.estimator = estimator
        self.n_probes = n_probes
        self._objective()  # validates the hyperparameters (ValueError naming the argument)
        for name, module in classifier.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise ValueError(
                    f"the classifier's model has the BatchNorm layer {name!r}: batch statistics couple the samples, "
                    "so the partial-isometry penalty (a per-sample Jacobian) is undefined; allowed: models without "
                    "BatchNorm (GroupNorm/LayerNorm work)"
                )

    def _objective(self) -> Objective:
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < float("inf")):
            raise ValueError(f"epsilon={eps!r} is not allowed; allowed: a finite number > 0 (input units)")
        return PartialIsometryObjective(epsilon=self.epsilon / (self._high - self._low), eta_min=self.eta_min,
                                        eta_max=self.eta_max, estimator=self.estimator, n_probes=self.n_probes)

    def _run_config(self) -> dict[str, Any]:
        return {"trainer": type(self).__name__, "epsilon": float(self.epsilon), "eta_min": float(self.eta_min),
                "eta_max": float(self.eta_max), "estimator": self.estimator, "n_probes": int(self.n_probes)}

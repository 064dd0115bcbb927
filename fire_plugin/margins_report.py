"""The ``fire-plugin margins`` pipeline: trace Fisher-Rao margins, write CSV, JSON, Markdown and PNG figures.

:func:`run_margins` takes a model and inputs; :func:`margins_from_names` loads both by name (a pretrained model
from :func:`fire_plugin.pretrained.load_pretrained`, test images from :func:`fire_plugin.data.load_dataset`, or
synthetic inputs when the dataset is not on disk) and calls it. Files written to ``out_dir``:

* ``margins.csv``: one row per traced (input, target) path (:meth:`MarginResult.to_csv`);
* ``margins.json``: ``{"inputs", "summary", "result", "report"}``;
* ``shielding.md``: the class-shielding table and the path matrix;
* ``path_matrix.png``, ``class_margins.png``, ``margin_histograms.png``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fire_plugin.data import DATASETS, dataset_to_tensors, load_dataset
from fire_plugin.margins import MarginResult, ShieldingReport, shielding_report, trace_margins
from fire_plugin.plots import plot_class_margins, plot_margin_histograms, plot_path_matrix
from fire_plugin.pretrained import load_pretrained

__all__ = ["CLASS_NAMES", "margin_inputs", "margins_from_names", "run_margins", "synthetic_inputs"]

_logger = logging.getLogger(__name__)

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
}
_SYNTHETIC_MODES = ("auto", "never", "always")


def synthetic_inputs(
    model: nn.Module, shape: Sequence[int], n_inputs: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images in [0, 1] (4x4 uniform noise, bilinearly upsampled) labelled with ``model``'s own
    predictions: stand-ins when no real data is at hand. They are not samples of any dataset.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> x, y = synthetic_inputs(model, (3, 8, 8), 2)
    >>> tuple(x.shape), bool(y.eq(model(x).argmax(1)).all())
    ((2, 3, 8, 8), True)
    """
    if n_inputs < 1:
        raise ValueError(f"n_inputs={n_inputs!r} is not allowed; allowed: a positive int")
    chans, height, width = (int(s) for s in shape)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n_inputs, chans, 4, 4, generator=gen)
    x = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            y = model(x.to(device)).argmax(1).cpu()
    finally:
        model.train(was_training)
    return x, y


def margin_inputs(
    dataset: str,
    *,
    model: nn.Module,
    n_inputs: int,
    data_dir: str | os.PathLike[str] = "data",
    synthetic: str = "auto",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n_inputs`` test images of ``dataset``, or synthetic inputs (see :func:`synthetic_inputs`).

    Args:
        dataset: a key of ``fire_plugin.data.DATASETS``.
        model: the model (labels synthetic inputs).
        n_inputs: how many inputs.
        data_dir: where torchvision datasets are (nothing is downloaded).
        synthetic: ``"auto"`` (real images when on disk, else synthetic), ``"never"`` or ``"always"``.
        seed: seed of the synthetic inputs.

    Returns:
        ``(x, y, description)``; the description says where the inputs come from.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> x, y, what = margin_inputs("digits", model=model, n_inputs=3)
    >>> tuple(x.shape), what
    ((3, 1, 8, 8), 'digits test images 0..2')
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not allowed; allowed: {sorted(DATASETS)}")
    if synthetic not in _SYNTHETIC_MODES:
        raise ValueError(f"synthetic={synthetic!r} is not allowed; allowed: {list(_SYNTHETIC_MODES)}")
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
        raise ValueError(f"n_inputs={n_inputs!r} is not allowed; allowed: a positive int")
    info = DATASETS[dataset]
    if synthetic != "always":
        try:
            data = load_dataset(dataset, split="test", data_dir=data_dir, download=False)
        except FileNotFoundError as exc:
            if synthetic == "never":
                raise
            _logger.warning("%s is not under %s (%s); using synthetic inputs", dataset, data_dir, exc)
        else:
            x, y = dataset_to_tensors(data, n_examples=n_inputs)
            return x, y, f"{dataset} test images 0..{len(x) - 1}"
    x, y = synthetic_inputs(model, (info.in_chans, info.image_size, info.image_size), n_inputs, seed=seed)
    return x, y, (f"SYNTHETIC: {n_inputs} smooth random {info.in_chans}x{info.image_size}x{info.image_size} "
                  f"images (seed {seed}) labelled with the model's predictions; not {dataset} data")


def _summary(result: MarginResult, seconds: float) -> dict[str, Any]:
    margins = result.input_margins()
    traced = result.status != "misclassified"
    finite = margins[np.isfinite(margins) & (margins > 0)]
    return {
        "n_inputs": result.n_inputs,
        "n_paths": len(result),
        "n_traced": int(traced.sum()),
        "n_flipped": int(result.flipped.sum()),
        "n_shielded": int(result.shielded.sum()),
        "status_counts": {str(s): int((result.status == s).sum()) for s in np.unique(result.status)},
        "input_margin_mean": float(finite.mean()) if len(finite) else None,
        "input_margin_median": float(np.median(finite)) if len(finite) else None,
        "path_length_median": float(np.median(result.fr_length[result.flipped])) if result.flipped.any() else None,
        "seconds": seconds,
    }


def run_margins(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    n_inputs: int | None = 100,
    inputs_note: str | None = None,
    verbose: bool = True,
    **trace_kw: Any,
) -> dict[str, Any]:
    """Trace the FR margins of the first ``n_inputs`` inputs and write the report files (see the module docstring).

    Args:
        model: classifier returning logits; it takes inputs like ``x`` ([0, 1] images by default).
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        out_dir: output folder (created).
        class_names: one name per class (``CLASS_NAMES["cifar10"]`` for CIFAR-10).
        n_inputs: use the first ``n_inputs`` inputs (all when None).
        inputs_note: where the inputs come from, written to the JSON (e.g. "synthetic").
        verbose: progress bar.
        **trace_kw: passed to :func:`fire_plugin.margins.trace_margins` (``damping``, ``step``, ``max_length``,
            ``max_steps``, ``solver``, ``targets``, ``batch_size``, ``clamp``, ...).

    Returns:
        ``{"result": MarginResult, "report": ShieldingReport, "summary": dict, "files": {name: path}}``.

    >>> import tempfile
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = run_margins(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), tmp, verbose=False)
    >>> sorted(out["files"])
    ['class_margins', 'csv', 'json', 'margin_histograms', 'markdown', 'path_matrix']
    """
    if n_inputs is not None:
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
            raise ValueError(f"n_inputs={n_inputs!r} is not allowed; allowed: a positive int or None")
        x, y = x[:n_inputs], y[:n_inputs]
    start = time.perf_counter()
    result = trace_margins(model, x, y, verbose=verbose, **trace_kw)
    seconds = time.perf_counter() - start
    report: ShieldingReport = shielding_report(result, class_names)
    summary = _summary(result, seconds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": out / "margins.csv",
        "json": out / "margins.json",
        "markdown": out / "shielding.md",
        "path_matrix": out / "path_matrix.png",
        "class_margins": out / "class_margins.png",
        "margin_histograms": out / "margin_histograms.png",
    }
    result.to_csv(files["csv"])
    payload = {"inputs": inputs_note, "summary": summary, "result": result.to_dict(), "report": report.to_dict()}
    files["json"].write_text(json.dumps(payload, indent=2))
    note = f"Inputs: {inputs_note}\n\n" if inputs_note else ""
    files["markdown"].write_text(note + report.to_markdown())
    plot_path_matrix(report).savefig(files["path_matrix"], dpi=120)
    plot_class_margins(report).savefig(files["class_margins"], dpi=120)
    plot_margin_histograms(result).savefig(files["margin_histograms"], dpi=120)
    _logger.info("margins of %d inputs written to %s: %s", result.n_inputs, out, summary)
    return {"result": result, "report": report, "summary": summary, "files": {k: str(v) for k, v in files.items()}}


def margins_from_names(
    model: str,
    *,
    dataset: str = "cifar10",
    out_dir: str | os.PathLike[str] = "runs/margins",
    checkpoint: str | os.PathLike[str] | None = None,
    model_dir: str | os.PathLike[str] = "models",
    data_dir: str | os.PathLike[str] = "data",
    n_inputs: int = 100,
    synthetic: str = "auto",
    seed: int = 0,
    inputs: str | os.PathLike[str] | None = None,
    verbose: bool = True,
    **trace_kw: Any,
) -> dict[str, Any]:
    """Load a model and inputs by name, then :func:`run_margins` (what ``fire-plugin margins`` calls).

    Args:
        model: ``"autoattack-resnet18"``, a RobustBench zoo name, or an architecture (``digits_cnn``,
            ``small_cnn``, ``resnet18_cifar``, any timm name) with ``checkpoint``; see
            :func:`fire_plugin.pretrained.load_pretrained`.
        dataset: a key of ``fire_plugin.data.DATASETS``.
        out_dir: output folder.
        checkpoint: checkpoint file for an architecture name.
        model_dir: RobustBench model folder.
        data_dir: torchvision dataset folder (nothing is downloaded).
        n_inputs: number of test inputs.
        synthetic: ``"auto"``, ``"never"`` or ``"always"`` (see :func:`margin_inputs`).
        seed: seed of synthetic inputs.
        inputs: a ``.pt`` file holding ``(images, labels)`` (a tuple or a dict with ``"x"``/``"y"``; images in
            [0, 1], ``(N, C, H, W)``), loaded with ``weights_only=True``; replaces the dataset's test images.
        verbose: progress bar.
        **trace_kw: passed to :func:`fire_plugin.margins.trace_margins`.

    Returns:
        The dict of :func:`run_margins`, plus ``"inputs"`` (where the inputs come from).
    """
    net = load_pretrained(model, dataset=dataset, checkpoint=checkpoint, model_dir=model_dir)
    if inputs is not None:
        x, y = load_inputs(inputs)
        x, y, what = x[:n_inputs], y[:n_inputs], f"{len(x[:n_inputs])} inputs from {inputs}"
    else:
        x, y, what = margin_inputs(dataset, model=net, n_inputs=n_inputs, data_dir=data_dir, synthetic=synthetic,
                                   seed=seed)
    out = run_margins(net, x, y, out_dir, class_names=CLASS_NAMES.get(dataset), n_inputs=None, inputs_note=what,
                      verbose=verbose, **trace_kw)
    out["inputs"] = what
    return out


def load_inputs(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a ``.pt`` file: ``(x, y)`` or ``{"x": x, "y": y}``; errors name the file.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])), os.path.join(d, "in.pt"))
    ...     tuple(load_inputs(os.path.join(d, "in.pt"))[0].shape)
    (2, 1, 8, 8)
    """
    from fire_plugin.engine import load_checkpoint

    obj: Any = load_checkpoint(Path(path))
    if isinstance(obj, dict) and {"x", "y"} <= set(obj):
        obj = (obj["x"], obj["y"])
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
        raise ValueError(f"inputs file {str(path)!r} must hold (images, labels) tensors or {{'x': ..., 'y': ...}}")
    x, y = obj
    if x.dim() != 4 or not x.is_floating_point() or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"inputs file {str(path)!r}: images must be float (N, C, H, W) and labels (N,), got "
                         f"{tuple(x.shape)} {x.dtype} and {tuple(y.shape)}")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"inputs file {str(path)!r}: images must lie in [0, 1]")
    return x, y.long()

"""The ``fire-plugin margins`` pipeline: trace Fisher-Rao margins, write CSV, JSON, Markdown and PNG figures.

:func:`run_margins` takes a model and inputs; :func:`margins_from_names` loads both by name (a pretrained model
from :func:`fire_plugin.pretrained.load_pretrained`, test images from :func:`fire_plugin.data.load_dataset`, or
synthetic inputs only when asked) and calls it, or :func:`run_convergence` for the convergence study. Files
written to ``out_dir``:

* ``paths.jsonl``: the finished chunks of paths, appended as they finish (what a rerun resumes from);
* ``margins.csv``: one row per traced (input, target) path (:meth:`MarginResult.to_csv`);
* ``margins.json``: ``{"inputs", "synthetic", "summary", "result", "report"}``;
* ``shielding.md``: how the paths were traced and whether the step had converged, the class-shielding table with
  the FR and L2 ranks and their correlations, and the path matrix;
* ``path_matrix.png``, ``class_margins.png``, ``margin_histograms.png``;
* with the study: ``convergence.md``, ``convergence.json``, ``convergence.png``.

Synthetic inputs are named as such ("SYNTHETIC: ...") in every file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fire_plugin.data import DATASETS, dataset_to_tensors, load_dataset
from fire_plugin.margins.convergence import convergence_study, half_step_check
from fire_plugin.margins.results import _COLUMNS, MarginResult
from fire_plugin.margins.shielding import ShieldingReport, shielding_report
from fire_plugin.margins.trace import trace_margins
from fire_plugin.plots import plot_class_margins, plot_margin_histograms, plot_path_matrix
from fire_plugin.pretrained import load_pretrained

__all__ = ["CLASS_NAMES", "load_inputs", "margin_inputs", "margins_from_names", "run_convergence", "run_margins",
           "synthetic_inputs"]

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
    synthetic: str = "never",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n_inputs`` test images of ``dataset``, or synthetic inputs (see :func:`synthetic_inputs`).

    Args:
        dataset: a key of ``fire_plugin.data.DATASETS``.
        model: the model (labels synthetic inputs).
        n_inputs: how many inputs.
        data_dir: where torchvision datasets are (nothing is downloaded).
        synthetic: ``"never"`` (default: the dataset's test images, an error naming the folder when they are not
            on disk), ``"auto"`` (synthetic when they are not) or ``"always"``; synthetic inputs are described as
            such ("SYNTHETIC: ...") and every output says so.
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
                raise FileNotFoundError(f"{exc} (or pass --synthetic always for synthetic stand-in inputs, which "
                                        "are not dataset images)") from exc
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
        "mode": result.mode,
        "input_margin_mean": float(finite.mean()) if len(finite) else None,
        "input_margin_median": float(np.median(finite)) if len(finite) else None,
        "inputs_without_path": int(np.isnan(margins).sum()),
        "path_length_median": float(np.median(result.fr_length[result.flipped])) if result.flipped.any() else None,
        "converged": None if result.convergence is None else result.convergence.get("converged"),
        "seconds": seconds,
    }


def _digest(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: dict[str, Any]) -> str:
    """What a resumed run must share with the interrupted one: the weights, the inputs and the settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in (*model.state_dict().items(), ("x", x), ("y", y)):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_progress(path: Path, digest: str) -> list[MarginResult]:
    """The chunks of a previous run with the same digest, in order; a torn last line (a crash while writing) is
    dropped, and a file of another run is ignored (and replaced)."""
    if not path.exists():
        return []
    chunks: list[MarginResult] = []
    with path.open() as fh:
        lines = fh.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("digest") != digest:
        _logger.warning("%s belongs to another run (other model, inputs or settings): starting over", path)
        return []
    for number, line in enumerate(lines[1:]):
        try:
            record = json.loads(line)
            if record.get("chunk") != number:
                break
            chunks.append(MarginResult.from_dict(record["result"]))
        except (json.JSONDecodeError, KeyError, ValueError):
            break  # a torn last line: that chunk is traced again
    return chunks


def _append_line(path: Path, payload: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(payload) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _concat(chunks: Sequence[MarginResult], offsets: Sequence[int], n_inputs: int) -> MarginResult:
    """One result from chunks of consecutive inputs (``offsets``: the first input of each chunk)."""
    first = chunks[0]
    columns: dict[str, Any] = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in _COLUMNS}
    columns["index"] = np.concatenate([c.index + off for c, off in zip(chunks, offsets, strict=True)])
    settings = first.settings() | {"n_inputs": n_inputs, "clamp": first.clamp}
    return MarginResult(**columns, **settings)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """The model's number of classes from one forward pass (10 when that fails: trace_margins then says why)."""
    was_training = model.training
    model.eval()
    try:
        param = next(iter(model.parameters()), None)
        with torch.no_grad():
            logits = model(x.to(param.device, param.dtype) if param is not None else x)
        return int(logits.shape[-1]) if logits.dim() == 2 and logits.shape[-1] >= 2 else 10
    except (RuntimeError, ValueError, TypeError):
        return 10
    finally:
        model.train(was_training)


def _write_text(path: Path, text: str) -> None:
    """Write atomically (:func:`fire_plugin.runfolder.atomic_write_text`): a reader never sees half a file."""
    from fire_plugin.runfolder import atomic_write_text

    atomic_write_text(path, text)


def _save_figure(fig: Any, path: Path) -> None:
    """Save a PNG atomically (:func:`fire_plugin.runfolder.atomic_path`)."""
    from fire_plugin.runfolder import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


_REPORT_FILES = {
    "csv": "margins.csv",
    "json": "margins.json",
    "markdown": "shielding.md",
    "path_matrix": "path_matrix.png",
    "class_margins": "class_margins.png",
    "margin_histograms": "margin_histograms.png",
    "progress": "paths.jsonl",
}
"""The files :func:`run_margins` writes into its output folder, by the names of its ``"files"`` entry."""


def run_margins(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    n_inputs: int | None = 100,
    inputs_note: str | None = None,
    check_convergence: bool = True,
    resume: bool = True,
    verbose: bool = True,
    **trace_kw: Any,
) -> dict[str, Any]:
    """Trace the FR margins of the first ``n_inputs`` inputs and write the report files (see the module docstring).

    The inputs are traced in chunks of about ``batch_size`` paths; each finished chunk is appended to
    ``out_dir/paths.jsonl`` at once, so an interrupted run (Ctrl-C, a kill, a crash) keeps what it did: running
    it again with the same model, inputs and settings traces only the chunks that are missing, and gives the same
    result as an uninterrupted run. The half-step convergence check (``check_convergence``) runs on the whole
    result at the end.

    Args:
        model: classifier returning logits; it takes inputs like ``x`` ([0, 1] images by default).
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        out_dir: output folder (created; checked before any tracing).
        class_names: one name per class (``CLASS_NAMES["cifar10"]`` for CIFAR-10).
        n_inputs: use the first ``n_inputs`` inputs (all when None).
        inputs_note: where the inputs come from, written to every output (e.g. "SYNTHETIC ...").
        check_convergence: retrace a tenth of the paths at half the step and report whether it had converged.
        resume: reuse the finished chunks of ``out_dir/paths.jsonl`` (False: trace everything again).
        verbose: progress bar (counting paths).
        **trace_kw: passed to :func:`fire_plugin.margins.trace_margins` (``mode``, ``damping``, ``step``,
            ``max_length``, ``max_steps``, ``solver``, ``targets``, ``batch_size``, ``clamp``, ...).

    Returns:
        ``{"result": MarginResult, "report": ShieldingReport, "summary": dict, "files": {name: path}}``.

    >>> import tempfile
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = run_margins(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), tmp, verbose=False)
    >>> sorted(out["files"])
    ['class_margins', 'csv', 'json', 'margin_histograms', 'markdown', 'path_matrix', 'progress']
    """
    from fire_plugin.experiments import check_output_dir

    for key in ("check_convergence", "progress", "verbose", "return_paths"):
        if key in trace_kw:
            raise ValueError(f"{key}= is set by run_margins itself; allowed: the other trace_margins options")
    if n_inputs is not None:
        if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
            raise ValueError(f"n_inputs={n_inputs!r} is not allowed; allowed: a positive int or None")
        x, y = x[:n_inputs], y[:n_inputs]
    out = check_output_dir(out_dir)  # before any tracing: an unusable folder fails now, not after hours
    if len(x) == 0:
        raise ValueError("x is empty; allowed: at least one input")
    if class_names is not None and len(class_names) == 0:
        raise ValueError("class_names is empty; allowed: one name per class")
    per_input, chunk = _chunking(model, x, trace_kw)
    settings = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in trace_kw.items()}
    settings |= {"chunk": chunk, "n_inputs": len(x)}
    files = {name: out / file_name for name, file_name in _REPORT_FILES.items()}
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    digest = _digest(model, xt, yt, settings)
    done = _read_progress(files["progress"], digest) if resume else []
    if not done:
        _write_text(files["progress"], json.dumps({"digest": digest, "settings": settings}, default=str) + "\n")
    n_chunks = math.ceil(len(x) / chunk)
    _logger.info(
        "margins: %d inputs x %s targets of %s (%s mode), %d chunks of %d inputs; %s; writing to %s",
        len(x), per_input, type(model).__name__, trace_kw.get("mode", "converged"), n_chunks, chunk,
        f"resuming after {len(done)} finished chunks" if done else "starting", out,
    )
    start = time.perf_counter()
    bar = tqdm(total=len(x) * per_input, desc="FR margin paths", unit="path", disable=not verbose)
    try:
        chunks = _trace_chunks(model, xt, yt, done, chunk, files["progress"], bar, trace_kw)
    finally:
        bar.close()
    result = _concat(chunks, [i * chunk for i in range(n_chunks)], len(x))
    if check_convergence:
        keep = ("cg_iters", "batch_size", "solver")
        result.convergence = half_step_check(model, xt, result, **{k: trace_kw[k] for k in keep if k in trace_kw})
    seconds = time.perf_counter() - start
    report: ShieldingReport = shielding_report(result, class_names)
    summary = _summary(result, seconds)
    _write_outputs(out, files, result, report, summary, inputs_note)
    _logger.info("margins of %d inputs written to %s: %s", result.n_inputs, out, summary)
    return {"result": result, "report": report, "summary": summary, "files": {k: str(v) for k, v in files.items()}}


def _chunking(model: nn.Module, x: torch.Tensor, trace_kw: dict[str, Any]) -> tuple[int, int]:
    """``(paths per input, inputs per chunk)``: a chunk holds about ``batch_size`` paths."""
    batch_size = int(trace_kw.get("batch_size", 256))
    targets = trace_kw.get("targets")
    if isinstance(targets, torch.Tensor) and targets.dim() == 2:
        per_input = targets.shape[1]
    elif targets is not None and not isinstance(targets, str | bytes):
        per_input = max(1, len(targets))
    else:
        per_input = _num_classes(model, torch.as_tensor(x[:1])) - 1
    return per_input, max(1, batch_size // per_input)


def _trace_chunks(
    model: nn.Module, xt: torch.Tensor, yt: torch.Tensor, done: list[MarginResult], chunk: int, progress_file: Path,
    bar: Any, trace_kw: dict[str, Any],
) -> list[MarginResult]:
    """The finished chunks ``done`` followed by the missing ones, each traced and appended to ``progress_file`` as
    it finishes."""
    n_chunks = math.ceil(len(xt) / chunk)
    chunks = list(done)
    bar.update(sum(len(c) for c in done))
    for number in range(len(done), n_chunks):
        lo = number * chunk
        t0 = time.perf_counter()
        part = trace_margins(model, xt[lo : lo + chunk], yt[lo : lo + chunk], check_convergence=False,
                             progress=bar.update, verbose=False, **trace_kw)
        bar.update(int((part.status == "misclassified").sum()))
        _append_line(progress_file, {"chunk": number, "result": part.to_dict()})
        chunks.append(part)
        if number == len(done) and n_chunks - number > 1:
            elapsed = time.perf_counter() - t0
            _logger.info("chunk %d of %d (%d paths) took %.1f s: about %.0f s for the %d chunks left",
                         number + 1, n_chunks, len(part), elapsed, elapsed * (n_chunks - number - 1),
                         n_chunks - number - 1)
    return chunks


def _write_outputs(
    out: Path, files: dict[str, Path], result: MarginResult, report: ShieldingReport, summary: dict[str, Any],
    inputs_note: str | None,
) -> None:
    """``margins.csv``, ``margins.json``, ``shielding.md`` and the three figures (synthetic inputs named so)."""
    synthetic = bool(inputs_note and inputs_note.startswith("SYNTHETIC"))
    csv_text = result.to_csv(out / ".margins.csv.tmp").read_text()
    (out / ".margins.csv.tmp").unlink()
    _write_text(files["csv"], (f"# inputs: {inputs_note}\n" if synthetic else "") + csv_text)
    payload = {"inputs": inputs_note, "synthetic": synthetic, "summary": summary, "result": result.to_dict(),
               "report": report.to_dict()}
    _write_text(files["json"], json.dumps(payload, indent=2))
    note = f"Inputs: {inputs_note}\n\n" if inputs_note else ""
    _write_text(files["markdown"], note + report.to_markdown())
    title = "SYNTHETIC inputs (not dataset images)" if synthetic else None
    _save_figure(plot_path_matrix(report), files["path_matrix"])
    _save_figure(plot_class_margins(report, note=title), files["class_margins"])
    _save_figure(plot_margin_histograms(result, note=title), files["margin_histograms"])


def _load_model(model: str, dataset: str, checkpoint: Any, model_dir: Any) -> nn.Module:
    """:func:`load_pretrained` with one-line errors naming ``--model`` and the checkpoint."""
    import timm

    from fire_plugin.pretrained import AUTOATTACK_RESNET18

    if checkpoint is None and model != AUTOATTACK_RESNET18 and dataset not in ("cifar10", "cifar100", "imagenet"):
        hint = " (an architecture; add --checkpoint)" if timm.is_model(model) else ""
        raise ValueError(f"--model {model!r}{hint}: without --checkpoint only {AUTOATTACK_RESNET18!r} and RobustBench "
                         f"zoo names load, and the zoo has no {dataset!r} models")
    kwargs: dict[str, Any] = {}
    if checkpoint is not None and model == "lenet_pi" and dataset in DATASETS:
        kwargs["img_size"] = DATASETS[dataset].image_size  # lenet_pi is built for the dataset's image size
    try:
        return load_pretrained(model, dataset=dataset, checkpoint=checkpoint, model_dir=model_dir, **kwargs)
    except RuntimeError as err:  # load_state_dict: another architecture or size
        text = str(err)
        if "state_dict" not in text:
            raise
        stored = _checkpoint_architecture(checkpoint)
        first = text.split(":", 1)[-1].strip().split(". ")[0][:160]
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not fit --model {model!r} on {dataset}: it holds "
                         f"{stored or 'another architecture or size'} ({first}); pass the architecture it was "
                         "trained with") from None


def _checkpoint_architecture(path: Any) -> str | None:
    """The architecture an engine checkpoint records in its config, when it does."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (only a hint for an error message)
        return None
    config = obj.get("config") if isinstance(obj, dict) else None
    if not isinstance(config, dict):
        return None
    for key in ("model", "arch", "architecture"):
        if isinstance(config.get(key), str):
            return f"a {config[key]!r} model"
    recipe = config.get("recipe")
    if isinstance(recipe, str) and "'model': '" in recipe:
        return "a " + repr(recipe.split("'model': '", 1)[1].split("'", 1)[0]) + " model"
    if isinstance(recipe, dict) and isinstance(recipe.get("model"), str):
        return f"a {recipe['model']!r} model"
    return None


def _inputs_for(
    net: nn.Module, dataset: str, inputs: Any, n_inputs: int, data_dir: Any, synthetic: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    if inputs is not None:
        x, y = load_inputs(inputs)
        info = DATASETS.get(dataset)
        if info is not None and tuple(x.shape[1:]) != (info.in_chans, info.image_size, info.image_size):
            raise ValueError(f"inputs file {str(inputs)!r} holds images of shape {tuple(x.shape[1:])}; allowed for "
                             f"--dataset {dataset}: ({info.in_chans}, {info.image_size}, {info.image_size})")
        return x[:n_inputs], y[:n_inputs], f"{len(x[:n_inputs])} inputs from {inputs}"
    return margin_inputs(dataset, model=net, n_inputs=n_inputs, data_dir=data_dir, synthetic=synthetic, seed=seed)


def margins_from_names(
    model: str,
    *,
    dataset: str = "cifar10",
    out_dir: str | os.PathLike[str] = "runs/margins",
    checkpoint: str | os.PathLike[str] | None = None,
    model_dir: str | os.PathLike[str] = "models",
    data_dir: str | os.PathLike[str] = "data",
    n_inputs: int = 100,
    synthetic: str = "never",
    seed: int = 0,
    inputs: str | os.PathLike[str] | None = None,
    convergence: bool = False,
    steps: Sequence[float] | None = None,
    dampings: Sequence[float] | None = None,
    verbose: bool = True,
    **trace_kw: Any,
) -> dict[str, Any]:
    """Load a model and inputs by name, then :func:`run_margins` or, with ``convergence=True``,
    :func:`run_convergence` (what ``fire-plugin margins`` calls).

    Args:
        model: ``"autoattack-resnet18"``, a RobustBench zoo name, or an architecture (``digits_cnn``,
            ``small_cnn``, ``lenet_pi``, ``resnet18_cifar``, any timm name) with ``checkpoint``; see
            :func:`fire_plugin.pretrained.load_pretrained`.
        dataset: a key of ``fire_plugin.data.DATASETS``.
        out_dir: output folder (checked before anything is loaded or traced).
        checkpoint: checkpoint file for an architecture name.
        model_dir: RobustBench model folder.
        data_dir: torchvision dataset folder (nothing is downloaded).
        n_inputs: number of test inputs.
        synthetic: ``"never"`` (default), ``"auto"`` or ``"always"`` (see :func:`margin_inputs`).
        seed: seed of synthetic inputs.
        inputs: a ``.pt`` file holding ``(images, labels)`` (a tuple or a dict with ``"x"``/``"y"``; images in
            [0, 1], ``(N, C, H, W)``), loaded with ``weights_only=True``; replaces the dataset's test images.
        convergence: run the convergence study (``steps`` x ``dampings``) instead of one trace.
        steps, dampings: the study's grid (default: :func:`fire_plugin.margins.convergence_study`'s).
        verbose: progress bar.
        **trace_kw: passed to :func:`fire_plugin.margins.trace_margins`.

    Returns:
        The dict of :func:`run_margins` (or :func:`run_convergence`), plus ``"inputs"`` (where the inputs come
        from).
    """
    from fire_plugin.experiments import check_output_dir

    check_output_dir(out_dir)
    net = _load_model(model, dataset, checkpoint, model_dir)
    x, y, what = _inputs_for(net, dataset, inputs, n_inputs, data_dir, synthetic, seed)
    names = CLASS_NAMES.get(dataset)
    if convergence:
        grid = {k: v for k, v in (("steps", steps), ("dampings", dampings)) if v is not None}
        trace_kw.pop("step", None)
        trace_kw.pop("damping", None)
        out = run_convergence(net, x, y, out_dir, class_names=names, inputs_note=what, verbose=verbose,
                              **grid, **trace_kw)
    else:
        out = run_margins(net, x, y, out_dir, class_names=names, n_inputs=None, inputs_note=what,
                          verbose=verbose, **trace_kw)
    out["inputs"] = what
    return out


def run_convergence(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    inputs_note: str | None = None,
    verbose: bool = True,
    **study_kw: Any,
) -> dict[str, Any]:
    """:func:`fire_plugin.margins.convergence_study` and its files: ``convergence.md``, ``convergence.json``,
    ``convergence.png`` (each says so when the inputs are synthetic).

    >>> import tempfile
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = run_convergence(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), tmp, steps=(0.2, 0.1),
    ...                           dampings=(1e-3,), verbose=False)
    >>> sorted(out["files"]), len(out["study"].rows)
    (['figure', 'json', 'markdown'], 2)
    """
    from fire_plugin.experiments import check_output_dir

    out = check_output_dir(out_dir)
    start = time.perf_counter()
    study = convergence_study(model, x, y, class_names=class_names, inputs_note=inputs_note, verbose=verbose,
                              **study_kw)
    files = {"json": out / "convergence.json", "markdown": out / "convergence.md", "figure": out / "convergence.png"}
    _write_text(files["json"], study.to_json())
    _write_text(files["markdown"], study.to_markdown())
    _save_figure(study.plot(), files["figure"])
    _logger.info("convergence study (%d settings) in %.0f s written to %s", len(study.rows),
                 time.perf_counter() - start, out)
    return {"study": study, "files": {k: str(v) for k, v in files.items()}}


def load_inputs(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a ``.pt`` file: ``(x, y)`` or ``{"x": x, "y": y}``; every error names the file.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])), os.path.join(d, "in.pt"))
    ...     tuple(load_inputs(os.path.join(d, "in.pt"))[0].shape)
    (2, 1, 8, 8)
    """
    from fire_plugin.engine import load_checkpoint

    where = f"inputs file {str(path)!r}"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{where} does not exist (or is not a file); pass a .pt file of (images, labels)")
    try:
        obj: Any = load_checkpoint(Path(path), what="inputs file")
    except (ValueError, OSError, RuntimeError) as err:
        text = " ".join(str(err).split())
        raise ValueError(f"{where} cannot be read as a PyTorch file of tensors ({text[:200]})") from None
    if isinstance(obj, dict) and {"x", "y"} <= set(obj):
        obj = (obj["x"], obj["y"])
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
        raise ValueError(f"{where} must hold (images, labels) tensors or {{'x': ..., 'y': ...}}")
    x, y = obj
    if x.dim() != 4 or not x.is_floating_point() or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{where}: images must be float (N, C, H, W) and labels (N,), got "
                         f"{tuple(x.shape)} {x.dtype} and {tuple(y.shape)}")
    if len(x) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: images hold NaN or infinite values; allowed: finite values in [0, 1]")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise ValueError(f"{where}: images must lie in [0, 1]")
    if y.dtype == torch.bool or (y.is_floating_point() and (not bool(torch.isfinite(y).all())
                                                           or bool((y != y.round()).any()))):
        raise ValueError(f"{where}: labels must be integer class indices, got {y.dtype} values such as "
                         f"{y[:3].tolist()}")
    return x, y.long()

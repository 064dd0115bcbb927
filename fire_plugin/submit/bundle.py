"""``submit``: check an evaluated model and write its RobustBench bundle (staged; renamed once every check passed)."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fire_plugin.robustbench_io import (
    N_EXAMPLES_KEY,
    ROBUSTBENCH_TEST_SIZES,
    ModelInfo,
    format_eps,
    validate_model_info,
    write_model_info,
)
from fire_plugin.submit.checks import _is_plain, _logits, _metadata_checks, _model_checks
from fire_plugin.submit.records import (
    _ARCHITECTURE_TITLE,
    _RB_NAME,
    ZOO_ARCHITECTURES,
    Check,
    SubmitError,
    SubmitResult,
    _Source,
)
from fire_plugin.submit.sources import _source_from_files, _source_from_run
from fire_plugin.submit.texts import _checks_text, _new_model_text, _zoo_entry_text

__all__ = ["submit"]

_logger = logging.getLogger(__name__)

def _staging(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out={str(out)!r} exists and is not an empty folder; allowed: a new folder (delete the old "
                         "bundle or pass another --out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.staging-{secrets.token_hex(4)}"
    stage.mkdir()
    return stage


def submit(
    out: str | os.PathLike[str],
    *,
    run: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    model_info: str | os.PathLike[str] | None = None,
    model: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    threat_model: str | None = None,
    model_id: str | None = None,
    paper_title: str | None = None,
    paper_url: str | None = None,
    authors: str | None = None,
    venue: str | None = None,
    allow_subset: bool = False,
    n_logit_inputs: int = 4,
    device: str | torch.device | None = None,
) -> SubmitResult:
    """Check an evaluated model and write its RobustBench submission bundle into ``out``.

    Args:
        out: the bundle folder (new, or empty).
        run: the ``--out`` folder of ``fire-plugin evaluate`` (run with ``--model-id``) or of a preset run.
        checkpoint, model_info, model: instead of ``run``: the weights, their ``model_info`` file and the
            architecture (a timm name such as ``resnet18_cifar``).
        data_dir: where the test set is (default: the run's; ``"data"`` with ``checkpoint``).
        threat_model: for a ``model_info`` file outside RobustBench's ``<dataset>/<threat_model>/`` layout.
        model_id: the bundle's name (RobustBench's ``<Name><Year><FirstWordOfTitle>``); default: the file's.
        paper_title, paper_url, authors, venue: the paper fields of the model_info and NEW_MODEL.md; NEW_MODEL.md
            shows a visible ``<TODO: ...>`` for each one not given.
        allow_subset: accept an evaluation on fewer test images than RobustBench's (the footnote says so).
        n_logit_inputs: how many evaluated test images the reload checks compare logits on.
        device: where the clean accuracy is recomputed (default: CUDA when available, else the CPU).

    Returns:
        A :class:`SubmitResult`.

    Raises:
        SubmitError: a check failed (nothing written); the message names each failed check.
        ValueError: bad arguments or unreadable inputs.

    >>> submit("bundle")
    Traceback (most recent call last):
    ...
    ValueError: give run=... (an evaluate or preset output) or checkpoint=..., model_info=... and model=...
    """
    from fire_plugin import __version__
    from fire_plugin.pretrained import load_pretrained

    _check_arguments(run, checkpoint, model_info, model, n_logit_inputs)
    src = _load_source(run, checkpoint, model_info, model, data_dir=data_dir, threat_model=threat_model)
    name = model_id or src.info_path.stem
    out_path = Path(out)
    paper = _Paper(title=paper_title, url=paper_url, authors=authors, venue=venue)

    checks, n_examples = _metadata_checks(src, allow_subset=allow_subset)
    _refuse_failed(checks, out_path)
    bundle_info = _bundle_model_info(src, name, n_examples, paper)
    evaluated, x, y = _evaluated_model_and_images(src, n_examples, out_path)
    x_check = x[:n_logit_inputs]
    num_classes = int(_logits(evaluated, x_check[:1]).shape[1])
    shipped = src.arch in ZOO_ARCHITECTURES and _is_plain(evaluated) and x.shape[1] == 3
    bundle = _Bundle(name=name, src=src, info=bundle_info, evaluated=evaluated, x=x, y=y, x_check=x_check,
                     shipped=shipped, entry_text=_zoo_entry_text(name, src.arch, src.info.dataset or "",
                                                                 src.threat_model, num_classes, shipped, __version__),
                     n_examples=n_examples, full=ROBUSTBENCH_TEST_SIZES[src.info.dataset or ""], version=__version__)

    stage = _staging(out_path)
    try:
        info_file = _write_files(stage, bundle)
        checks += _model_checks(src, evaluated, _checkpoint_file(stage, bundle), x, y, x_check, stage,
                                bundle.entry_text, shipped, device=device, load_pretrained=load_pretrained)
        _refuse_failed(checks, out_path)
        _write_texts(stage, bundle, checks, paper)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        if out_path.exists():
            out_path.rmdir()  # empty, checked by _staging
        stage.rename(out_path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _logger.info("wrote the RobustBench bundle %s (%s) to %s", name, info_file.relative_to(stage), out_path)
    return SubmitResult(out=out_path, model_id=name, files=files, checks=checks, subset=n_examples < bundle.full)


@dataclass(frozen=True)
class _Paper:
    """The paper fields given to :func:`submit` (None: not given, kept from the evaluated file)."""

    title: str | None = None
    url: str | None = None
    authors: str | None = None
    venue: str | None = None

    def fields(self) -> tuple[tuple[str, str | None], ...]:
        """``(model_info field, value)`` pairs: ``name`` is the title, ``link`` the URL."""
        return (("name", self.title), ("link", self.url), ("authors", self.authors), ("venue", self.venue))


@dataclass
class _Bundle:
    """What one :func:`submit` writes: its name, model_info, the evaluated model and images, the zoo entry."""

    name: str
    src: _Source
    info: ModelInfo
    evaluated: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    x_check: torch.Tensor  # the images the reload checks compare logits on
    shipped: bool  # an architecture RobustBench ships, as RobustBench builds it
    entry_text: str
    n_examples: int
    full: int  # RobustBench's test set size
    version: str


def _check_arguments(run: str | os.PathLike[str] | None, checkpoint: str | os.PathLike[str] | None,
                     model_info: str | os.PathLike[str] | None, model: str | None, n_logit_inputs: int) -> None:
    if (run is None) == (checkpoint is None and model_info is None and model is None) or (
            run is None and None in (checkpoint, model_info, model)):
        raise ValueError("give run=... (an evaluate or preset output) or checkpoint=..., model_info=... and "
                         "model=...")
    if isinstance(n_logit_inputs, bool) or not isinstance(n_logit_inputs, int) or n_logit_inputs < 1:
        raise ValueError(f"n_logit_inputs={n_logit_inputs!r} is not allowed; allowed: an int >= 1")


def _load_source(run: str | os.PathLike[str] | None, checkpoint: str | os.PathLike[str] | None,
                 model_info: str | os.PathLike[str] | None, model: str | None, *,
                 data_dir: str | os.PathLike[str] | None, threat_model: str | None) -> _Source:
    if run is not None:
        src = _source_from_run(run)
        if data_dir is not None:
            src.data_dir = Path(data_dir)
        return src
    assert checkpoint is not None and model_info is not None and model is not None
    return _source_from_files(checkpoint, model_info, model, data_dir=data_dir or "data", threat_model=threat_model)


def _refuse_failed(checks: list[Check], out_path: Path) -> None:
    failed = [c for c in checks if c.failed]
    if failed:
        raise SubmitError(f"refused, nothing written to {out_path}: "
                          + "; ".join(f"{c.name}: {c.detail}" for c in failed))


def _bundle_model_info(src: _Source, name: str, n_examples: int, paper: _Paper) -> ModelInfo:
    """The bundle's model_info: the evaluated file with the paper fields and the evaluated image count (validated);
    what the submitter may want to change is added to ``src.notes``."""
    info, tm, dataset = src.info, src.threat_model, src.info.dataset or ""
    full = ROBUSTBENCH_TEST_SIZES[dataset]
    # RobustBench's curated files hold no null corruptions fields (its update_json writes them into every file)
    bundle_info = ModelInfo.from_dict({k: v for k, v in info.to_file_dict().items()
                                       if not (v is None and k.startswith("corruptions"))})
    for key, value in paper.fields():
        if value is not None:
            setattr(bundle_info, key, value)
    if isinstance(bundle_info.eps, int | float):  # as RobustBench's update_json writes it; its files hold "8/255"
        bundle_info.eps = format_eps(bundle_info.eps)
    if bundle_info.architecture == src.arch and src.arch in _ARCHITECTURE_TITLE:
        bundle_info.architecture = _ARCHITECTURE_TITLE[src.arch]
    bundle_info.extra[N_EXAMPLES_KEY] = n_examples
    if n_examples < full and "test images" not in (bundle_info.footnote or ""):
        sentence = f"Evaluated on the first {n_examples} of the {full:,} test images RobustBench evaluates."
        bundle_info.footnote = f"{bundle_info.footnote.rstrip()} {sentence}" if bundle_info.footnote else sentence
    validate_model_info(bundle_info, threat_model=tm)
    if not _RB_NAME.fullmatch(name):
        src.notes.append(f"RobustBench names models <Name><Year><FirstWordOfTitle> (e.g. Zhang2019Theoretically); "
                         f"{name!r} is not of that form: pass --model-id")
    kept = [f"{key}={getattr(bundle_info, key)!r}" for key, given in paper.fields() if given is None]
    if kept:
        src.notes.append(f"model_info fields kept from the evaluated file: {', '.join(kept)}; pass --paper-title, "
                         "--paper-url, --authors, --venue to set them")
    return bundle_info


def _evaluated_model_and_images(src: _Source, n_examples: int,
                                out_path: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The evaluated model (CPU, eval mode) and the ``n_examples`` test images it was evaluated on."""
    from fire_plugin.data import dataset_to_tensors, load_dataset

    dataset = src.info.dataset or ""
    evaluated = src.load_evaluated().cpu().eval()
    test_set = load_dataset(dataset, split="test", data_dir=src.data_dir, download=False)
    x, y = dataset_to_tensors(test_set, n_examples=n_examples)
    if len(x) != n_examples:
        raise SubmitError(f"refused, nothing written to {out_path}: test images: the run evaluated {n_examples} "
                          f"images but {src.data_dir} holds {len(x)} {dataset} test images")
    return evaluated, x, y


def _checkpoint_file(stage: Path, bundle: _Bundle) -> Path:
    return stage / "models" / (bundle.info.dataset or "") / bundle.src.threat_model / f"{bundle.name}.pt"


def _write_files(stage: Path, bundle: _Bundle) -> Path:
    """Write the model_info file, the checkpoint (a plain CPU state dict) and the zoo entry; returns the first."""
    info_file = write_model_info(stage, bundle.name, bundle.info, threat_model=bundle.src.threat_model)
    pt = _checkpoint_file(stage, bundle)
    pt.parent.mkdir(parents=True)
    torch.save({k: v.detach().cpu().clone() for k, v in bundle.evaluated.state_dict().items()}, pt)
    (stage / "model_zoo_entry.py").write_text(bundle.entry_text, encoding="utf-8")
    return info_file


def _write_texts(stage: Path, bundle: _Bundle, checks: list[Check], paper: _Paper) -> None:
    """Write NEW_MODEL.md and CHECKS.md (after every check passed)."""
    (stage / "NEW_MODEL.md").write_text(_new_model_text(
        model_id=bundle.name, info=bundle.info, threat_model=bundle.src.threat_model, arch=bundle.src.arch,
        shipped=bundle.shipped, n_examples=bundle.n_examples, full=bundle.full, paper_title=paper.title,
        paper_url=paper.url, authors=paper.authors, version=bundle.version, evaluated_by=bundle.src.evaluated_by),
        encoding="utf-8")
    (stage / "CHECKS.md").write_text(_checks_text(checks, bundle.src, bundle.name, bundle.version), encoding="utf-8")

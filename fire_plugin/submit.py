"""A RobustBench submission bundle from an evaluated model, written only after its numbers are checked.

:func:`submit` takes the output folder of ``fire-plugin evaluate`` (or of a preset run), or a checkpoint with its
``model_info`` file and architecture, and writes a folder with what RobustBench's maintainers ask for in their
"New Model(s)" issue template::

    BUNDLE/model_info/<dataset>/<threat_model>/<Name>.json   the leaderboard file (RobustBench's schema)
    BUNDLE/models/<dataset>/<threat_model>/<Name>.pt         the weights as RobustBench's zoo stores them: a plain
                                                             state dict of the architecture
    BUNDLE/NEW_MODEL.md                                      the issue text, filled in (placeholders: <TODO: ...>)
    BUNDLE/model_zoo_entry.py                                the entry for robustbench/model_zoo/<dataset>.py
    BUNDLE/CHECKS.md                                         what was verified, and how

Nothing is written unless every check passes (the bundle is built in a staging folder beside ``out`` and renamed
at the end). The checks: the dataset and threat model have a RobustBench leaderboard; the ``model_info`` file is
valid, its ``dataset`` agrees with its folder and its AutoAttack accuracy is not above its clean accuracy; eps is
the leaderboard's; the AutoAttack accuracy comes from a finished standard AutoAttack run and the file holds the
run's numbers; the run used RobustBench's full test set (10,000 CIFAR images; a subset only with
``allow_subset``, which the footnote and NEW_MODEL.md then state); the bundle's checkpoint reloads through
:func:`fire_plugin.load_pretrained` from the bundle's own layout with weights and logits equal to the evaluated
model's, and through ``robustbench.utils.load_model`` (with the bundle's zoo entry) when the architecture is one
RobustBench ships; the clean accuracy recomputed with the bundle's checkpoint on the evaluated images equals the
file's. Any failure raises :class:`SubmitError` naming what differs.

>>> sorted(ZOO_ARCHITECTURES)
['resnet18_cifar', 'wrn28_10', 'wrn34_10']
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fire_plugin.robustbench_io import (
    N_EXAMPLES_KEY,
    ROBUSTBENCH_TEST_SIZES,
    THREAT_MODELS,
    ModelInfo,
    format_accuracy,
    format_eps,
    parse_eps,
    read_model_info,
    validate_model_info,
    write_model_info,
)

__all__ = ["ZOO_ARCHITECTURES", "Check", "SubmitError", "SubmitResult", "submit"]

_logger = logging.getLogger(__name__)

#: The leaderboards RobustBench keeps and their radius (``robustbench.model_zoo``: no CIFAR-100 or ImageNet L2).
LEADERBOARD_EPS: dict[tuple[str, str], str] = {
    ("cifar10", "Linf"): "8/255",
    ("cifar10", "L2"): "0.5",
    ("cifar100", "Linf"): "8/255",
    ("imagenet", "Linf"): "4/255",
}
_EPS_RTOL = 0.02  # RobustBench's own CIFAR-10 files hold 0.031 for 8/255 (1.2% apart): the same leaderboard
_ZOO_DICT = {"Linf": "linf", "L2": "l2"}  # the OrderedDict of robustbench/model_zoo/<dataset>.py per threat model
_DATASET_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
_ARCHITECTURE_TITLE = {"resnet18_cifar": "ResNet-18", "wrn34_10": "WideResNet-34-10", "wrn28_10": "WideResNet-28-10"}
_TEMPLATE_URL = "https://github.com/RobustBench/robustbench/issues/new?template=new-model.md"
_ARCHITECTURES_URL = "https://github.com/RobustBench/robustbench/tree/master/robustbench/model_zoo/architectures"
# The RobustBench model rebuilds our architecture from its own modules but pools with avg_pool2d instead of
# adaptive_avg_pool2d: the same numbers up to float32 rounding. Measured on the pyautoattack ResNet-18 with
# CIFAR-shaped inputs: max |difference| 0 to 2e-6 for logits of magnitude ~10; 1e-4 relative leaves room.
_RB_LOGIT_RTOL = 1e-4
_RB_NAME = re.compile(r"[A-Z][A-Za-z-]*[0-9]{4}[A-Z][A-Za-z0-9_-]*")  # Zhang2019Theoretically, Cui2020Learnable_34_10


@dataclass(frozen=True)
class _ZooArchitecture:
    module: str  # where RobustBench defines it
    names: str  # what to import from there
    constructor: Callable[[int], str]  # the 'model' expression for num_classes


def _resnet18(num_classes: int) -> str:
    return "ResNet18()" if num_classes == 10 else f"ResNet(BasicBlock, [2, 2, 2, 2], num_classes={num_classes})"


def _wrn(depth: int) -> Callable[[int], str]:
    def expression(num_classes: int) -> str:
        extra = "" if num_classes == 10 else f", num_classes={num_classes}"
        return f"WideResNet(depth={depth}, widen_factor=10{extra})"

    return expression


#: Our architectures that RobustBench ships, as RobustBench constructs them (same state dict layout).
ZOO_ARCHITECTURES: dict[str, _ZooArchitecture] = {
    "resnet18_cifar": _ZooArchitecture("robustbench.model_zoo.architectures.resnet", "BasicBlock, ResNet, ResNet18",
                                       _resnet18),
    "wrn34_10": _ZooArchitecture("robustbench.model_zoo.architectures.wide_resnet", "WideResNet", _wrn(34)),
    "wrn28_10": _ZooArchitecture("robustbench.model_zoo.architectures.wide_resnet", "WideResNet", _wrn(28)),
}


class SubmitError(ValueError):
    """A check failed: nothing was written. The message names each check that failed and what differs."""


@dataclass
class Check:
    """One verification of :func:`submit`.

    Attributes:
        name: what is checked.
        status: ``"passed"``, ``"failed"``, ``"skipped"`` (does not apply) or ``"unverified"`` (the inputs do not
            record what it needs; said in CHECKS.md, not a refusal).
        detail: what was compared, with the numbers.
    """

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        """Whether this check refuses the submission."""
        return self.status == "failed"


@dataclass
class SubmitResult:
    """What :func:`submit` wrote: the bundle folder, the model id, the files (relative paths) and the checks."""

    out: Path
    model_id: str
    files: list[str]
    checks: list[Check]
    subset: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"out": str(self.out), "model_id": self.model_id, "files": list(self.files), "subset": self.subset,
                "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks]}


@dataclass
class _Source:
    """What was evaluated, read from a run folder or given as files."""

    description: str
    arch: str  # the timm architecture name the weights load into
    info_path: Path
    info: ModelInfo
    threat_model: str
    load_evaluated: Callable[[], nn.Module]
    data_dir: Path
    n_examples: int | None  # None: not recorded
    autoattack_version: str | None  # None: not recorded
    run_accuracies: dict[str, float | None] | None = None  # fractions from the run's own result file
    batch_size: int = 256
    checkpoint_record: dict[str, Any] | None = None
    checkpoint_path: Path | None = None
    smoke: bool = False
    evaluated_by: str = "fire_plugin"  # what ran AutoAttack, for NEW_MODEL.md's "Evaluation method"
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- sources


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{label} {str(path)!r} cannot be read ({exc}); rerun the command that wrote it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{label} {str(path)!r} does not hold a JSON object; rerun the command that wrote it")
    return data


def _one_model_info(run: Path) -> Path:
    found = sorted(run.glob("model_info/*/*/*.json"))
    if len(found) != 1:
        what = "no model_info/<dataset>/<threat>/<id>.json" if not found else f"{len(found)} model_info files"
        raise ValueError(f"run={str(run)!r} holds {what}; evaluate with --model-id NAME (it writes one), or pass "
                         "--checkpoint, --model-info and --model")
    return found[0]


def _source_from_evaluate(run: Path, record: dict[str, Any]) -> _Source:
    from fire_plugin.pretrained import AUTOATTACK_RESNET18, load_pretrained

    rec = record.get("run")
    if not isinstance(rec, dict):
        raise ValueError(f"{run / 'eval.json'} has no 'run' record (written by fire_plugin before 0.1.0 submit "
                         "support); rerun `fire-plugin evaluate`, or pass --checkpoint, --model-info and --model")
    info_path = _one_model_info(run)
    model, dataset = rec["model"], rec["dataset"]
    checkpoint = rec.get("checkpoint")
    if checkpoint is None and model != AUTOATTACK_RESNET18:
        raise ValueError(f"the run evaluated {model!r} without a checkpoint, a RobustBench zoo model: it is on "
                         "RobustBench already")
    arch = "resnet18_cifar" if model == AUTOATTACK_RESNET18 else model
    ckpt_path = None if checkpoint is None else Path(checkpoint["path"])

    def load() -> nn.Module:
        if ckpt_path is None:
            return load_pretrained(AUTOATTACK_RESNET18, dataset=dataset)
        return load_pretrained(arch, dataset=dataset, checkpoint=ckpt_path)

    return _Source(
        description=f"`fire-plugin evaluate` output {run}", arch=arch, info_path=info_path,
        evaluated_by="`fire-plugin evaluate`",
        info=read_model_info(info_path), threat_model=info_path.parent.name, load_evaluated=load,
        data_dir=Path(rec["data_dir"]), n_examples=int(record["n_examples"]),
        autoattack_version=record.get("autoattack_version"),
        run_accuracies={"clean_acc": record.get("clean_acc"), "autoattack_acc": record.get("autoattack_acc")},
        batch_size=int(rec.get("batch_size") or 256), checkpoint_record=checkpoint, checkpoint_path=ckpt_path,
    )


def _source_from_preset(run: Path, results: dict[str, Any]) -> _Source:
    from fire_plugin.engine import load_checkpoint
    from fire_plugin.models import create_model_for_dataset

    cfg = results["config"]
    info_path = _one_model_info(run)
    if cfg.get("select_best"):
        ckpt, key = run / "checkpoints" / "best.pt", "model"
    else:
        ckpt, key = run / "checkpoints" / "last.pt", "ema" if cfg.get("ema") else "model"

    def load() -> nn.Module:
        net = create_model_for_dataset(cfg["model"], cfg["dataset"])  # as run_preset builds it (not --smoke)
        state = load_checkpoint(ckpt)[key]
        net.load_state_dict(state["module"] if key == "ema" else state)
        return net.eval()

    ev = results["eval"]
    return _Source(
        description=f"preset {results['preset']!r} output {run} (weights: {results.get('weights')})",
        evaluated_by=f"the preset {results['preset']!r} (`fire-plugin train --preset`)",
        arch=cfg["model"], info_path=info_path, info=read_model_info(info_path),
        threat_model=info_path.parent.name, load_evaluated=load, data_dir=Path(cfg["data_dir"]),
        n_examples=int(ev["n_examples"]), autoattack_version=ev.get("autoattack_version"),
        run_accuracies={"clean_acc": ev.get("clean_acc"), "autoattack_acc": ev.get("autoattack_acc")},
        batch_size=int(cfg.get("eval_batch_size") or 256), checkpoint_path=ckpt,
        smoke=bool(results.get("smoke")),
    )


def _source_from_run(run: str | os.PathLike[str]) -> _Source:
    path = Path(run)
    if not path.is_dir():
        raise ValueError(f"run={str(run)!r} is not a folder; allowed: the --out folder of `fire-plugin evaluate` or "
                         "of a preset run")
    if (path / "eval.json").is_file():
        return _source_from_evaluate(path, _read_json(path / "eval.json", "eval file"))
    if (path / "results.json").is_file():
        results = _read_json(path / "results.json", "results file")
        if "preset" in results and "config" in results:
            return _source_from_preset(path, results)
    raise ValueError(f"run={str(run)!r} holds neither eval.json (`fire-plugin evaluate`) nor a preset's "
                     "results.json; pass the folder given as --out, or --checkpoint, --model-info and --model")


def _source_from_files(checkpoint: str | os.PathLike[str], model_info: str | os.PathLike[str], model: str, *,
                       data_dir: str | os.PathLike[str], threat_model: str | None) -> _Source:
    from fire_plugin.pretrained import load_pretrained

    info_path = Path(model_info)
    if not info_path.is_file():
        raise ValueError(f"model_info={str(model_info)!r} is not a file; allowed: a RobustBench model_info JSON")
    info = read_model_info(info_path)
    folder = info_path.parent.name
    tm = folder if folder in THREAT_MODELS else threat_model
    if tm is None:
        raise ValueError(f"the folder of {info_path} ({folder!r}) is not a threat model: pass --threat-model")
    if threat_model is not None and threat_model != tm:
        raise ValueError(f"threat_model={threat_model!r} but {info_path} sits in the {tm!r} folder")
    recorded = info.extra.get(N_EXAMPLES_KEY)
    ckpt = Path(checkpoint)
    dataset = info.dataset or ""
    return _Source(
        description=f"checkpoint {ckpt} with {info_path} (architecture {model})", arch=model, info_path=info_path,
        evaluated_by="",
        info=info, threat_model=tm,
        load_evaluated=lambda: load_pretrained(model, dataset=dataset, checkpoint=ckpt),
        data_dir=Path(data_dir), n_examples=recorded if isinstance(recorded, int) else None,
        autoattack_version=None, checkpoint_path=ckpt,
    )


# --------------------------------------------------------------------------------------------------- checks


def _metadata_checks(src: _Source, *, allow_subset: bool) -> tuple[list[Check], int]:
    """The checks on the files; returns them and the number of evaluated images to recompute on."""
    info, tm = src.info, src.threat_model
    dataset = info.dataset or ""
    checks: list[Check] = []
    board = LEADERBOARD_EPS.get((dataset, tm))
    boards = ", ".join(f"{d} {t}" for d, t in LEADERBOARD_EPS)
    checks.append(Check("leaderboard", "passed" if board else "failed",
                        f"RobustBench keeps a {dataset} {tm} leaderboard" if board else
                        f"RobustBench has no {dataset!r} {tm!r} leaderboard (it has: {boards})"))
    folder_dataset = src.info_path.parent.parent.name
    same_folder = src.info_path.parent.name not in THREAT_MODELS or folder_dataset == dataset
    checks.append(Check("model_info file", "passed" if same_folder else "failed",
                        f"{src.info_path} is valid RobustBench model_info" if same_folder else
                        f"{src.info_path} says dataset={dataset!r} but sits in the {folder_dataset!r} folder"))
    clean, aa = float(info.clean_acc or 0), float(info.autoattack_acc or 0)
    checks.append(Check("accuracies possible", "passed" if aa <= clean else "failed",
                        f"autoattack_acc {info.autoattack_acc} <= clean_acc {info.clean_acc}" if aa <= clean else
                        f"autoattack_acc {info.autoattack_acc} is above clean_acc {info.clean_acc}: impossible on "
                        "the same images"))
    if board is not None:
        eps = parse_eps(info.eps) if info.eps is not None else None
        ok = eps is not None and abs(eps - parse_eps(board)) <= _EPS_RTOL * parse_eps(board)
        checks.append(Check("eps", "passed" if ok else "failed",
                            f"eps={info.eps} is the leaderboard's {board}" if ok else
                            f"eps={info.eps} but the {dataset} {tm} leaderboard uses eps={board}"))
    # AutoAttack: standard, finished, and the file holds the run's numbers
    if src.smoke:
        checks.append(Check("AutoAttack", "failed", "the run is a --smoke run on synthetic data: not a result"))
    elif src.autoattack_version is None:
        checks.append(Check("AutoAttack", "unverified",
                            "a bare model_info file does not record the AutoAttack version; its autoattack_acc is "
                            "taken as standard AutoAttack (what RobustBench's benchmark() runs)"))
    elif src.autoattack_version != "standard":
        checks.append(Check("AutoAttack", "failed", f"the run used AutoAttack {src.autoattack_version!r}, not "
                                                    "'standard': RobustBench ranks standard AutoAttack only"))
    else:
        bad = []
        for key in ("clean_acc", "autoattack_acc"):
            value = (src.run_accuracies or {}).get(key)
            if value is None:
                bad.append(f"the run has no {key}")
            elif format_accuracy(float(value)) != getattr(info, key):
                bad.append(f"{key} {getattr(info, key)} in the file, {format_accuracy(float(value))} in the run")
        checks.append(Check("AutoAttack", "failed" if bad else "passed",
                            "; ".join(bad) if bad else
                            f"finished standard AutoAttack; the file holds the run's clean {info.clean_acc} and "
                            f"AutoAttack {info.autoattack_acc}"))
    # the test images
    full = ROBUSTBENCH_TEST_SIZES.get(dataset)
    recorded = info.extra.get(N_EXAMPLES_KEY)
    n = src.n_examples if src.n_examples is not None else full
    if src.n_examples is not None and isinstance(recorded, int) and recorded != src.n_examples:
        checks.append(Check("test images", "failed", f"the file says {N_EXAMPLES_KEY}={recorded} but the run "
                                                     f"evaluated {src.n_examples} images"))
    elif full is None or n is None:
        checks.append(Check("test images", "failed", f"dataset {dataset!r} has no RobustBench test set size"))
    elif n >= full:
        how = "" if src.n_examples is not None else f" (not recorded: taken as RobustBench's {full:,})"
        checks.append(Check("test images", "passed", f"{n:,} test images, RobustBench's full count{how}"))
    elif allow_subset:
        checks.append(Check("test images", "passed",
                            f"SUBSET: {n:,} of the {full:,} test images RobustBench evaluates, allowed by "
                            "--allow-subset; the footnote and NEW_MODEL.md say so"))
    else:
        checks.append(Check("test images", "failed", f"evaluated on {n:,} of the {full:,} test images RobustBench "
                                                     "evaluates: evaluate on all of them, or pass --allow-subset"))
    return checks, int(n or 0)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_plain(model: nn.Module) -> bool:
    """Whether the model applies no input normalization of its own (RobustBench's constructors have none)."""
    normalize = getattr(model, "normalize", None)
    return normalize is None or getattr(normalize, "mean", None) is None


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).detach().cpu()


def _zoo_entry_text(model_id: str, arch: str, dataset: str, threat_model: str, num_classes: int,
                    shipped: bool, version: str) -> str:
    rel = f"models/{dataset}/{threat_model}/{model_id}.pt"
    where = f"robustbench/model_zoo/{dataset}.py"
    head = (f'"""RobustBench Model Zoo entry for {model_id} (written by fire-plugin submit, fire_plugin {version}).\n\n'
            f"Add ENTRY to the `{_ZOO_DICT.get(threat_model, threat_model.lower())}` OrderedDict of {where}.\n"
            f"The checkpoint is {rel} in this bundle, a plain state dict:\nupload it to Google Drive and put its "
            "file id in place of the gdrive_id placeholder.\n")
    if shipped:
        spec = ZOO_ARCHITECTURES[arch]
        return (head + f"{where} already imports the architecture; the import below makes this file\nrunnable "
                "alone.\n"
                '"""\n\n'
                f"from {spec.module} import {spec.names}  # noqa: F401\n\n"
                f"ENTRY = ('{model_id}', {{\n"
                f"    'model': lambda: {spec.constructor(num_classes)},\n"
                f"    'gdrive_id': 'TODO: the Google Drive file id of {rel}',\n"
                "})\n")
    return (head + f"The architecture {arch!r} (fire_plugin.models) is not one RobustBench ships as is: add its "
            f"implementation to\nrobustbench/model_zoo/architectures/ (see {_ARCHITECTURES_URL})\nand construct it "
            "in 'model'.\n"
            '"""\n\n'
            f"ENTRY = ('{model_id}', {{\n"
            f"    'model': None,  # TODO: a callable returning the {arch} network with {num_classes} classes\n"
            f"    'gdrive_id': 'TODO: the Google Drive file id of {rel}',\n"
            "})\n")


def _load_entry(text: str) -> tuple[str, dict[str, Any]]:
    namespace: dict[str, Any] = {}
    exec(compile(text, "model_zoo_entry.py", "exec"), namespace)  # noqa: S102 - the file this module just wrote
    name, entry = namespace["ENTRY"]
    return name, entry


def _robustbench_reload(stage: Path, entry_text: str, dataset: str, threat_model: str) -> nn.Module:
    """``robustbench.utils.load_model`` of the bundle's checkpoint, with the bundle's zoo entry registered."""
    import contextlib
    import io

    from fire_plugin._compat import import_robustbench

    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    name, entry = _load_entry(entry_text)
    zoo = rb_utils.all_models[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat_model)]
    if name in zoo:
        raise ValueError(f"RobustBench's zoo already has a {dataset} {threat_model} model named {name!r}: pass "
                         "another --model-id")
    zoo[name] = entry
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            model: nn.Module = rb_utils.load_model(name, model_dir=str(stage / "models"), dataset=dataset,
                                                   threat_model=threat_model)
    finally:
        del zoo[name]
    return model.eval()


def _clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    device: torch.device) -> tuple[int, int]:
    model = model.to(device).eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct, len(x)


# --------------------------------------------------------------------------------------------------- texts


def _todo(what: str, flag: str) -> str:
    return f"<TODO: {what} (pass {flag})>"


def _new_model_text(*, model_id: str, info: ModelInfo, threat_model: str, arch: str, shipped: bool,
                    n_examples: int, full: int, paper_title: str | None, paper_url: str | None,
                    authors: str | None, version: str, evaluated_by: str) -> str:
    dataset = info.dataset or ""
    title = _DATASET_TITLE.get(dataset, dataset)
    architecture = info.architecture or arch
    subset = n_examples < full
    how = (f"standard AutoAttack, run by {evaluated_by} (fire_plugin {version})" if evaluated_by else
           "AutoAttack <TODO: how it was run (standard AutoAttack, e.g. robustbench.eval.benchmark); the model_info "
           "file does not record it>")
    method = f"{how}, eps = {info.eps} ({threat_model}), on the first {n_examples:,} of the {full:,} {title} test " \
             "images"
    if subset:
        method += (f". **Subset: {n_examples:,} of the {full:,} test images RobustBench evaluates; not a leaderboard "
                   "result until evaluated on all of them.**")
    arch_box = "x" if shipped else " "
    arch_note = (f" ({architecture}: RobustBench's `{ZOO_ARCHITECTURES[arch].constructor(10).split('(')[0]}`; "
                 "`model_zoo_entry.py` has the entry)" if shipped else
                 f" ({architecture} is fire_plugin's `{arch}`: link its implementation here: <TODO: URL>)")
    lines = [
        f"<!-- Issue title: [New Model] {model_id}",
        f"     Paste the text below into a new RobustBench issue ({_TEMPLATE_URL}).",
        "     Written by fire-plugin submit; CHECKS.md says what was verified. Replace every <TODO: ...>. -->",
        "",
        "# Paper Information",
        "",
        f"- **Paper Title**: {paper_title or _todo('the paper title', '--paper-title')}",
        f"- **Paper URL**: {paper_url or _todo('the paper URL', '--paper-url')}",
        f"- **Paper authors**: {authors or _todo('the authors, comma separated', '--authors')}",
        "",
        "# Leaderboard Claim(s)",
        "",
        "## Model 1",
        "",
        f"- **Architecture**: {architecture}",
        f"- **Threat Model**: {threat_model}",
        f"- **eps**: {info.eps}",
        f"- **Clean accuracy**: {info.clean_acc}%",
        f"- **Robust accuracy**: {info.autoattack_acc}%",
        f"- **Additional data**: {'true' if info.additional_data else 'false'}",
        f"- **Evaluation method**: {method}",
        f"- **Checkpoint and code**: checkpoint: <TODO: URL of models/{dataset}/{threat_model}/{model_id}.pt once "
        "uploaded (or a private submission, as the template explains)>; code: fire_plugin "
        f"{version}; leaderboard file: model_info/{dataset}/{threat_model}/{model_id}.json",
        "",
        "# Model Zoo:",
        "",
        "- [ ] I want to add my models to the Model Zoo (check if true)",
        f"- [{arch_box}] I use an architecture that is included among those [here]({_ARCHITECTURES_URL}) or in `timm`."
        f" If not, I added the link to the architecture implementation so that it can be added.{arch_note}",
        "- [ ] I agree to release my model(s) under MIT license (check if true) **OR** under a custom license, "
        "located here: <TODO: a license URL, or leave it for MIT>",
        "",
    ]
    return "\n".join(lines)


def _checks_text(checks: list[Check], src: _Source, model_id: str, version: str) -> str:
    lines = [
        f"# Checks of the RobustBench bundle {model_id}",
        "",
        f"Source: {src.description}.",
        f"Written by fire-plugin submit (fire_plugin {version}, torch {torch.__version__}) on "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Every check ran before "
        "the bundle was written; a failed one writes nothing.",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {c.name} | {c.status} | {c.detail.replace('|', '/')} |" for c in checks]
    lines += ["", "Not checked here: the robust accuracy itself (standard AutoAttack is not rerun; RobustBench's "
              "maintainers rerun it on the checkpoint).", *[f"Note: {n}" for n in src.notes], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- submit


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
    from fire_plugin.data import dataset_to_tensors, load_dataset
    from fire_plugin.pretrained import load_pretrained

    if (run is None) == (checkpoint is None and model_info is None and model is None) or (
            run is None and None in (checkpoint, model_info, model)):
        raise ValueError("give run=... (an evaluate or preset output) or checkpoint=..., model_info=... and "
                         "model=...")
    if isinstance(n_logit_inputs, bool) or not isinstance(n_logit_inputs, int) or n_logit_inputs < 1:
        raise ValueError(f"n_logit_inputs={n_logit_inputs!r} is not allowed; allowed: an int >= 1")
    if run is not None:
        src = _source_from_run(run)
        if data_dir is not None:
            src.data_dir = Path(data_dir)
    else:
        assert checkpoint is not None and model_info is not None and model is not None
        src = _source_from_files(checkpoint, model_info, model, data_dir=data_dir or "data",
                                 threat_model=threat_model)
    name = model_id or src.info_path.stem
    out_path = Path(out)
    info, tm, dataset = src.info, src.threat_model, src.info.dataset or ""

    checks, n_examples = _metadata_checks(src, allow_subset=allow_subset)
    failed = [c for c in checks if c.failed]
    if failed:
        raise SubmitError(f"refused, nothing written to {out_path}: "
                          + "; ".join(f"{c.name}: {c.detail}" for c in failed))

    # the bundle's model_info: the evaluated file with the paper fields and the evaluated image count
    full = ROBUSTBENCH_TEST_SIZES[dataset]
    # RobustBench's curated files hold no null corruptions fields (its update_json writes them into every file)
    bundle_info = ModelInfo.from_dict({k: v for k, v in info.to_file_dict().items()
                                       if not (v is None and k.startswith("corruptions"))})
    for key, value in (("name", paper_title), ("link", paper_url), ("authors", authors), ("venue", venue)):
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
    kept = [f"{key}={getattr(bundle_info, key)!r}" for key, given in
            (("name", paper_title), ("link", paper_url), ("authors", authors), ("venue", venue)) if given is None]
    if kept:
        src.notes.append(f"model_info fields kept from the evaluated file: {', '.join(kept)}; pass --paper-title, "
                         "--paper-url, --authors, --venue to set them")

    evaluated = src.load_evaluated().cpu().eval()
    test_set = load_dataset(dataset, split="test", data_dir=src.data_dir, download=False)
    x, y = dataset_to_tensors(test_set, n_examples=n_examples)
    if len(x) != n_examples:
        raise SubmitError(f"refused, nothing written to {out_path}: test images: the run evaluated {n_examples} "
                          f"images but {src.data_dir} holds {len(x)} {dataset} test images")
    x_check = x[:n_logit_inputs]
    num_classes = int(_logits(evaluated, x_check[:1]).shape[1])
    shipped = src.arch in ZOO_ARCHITECTURES and _is_plain(evaluated) and x.shape[1] == 3
    entry_text = _zoo_entry_text(name, src.arch, dataset, tm, num_classes, shipped, __version__)

    stage = _staging(out_path)
    try:
        info_file = write_model_info(stage, name, bundle_info, threat_model=tm)
        pt = stage / "models" / dataset / tm / f"{name}.pt"
        pt.parent.mkdir(parents=True)
        torch.save({k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}, pt)
        (stage / "model_zoo_entry.py").write_text(entry_text, encoding="utf-8")
        checks += _model_checks(src, evaluated, pt, x, y, x_check, stage, entry_text, shipped,
                                device=device, load_pretrained=load_pretrained)
        failed = [c for c in checks if c.failed]
        if failed:
            raise SubmitError(f"refused, nothing written to {out_path}: "
                              + "; ".join(f"{c.name}: {c.detail}" for c in failed))
        (stage / "NEW_MODEL.md").write_text(_new_model_text(
            model_id=name, info=bundle_info, threat_model=tm, arch=src.arch, shipped=shipped, n_examples=n_examples,
            full=full, paper_title=paper_title, paper_url=paper_url, authors=authors, version=__version__,
            evaluated_by=src.evaluated_by),
            encoding="utf-8")
        (stage / "CHECKS.md").write_text(_checks_text(checks, src, name, __version__), encoding="utf-8")
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        if out_path.exists():
            out_path.rmdir()  # empty, checked by _staging
        stage.rename(out_path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _logger.info("wrote the RobustBench bundle %s (%s) to %s", name, info_file.relative_to(stage), out_path)
    return SubmitResult(out=out_path, model_id=name, files=files, checks=checks, subset=n_examples < full)


def _model_checks(src: _Source, evaluated: nn.Module, pt: Path, x: torch.Tensor, y: torch.Tensor,
                  x_check: torch.Tensor, stage: Path, entry_text: str, shipped: bool, *,
                  device: str | torch.device | None, load_pretrained: Callable[..., nn.Module]) -> list[Check]:
    checks: list[Check] = []
    dataset, tm = src.info.dataset or "", src.threat_model
    rel = pt.relative_to(stage).as_posix()
    if src.checkpoint_record is not None and src.checkpoint_path is not None:
        now = _sha256(src.checkpoint_path) if src.checkpoint_path.is_file() else "missing"
        same = now == src.checkpoint_record.get("sha256")
        checks.append(Check("evaluated checkpoint", "passed" if same else "failed",
                            f"{src.checkpoint_path} is the file evaluated (sha256 {now[:12]}...)" if same else
                            f"{src.checkpoint_path} changed since it was evaluated (sha256 "
                            f"{str(src.checkpoint_record.get('sha256'))[:12]}... then, {now[:12]}... now)"))
    # 1. our loader, from the bundle's layout: same weights, same logits (same code on the same inputs: bit equal)
    reloaded = load_pretrained(src.arch, dataset=dataset, checkpoint=pt).cpu().eval()
    ref_state, new_state = evaluated.state_dict(), reloaded.state_dict()
    differ = sorted(k for k in ref_state if k not in new_state or not torch.equal(ref_state[k], new_state[k]))
    ref_logits = _logits(evaluated, x_check)
    same_logits = torch.equal(_logits(reloaded, x_check), ref_logits)
    ok = not differ and same_logits and set(ref_state) == set(new_state)
    checks.append(Check("reload with fire_plugin.load_pretrained", "passed" if ok else "failed",
                        f"{rel} reloads into {src.arch!r}: all {len(ref_state)} tensors and the logits on "
                        f"{len(x_check)} evaluated images equal the evaluated model's" if ok else
                        f"{rel} reloaded into {src.arch!r} differs from the evaluated model: tensors {differ[:5]}, "
                        f"logits equal: {same_logits}"))
    # 2. RobustBench's loader with the bundle's zoo entry
    if shipped:
        try:
            rb_model = _robustbench_reload(stage, entry_text, dataset, tm)
            rb_logits = _logits(rb_model, x_check)
            diff = float((rb_logits - ref_logits).abs().max())
            scale = float(ref_logits.abs().max()) + 1.0
            ok = rb_logits.shape == ref_logits.shape and diff <= _RB_LOGIT_RTOL * scale
            detail = (f"robustbench.utils.load_model({pt.stem!r}) with "
                      f"model_zoo_entry.py: logits on {len(x_check)} evaluated images within {diff:.1e} of the "
                      f"evaluated model's (allowed {_RB_LOGIT_RTOL * scale:.1e})")
            checks.append(Check("reload with robustbench.utils.load_model", "passed" if ok else "failed", detail))
        except Exception as exc:  # noqa: BLE001 - any failure of RobustBench's loader refuses, with its message
            checks.append(Check("reload with robustbench.utils.load_model", "failed",
                                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
    else:
        reason = ("applies an input normalization RobustBench's constructor lacks" if src.arch in ZOO_ARCHITECTURES
                  else "is not one RobustBench ships")
        checks.append(Check("reload with robustbench.utils.load_model", "skipped",
                            f"the architecture {src.arch!r} {reason}; model_zoo_entry.py says what to add"))
    # 3. clean accuracy recomputed with the bundle's weights on the evaluated images
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    correct, n = _clean_accuracy(reloaded, x, y, src.batch_size, dev)
    recomputed = format_accuracy(correct / n)
    ok = recomputed == src.info.clean_acc
    checks.append(Check("clean accuracy", "passed" if ok else "failed",
                        f"recomputed with {rel} on the {n:,} evaluated images: {correct}/{n} = {recomputed}%, as "
                        "the file says" if ok else
                        f"the file says clean_acc {src.info.clean_acc} but {rel} classifies {correct}/{n} = "
                        f"{recomputed}% of the {n:,} evaluated images correctly"))
    return checks

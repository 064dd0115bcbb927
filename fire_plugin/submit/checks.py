"""The checks of a submission: on the files (leaderboard, eps, AutoAttack, test images) before anything is written,
and on the written checkpoint (reloads with our loader and RobustBench's, the clean accuracy recomputed).

>>> _is_plain(nn.Linear(2, 2))
True
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fire_plugin.robustbench_io import (
    N_EXAMPLES_KEY,
    ROBUSTBENCH_TEST_SIZES,
    THREAT_MODELS,
    format_accuracy,
    parse_eps,
)
from fire_plugin.submit.records import (
    _EPS_RTOL,
    _RB_LOGIT_RTOL,
    LEADERBOARD_EPS,
    ZOO_ARCHITECTURES,
    Check,
    _Source,
)


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
    checks.append(_autoattack_check(src))
    check, n = _test_images_check(src, allow_subset=allow_subset)
    checks.append(check)
    return checks, n


def _autoattack_check(src: _Source) -> Check:
    """AutoAttack: standard, finished, and the file holds the run's numbers."""
    info = src.info
    if src.smoke:
        return Check("AutoAttack", "failed", "the run is a --smoke run on synthetic data: not a result")
    if src.autoattack_version is None:
        return Check("AutoAttack", "unverified",
                     "a bare model_info file does not record the AutoAttack version; its autoattack_acc is "
                     "taken as standard AutoAttack (what RobustBench's benchmark() runs)")
    if src.autoattack_version != "standard":
        return Check("AutoAttack", "failed", f"the run used AutoAttack {src.autoattack_version!r}, not "
                                             "'standard': RobustBench ranks standard AutoAttack only")
    bad = []
    for key in ("clean_acc", "autoattack_acc"):
        value = (src.run_accuracies or {}).get(key)
        if value is None:
            bad.append(f"the run has no {key}")
        elif format_accuracy(float(value)) != getattr(info, key):
            bad.append(f"{key} {getattr(info, key)} in the file, {format_accuracy(float(value))} in the run")
    return Check("AutoAttack", "failed" if bad else "passed",
                 "; ".join(bad) if bad else
                 f"finished standard AutoAttack; the file holds the run's clean {info.clean_acc} and "
                 f"AutoAttack {info.autoattack_acc}")


def _test_images_check(src: _Source, *, allow_subset: bool) -> tuple[Check, int]:
    """The evaluated test images against RobustBench's count; returns the check and their number (0: unknown)."""
    dataset = src.info.dataset or ""
    full = ROBUSTBENCH_TEST_SIZES.get(dataset)
    recorded = src.info.extra.get(N_EXAMPLES_KEY)
    n = src.n_examples if src.n_examples is not None else full
    if src.n_examples is not None and isinstance(recorded, int) and recorded != src.n_examples:
        check = Check("test images", "failed", f"the file says {N_EXAMPLES_KEY}={recorded} but the run "
                                               f"evaluated {src.n_examples} images")
    elif full is None or n is None:
        check = Check("test images", "failed", f"dataset {dataset!r} has no RobustBench test set size")
    elif n >= full:
        how = "" if src.n_examples is not None else f" (not recorded: taken as RobustBench's {full:,})"
        check = Check("test images", "passed", f"{n:,} test images, RobustBench's full count{how}")
    elif allow_subset:
        check = Check("test images", "passed",
                      f"SUBSET: {n:,} of the {full:,} test images RobustBench evaluates, allowed by "
                      "--allow-subset; the footnote and NEW_MODEL.md say so")
    else:
        check = Check("test images", "failed", f"evaluated on {n:,} of the {full:,} test images RobustBench "
                                               "evaluates: evaluate on all of them, or pass --allow-subset")
    return check, int(n or 0)


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


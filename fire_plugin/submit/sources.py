"""The evaluated model and its ``model_info`` file, read from a ``fire-plugin evaluate`` or preset output folder or
given as files (a :class:`~fire_plugin.submit.records._Source`).

>>> _source_from_run("no/such/folder")
Traceback (most recent call last):
...
ValueError: run='no/such/folder' is not a folder; allowed: the --out folder of `fire-plugin evaluate` or of a preset run
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from fire_plugin.robustbench_io import N_EXAMPLES_KEY, THREAT_MODELS, read_model_info
from fire_plugin.submit.records import _Source


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


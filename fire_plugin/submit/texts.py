"""The texts of a bundle: the Model Zoo entry (``model_zoo_entry.py``), RobustBench's "New Model(s)" issue
(``NEW_MODEL.md``) and ``CHECKS.md``.

>>> _todo("the paper title", "--paper-title")
'<TODO: the paper title (pass --paper-title)>'
"""

from __future__ import annotations

import datetime

import torch

from fire_plugin.robustbench_io import ModelInfo
from fire_plugin.submit.records import (
    _ARCHITECTURES_URL,
    _DATASET_TITLE,
    _TEMPLATE_URL,
    _ZOO_DICT,
    ZOO_ARCHITECTURES,
    Check,
    _Source,
)


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


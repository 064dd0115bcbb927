"""Every ``fire-plugin ...`` line and every Python block of README.md and docs/*.md runs, as written, reduced.

Each document runs in one fresh folder, its blocks in document order, so that what one line writes is what the next
one reads (``train --out runs/fire`` then ``evaluate --checkpoint runs/fire/checkpoints/last.pt``). Commands run
in-process through :func:`fire_plugin.cli.main` (no interpreter start-up per line) with tiny sizes appended through
their documented flags (argparse keeps the last value of a repeated flag), e.g. ``--epochs 1`` or
``--n-examples 8``; Python blocks run with small stand-ins for the names they leave undefined (``model``, ``x``,
...) and the substitutions of :data:`PY_REDUCE`. The folder holds a small fake CIFAR-10 in torchvision's on-disk
layout (``data/cifar-10-batches-py``: pickled batches of uint8 rows and labels) and the 80M-TI pickle the README
converts. torchvision checks the md5 sums of the real CIFAR files; the test accepts the fake ones in place of it.

A command or block that cannot be reduced enough for the fast suite (``demo``, ``bench``, the Gaussian report) is
skipped there and run by the slow test. Set ``FIRE_DOCS_TIMES=path.json`` to record each command's wall time.
"""

from __future__ import annotations
import __future__

import json
import os
import pickle
import re
import shlex
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# flags appended per subcommand (later flags win in argparse); None: the line runs as written
CLI_REDUCE: dict[str, list[str]] = {
    "train": ["--epochs", "1", "--steps", "1", "--quiet"],
    "train-preset": ["--smoke", "--quiet"],  # synthetic data of the preset's shape; WRNs at widen factor 1 (below)
    "evaluate": ["--n-examples", "8", "--aa-attacks", "apgd-ce", "--batch-size", "8", "--quiet"],
    "margins": ["--n-inputs", "2", "--max-steps", "20", "--quiet"],
    "gaussian": ["--n-per-class", "200", "--lambdas", "0 1", "--no-global", "--quiet"],
    "demo": ["--quick", "--workers", "1", "--quiet"],
    "bench": ["--quick", "--only", "distances"],
}
SLOW_SUBCOMMANDS = {"demo", "bench"}
# Python blocks run by the slow test only: the Gaussian report (its figures take about 10 s even reduced; the fast
# tests/test_gaussian.py::test_run_report_writes_json_and_figures runs the same function)
SLOW_SNIPPETS = ("gaussian.run_report(",)

# textual substitutions in Python blocks: (what, by what), applied to every block
PY_REDUCE: list[tuple[str, str]] = [
    ("nb_epochs=100", "nb_epochs=1"),
    ("max_iter=40", "max_iter=2"),
    ("epochs=100", "epochs=1"),
    ('gaussian.run_report("docs")', 'gaussian.run_report("docs", n_per_class=200, lambdas=[0.0, 1.0], '
                                    'include_global=False, verbose=False)'),
    ("trace_margins(model, x, y)", "trace_margins(model, x, y, max_steps=20)"),
]

_FENCE = re.compile(r"^```(\w*)\s*$")


def doc_blocks(path: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a Markdown file: ``(language, text)`` in document order."""
    blocks: list[tuple[str, str]] = []
    lang, lines, inside = "", [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line.strip())
        if match and not inside:
            lang, lines, inside = match.group(1), [], True
        elif line.strip() == "```" and inside:
            blocks.append((lang, "\n".join(lines)))
            inside = False
        elif inside:
            lines.append(line)
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def fire_plugin_argv(command: str) -> list[str] | None:
    """The argv of ``fire-plugin ...`` (or ``torchrun ... -m fire_plugin.cli ...``), else None."""
    words = shlex.split(command)
    if words[0] == "fire-plugin":
        return words[1:]
    if words[0] == "torchrun" and "fire_plugin.cli" in words:
        return words[words.index("fire_plugin.cli") + 1 :]
    return None


def reduced(argv: list[str]) -> list[str]:
    key = "train-preset" if argv[:1] == ["train"] and "--preset" in argv else argv[0]
    return [*argv, *CLI_REDUCE.get(key, [])]


def _write_fake_cifar10(folder: Path, n_test: int = 16, n_train_batch: int = 8) -> None:
    """CIFAR-10 in torchvision's layout: pickled dicts with ``data`` (N x 3072 uint8) and ``labels``.

    The test labels are the class after the one pyautoattack's ResNet-18 predicts, so that the README's
    ``evaluate --model autoattack-resnet18`` finds nothing to attack and stays fast: the test checks the command
    line, not accuracy.
    """
    from fire_plugin.pretrained import load_pretrained

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    net = load_pretrained("autoattack-resnet18")

    def batch(n: int, labels: list[int] | None) -> dict[str, object]:
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        if labels is None:
            images = torch.as_tensor(data, dtype=torch.float32).view(n, 3, 32, 32) / 255
            with torch.no_grad():
                labels = ((net(images).argmax(1) + 1) % 10).tolist()
        return {"data": data, "labels": labels, "batch_label": "fake"}

    for i in range(1, 6):
        with (folder / f"data_batch_{i}").open("wb") as handle:
            pickle.dump(batch(n_train_batch, rng.integers(0, 10, n_train_batch).tolist()), handle)
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump(batch(n_test, None), handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake_data")
    _write_fake_cifar10(root / "data" / "cifar-10-batches-py")
    return root / "data"


def _stand_ins() -> dict[str, object]:
    """Small values for the names README and docs snippets leave undefined."""
    from dataclasses import dataclass

    from art.estimators.classification import PyTorchClassifier
    from torch import Tensor, nn
    from torch.utils.data import DataLoader, TensorDataset

    from fire_plugin.data import load_dataset
    from fire_plugin.models import DigitsCNN

    x_all, y_all = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    classifier = PyTorchClassifier(model=DigitsCNN(), loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                                   nb_classes=10, clip_values=(0.0, 1.0),
                                   optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    return {
        "model": model, "images": x_all[:8], "labels": y_all[:8], "x": x_all[:2], "y": y_all[:2],
        "x_train": x_all[:16].numpy(), "y_train": y_all[:16].numpy(), "classifier": classifier,
        "loader": DataLoader(TensorDataset(x_all[:16], y_all[:16]), batch_size=8), "optimizer": optimizer,
        "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1), "Tensor": Tensor,
        "dataclass": dataclass,
    }


def _write_ti_pickle(folder: Path) -> None:
    """A stand-in for Carmon et al.'s 80M-TI pickle, in its format (``data`` NHWC uint8, ``extrapolated_targets``)."""
    rng = np.random.default_rng(0)
    with (folder / "ti_500K_pseudo_labeled.pickle").open("wb") as handle:
        pickle.dump({"data": rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8),
                     "extrapolated_targets": rng.integers(0, 10, 8).tolist()}, handle)


def run_document(path: Path, workdir: Path, fake_cifar: Path, monkeypatch: pytest.MonkeyPatch, *,
                 slow: bool) -> list[dict[str, object]]:
    """Run ``path``'s blocks in ``workdir``; returns one record per command (``command``, ``seconds``, ``ran``)."""
    import torchvision

    from fire_plugin import presets
    from fire_plugin.cli import main

    monkeypatch.chdir(workdir)
    (workdir / "data").symlink_to(fake_cifar, target_is_directory=True)
    _write_ti_pickle(workdir)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    real_run_preset = presets.run_preset

    def tiny_run_preset(*args: object, **kwargs: object) -> object:
        kwargs["tiny"] = True  # WideResNets at their depth, widen factor 1: the full size takes minutes on a CPU
        return real_run_preset(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(presets, "run_preset", tiny_run_preset)
    records: list[dict[str, object]] = []
    module = types.ModuleType("fire_plugin_docs_snippets")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    namespace.update(_stand_ins())
    for lang, text in doc_blocks(path):
        if lang == "python":
            if not slow and any(marker in text for marker in SLOW_SNIPPETS):
                records.append({"document": path.name, "command": "python block", "ran": False, "seconds": 0.0})
                continue
            source = text
            for old, new in PY_REDUCE:
                source = source.replace(old, new)
            code = compile(source, f"{path.name} python block", "exec",
                           flags=__future__.annotations.compiler_flag, dont_inherit=True)
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
        elif lang in ("bash", "sh", "shell", "console"):
            for command in shell_commands(text):
                argv = fire_plugin_argv(command)
                if argv is None:
                    continue  # make, pip, python: covered by the Makefile, CI and the examples' tests
                ran = slow or argv[0] not in SLOW_SUBCOMMANDS
                start = time.perf_counter()
                if ran:
                    status = main(reduced(argv))
                    assert status == 0, f"{path.name}: `{command}` exited {status}"
                records.append({"document": path.name, "command": command, "ran": ran,
                                "seconds": round(time.perf_counter() - start, 2)})
    return records


def _record_times(records: list[dict[str, object]]) -> None:
    target = os.environ.get("FIRE_DOCS_TIMES")
    if target:
        path = Path(target)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*old, *records], indent=2))


def test_documents_have_commands_and_snippets():
    """The README shows the chain the issue asks for; a parser that found nothing would pass everything."""
    blocks = doc_blocks(ROOT / "README.md")
    commands = [c for lang, t in blocks if lang == "bash" for c in shell_commands(t)]
    argvs = [fire_plugin_argv(c) for c in commands]
    assert sum(lang == "python" for lang, _ in blocks) >= 3
    assert [a[0] for a in argvs if a][:3] == ["train", "evaluate", "margins"]
    train, evaluate = (next(a for a in argvs if a and a[0] == name) for name in ("train", "evaluate"))
    out = train[train.index("--out") + 1]
    assert evaluate[evaluate.index("--checkpoint") + 1] == f"{out}/checkpoints/last.pt"  # the chain
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_every_command_and_snippet_runs(path, tmp_path, fake_cifar, monkeypatch):
    torch.set_num_threads(1)
    records = run_document(path, tmp_path, fake_cifar, monkeypatch, slow=False)
    _record_times(records)


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_every_command_runs_slow_ones_included(path, tmp_path, fake_cifar, monkeypatch):
    records = run_document(path, tmp_path, fake_cifar, monkeypatch, slow=True)
    _record_times(records)


def test_the_paper_to_code_table_names_functions_that_exist():
    """Each name of README's "From the papers to the code" table resolves (``module.name``; a bare name after it
    belongs to the same module)."""
    import importlib

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## From the papers to the code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    checked = 0
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[1]
        module = None
        for name in re.findall(r"`([\w.]+)`", cell):
            if "." in name:
                module, name = name.rsplit(".", 1)
            if module is None:
                continue  # e.g. a CLI command in words
            assert hasattr(importlib.import_module(f"fire_plugin.{module}"), name), f"fire_plugin.{module}.{name}"
            checked += 1
    assert checked >= 20, checked

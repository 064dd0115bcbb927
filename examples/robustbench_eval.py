"""Evaluate a model as RobustBench does and write its model_info JSON.

Default (offline, about 20 seconds on a CPU): train the small ``digits_cnn`` on sklearn's 8x8
digits for a few epochs, measure clean, PGD-20, FRPGD-20 and standard AutoAttack accuracy on the first test
images, and write ``results/model_info/digits/Linf/<model-id>.json`` in RobustBench's schema (digits cannot be
submitted to RobustBench; the library warns about it).

With CIFAR-10 under ``--data-dir``, ``--model autoattack-resnet18`` evaluates the ResNet-18 shipped with
pyautoattack instead, and ``--model <zoo name>`` any RobustBench zoo model found under ``--model-dir``.

    python examples/robustbench_eval.py
    python examples/robustbench_eval.py --n-examples 200 --out results
    python examples/robustbench_eval.py --model autoattack-resnet18 --eps 0.031372549 --n-examples 100
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch
import torch.nn.functional as F

from fire_plugin.data import DATASETS, dataset_to_tensors, load_dataset
from fire_plugin.evaluation import evaluate
from fire_plugin.models import DigitsCNN
from fire_plugin.pretrained import load_pretrained
from fire_plugin.robustbench_io import model_info_from_result, write_model_info


def train_digits(epochs: int, seed: int) -> DigitsCNN:
    """Plain (non-adversarial) training of digits_cnn; a few seconds on a CPU."""
    x, y = load_dataset("digits", split="train").tensors  # type: ignore[attr-defined]
    info = DATASETS["digits"]
    torch.manual_seed(seed)
    model = DigitsCNN(mean=info.mean, std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits_cnn", help="digits_cnn, autoattack-resnet18 or a zoo name")
    parser.add_argument("--model-id", default="Example2024DigitsCNN", help="RobustBench-style id of the file")
    parser.add_argument("--eps", type=float, default=None, help="Linf radius (default 0.1 digits, 8/255 CIFAR)")
    parser.add_argument("--n-examples", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--out", default="results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for digits)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    # AutoAttack on a small model is dominated by per-step overhead: extra intra-op threads only add contention.
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)

    start = time.perf_counter()
    model: torch.nn.Module
    if args.model == "digits_cnn":
        dataset, architecture = "digits", "DigitsCNN (2 conv, 2 fc)"
        model = train_digits(args.epochs, args.seed)
        eps = 0.1 if args.eps is None else args.eps
    else:
        dataset, architecture = "cifar10", args.model
        model = load_pretrained(args.model, dataset=dataset, model_dir=args.model_dir)
        eps = 8 / 255 if args.eps is None else args.eps
    x, y = dataset_to_tensors(load_dataset(dataset, split="test", data_dir=args.data_dir), n_examples=args.n_examples)
    logging.info("model ready in %.1f s; evaluating %d %s test images", time.perf_counter() - start, len(x), dataset)

    result = evaluate(
        model,
        x,
        y,
        eps=eps,
        attacks=("clean", "pgd", "frpgd", "autoattack"),
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=not args.quiet,
    )
    for key in ("clean_acc", "pgd_acc", "frpgd_acc", "autoattack_acc", "avg_acc"):
        logging.info("%-15s %.2f%%", key, 100 * getattr(result, key))
    logging.info("seconds per attack: %s", {k: round(v, 2) for k, v in result.times.items()})

    info = model_info_from_result(
        result,
        dataset=dataset,
        name=f"fire_plugin example: {args.model}",
        architecture=architecture,
        venue="fire_plugin examples",
        footnote=f"Evaluated on the first {result.n_examples} test images only.",
    )
    path = write_model_info(args.out, args.model_id, info, threat_model="Linf")
    logging.info("wrote %s:\n%s", path, json.dumps(json.loads(path.read_text()), indent=2))


if __name__ == "__main__":
    main()

"""The ``fire-plugin`` argument parser, one function per subcommand; importing it imports nothing heavy (no torch).

:mod:`fire_plugin.cli` runs the subcommands; this module only declares them: the flags, their types, defaults and
help texts, and the torch-free copies of the library's names the choices need (``tests/test_startup.py`` checks
that they equal the library's).

>>> build_parser().parse_args(["demo", "--epochs", "2"]).epochs
2
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fire_plugin import __version__
from fire_plugin.methods import accepted_names

__all__ = ["BENCH_NAMES", "DATASET_CHOICES", "ESTIMATOR_CHOICES", "METHOD_CHOICES", "SUBCOMMANDS", "build_parser",
           "preset_names"]

SUBCOMMANDS = {
    "train": "train a model (FIRE, TRADES, Hellinger, MART, ACE, partial isometry or plain CE); torchrun for DDP",
    "presets": "list the paper's recipes (presets) and show one with every --set key, its type and allowed values",
    "evaluate": "clean / PGD-20 / FRPGD / AutoAttack accuracy and a RobustBench model_info JSON",
    "gaussian": "the Gaussian/logistic lab of the FIRE paper: closed forms, Pareto front, sweeps, figures",
    "demo": "the main job on the embedded digits data: every method trained, evaluated, compared",
    "margins": "Fisher-Rao margins by natural-gradient tracing and the class-shielding table of a model",
    "leaderboard": "place a RobustBench model_info JSON among the leaderboard's entries (rank, neighbours, figure)",
    "bench": "the perf suite: every benchmark's ratio against its named peer, in one table",
    "submit": "a checked RobustBench submission bundle (model_info, state dict, New Model issue text, zoo entry)",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def _float(text: str) -> float:
    """A number, or a fraction such as ``8/255`` (what presets accept for eps)."""
    from fractions import Fraction

    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"must be a number or a fraction such as 8/255, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _floats(text: str) -> list[float]:
    return [_float(t) for t in text.replace(",", " ").split()]


def _positive_floats(text: str) -> list[float]:
    values = [_positive_float(t) for t in text.replace(",", " ").split()]
    if not values:
        raise argparse.ArgumentTypeError("must hold at least one number > 0")
    return values


def _class_list(text: str) -> list[int]:
    values = []
    for t in text.replace(",", " ").split():
        if not t.isdigit():
            raise argparse.ArgumentTypeError(f"must be class indices such as '3,5', got {t!r} in {text!r}")
        values.append(int(t))
    if not values:
        raise argparse.ArgumentTypeError("must hold at least one class index, e.g. '3,5'")
    return values


def _bounded_int(limit: int):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be an int in [1, {limit}], got {text}")
        return value

    return parse


# Torch-free copies of the library's names, so that --help, --version and argument errors answer without
# importing torch (tests/test_startup.py checks that they equal the library's).
METHOD_CHOICES = accepted_names()  # fire_plugin.methods: the method names, then their aliases (ace = madry)
ESTIMATOR_CHOICES = ("hutchinson", "exact", "orthogonal", "deflated")  # fire_plugin.isometry.ESTIMATORS, default first
DATASET_CHOICES = ("digits", "mnist", "cifar10", "cifar100")  # fire_plugin.data.DATASETS
BENCH_NAMES = ("trainers", "distances", "attacks", "isometry", "margins", "startup")  # the perf suite's benchmarks


def preset_names() -> list[str]:
    """The shipped presets (the ``presets/*.json`` files of the package), without importing torch.

    >>> "cifar10-wrn34-fire" in preset_names()
    True
    """
    return sorted(p.stem for p in (Path(__file__).resolve().parent / "presets").glob("*.json"))


def build_parser() -> argparse.ArgumentParser:
    """The ``fire-plugin`` argument parser; building it imports nothing heavy (no torch).

    >>> build_parser().parse_args(["train", "--epochs", "3"]).epochs
    3
    """
    parser = argparse.ArgumentParser(prog="fire-plugin", description="Fisher-Rao adversarial robustness toolkit")
    parser.add_argument("--version", action="version", version=f"fire-plugin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    sub = parser.add_subparsers(dest="command")
    _add_train_parser(sub)
    _add_presets_parser(sub)
    _add_evaluate_parser(sub)
    _add_gaussian_parser(sub)
    _add_demo_parser(sub)
    _add_margins_parser(sub)
    _add_leaderboard_parser(sub)
    _add_submit_parser(sub)
    _add_bench_parser(sub)
    return parser


def _add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin train``."""
    p = sub.add_parser("train", help=SUBCOMMANDS["train"])
    p.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                   help="training data (default: digits); the model is built for its image size, channels, classes")
    p.add_argument("--model", default=None,
                   help="a timm architecture name (ours: small_cnn, lenet_pi, digits_cnn, resnet18_cifar, wrn34_10, "
                        "wrn28_10; default: digits_cnn)")
    p.add_argument("--method", default=None, choices=METHOD_CHOICES,
                   help="training objective (default: fire; ace is the older name of madry)")
    p.add_argument("--estimator", default=None, choices=ESTIMATOR_CHOICES,
                   help="--method isometry: how the penalty is estimated (default hutchinson, one random probe per "
                        "sample, about 3.5x CE training; exact: eq 14 exactly, about 12x)")
    p.add_argument("--probes", dest="n_probes", type=_positive_int, default=None,
                   help="--method isometry: random probes per sample (default 1; deflated needs 2 or more)")
    p.add_argument("--lam", type=_non_negative_float, default=None,
                   help="regularizer weight; default: the matched weight of the method (FIRE 3 on d^2 with "
                        "d = 2 arccos(BC), i.e. the authors' code beta 12; TRADES 6; Hellinger 12 on H^2; MART 6)")
    p.add_argument("--eps", type=_positive_float, default=None,
                   help="attack radius on [0, 1] inputs, a number or a fraction such as 8/255 (default 8/255)")
    p.add_argument("--eps-step", type=_positive_float, default=None, help="default: 2.5 * eps / steps")
    p.add_argument("--steps", type=_positive_int, default=None, help="steps of the training attack (10)")
    p.add_argument("--norm", default=None, choices=["Linf", "L2"], help="threat model of the training attack (Linf)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (100)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="batch size, per process under DDP (128)")
    p.add_argument("--lr", type=_positive_float, default=None, help="SGD learning rate (0.1)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=None, help="SGD weight decay (5e-4)")
    p.add_argument("--schedule", default=None, choices=["multistep", "cosine", "constant"],
                   help="learning-rate schedule: lr/10 at 75%% and 90%% of the epochs (the paper's), cosine, or "
                        "constant (can diverge late)")
    p.add_argument("--self-adaptive", action="store_true",
                   help="self-adaptive training targets (a moving average of the model's predictions)")
    p.add_argument("--sat-warmup", type=int, default=None, help="epochs before the self-adaptive targets start (10)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (CUDA); default: on with CUDA")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun/DDP")
    p.add_argument("--validate", action="store_true", help="natural/adversarial test accuracy after each epoch")
    p.add_argument("--no-resume", action="store_true", help="start fresh even when OUT holds a checkpoint")
    p.add_argument("--workers", type=int, default=None, help="data-loader worker processes (0: load in the main one)")
    p.add_argument("--data-dir", default=None, help="where datasets are read from or downloaded to (data)")
    p.add_argument("--seed", type=int, default=None, help="random seed (0)")
    p.add_argument("--ema", type=_positive_float, default=None, metavar="DECAY",
                   help="keep an EMA of the weights (e.g. 0.999, with warm-up); evaluated and checkpointed")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on GPUs)")
    p.add_argument("--preset", default=None, choices=preset_names(),
                   help="a paper recipe (see fire-plugin presets list); train flags given with it are applied as "
                        "--set (--epochs 3 is --set epochs=3); flags presets have no key for are refused")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one preset key (repeatable), e.g. --set epochs=10 --set eps=8/255")
    p.add_argument("--smoke", action="store_true",
                   help="run the preset for a few batches on CPU with synthetic data of its shape (no checkpoints "
                        "kept)")
    p.add_argument("--keep-checkpoints", action="store_true", help="with --smoke: keep OUT/checkpoints")
    p.add_argument("--out", default=None, help="output directory (required without --preset)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_presets_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin presets``."""
    p = sub.add_parser("presets", help=SUBCOMMANDS["presets"])
    p.add_argument("action", choices=["list", "show"], help="list: every preset and --set key; show: one preset")
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="the preset to show, one of: " + ", ".join(preset_names()))


def _add_evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin evaluate``."""
    p = sub.add_parser("evaluate", help=SUBCOMMANDS["evaluate"])
    p.add_argument("--model", required=True, help="architecture name, RobustBench zoo name or autoattack-resnet18")
    p.add_argument("--checkpoint", default=None, help="our checkpoint or a state dict for --model's architecture")
    p.add_argument("--dataset", default="cifar10", choices=DATASET_CHOICES, help="test data (default: cifar10)")
    p.add_argument("--eps", type=_positive_float, default=8 / 255,
                   help="attack radius on [0, 1] inputs, a number or a fraction such as 8/255 (default 8/255)")
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"], help="threat model of the attacks")
    p.add_argument("--attacks", nargs="+", default=["clean", "pgd", "frpgd", "autoattack"],
                   help="what to run: clean, pgd (PGD-20), frpgd, autoattack (default: all four)")
    p.add_argument("--aa-attacks", nargs="+", default=None, choices=["apgd-ce", "apgd-t", "fab-t", "square"],
                   help="AutoAttack's sub-attacks to run with its standard settings (default: all four, the standard "
                        "AutoAttack RobustBench reports); a subset is a quick check, recorded as custom")
    p.add_argument("--n-examples", type=_positive_int, default=None, help="first N test images (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="evaluation batch size (256)")
    p.add_argument("--model-dir", default="models", help="RobustBench zoo download folder (models)")
    p.add_argument("--data-dir", default="data", help="where datasets are read from or downloaded to (data)")
    p.add_argument("--model-id", default=None, help="RobustBench-style id, e.g. Picot2022Adversarial")
    p.add_argument("--name", default=None, help="display name in the model_info JSON (default: --model-id)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the attacks (0)")
    p.add_argument("--out", default="runs/eval", help="output directory (runs/eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_gaussian_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin gaussian``."""
    p = sub.add_parser("gaussian", help=SUBCOMMANDS["gaussian"])
    p.add_argument("--out", default="runs/gaussian", help="output directory (runs/gaussian)")
    p.add_argument("--mu", type=_floats, default=None, help="two floats, e.g. '-0.0218 0.0425'")
    p.add_argument("--sigma", type=_floats, default=None, help="four floats (row-major 2x2)")
    p.add_argument("--eps", type=_positive_float, default=None, help="attack radius (default: the paper's)")
    p.add_argument("--lambdas", type=_floats, default=None, help="regularizer weights of the sweep (default: the "
                                                                  "paper's)")
    p.add_argument("--n-per-class", type=_positive_int, default=10_000, help="samples per class (10000)")
    p.add_argument("--no-global", action="store_true", help="skip the polar-grid global minimizer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin demo``."""
    p = sub.add_parser("demo", help=SUBCOMMANDS["demo"])
    p.add_argument("--out", default="runs/demo", help="output directory (runs/demo)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs per method (default: the recipe's)")
    p.add_argument("--model", default=None, help="digits architecture, lenet_pi or digits_cnn (default: the "
                                                  "recipe's)")
    p.add_argument("--aa-standard-n", type=int, default=None,
                   help="test images that also get standard AutoAttack (0: none; default: the recipe's)")
    p.add_argument("--workers", type=_positive_int, default=None, help="runs in parallel (default: 2 cores)")
    p.add_argument("--smoke", "--quick", dest="smoke", action="store_true",
                   help="a 1-minute smoke run of the whole pipeline, not a result (--quick: the older name)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_margins_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin margins``."""
    p = sub.add_parser("margins", help=SUBCOMMANDS["margins"])
    p.add_argument("--model", required=True,
                   help="autoattack-resnet18, a RobustBench zoo name, or an architecture with --checkpoint")
    p.add_argument("--checkpoint", default=None, help="a checkpoint of --model's architecture (ours or a state dict)")
    p.add_argument("--dataset", default="digits", choices=DATASET_CHOICES,
                   help="the dataset the model was trained on: test images, class names, image shape")
    p.add_argument("--inputs", default=None, help="a .pt file of (images, labels) to trace instead of test images")
    p.add_argument("--n-inputs", type=_positive_int, default=100, help="how many inputs (the first ones)")
    p.add_argument("--synthetic", default="never", choices=["never", "auto", "always"],
                   help="synthetic stand-in inputs of the dataset's shape, labelled by the model: never (default), "
                        "auto (when the test images are not on disk) or always; every output then says SYNTHETIC")
    p.add_argument("--targets", type=_class_list, default=None,
                   help="target classes, e.g. '3,5' (default: every other class)")
    p.add_argument("--mode", default="converged", choices=["converged", "paper"],
                   help="converged: FR length of small bisected steps; paper: the paper's unit steps, counted")
    p.add_argument("--damping", type=_positive_float, default=None,
                   help="damping lambda of the metric G_x + lambda I (default: the library's measured default)")
    p.add_argument("--step", type=_positive_float, default=None,
                   help="step length in the damped metric (default: the library's for --mode; paper: 1)")
    p.add_argument("--max-length", type=_positive_float, default=20.0, help="give a path up at this margin")
    p.add_argument("--max-steps", type=_bounded_int(1_000_000), default=1000,
                   help="give a path up after this many steps (at most 1,000,000)")
    p.add_argument("--solver", default="auto", choices=["auto", "exact", "cg", "dense"],
                   help="linear solver of the natural-gradient step (auto: exact for <= 32 classes; cg in paper mode)")
    p.add_argument("--cg-iters", type=_bounded_int(10_000), default=20, help="conjugate-gradient iterations")
    p.add_argument("--batch-size", type=_bounded_int(1_000_000), default=256,
                   help="paths advanced together; finished paths are saved every batch (resume point)")
    p.add_argument("--no-check-convergence", action="store_true",
                   help="skip the half-step check (retracing a tenth of the paths at step / 2, about 0.45x the cost)")
    p.add_argument("--convergence", action="store_true",
                   help="run the convergence study over --steps x --dampings instead (convergence.md/json/png)")
    p.add_argument("--steps", type=_positive_floats, default=None,
                   help="steps of the study (default: '1 0.5 0.2 0.1 0.05 0.02')")
    p.add_argument("--dampings", type=_positive_floats, default=None,
                   help="dampings of the study (default: '1e-3 0.1')")
    p.add_argument("--model-dir", default="models", help="RobustBench model folder")
    p.add_argument("--data-dir", default="data", help="torchvision dataset folder (nothing is downloaded)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic inputs")
    p.add_argument("--out", default="runs/margins", help="output folder (rerun the same command to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_leaderboard_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin leaderboard``."""
    p = sub.add_parser("leaderboard", help=SUBCOMMANDS["leaderboard"])
    p.add_argument("--model-info", required=True, help="a RobustBench model_info JSON (e.g. from evaluate)")
    p.add_argument("--model-info-dir", default=None,
                   help="a RobustBench checkout's model_info folder (default: the snapshot shipped with the package)")
    p.add_argument("--threat-model", default=None, choices=["Linf", "L2"],
                   help="default: the folder the file sits in (model_info/<dataset>/<threat>/)")
    p.add_argument("--neighbours", type=_positive_int, default=3, help="entries shown above and below (3)")
    p.add_argument("--out", default="runs/leaderboard", help="output directory (runs/leaderboard)")


def _add_submit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin submit``."""
    p = sub.add_parser("submit", help=SUBCOMMANDS["submit"])
    p.add_argument("--run", default=None, help="the --out of `fire-plugin evaluate --model-id ...` or of a preset")
    p.add_argument("--checkpoint", default=None, help="instead of --run: the weights (with --model-info and --model)")
    p.add_argument("--model-info", default=None, help="instead of --run: the RobustBench model_info JSON")
    p.add_argument("--model", default=None, help="instead of --run: the architecture, e.g. resnet18_cifar")
    p.add_argument("--data-dir", default=None, help="where the test set is (default: the run's, else data)")
    p.add_argument("--threat-model", default=None, choices=["Linf", "L2"],
                   help="for a model_info outside model_info/<dataset>/<threat>/ (default: its folder)")
    p.add_argument("--model-id", default=None, help="the bundle's name, RobustBench's <Name><Year><FirstWord>")
    p.add_argument("--paper-title", default=None, help="the paper's title (NEW_MODEL.md and the model_info name)")
    p.add_argument("--paper-url", default=None, help="the paper's URL (NEW_MODEL.md and the model_info link)")
    p.add_argument("--authors", default=None, help="the authors, comma separated")
    p.add_argument("--venue", default=None, help="e.g. 'ICML 2026' or 'arXiv, Jun 2026'")
    p.add_argument("--allow-subset", action="store_true",
                   help="accept fewer test images than RobustBench's 10,000 (the footnote and NEW_MODEL.md say so)")
    p.add_argument("--out", required=True, help="the bundle folder (new or empty)")


def _add_bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``fire-plugin bench``."""
    p = sub.add_parser("bench", help=SUBCOMMANDS["bench"])
    p.add_argument("--smoke", "--quick", dest="smoke", action="store_true",
                   help="reduced versions: a smoke run, noisy ratios (--quick: the older name)")
    p.add_argument("--json", default=None, help="save the table as JSON here")
    p.add_argument("--only", action="append", metavar="NAME", help=f"run only this benchmark (repeatable): "
                                                                     f"{', '.join(BENCH_NAMES)}")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")

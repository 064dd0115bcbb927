"""``fire-plugin`` console script: train, evaluate, gaussian, demo, margins, leaderboard, bench.

Every subcommand parses its arguments, calls the library (:mod:`fire_plugin.experiments` and friends) and prints
what it returns; logging is configured here (the library only logs). ``--help``, ``--version`` and argument
errors answer without importing torch: each subcommand imports what it needs in its handler. A user error prints
one line ``fire-plugin: error: ...`` and exits with status 2; ``-v`` adds the traceback.

Examples::

    fire-plugin demo --out runs/demo
    fire-plugin train --dataset digits --model digits_cnn --method fire --eps 0.1 --epochs 10 --out runs/x
    torchrun --nproc_per_node=2 -m fire_plugin.cli train --dataset cifar10 --model wrn34_10 --out runs/wrn
    fire-plugin evaluate --checkpoint runs/x/checkpoints/last.pt --model digits_cnn --dataset digits --eps 0.1
    fire-plugin gaussian --out runs/gaussian
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fire_plugin import __version__
from fire_plugin.methods import accepted_names, canonical_name

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

_log = logging.getLogger("fire_plugin.cli")

USER_ERRORS = (ValueError, LookupError, OSError)


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


# --------------------------------------------------------------------------------------------------- commands


# train flags that default to None, so that a flag given with --preset is seen; their defaults without --preset
TRAIN_DEFAULTS: dict[str, object] = {"dataset": "digits", "model": "digits_cnn", "method": "fire", "eps": 8 / 255,
                                     "steps": 10, "norm": "Linf", "epochs": 100, "batch_size": 128, "lr": 0.1,
                                     "weight_decay": 5e-4, "schedule": "multistep", "sat_warmup": 10, "workers": 0,
                                     "data_dir": "data", "seed": 0, "n_probes": 1}
# train flag -> preset key, for the flags that mean the same thing with --preset (applied as --set KEY=VALUE)
_PRESET_KEY_OF = {"dataset": "dataset", "model": "model", "method": "method", "lam": "lam", "eps": "eps",
                  "eps_step": "eps_step", "steps": "attack_steps", "epochs": "epochs", "batch_size": "batch_size",
                  "lr": "lr", "weight_decay": "weight_decay", "schedule": "schedule", "workers": "workers",
                  "data_dir": "data_dir", "seed": "seed", "estimator": "estimator", "n_probes": "n_probes"}
# train flags without a preset key: refused with --preset
_NOT_PRESET_FLAGS = {"norm": "--norm", "self_adaptive": "--self-adaptive", "sat_warmup": "--sat-warmup",
                     "sync_bn": "--sync-bn", "validate": "--validate"}


def _preset_sets(args: argparse.Namespace) -> list[str]:
    """The explicit train flags given with ``--preset``, as ``--set`` items; flags presets lack are refused."""
    refused = [flag for dest, flag in _NOT_PRESET_FLAGS.items() if getattr(args, dest) not in (None, False)]
    if refused:
        raise ValueError(f"{', '.join(refused)} cannot be combined with --preset (presets have no such key); drop "
                         "it, or train without --preset (see fire-plugin presets show NAME)")
    items: list[str] = []
    for dest, key in _PRESET_KEY_OF.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if key == "method":
            from fire_plugin.presets import METHODS as PRESET_METHODS

            value = canonical_name(value, option="--method")
            if value not in PRESET_METHODS:
                raise ValueError(f"--method {value} cannot be combined with --preset; allowed there: "
                                 f"{', '.join(PRESET_METHODS)} (or the alias ace of madry)")
        items.append(f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}")
    if args.compile:
        items.append("compile=true")
    if args.amp is not None:
        items.append("amp=" + ("auto" if args.amp else "off"))
    if args.ema is not None:
        items += ["ema=true", f"ema_decay={args.ema!r}"]
    given = {item.split("=", 1)[0].strip() for item in args.overrides}
    both = sorted(given & {item.split("=", 1)[0] for item in items})
    if both:
        raise ValueError(f"--set {', '.join(both)} and the train flag(s) for the same key(s) were both given with "
                         "--preset; give each once")
    return items


def _train(args: argparse.Namespace) -> int:
    from fire_plugin.experiments import train

    if args.preset is not None or args.smoke or args.overrides:
        return _train_preset(args)
    if args.keep_checkpoints:
        raise ValueError("--keep-checkpoints applies to --smoke runs of a preset (other runs always keep them)")
    for dest, value in TRAIN_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    if args.out is None:
        raise ValueError("--out is required (where checkpoints, summary.json and the curves go)")
    if args.method != "isometry" and (args.estimator is not None or args.n_probes != 1):
        raise ValueError(f"--estimator and --probes apply to --method isometry, not --method {args.method}")
    summary = train(
        out=args.out, dataset=args.dataset, model=args.model, method=args.method, weight=args.lam, eps=args.eps,
        eps_step=args.eps_step, steps=args.steps, norm=args.norm, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, self_adaptive=args.self_adaptive,
        sat_warmup=args.sat_warmup, amp=args.amp, sync_bn=args.sync_bn, validate=args.validate,
        resume=not args.no_resume, workers=args.workers, data_dir=args.data_dir, seed=args.seed,
        ema=args.ema, compile=args.compile, estimator=args.estimator, n_probes=args.n_probes, verbose=not args.quiet,
    )
    last = summary["history"][-1] if summary["history"] else {}
    print(json.dumps({k: v for k, v in summary.items() if k != "history"} | {"last_epoch": last}, indent=2))
    return 0


def _train_preset(args: argparse.Namespace) -> int:
    from fire_plugin.presets import run_preset

    if args.preset is None:
        raise ValueError("--set and --smoke apply to presets: add --preset NAME (see fire-plugin presets list)")
    if args.keep_checkpoints and not args.smoke:
        raise ValueError("--keep-checkpoints applies to --smoke runs (other preset runs always keep them)")
    sets = _preset_sets(args)
    if sets:
        _log.warning("train flags given with --preset %s are applied as %s", args.preset,
                     " ".join(f"--set {item}" for item in sets))
    out = args.out if args.out is not None else str(Path("runs") / args.preset)
    result = run_preset(args.preset, overrides=[*args.overrides, *sets], out=out, smoke=args.smoke,
                        keep_checkpoints=True if args.keep_checkpoints else None,  # None: kept unless --smoke
                        resume=not args.no_resume, verbose=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str))
    return 0


def _presets(args: argparse.Namespace) -> int:
    from fire_plugin.presets import describe_preset, describe_presets

    if args.action == "show" and args.name not in preset_names():
        raise ValueError(f"fire-plugin presets show needs a NAME among {preset_names()}, got {args.name!r}")
    print(describe_presets() if args.action == "list" else describe_preset(args.name))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from fire_plugin.experiments import evaluate_checkpoint

    payload = evaluate_checkpoint(
        model=args.model, out=args.out, checkpoint=args.checkpoint, dataset=args.dataset, eps=args.eps,
        norm=args.norm, attacks=tuple(args.attacks), n_examples=args.n_examples, batch_size=args.batch_size,
        autoattack_attacks=tuple(args.aa_attacks) if args.aa_attacks else None,
        model_dir=args.model_dir, data_dir=args.data_dir, model_id=args.model_id, name=args.name, seed=args.seed,
        verbose=not args.quiet,
    )
    print(json.dumps(payload, indent=2))
    return 0


def _gaussian(args: argparse.Namespace) -> int:
    from fire_plugin.gaussian_report import run_report

    sigma = None
    if args.sigma is not None:
        if len(args.sigma) != 4:
            raise ValueError(f"--sigma needs 4 floats (a 2x2 matrix, row-major), got {len(args.sigma)}")
        sigma = [args.sigma[:2], args.sigma[2:]]
    if args.mu is not None and len(args.mu) != 2:
        raise ValueError(f"--mu needs 2 floats, got {len(args.mu)}")
    report = run_report(args.out, mu=args.mu, sigma=sigma, eps=args.eps, lambdas=args.lambdas,
                        n_per_class=args.n_per_class, include_global=not args.no_global, verbose=not args.quiet)
    print(json.dumps(report.get("summary", {k: v for k, v in report.items() if k in ("maa", "coverage")}),
                     indent=2, default=str))
    print(f"report and figures written to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fire_plugin.demo import run_demo
    from fire_plugin.experiments import DigitsRecipe, EvalSpec

    chosen = {k: v for k, v in (("epochs", args.epochs), ("model", args.model)) if v is not None}
    recipe = DigitsRecipe(**chosen)
    spec = EvalSpec() if args.aa_standard_n is None else EvalSpec(aa_standard_n=args.aa_standard_n)
    if args.smoke:  # a smoke run of the whole pipeline: 2 epochs, 60 test images, APGD-CE only
        recipe = DigitsRecipe(**(chosen | {"epochs": 2}))
        spec = EvalSpec(n_eval=60, aa_attacks=("apgd-ce",), aa_standard_n=0, margin_n=5)
    report = run_demo(args.out, recipe=recipe, spec=spec, workers=args.workers, verbose=not args.quiet)
    print(report["table"])
    print(f"\n{len(report['rows'])} methods in {report['wall_seconds']:.0f} s; table {report['files']['csv']}, "
          f"report {Path(args.out) / 'demo_report.json'}, figures and RobustBench JSON under {args.out}")
    return 0


def _margins(args: argparse.Namespace) -> int:
    from fire_plugin.experiments import check_model_name
    from fire_plugin.margins.report import margins_from_names
    from fire_plugin.runfolder import run_lock

    extra: dict[str, Any] = ({"steps": args.steps, "dampings": args.dampings} if args.convergence
                             else {"check_convergence": not args.no_check_convergence})
    check_model_name(args.model, dataset=args.dataset, checkpoint=args.checkpoint)
    with run_lock(args.out, command="margins"):
        out = margins_from_names(
            args.model, dataset=args.dataset, out_dir=args.out, checkpoint=args.checkpoint, model_dir=args.model_dir,
            data_dir=args.data_dir, n_inputs=args.n_inputs, synthetic=args.synthetic, seed=args.seed,
            inputs=args.inputs, convergence=args.convergence, verbose=not args.quiet, targets=args.targets,
            mode=args.mode, damping=args.damping, step=args.step, max_length=args.max_length, max_steps=args.max_steps,
            solver=args.solver, cg_iters=args.cg_iters, batch_size=args.batch_size,
            **extra,
        )
    if args.convergence:
        print(out["study"].to_markdown())
    else:
        print(json.dumps(out.get("summary", {}), indent=2, default=str))
        print(out["report"].to_markdown())
    print(f"inputs: {out['inputs']}; files: " + ", ".join(str(v) for v in out["files"].values()))
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from fire_plugin.leaderboard import place, write_placement
    from fire_plugin.plots import plot_leaderboard

    placement = place(args.model_info, entries_dir=args.model_info_dir, threat_model=args.threat_model,
                      neighbours=args.neighbours)
    files = write_placement(placement, args.out)
    figure = Path(args.out) / "placement.png"
    plot_leaderboard(placement).savefig(figure, dpi=120)
    print(files["markdown"].read_text() if "markdown" in files else placement)
    print("files: " + ", ".join(str(v) for v in [*files.values(), figure]))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from fire_plugin.submit import submit

    given = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--model-info", args.model_info),
                                      ("--model", args.model)) if value is not None]
    if (args.run is None) == (not given) or (args.run is None and len(given) < 3):
        raise ValueError("give --run OUT (an evaluate or preset output) or all of --checkpoint, --model-info and "
                         f"--model (got {' '.join(given) or 'none of them'}{' with --run' if args.run else ''})")
    result = submit(args.out, run=args.run, checkpoint=args.checkpoint, model_info=args.model_info,
                    model=args.model, data_dir=args.data_dir, threat_model=args.threat_model, model_id=args.model_id,
                    paper_title=args.paper_title, paper_url=args.paper_url, authors=args.authors, venue=args.venue,
                    allow_subset=args.allow_subset)
    for check in result.checks:
        print(f"{check.status:>10}  {check.name}: {check.detail}")
    print(f"\nbundle {result.model_id} written to {result.out}:")
    for name in result.files:
        print(f"  {name}")
    if result.subset:
        print("note: evaluated on a subset of the test set (--allow-subset): not a leaderboard result")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fire_plugin.bench.perf import check_json_path, discover
    from fire_plugin.bench.perf import main as perf_main

    known = discover()
    unknown = [name for name in args.only or [] if name not in known]
    if unknown:
        raise ValueError(f"--only {unknown[0]!r} is not a benchmark; allowed: {known}")
    if args.json is not None:
        check_json_path(Path(args.json))  # before the run, not after it
    argv = [*(["--quick"] if args.smoke else []), *(["--json", args.json] if args.json else []),
            *[f"--only={name}" for name in args.only or []], *(["--strict"] if args.strict else [])]
    return int(perf_main(argv))


COMMANDS = {"train": _train, "presets": _presets, "evaluate": _evaluate, "gaussian": _gaussian, "demo": _demo,
            "margins": _margins, "leaderboard": _leaderboard, "bench": _bench, "submit": _submit}


# --------------------------------------------------------------------------------------------------- parser


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

    p = sub.add_parser("presets", help=SUBCOMMANDS["presets"])
    p.add_argument("action", choices=["list", "show"], help="list: every preset and --set key; show: one preset")
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="the preset to show, one of: " + ", ".join(preset_names()))

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

    p = sub.add_parser("leaderboard", help=SUBCOMMANDS["leaderboard"])
    p.add_argument("--model-info", required=True, help="a RobustBench model_info JSON (e.g. from evaluate)")
    p.add_argument("--model-info-dir", default=None,
                   help="a RobustBench checkout's model_info folder (default: the snapshot shipped with the package)")
    p.add_argument("--threat-model", default=None, choices=["Linf", "L2"],
                   help="default: the folder the file sits in (model_info/<dataset>/<threat>/)")
    p.add_argument("--neighbours", type=_positive_int, default=3, help="entries shown above and below (3)")
    p.add_argument("--out", default="runs/leaderboard", help="output directory (runs/leaderboard)")

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

    p = sub.add_parser("bench", help=SUBCOMMANDS["bench"])
    p.add_argument("--smoke", "--quick", dest="smoke", action="store_true",
                   help="reduced versions: a smoke run, noisy ratios (--quick: the older name)")
    p.add_argument("--json", default=None, help="save the table as JSON here")
    p.add_argument("--only", action="append", metavar="NAME", help=f"run only this benchmark (repeatable): "
                                                                     f"{', '.join(BENCH_NAMES)}")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fire-plugin``; returns the exit status (0 ok, 2 user error, 1 internal error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command is None:
        print(f"fire-plugin {__version__}\n\nsubcommands:")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:<11} {text}")
        return 0
    from fire_plugin.runfolder import Terminated, raise_on_sigterm

    raise_on_sigterm()  # SIGTERM stops a run as Ctrl-C does: checkpoint kept, exit status 143
    try:
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"--out {out!r} is an existing file; pass a folder (it is created if needed)")
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as err:
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"fire-plugin: {what}; rerun the same command to resume where a checkpoint exists", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except USER_ERRORS as err:
        if args.verbose:
            traceback.print_exc()
        print(f"fire-plugin: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # an internal error: still one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        print(f"fire-plugin: error: {type(err).__name__}: {_one_line(err)} (run with -v for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

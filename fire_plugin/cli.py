"""``fire-plugin`` console script: train, evaluate, gaussian, demo, margins, leaderboard, bench.

Every subcommand parses its arguments, calls the library (:mod:`fire_plugin.experiments` and friends) and prints
what it returns; logging is configured here (the library only logs). ``--help``, ``--version`` and argument
errors answer without importing torch: each subcommand imports what it needs in its handler. A user error prints
one line ``fire-plugin: error: ...`` and exits with status 2; ``-v`` adds the traceback. The flags are declared
in :mod:`fire_plugin._cli_parsers` (one function per subcommand); this module runs them.

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
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fire_plugin import __version__
from fire_plugin._cli_parsers import (
    BENCH_NAMES,
    DATASET_CHOICES,
    ESTIMATOR_CHOICES,
    METHOD_CHOICES,
    SUBCOMMANDS,
    build_parser,
    preset_names,
)
from fire_plugin.methods import canonical_name

# The parser and its torch-free choices are fire_plugin._cli_parsers'; re-exported here, where they always were.
__all__ = ["BENCH_NAMES", "COMMANDS", "DATASET_CHOICES", "ESTIMATOR_CHOICES", "METHOD_CHOICES", "SUBCOMMANDS",
           "TRAIN_DEFAULTS", "USER_ERRORS", "build_parser", "main", "preset_names"]

_log = logging.getLogger("fire_plugin.cli")

USER_ERRORS = (ValueError, LookupError, OSError)


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
    from fire_plugin.runfolder import atomic_path

    placement = place(args.model_info, entries_dir=args.model_info_dir, threat_model=args.threat_model,
                      neighbours=args.neighbours)
    files = write_placement(placement, args.out)
    figure = Path(args.out) / "placement.png"
    with atomic_path(figure) as tmp:
        plot_leaderboard(placement).savefig(tmp, dpi=120)
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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fire-plugin``; returns the exit status (0 ok, 2 user error, 1 internal error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:  # ART logs a line per classifier and attack call at INFO ("Inferred 3 hidden layers")
        logging.getLogger("art").setLevel(logging.WARNING)
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

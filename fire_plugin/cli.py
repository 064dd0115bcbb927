"""``fire-plugin`` console script: train, evaluate, gaussian, demo.

Every subcommand is a thin layer over the library; logging is configured here (the library only logs).

Examples::

    fire-plugin demo --out runs/demo
    fire-plugin train --dataset digits --model digits_cnn --method fire --lam 6 --eps 0.1 --epochs 10 --out runs/x
    torchrun --nproc_per_node=2 -m fire_plugin.cli train --dataset cifar10 --model wrn34_10 --out runs/wrn
    fire-plugin evaluate --checkpoint runs/x/checkpoints/last.pt --model digits_cnn --dataset digits --eps 0.1
    fire-plugin gaussian --out runs/gaussian
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fire_plugin import __version__

SUBCOMMANDS = {
    "train": "adversarially train a model (FIRE, TRADES, Hellinger, MART, ACE or plain CE); torchrun for DDP",
    "evaluate": "clean / PGD-20 / FRPGD / AutoAttack accuracy and a RobustBench model_info JSON",
    "gaussian": "the Gaussian/logistic lab of the FIRE paper: closed forms, Pareto front, sweeps, figures",
    "demo": "the main job on the embedded digits data: FIRE training, evaluation, JSON and figures",
}

_log = logging.getLogger("fire_plugin.cli")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a float >= 0, got {text}")
    return value


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.replace(",", " ").split()]


# --------------------------------------------------------------------------------------------------- train


def _method_loss(method: str, lam: float) -> Any:
    from fire_plugin import losses

    return {
        "fire": lambda: losses.FIRELoss(lam=lam),
        "trades": lambda: losses.TRADESLoss(beta=lam),
        "hellinger": lambda: losses.HellingerLoss(lam=lam),
        "mart": lambda: losses.MARTLoss(beta=lam),
        "ace": losses.ACELoss,
        "ce": lambda: losses.DivergenceRegularizedLoss("kl", 0.0),
    }[method]()


def _method_attack(method: str, model: Any, eps: float, eps_step: float, steps: int, norm: str) -> Any:
    import torchattacks

    from fire_plugin.attacks import DivergencePGD

    if method in ("mart", "ace"):  # CE-maximizing PGD, as in Madry et al. and MART
        cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=eps_step, steps=steps, random_start=True)
    if method == "ce":
        return lambda x, y: x  # natural training: the "adversarial" batch is the clean one
    divergence = {"fire": "fisher_rao", "trades": "kl", "hellinger": "hellinger"}[method]
    return DivergencePGD(model, divergence=divergence, eps=eps, alpha=eps_step, steps=steps, norm=norm)


def train_model(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``fire-plugin train`` does; returns the run summary (also written to ``out/summary.json``)."""
    import timm
    import torch
    from torch.utils.data import DataLoader

    from fire_plugin.data import DATASETS, load_dataset
    from fire_plugin.engine import IndexedDataset, SelfAdaptiveTargets, distributed_info, fit

    out = Path(args.out)
    info = DATASETS[args.dataset]
    torch.manual_seed(args.seed)
    device = torch.device("cuda", distributed_info().local_rank) if torch.cuda.is_available() else torch.device("cpu")
    model = timm.create_model(args.model, num_classes=info.num_classes, in_chans=info.in_chans).to(device)
    train_set: Any = load_dataset(args.dataset, split="train", data_dir=args.data_dir)
    test_set = load_dataset(args.dataset, split="test", data_dir=args.data_dir)
    sat = None
    if args.self_adaptive:
        train_set = IndexedDataset(train_set)
        sat = SelfAdaptiveTargets(len(train_set), info.num_classes, warmup=args.sat_warmup)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    val_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False) if args.validate else None
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay,
                                nesterov=True)
    milestones = [int(0.75 * args.epochs), int(0.9 * args.epochs)]  # the paper's /10 at epochs 75 and 90 of 100
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    eps_step = args.eps_step if args.eps_step is not None else 2.5 * args.eps / args.steps
    attack = _method_attack(args.method, model, args.eps, eps_step, args.steps, args.norm)
    start = time.perf_counter()
    history = fit(
        model, loader, epochs=args.epochs, loss=_method_loss(args.method, args.lam), attack=attack,
        optimizer=optimizer, scheduler=scheduler, val_loader=val_loader, checkpoint_dir=out / "checkpoints",
        resume=not args.no_resume, amp=args.amp, self_adaptive=sat, sync_batchnorm=args.sync_bn, seed=args.seed,
        verbose=not args.quiet,
    )
    summary = {
        "method": args.method, "model": args.model, "dataset": args.dataset, "lam": args.lam, "eps": args.eps,
        "eps_step": eps_step, "steps": args.steps, "norm": args.norm, "epochs": args.epochs,
        "seconds": time.perf_counter() - start, "history": history,
        "checkpoint": str(out / "checkpoints" / "last.pt"),
    }
    if distributed_info().is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        _save_history_plot(history, out / "training.png")
    return summary


def _save_history_plot(history: list[dict[str, Any]], path: Path) -> None:
    from fire_plugin.plots import plot_training_history

    if history:
        plot_training_history(history).savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------------- evaluate


def evaluate_model(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as ``fire-plugin evaluate`` does; returns the result dict, writes JSON files under ``--out``."""
    import dataclasses

    import torch

    from fire_plugin.data import dataset_to_tensors, load_dataset
    from fire_plugin.evaluation import evaluate
    from fire_plugin.models import load_pretrained
    from fire_plugin.robustbench_io import model_info_from_result, write_model_info

    model = load_pretrained(args.model, dataset=args.dataset, threat_model=args.norm, model_dir=args.model_dir,
                            checkpoint=args.checkpoint)
    if torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    x, y = dataset_to_tensors(load_dataset(args.dataset, split="test", data_dir=args.data_dir),
                              n_examples=args.n_examples)
    result = evaluate(model, x, y, eps=args.eps, norm=args.norm, attacks=tuple(args.attacks),
                      batch_size=args.batch_size, seed=args.seed, verbose=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = dataclasses.asdict(result)
    (out / "eval.json").write_text(json.dumps(payload, indent=2))
    if result.autoattack_acc is not None and args.model_id:
        info_obj = model_info_from_result(result, dataset=args.dataset, name=args.name or args.model_id,
                                          architecture=args.model)
        path = write_model_info(out, args.model_id, info_obj, threat_model=args.norm)
        payload["model_info"] = str(path)
    return payload


# --------------------------------------------------------------------------------------------------- demo


def run_demo(out: Path, *, epochs: int = 8, n_eval: int = 100, quiet: bool = False) -> dict[str, Any]:
    """The main job on sklearn's embedded digits: CE and FIRE training, evaluation, model_info JSON, figures.

    Resumable: rerunning continues from the checkpoints under ``out``.
    """
    import dataclasses

    import timm
    import torch
    from torch.utils.data import DataLoader

    from fire_plugin.attacks import FRPGD
    from fire_plugin.data import load_dataset
    from fire_plugin.distances import fisher_rao
    from fire_plugin.engine import fit
    from fire_plugin.evaluation import evaluate
    from fire_plugin.losses import FIRELoss
    from fire_plugin.robustbench_io import model_info_from_result, write_model_info

    eps = 0.1
    out.mkdir(parents=True, exist_ok=True)
    train_set = load_dataset("digits", split="train")
    x_test, y_test = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    report: dict[str, Any] = {"dataset": "digits", "eps": eps, "epochs": epochs, "models": {}}
    for method, lam in (("ce", 0.0), ("fire", 6.0)):
        torch.manual_seed(0)
        model = timm.create_model("digits_cnn", num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        attack = FRPGD(model, eps=eps, alpha=0.025, steps=10)
        loss = FIRELoss(lam=lam)  # lam = 0 is plain natural cross-entropy
        _log.info("training %s (lam=%s) for %d epochs on digits", method, lam, epochs)
        history = fit(model, DataLoader(train_set, batch_size=64, shuffle=True), epochs=epochs, loss=loss,
                      attack=attack if method == "fire" else (lambda x, y: x), optimizer=optimizer,
                      checkpoint_dir=out / method / "checkpoints", verbose=not quiet)
        model.eval()
        result = evaluate(model, x_test[:n_eval], y_test[:n_eval], eps=eps,
                          attacks=("clean", "pgd", "frpgd", "autoattack"), verbose=not quiet)
        adv = FRPGD(model, eps=eps, alpha=0.025, steps=10)(x_test[:n_eval], y_test[:n_eval])
        with torch.no_grad():
            frd = fisher_rao(model(x_test[:n_eval]), model(adv)).mean().item()
        info = model_info_from_result(result, dataset="digits", name=f"digits_cnn {method.upper()} (demo)",
                                      architecture="digits_cnn", venue="fire_plugin demo",
                                      link="https://arxiv.org/abs/2106.06685",
                                      footnote=f"Evaluated on the first {n_eval} digits test images.")
        json_path = write_model_info(out, f"Demo2026{method.capitalize()}", info, threat_model="Linf")
        _save_history_plot(history, out / method / "training.png")
        report["models"][method] = {"eval": dataclasses.asdict(result), "mean_frd_under_frpgd": frd,
                                    "model_info": str(json_path), "history": history}
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    from fire_plugin.plots import plot_accuracy_bars

    bars = {m: entry["eval"] for m, entry in report["models"].items()}
    plot_accuracy_bars(bars).savefig(out / "accuracy.png", dpi=120)
    return report


# --------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fire-plugin", description="Fisher-Rao adversarial robustness toolkit")
    parser.add_argument("--version", action="version", version=f"fire-plugin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help=SUBCOMMANDS["train"])
    p.add_argument("--dataset", default="digits", choices=["digits", "mnist", "cifar10", "cifar100"])
    p.add_argument("--model", default="digits_cnn")
    p.add_argument("--method", default="fire", choices=["fire", "trades", "hellinger", "mart", "ace", "ce"])
    p.add_argument("--lam", type=_non_negative_float, default=6.0,
                   help="regularizer weight; FIRE: paper lambda on d^2 with d = 2 arccos(BC) (code beta = 4 lam)")
    p.add_argument("--eps", type=_non_negative_float, default=8 / 255)
    p.add_argument("--eps-step", type=_non_negative_float, default=None)
    p.add_argument("--steps", type=_positive_int, default=10)
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--epochs", type=_positive_int, default=100)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=_non_negative_float, default=0.1)
    p.add_argument("--weight-decay", type=_non_negative_float, default=5e-4)
    p.add_argument("--self-adaptive", action="store_true")
    p.add_argument("--sat-warmup", type=int, default=10)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision (CUDA)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun/DDP")
    p.add_argument("--validate", action="store_true", help="natural/adversarial test accuracy after each epoch")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help=SUBCOMMANDS["evaluate"])
    p.add_argument("--model", required=True, help="architecture name, RobustBench zoo name or autoattack-resnet18")
    p.add_argument("--checkpoint", default=None, help="our checkpoint or a state dict for --model's architecture")
    p.add_argument("--dataset", default="cifar10", choices=["digits", "mnist", "cifar10", "cifar100"])
    p.add_argument("--eps", type=_non_negative_float, default=8 / 255)
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--attacks", nargs="+", default=["clean", "pgd", "frpgd", "autoattack"])
    p.add_argument("--n-examples", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--model-dir", default="models")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--model-id", default=None, help="RobustBench-style id, e.g. Picot2022Adversarial")
    p.add_argument("--name", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("gaussian", help=SUBCOMMANDS["gaussian"])
    p.add_argument("--out", default="runs/gaussian")
    p.add_argument("--mu", type=_floats, default=None, help="two floats, e.g. '-0.0218 0.0425'")
    p.add_argument("--sigma", type=_floats, default=None, help="four floats (row-major 2x2)")
    p.add_argument("--eps", type=_non_negative_float, default=None)
    p.add_argument("--lambdas", type=_floats, default=None)
    p.add_argument("--n-per-class", type=_positive_int, default=10_000)
    p.add_argument("--no-global", action="store_true", help="skip the polar-grid global minimizer")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help=SUBCOMMANDS["demo"])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=_positive_int, default=8)
    p.add_argument("--n-eval", type=_positive_int, default=100)
    p.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command is None:
        print(f"fire-plugin {__version__}\n\nsubcommands:")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:<10} {text}")
        return 0
    if args.command == "train":
        summary = train_model(args)
        last = summary["history"][-1] if summary["history"] else {}
        print(json.dumps({k: v for k, v in summary.items() if k != "history"} | {"last_epoch": last}, indent=2))
    elif args.command == "evaluate":
        print(json.dumps(evaluate_model(args), indent=2))
    elif args.command == "gaussian":
        from fire_plugin.gaussian import run_report

        sigma = None
        if args.sigma is not None:
            if len(args.sigma) != 4:
                parser.error(f"--sigma needs 4 floats (a 2x2 matrix), got {len(args.sigma)}")
            sigma = [args.sigma[:2], args.sigma[2:]]
        report = run_report(args.out, mu=args.mu, sigma=sigma, eps=args.eps, lambdas=args.lambdas,
                            n_per_class=args.n_per_class, include_global=not args.no_global, verbose=not args.quiet)
        print(json.dumps(report.get("summary", {k: v for k, v in report.items() if k in ("maa", "coverage")}),
                         indent=2, default=str))
        print(f"report and figures written to {args.out}")
    elif args.command == "demo":
        report = run_demo(Path(args.out), epochs=args.epochs, n_eval=args.n_eval, quiet=args.quiet)
        print(f"{'model':<6} {'clean':>7} {'PGD-20':>7} {'FRPGD':>7} {'AA':>7} {'Avg':>7}  mean FRD")
        for method, entry in report["models"].items():
            r = entry["eval"]
            print(f"{method:<6} {r['clean_acc']:7.3f} {r['pgd_acc']:7.3f} {r['frpgd_acc']:7.3f} "
                  f"{r['autoattack_acc']:7.3f} {r['avg_acc']:7.3f}  {entry['mean_frd_under_frpgd']:.3f}")
        print(f"report: {Path(args.out) / 'demo_report.json'}; RobustBench JSON under {Path(args.out) / 'model_info'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stochastic estimators of the partial-isometry penalty (eq 14): error, gradient direction and cost, over draws.

Per sample the penalty is ``s^-2 ||A||_F`` (eq 14; ``s^-4 ||A||_F^2`` squared) with the symmetric ``m x m`` matrix
``A = epsilon^2 diag(mu) L L^T diag(mu) - delta_m^2 I`` (see :mod:`fire_plugin.isometry`). Every stochastic
estimator below forms a few products ``A v`` (one VJP and one VJP of that VJP each, about the cost of one backward
pass with its double backward) and returns vectors whose total squared norm estimates ``||A||_F^2``; eq 14 takes
the square root of that sum per sample.

Estimators (``k`` = products of ``A`` with a gradient path, per sample):

* ``rademacher`` (the library's ``"hutchinson"``): ``k`` i.i.d. Rademacher probes per sample.
* ``gaussian``: ``k`` i.i.d. standard normal probes per sample.
* ``rademacher-shared`` / ``orthogonal-shared``: one probe block for the whole batch.
* ``orthogonal`` (the library's ``"orthogonal"``): the first ``k`` columns of a Haar-random orthogonal ``m x m``
  matrix per sample, times ``sqrt(m)``; exact at ``k = m``.
* ``hutch++``: Hutch++-style deflation with ``k = 2 j``: ``j`` Gaussian sketch products ``A S`` without a gradient
  path (no backward), ``Q = orth(A S)``, then ``||A Q||_F^2`` exactly plus ``j`` Rademacher probes of the
  complement ``A (I - Q Q^T)``; ``Q`` is held fixed, so the squared estimate and its gradient stay unbiased.

Measured for each, over ``--draws`` draws (100) on one batch of 64 training digits, at three states of a
``lenet_pi`` trained with the demo's isometry recipe (exact estimator; init, epoch 5, epoch 30): the relative error
of the batch-mean penalty (median and 90th percentile of ``|estimate - exact| / exact``; and the bias, the mean of
``estimate / exact - 1``) for eq 14's norm and for the squared norm, and the cosine between the weight gradient of
the batch-mean eq 14 penalty and the exact one (median and 10th percentile). Cost: time of one training step
(forward, penalty, backward, SGD step) with each estimator over one CE step, digits batch 64 and LeNet on 28x28
batch 32, interleaved rounds, process CPU time, one torch thread.

    python benchmarks/isometry_estimators.py --out runs/isometry_estimators [--draws 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import choose_clock, interleaved_times  # noqa: E402

import fire_plugin.isometry as iso  # noqa: E402
from fire_plugin.isometry import delta_m  # noqa: E402

Sampler = Callable[[Any, Tensor, float, float, int], Tensor]  # (lin, mu, eps^2, delta^2, k) -> (K, B, m) vectors


def _a_products(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, v: Tensor) -> Tensor:
    """``A v`` for probes ``v`` of shape ``(P, B, m)``."""
    _, l_u = lin.probe(mu * v)
    return eps_sq * mu * l_u - delta_sq * v


def _rademacher(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _haar_columns(k: int, batch: int, m: int, like: Tensor) -> Tensor:
    """``(k, batch, m)``: per sample, the first ``k`` columns (``k <= m``) of a Haar orthogonal matrix."""
    g = torch.randn(batch, m, m, dtype=like.dtype, device=like.device)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar (Mezzadri's sign fix)
    return q[..., :k].permute(2, 0, 1)


def s_rademacher(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    v = _rademacher((k, *mu.shape), mu)
    return _a_products(lin, mu, eps_sq, delta_sq, v) / math.sqrt(k)


def s_gaussian(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    v = torch.randn((k, *mu.shape), dtype=mu.dtype, device=mu.device)
    return _a_products(lin, mu, eps_sq, delta_sq, v) / math.sqrt(k)


def s_rademacher_shared(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    v = _rademacher((k, 1, mu.shape[-1]), mu).expand(k, *mu.shape)
    return _a_products(lin, mu, eps_sq, delta_sq, v) / math.sqrt(k)


def s_orthogonal(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    m = mu.shape[-1]
    v = math.sqrt(m) * _haar_columns(k, mu.shape[0], m, mu)
    return _a_products(lin, mu, eps_sq, delta_sq, v) / math.sqrt(k)


def s_orthogonal_shared(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    m = mu.shape[-1]
    v = (math.sqrt(m) * _haar_columns(k, 1, m, mu)).expand(k, *mu.shape)
    return _a_products(lin, mu, eps_sq, delta_sq, v) / math.sqrt(k)


def s_hutchpp(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    j = max(1, k // 2)
    with torch.no_grad():
        sketch = _a_products(lin, mu, eps_sq, delta_sq, torch.randn((j, *mu.shape), dtype=mu.dtype, device=mu.device))
        q, _ = torch.linalg.qr(sketch.permute(1, 2, 0))  # (B, m, j), orthonormal columns
    q_cols = q.permute(2, 0, 1)  # (j, B, m)
    g = _rademacher((j, *mu.shape), mu)
    g_b = g.permute(1, 2, 0)  # (B, m, j)
    g = (g_b - q @ (q.transpose(1, 2) @ g_b)).permute(2, 0, 1)  # the complement of span(Q)
    prods = _a_products(lin, mu, eps_sq, delta_sq, torch.cat([q_cols, g]))
    return torch.cat([prods[:j], prods[j:] / math.sqrt(j)])


def s_deflated(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    """Column ``c`` of ``A`` exactly, ``c`` the sample's most probable of the first ``m`` classes (the largest
    ``mu``: the axis that ``diag(mu)`` stretches most), plus ``k - 1`` Rademacher probes of the other coordinates."""
    top = mu.argmax(-1)  # (B,)
    e_c = torch.nn.functional.one_hot(top, mu.shape[-1]).to(mu.dtype).unsqueeze(0)  # (1, B, m)
    v = _rademacher((k - 1, *mu.shape), mu) * (1 - e_c)
    prods = _a_products(lin, mu, eps_sq, delta_sq, torch.cat([e_c, v]))
    return torch.cat([prods[:1], prods[1:] / math.sqrt(k - 1)])


def s_split(lin: Any, mu: Tensor, eps_sq: float, delta_sq: float, k: int) -> Tensor:
    """``A_cc`` exactly (one VJP: ``|L_c|^2``) for the most probable coordinate ``c``, and ``k`` Rademacher probes
    ``v`` with ``v_c = 0``: ``||A||^2 = A_cc^2 + 2 E[(A v)_c^2] + E[|(A v)_{-c}|^2]`` (the row of ``c`` enters
    twice by symmetry)."""
    top = mu.argmax(-1)
    e_c = torch.nn.functional.one_hot(top, mu.shape[-1]).to(mu.dtype)  # (B, m)
    l_c = lin.vjp(e_c.unsqueeze(0))[0].flatten(1)  # (B, n) = d log t_c / dx
    mu_c = (mu * e_c).sum(-1)
    a_cc = eps_sq * mu_c.square() * l_c.square().sum(-1) - delta_sq  # (B,)
    v = _rademacher((k, *mu.shape), mu) * (1 - e_c)
    av = _a_products(lin, mu, eps_sq, delta_sq, v) / math.sqrt(k)  # (k, B, m)
    row_c = (av * e_c).sum(-1, keepdim=True) * math.sqrt(2.0)  # (k, B, 1)
    rest = av * (1 - e_c)
    first = torch.cat([a_cc.view(1, -1, 1), torch.zeros(1, mu.shape[0], mu.shape[-1], dtype=mu.dtype)], -1)
    return torch.cat([first, torch.cat([row_c, rest], -1)])  # (1 + k, B, m + 1)


SAMPLERS: dict[str, Sampler] = {
    "rademacher": s_rademacher,
    "gaussian": s_gaussian,
    "rademacher-shared": s_rademacher_shared,
    "orthogonal": s_orthogonal,
    "orthogonal-shared": s_orthogonal_shared,
    "hutch++": s_hutchpp,
    "deflated": s_deflated,
    "split": s_split,
}
PROBES: dict[str, tuple[int, ...]] = {"hutch++": (2, 4), "deflated": (2, 4), "split": (1, 2)}  # others: (1, 2, 4)


def batch_penalty(model: nn.Module, x: Tensor, epsilon: float, sampler: Sampler | None, k: int,
                  squared: bool) -> Tensor:
    """Batch mean of eq 14 (or its square) with ``sampler`` (None: exact)."""
    lin = iso._linearize(model, x)
    _, mu, log_gap = iso._coordinates(lin.logits)
    mu = mu.to(lin.log_t.dtype)
    eps_sq, delta_sq = epsilon * epsilon, delta_m(int(lin.logits.shape[-1])) ** 2
    if sampler is None:
        jac = iso._log_t_jacobian(lin)
        gram = jac @ jac.transpose(1, 2)
        inner = eps_sq * (mu.unsqueeze(-1) * gram * mu.unsqueeze(-2)) - delta_sq * torch.eye(mu.shape[-1],
                                                                                           dtype=mu.dtype)
        sq = inner.square().sum((-2, -1))
    else:
        vecs = sampler(lin, mu, eps_sq, delta_sq, k)  # (K, B, m)
        sq = vecs.square().sum((0, -1))
    per = torch.exp(-4.0 * log_gap) * sq if squared else torch.exp(-2.0 * log_gap) * sq.clamp_min(1e-30).sqrt()
    return per.mean()


def _flat_grad(value: Tensor, model: nn.Module) -> Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, list(model.parameters()))])


def _states(seed: int, snapshots: tuple[int, ...], epochs: int) -> dict[int, dict[str, Tensor]]:
    """State dicts of lenet_pi trained with the demo's isometry recipe (exact), after each epoch in ``snapshots``."""
    from torch.utils.data import DataLoader

    from fire_plugin.data import load_dataset
    from fire_plugin.engine import fit, lr_scheduler
    from fire_plugin.experiments import DigitsRecipe, _create_model, build_objective

    recipe = DigitsRecipe(epochs=epochs)
    torch.manual_seed(seed)
    net = _create_model(recipe.model, "digits")
    out = {0: {k: v.clone() for k, v in net.state_dict().items()}} if 0 in snapshots else {}
    loader = DataLoader(load_dataset("digits", split="train"), batch_size=recipe.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    objective = build_objective("isometry", net, eta_min=recipe.isometry_eta[0], eta_max=recipe.isometry_eta[1],
                                estimator="exact")

    class _Done(Exception):
        pass

    def snap(stats: Any) -> None:
        if stats.epoch + 1 in snapshots:
            out[stats.epoch + 1] = {k: v.clone() for k, v in net.state_dict().items()}
        if stats.epoch + 1 >= max(snapshots):
            raise _Done  # the states of a run of ``epochs`` epochs, without its remaining epochs

    try:
        fit(net, loader, epochs=epochs, objective=objective, optimizer=opt,
            scheduler=lr_scheduler(opt, recipe.schedule, recipe.epochs), verbose=False, on_epoch_end=snap)
    except _Done:
        pass
    return out


def accuracy_study(draws: int, snapshots: tuple[int, ...], epochs: int, only: list[str] | None = None,
                   save: Callable[[list[dict[str, Any]]], None] | None = None,
                   dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    import timm  # noqa: F401

    from fire_plugin.data import load_dataset
    from fire_plugin.experiments import DigitsRecipe, _create_model

    recipe = DigitsRecipe()
    x_all, _ = load_dataset("digits", split="train").tensors  # type: ignore[attr-defined]
    x = x_all[:64].to(dtype)
    epsilon = delta_m(10)
    states = _states(0, snapshots, epochs)
    rows = []
    for epoch, state in sorted(states.items()):
        net = _create_model(recipe.model, "digits").to(dtype)
        net.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
        net.train()
        exact_norm = batch_penalty(net, x, epsilon, None, 1, squared=False)
        exact_grad = _flat_grad(exact_norm, net)
        exact_norm_v = float(exact_norm.detach())
        exact_sq = float(batch_penalty(net, x, epsilon, None, 1, squared=True))
        for name, sampler in SAMPLERS.items():
            if only and name not in only:
                continue
            for k in PROBES.get(name, (1, 2, 4)):
                torch.manual_seed(1000 + k)
                rel_n, rel_s, cos = [], [], []
                for _ in range(draws):
                    state_rng = torch.get_rng_state()
                    value = batch_penalty(net, x, epsilon, sampler, k, squared=False)
                    grad = _flat_grad(value, net)
                    rel_n.append(float(value) / exact_norm_v - 1)
                    cos.append(float(torch.nn.functional.cosine_similarity(grad, exact_grad, dim=0)))
                    torch.set_rng_state(state_rng)  # the same probes for the squared estimate
                    with torch.no_grad():
                        rel_s.append(float(batch_penalty(net, x, epsilon, sampler, k, squared=True)) / exact_sq - 1)
                rows.append({"epoch": epoch, "estimator": name, "k": k, "draws": draws,
                             "exact_norm": exact_norm_v, "exact_squared": exact_sq, **_summ(rel_n, "norm"),
                             **_summ(rel_s, "squared"), "cos_median": float(np.median(cos)),
                             "cos_p10": float(np.percentile(cos, 10)), "cos_mean": float(np.mean(cos))})
                print(f"epoch {epoch:2d} {name:<18} k={k}: norm err median {rows[-1]['norm_abs_median']:.4f} "
                      f"p90 {rows[-1]['norm_abs_p90']:.4f} bias {rows[-1]['norm_bias']:+.4f} | squared median "
                      f"{rows[-1]['squared_abs_median']:.4f} bias {rows[-1]['squared_bias']:+.4f} (se "
                      f"{rows[-1]['squared_bias_se']:.4f}) | cos median {rows[-1]['cos_median']:.4f} "
                      f"p10 {rows[-1]['cos_p10']:.4f}", flush=True)
                if save is not None:
                    save(rows)
    return rows


def _summ(rel: list[float], prefix: str) -> dict[str, float]:
    a = np.asarray(rel)
    return {f"{prefix}_abs_median": float(np.median(np.abs(a))),
            f"{prefix}_abs_p90": float(np.percentile(np.abs(a), 90)),
            f"{prefix}_bias": float(a.mean()), f"{prefix}_bias_se": float(a.std(ddof=1) / math.sqrt(a.size))}


def _step_fns(net: nn.Module, x: Tensor, y: Tensor) -> dict[str, Callable[[], None]]:
    """One training step (zero_grad, loss, backward, SGD step with lr 0) per estimator, and one CE step."""
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    epsilon = delta_m(10)

    def step(loss: Callable[[], Tensor]) -> Callable[[], None]:
        def run() -> None:
            opt.zero_grad()
            loss().backward()
            opt.step()
        return run

    def regularized(sampler: Sampler | None, k: int) -> Callable[[], Tensor]:
        def loss() -> Tensor:
            ce = torch.nn.functional.cross_entropy(net(x), y)
            return 0.98 * ce + 0.02 * batch_penalty(net, x, epsilon, sampler, k, squared=False)
        return loss

    fns = {"ce": step(lambda: torch.nn.functional.cross_entropy(net(x), y)), "exact": step(regularized(None, 1))}
    for name, sampler in SAMPLERS.items():
        for k in PROBES.get(name, (1, 2, 4)):
            fns[f"{name}-{k}"] = step(regularized(sampler, k))
    return fns


def cost_study(rounds: int, repeats: int, only_digits: bool = False) -> list[dict[str, Any]]:
    """One training step per estimator over one CE step (the CE step runs the same forward pass once more)."""
    import timm

    from fire_plugin.experiments import _create_model

    clock, label = choose_clock("auto", threads=1)
    rows = []
    setups = {"digits lenet_pi 8x8, batch 64": (lambda: _create_model("lenet_pi", "digits"),
                                                 (64, 1, 8, 8)),
              "LeNet 28x28, batch 32": (lambda: timm.create_model("lenet_pi", num_classes=10), (32, 1, 28, 28))}
    for setup, (make, shape) in setups.items():
        if only_digits and not setup.startswith("digits"):
            continue
        torch.manual_seed(0)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        y = torch.randint(0, 10, (shape[0],), generator=torch.Generator().manual_seed(1))
        t = interleaved_times(_step_fns(make(), x, y), rounds=rounds, repeats=repeats, clock=clock)
        for name, sec in t.items():
            rows.append({"setup": setup, "estimator": name, "seconds": sec, "ratio_vs_ce": sec / t["ce"],
                         "clock": label})
            print(f"{setup}: {name:<22} {sec * 1e3:8.2f} ms  {sec / t['ce']:6.2f}x CE", flush=True)
    return rows


_LOG_LINE = re.compile(
    r"epoch\s+(\d+) (\S+)\s+k=(\d+): norm err median ([\d.]+) p90 ([\d.]+) bias ([+-][\d.]+) \| squared median "
    r"([\d.]+) bias ([+-][\d.]+) \(se ([\d.]+)\) \| cos median ([\d.]+) p10 ([\d.]+)")


def rows_from_log(text: str) -> list[dict[str, Any]]:
    """The rows a run printed (for a run stopped before it saved its JSON)."""
    keys = ("norm_abs_median", "norm_abs_p90", "norm_bias", "squared_abs_median", "squared_bias", "squared_bias_se",
            "cos_median", "cos_p10")
    return [{"epoch": int(m[1]), "estimator": m[2], "k": int(m[3]), **dict(zip(keys, map(float, m.groups()[3:]),
                                                                              strict=True))}
            for m in _LOG_LINE.finditer(text)]


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per training state: error of the batch-mean penalty (eq 14 and squared) and gradient cosine."""
    out = []
    for epoch in sorted({r["epoch"] for r in rows}):
        out += [f"Training epoch {epoch} (lenet_pi on digits, batch 64; relative error |estimate / exact - 1| of the "
                "batch-mean penalty over draws):", "",
                "| estimator | products | eq 14: median | p90 | bias | squared: median | bias | grad cosine: median "
                "| p10 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r["epoch"] == epoch), key=lambda r: (r["k"], r["estimator"])):
            extra = {"hutch++": f" + {max(1, r['k'] // 2)} sketch", "split": " + 1 VJP"}.get(r["estimator"], "")
            out.append(f"| {r['estimator']} | {r['k']}{extra} | {r['norm_abs_median']:.4f} | {r['norm_abs_p90']:.4f} | "
                       f"{r['norm_bias']:+.4f} | {r['squared_abs_median']:.4f} | {r['squared_bias']:+.4f} ± "
                       f"{r['squared_bias_se']:.4f} | {r['cos_median']:.4f} | {r['cos_p10']:.4f} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/isometry_estimators"))
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated estimators of the accuracy study")
    parser.add_argument("--name", default="estimators", help="the output is OUT/NAME.json")
    parser.add_argument("--snapshots", default="5,30", help="training epochs at which the estimators are measured")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds of the cost study")
    parser.add_argument("--only-digits", action="store_true", help="cost study on the digits setup only")
    parser.add_argument("--table", nargs="*", type=Path, metavar="FILE",
                        help="print the markdown tables of saved JSON files (or printed logs) and exit")
    args = parser.parse_args()
    if args.table is not None:
        rows: list[dict[str, Any]] = []
        for file in args.table:
            text = file.read_text()
            rows += json.loads(text).get("accuracy", []) if file.suffix == ".json" else rows_from_log(text)
        print(markdown(rows))
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"draws": args.draws}
    path = args.out / f"{args.name}.json"

    def save(rows: list[dict[str, Any]]) -> None:
        path.write_text(json.dumps({**report, "accuracy": rows}, indent=2))

    if not args.skip_accuracy:
        snaps = (0, 1) if args.quick else tuple(int(s) for s in args.snapshots.split(","))
        report["accuracy"] = accuracy_study(5 if args.quick else args.draws, snaps, 1 if args.quick else 30,
                                            [o for o in args.only.split(",") if o] or None, save)
    if not args.skip_cost:
        report["cost"] = cost_study(1 if args.quick else args.rounds, 1 if args.quick else 3, args.only_digits)
    report["wall_seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(report, indent=2))
    print(f"saved {path} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()

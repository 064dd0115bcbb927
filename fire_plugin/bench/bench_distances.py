"""Forward+backward time of fisher_rao_squared relative to torch.nn.functional.kl_div (the TRADES KL term).

Peer: ``F.kl_div(F.log_softmax(adv), F.softmax(nat), reduction="none").sum(-1)`` (per-sample KL, as TRADES computes
it), timed with the same inputs and backward (gradient with respect to the adversarial logits). Target: ratio <= 1.2.
The other divergences of ``DIVERGENCES`` are timed against the same peer for information.

Timing: callables alternate over ``--rounds`` rounds (the median of ``--repeats`` calls per round, the median over
rounds reported), so drift on a shared machine hits both sides alike. By default torch uses one thread and the clock
is the process CPU time, which does not count the time other jobs hold the core; ``--threads 0 --clock wall`` times
torch's default threading on the wall clock instead.

Run: ``python -m fire_plugin.bench.bench_distances [--quick]``; ``run(quick)`` returns the rows (``fire-plugin bench``).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fire_plugin.bench._timing import add_timing_args, choose_clock, format_table, interleaved_times, row
from fire_plugin.distances import fisher_rao_squared, hellinger_squared, kl_divergence


def trades_kl(nat: Tensor, adv: Tensor) -> Tensor:
    """The peer: TRADES' per-sample KL(p_nat || p_adv)."""
    return F.kl_div(F.log_softmax(adv, dim=-1), F.softmax(nat, dim=-1), reduction="none").sum(-1)


_CONTENDERS: list[tuple[str, Callable[[Tensor, Tensor], Tensor]]] = [
    ("kl_div", trades_kl), ("fisher_rao_squared", fisher_rao_squared), ("kl_divergence", kl_divergence),
    ("hellinger_squared", hellinger_squared)]


def _forward_backward(fn: Callable[[Tensor, Tensor], Tensor], nat: Tensor, adv: Tensor) -> None:
    fn(nat, adv).sum().backward()


def run(quick: bool = False, *, rounds: int = 15, repeats: int = 5, threads: int = 1, clock: str = "auto",
        shapes: tuple[tuple[int, int], ...] = ((4096, 10), (4096, 100))) -> list[dict[str, object]]:
    """Rows of the perf-suite contract: each divergence's forward+backward time / the TRADES ``F.kl_div`` term.

    ``quick``: 3 rounds of 3 calls (same shapes).
    """
    if quick:
        rounds, repeats = 3, 3
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clock_fn, clock_label = choose_clock(clock, threads=threads, device=device)
    how = f"{device}, {torch.get_num_threads()} thread(s), {clock_label} clock, median of {rounds}x{repeats}"
    rows = []
    torch.manual_seed(0)
    for shape in shapes:
        nat = torch.randn(*shape, device=device)
        adv = (nat + 0.5 * torch.randn(*shape, device=device)).requires_grad_(True)
        fns: dict[str, Callable[[], object]] = {
            name: functools.partial(_forward_backward, fn, nat, adv)
            for name, fn in _CONTENDERS
        }
        t = interleaved_times(fns, rounds=rounds, repeats=repeats, device=device, clock=clock_fn)
        peer = t["kl_div"]
        for name, target in [("fisher_rao_squared", "<= 1.2"), ("kl_divergence", ""), ("hellinger_squared", "")]:
            rows.append(row(f"{name} fwd+bwd, logits {tuple(shape)}", t[name] / peer, target,
                            "TRADES per-sample F.kl_div term",
                            f"{t[name] * 1e3:.3f} ms vs {peer * 1e3:.3f} ms; {how}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 3 calls")
    add_timing_args(parser, rounds=15, repeats=5)
    args = parser.parse_args()
    print(format_table(run(args.quick, rounds=args.rounds, repeats=args.repeats, threads=args.threads,
                           clock=args.clock)))


if __name__ == "__main__":
    main()

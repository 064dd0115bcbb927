"""Forward+backward time of fisher_rao_squared relative to torch.nn.functional.kl_div (the TRADES KL term).

Peer: ``F.kl_div(F.log_softmax(adv), F.softmax(nat), reduction="none").sum(-1)`` (per-sample KL, as TRADES computes
it), timed with the same inputs and backward. Target: ratio <= 1.2. Run: ``python benchmarks/bench_distances.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_times  # noqa: E402

from fire_plugin.distances import fisher_rao_squared  # noqa: E402


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    print(f"device={device} threads={torch.get_num_threads()}")
    for shape in [(4096, 10), (4096, 100)]:
        nat = torch.randn(*shape, device=device)
        adv = (nat + 0.5 * torch.randn(*shape, device=device)).requires_grad_(True)

        def ours() -> None:
            fisher_rao_squared(nat, adv).sum().backward()

        def peer() -> None:
            F.kl_div(F.log_softmax(adv, dim=-1), F.softmax(nat, dim=-1), reduction="none").sum(-1).sum().backward()

        t = interleaved_times({"fisher_rao_squared": ours, "kl_div": peer}, device=device)
        ratio = t["fisher_rao_squared"] / t["kl_div"]
        print(f"{shape}: fisher_rao_squared {t['fisher_rao_squared'] * 1e3:.3f} ms, kl_div {t['kl_div'] * 1e3:.3f} ms, "
              f"ratio {ratio:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()

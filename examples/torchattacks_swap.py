"""Swap torchattacks.PGD for the Fisher-Rao attack FRPGD: one changed line, everything else stays torchattacks.

Trains the small ``digits_cnn`` on sklearn's embedded 8x8 digits (offline, a few seconds), then runs the same
evaluation loop with ``torchattacks.PGD`` and with ``FRPGD``, inside ``torchattacks.MultiAttack`` and through
``atk.save``. Runs in well under 30 s on a CPU: ``python examples/torchattacks_swap.py``.

PGD needs the labels and maximizes the cross-entropy; FRPGD ignores them and maximizes the squared Fisher-Rao
distance between the clean and the adversarial predictions (the inner maximization of FIRE training). It is not
a stronger accuracy attack: from its tiny TRADES-style random start, about a quarter of the samples are driven to a
more confident clean prediction, so report robust accuracy with PGD or AutoAttack.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchattacks
from torch.utils.data import DataLoader

import fire_plugin  # noqa: F401  (registers digits_cnn with timm)
from fire_plugin import FRPGD, fisher_rao
from fire_plugin.data import load_dataset

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
torch.manual_seed(0)
torch.set_num_threads(1)  # an 8x8 model: more threads only add synchronization

# --- a model trained on the digits (any classifier on [0, 1] images would do)
train_set, test_set = load_dataset("digits", split="train"), load_dataset("digits", split="test")
model = timm.create_model("digits_cnn", num_classes=10)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(15):
    for x, y in DataLoader(train_set, batch_size=64, shuffle=True):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
model.eval()
test_loader = DataLoader(test_set, batch_size=128)


def evaluate(atk: torchattacks.attack.Attack) -> tuple[float, float, float]:
    """Clean accuracy, robust accuracy and mean Fisher-Rao distance clean -> adversarial over the test set."""
    clean = robust = frd = 0.0
    for images, labels in test_loader:
        adv_images = atk(images, labels)
        with torch.no_grad():
            logits, logits_adv = model(images), model(adv_images)
        clean += (logits.argmax(1) == labels).sum().item()
        robust += (logits_adv.argmax(1) == labels).sum().item()
        frd += fisher_rao(logits, logits_adv).sum().item()
    n = len(test_set)  # type: ignore[arg-type]
    return clean / n, robust / n, frd / n


eps, alpha, steps = 0.1, 0.02, 10
for name in ("PGD", "FRPGD"):
    if name == "PGD":
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)
    else:
        atk = FRPGD(model, eps=eps, alpha=alpha, steps=steps)  # <- the swap: same arguments, same call
    clean_acc, robust_acc, frd = evaluate(atk)
    print(f"{name:6s} clean {clean_acc:.3f}  robust {robust_acc:.3f}  mean FRD {frd:.3f}")

# FRPGD also plugs into torchattacks' wrappers and utilities.
multi = torchattacks.MultiAttack([FRPGD(model, eps=eps, alpha=alpha, steps=steps),
                                  torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)])
_, robust_acc, _ = evaluate(multi)
print(f"MultiAttack(FRPGD, PGD) robust {robust_acc:.3f}")

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "frpgd_digits.pt"
    FRPGD(model, eps=eps, alpha=alpha, steps=steps).save(test_loader, save_path=str(path), verbose=False)
    saved = torch.load(path, weights_only=True)
    print(f"atk.save wrote {tuple(saved['adv_inputs'].shape)} adversarial images and their labels")

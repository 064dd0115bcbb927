"""An ART TRADES pipeline on the embedded digits, moved to FIRE by changing one line.

The original pipeline used ART's trainer; the only change is the marked line. Runs offline in about a minute on
a CPU: ``python examples/art_pipeline.py``.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainerTRADESPyTorch  # noqa: F401  (the line we replaced used it)
from art.estimators.classification import PyTorchClassifier
from torch import nn

import fire_plugin  # noqa: F401  (registers digits_cnn with timm)
from fire_plugin.data import load_dataset
from fire_plugin.trainers import FIRETrainer

torch.manual_seed(0)
x_train, y_train = (t.numpy() for t in load_dataset("digits", split="train").tensors)  # type: ignore[attr-defined]
x_test, y_test = (t.numpy() for t in load_dataset("digits", split="test").tensors)  # type: ignore[attr-defined]

model = timm.create_model("digits_cnn", num_classes=10)
classifier = PyTorchClassifier(
    model=model,
    loss=nn.CrossEntropyLoss(),
    optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    input_shape=(1, 8, 8),
    nb_classes=10,
    clip_values=(0.0, 1.0),
)
attack = ProjectedGradientDescent(classifier, norm=np.inf, eps=0.1, eps_step=0.025, max_iter=10, verbose=False)

# trainer = AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0)
trainer = FIRETrainer(classifier, lam=3.0, eps=0.1, eps_step=0.025, max_iter=10)  # <- the one changed line
trainer.fit(x_train, y_train, nb_epochs=5, batch_size=64, validation_data=(x_test, y_test))

clean = np.mean(np.argmax(classifier.predict(x_test), axis=1) == y_test)
x_adv = attack.generate(x_test)
robust = np.mean(np.argmax(classifier.predict(x_adv), axis=1) == y_test)
print(f"clean accuracy {clean:.3f}, ART PGD-10 accuracy {robust:.3f}")
for record in trainer.history:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})

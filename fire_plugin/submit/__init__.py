"""A RobustBench submission bundle from an evaluated model, written only after its numbers are checked.

:func:`submit` takes the output folder of ``fire-plugin evaluate`` (or of a preset run), or a checkpoint with its
``model_info`` file and architecture, and writes a folder with what RobustBench's maintainers ask for in their
"New Model(s)" issue template::

    BUNDLE/model_info/<dataset>/<threat_model>/<Name>.json   the leaderboard file (RobustBench's schema)
    BUNDLE/models/<dataset>/<threat_model>/<Name>.pt         the weights as RobustBench's zoo stores them: a plain
                                                             state dict of the architecture
    BUNDLE/NEW_MODEL.md                                      the issue text, filled in (placeholders: <TODO: ...>)
    BUNDLE/model_zoo_entry.py                                the entry for robustbench/model_zoo/<dataset>.py
    BUNDLE/CHECKS.md                                         what was verified, and how

Nothing is written unless every check passes (the bundle is built in a staging folder beside ``out`` and renamed
at the end). The checks: the dataset and threat model have a RobustBench leaderboard; the ``model_info`` file is
valid, its ``dataset`` agrees with its folder and its AutoAttack accuracy is not above its clean accuracy; eps is
the leaderboard's; the AutoAttack accuracy comes from a finished standard AutoAttack run and the file holds the
run's numbers; the run used RobustBench's full test set (10,000 CIFAR images; a subset only with
``allow_subset``, which the footnote and NEW_MODEL.md then state); the bundle's checkpoint reloads through
:func:`fire_plugin.load_pretrained` from the bundle's own layout with weights and logits equal to the evaluated
model's, and through ``robustbench.utils.load_model`` (with the bundle's zoo entry) when the architecture is one
RobustBench ships; the clean accuracy recomputed with the bundle's checkpoint on the evaluated images equals the
file's. Any failure raises :class:`SubmitError` naming what differs.

>>> sorted(ZOO_ARCHITECTURES)
['resnet18_cifar', 'wrn28_10', 'wrn34_10']
"""

from __future__ import annotations

from fire_plugin.submit.bundle import submit
from fire_plugin.submit.records import LEADERBOARD_EPS, ZOO_ARCHITECTURES, Check, SubmitError, SubmitResult

__all__ = ["LEADERBOARD_EPS", "ZOO_ARCHITECTURES", "Check", "SubmitError", "SubmitResult", "submit"]

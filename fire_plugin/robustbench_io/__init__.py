"""RobustBench result files: the ``model_info`` JSON schema, written, read and validated.

RobustBench keeps one JSON file per model at ``model_info/<dataset>/<threat_model>/<model_id>.json``, for
example ``model_info/cifar10/Linf/Zhang2019Theoretically.json``. :class:`ModelInfo` has exactly the fields of
those files; accuracies are percent strings (``"84.92"``) and ``eps`` a string, a fraction such as
``"8/255"`` when it is one (a JSON number, as RobustBench's own ``update_json`` writes it, is read too).
Fields that :class:`ModelInfo` does not name (``external``, ``corruptions_acc``, ...) are kept in
:attr:`ModelInfo.extra` so that files read and written back lose nothing.

Files are written the way RobustBench's own consumers (``generate_leaderboard``, ``get_leaderboard_latex``,
``get_leaderboard_bibtex``) read them: the keys every RobustBench file has are always written, the optional ones
(``autoattack_acc`` for corruptions, ``footnote``, ``unreliable``) are left out when unset instead of being
written as ``null``, and validation refuses what those consumers cannot read (a missing venue, a ``null``
``external``, NaN).

Sub-modules: ``schema`` (:class:`ModelInfo`, the datasets and threat models, the percent and eps formats,
:func:`model_info_from_result`, :func:`subset_of`), ``validation`` (:func:`validate_model_info`) and ``files``
(:func:`model_info_path`, :func:`read_model_info`, :func:`write_model_info`); every public name is re-exported here.

>>> import tempfile
>>> info = ModelInfo(link="https://arxiv.org/abs/2106.06685", name="FIRE", authors="M. Picot", additional_data=False,
...                  number_forward_passes=1, dataset="cifar10", venue="TPAMI 2022", architecture="WideResNet-34-10",
...                  eps="8/255", clean_acc="84.92", reported="53.08", autoattack_acc="53.08")
>>> with tempfile.TemporaryDirectory() as root:
...     path = write_model_info(root, "Picot2022Adversarial", info)
...     read_model_info(path).clean_acc
'84.92'
"""

from __future__ import annotations

from fire_plugin.robustbench_io.files import model_info_path, read_model_info, write_model_info
from fire_plugin.robustbench_io.schema import (
    DEMO_VENUE,
    MODEL_INFO_FIELDS,
    N_EXAMPLES_KEY,
    PRESET_VENUE,
    ROBUSTBENCH_DATASETS,
    ROBUSTBENCH_TEST_SIZES,
    THREAT_MODELS,
    BenchmarkDataset,
    ModelInfo,
    ThreatModel,
    format_accuracy,
    format_eps,
    model_info_from_result,
    parse_eps,
    subset_of,
)
from fire_plugin.robustbench_io.validation import validate_model_info

__all__ = [
    "MODEL_INFO_FIELDS",
    "N_EXAMPLES_KEY",
    "ROBUSTBENCH_DATASETS",
    "ROBUSTBENCH_TEST_SIZES",
    "THREAT_MODELS",
    "DEMO_VENUE",
    "PRESET_VENUE",
    "BenchmarkDataset",
    "ModelInfo",
    "ThreatModel",
    "format_accuracy",
    "format_eps",
    "model_info_from_result",
    "model_info_path",
    "parse_eps",
    "read_model_info",
    "subset_of",
    "validate_model_info",
    "write_model_info",
]

"""Tests of fire_plugin.robustbench_io against RobustBench's own files and its update_json."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fire_plugin._compat import import_robustbench
from fire_plugin.evaluation import EvalResult
from fire_plugin.robustbench_io import (
    MODEL_INFO_FIELDS,
    ModelInfo,
    format_accuracy,
    format_eps,
    model_info_from_result,
    model_info_path,
    parse_eps,
    read_model_info,
    validate_model_info,
    write_model_info,
)

TESTDATA = Path(__file__).resolve().parent / "data" / "robustbench_model_info"
REAL_FILES = sorted(TESTDATA.glob("*/*/*.json"))

# The model_info fields named by RobustBench's leaderboard files and the issue, in order.
ISSUE_FIELDS = (
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "footnote",
    "unreliable",
)


def full_info(**overrides: object) -> ModelInfo:
    values: dict[str, object] = {
        "link": "https://arxiv.org/abs/2106.06685",
        "name": "Adversarial Robustness via Fisher-Rao Regularization",
        "authors": "Marine Picot, Francisco Messina, Malik Boudiaf, Fabrice Labeau, Ismail Ben Ayed, Pablo Piantanida",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": "cifar10",
        "venue": "TPAMI 2022",
        "architecture": "WideResNet-34-10",
        "eps": "8/255",
        "clean_acc": "86.97",
        "reported": "52.53",
        "autoattack_acc": "52.53",
        "footnote": None,
        "unreliable": False,
    }
    values.update(overrides)
    return ModelInfo(**values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- schema


def test_field_set_is_robustbench_model_info():
    assert tuple(f.name for f in dataclasses.fields(ModelInfo)) == ISSUE_FIELDS
    assert MODEL_INFO_FIELDS == ISSUE_FIELDS
    # Every field appears in RobustBench's real files, and every key of those files is a field or an extra
    # that RobustBench's leaderboard code knows (external, corruptions metrics).
    keys_in_files = set().union(*(json.loads(p.read_text()).keys() for p in REAL_FILES))
    assert set(ISSUE_FIELDS) <= keys_in_files
    assert keys_in_files - set(ISSUE_FIELDS) == {
        "external",
        "corruptions_acc",
        "corruptions_acc_3d",
        "corruptions_mce",
        "corruptions_mce_3d",
    }


def test_fields_relate_to_robustbench_dataclass():
    # robustbench 1.1.1's own ModelInfo lacks `unreliable` (present in its leaderboard files) and adds the
    # corruption metrics, which ModelInfo keeps as extras.
    rb_fields = {f.name for f in dataclasses.fields(import_robustbench("utils").ModelInfo)}
    corruption_fields = {"corruptions_acc", "corruptions_acc_3d", "corruptions_mce", "corruptions_mce_3d"}
    assert rb_fields - corruption_fields == set(ISSUE_FIELDS) - {"unreliable"}


def test_round_trip_all_fields(tmp_path):
    info = full_info()
    path = write_model_info(tmp_path, "Picot2022Adversarial", info)
    assert path == tmp_path / "model_info" / "cifar10" / "Linf" / "Picot2022Adversarial.json"
    on_disk = json.loads(path.read_text())
    assert list(on_disk) == list(ISSUE_FIELDS)
    assert on_disk == dataclasses.asdict(info)
    back = read_model_info(path)
    assert back == info
    assert back.extra == {}


def test_written_like_robustbench(tmp_path):
    info = full_info()
    path = write_model_info(tmp_path, "M", info)
    assert path.read_text() == json.dumps(dataclasses.asdict(info), indent=2)


# ----------------------------------------------------------------------------------------------- real files


def test_real_files_present():
    assert len(REAL_FILES) == 236


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_real_file_reads_validates_and_writes_back(path, tmp_path):
    original = json.loads(path.read_text())
    threat_model = path.parent.name
    info = read_model_info(path)
    validate_model_info(info, threat_model=threat_model)
    assert info.to_dict().items() >= original.items()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # RobustBench datasets: no warning
        out = write_model_info(tmp_path, path.stem, info, threat_model=threat_model)
    assert out.name == path.name
    written = json.loads(out.read_text())
    # nothing lost, nothing changed; only fields absent from the original may be added, as null
    assert {k: written[k] for k in original} == original
    assert all(written[k] is None for k in set(written) - set(original))
    assert read_model_info(out) == info
    assert read_model_info(out).extra == info.extra


def test_extra_fields_kept(tmp_path):
    data = dataclasses.asdict(full_info())
    data["external"] = "51.00"
    data["corruptions_acc"] = "80.10"
    src = tmp_path / "src.json"
    src.write_text(json.dumps(data))
    info = read_model_info(src)
    assert info.extra == {"external": "51.00", "corruptions_acc": "80.10"}
    out = write_model_info(tmp_path / "out", "M", info)
    assert json.loads(out.read_text()) == data


# ----------------------------------------------------------------------------------------------- merge


def test_merge_keeps_existing_and_updates_non_none(tmp_path):
    first = full_info(footnote="first run")
    path = write_model_info(tmp_path, "M", first)
    raw = json.loads(path.read_text())
    raw["external"] = "50.00"  # a key ModelInfo does not name, put there by someone else
    path.write_text(json.dumps(raw))
    update = ModelInfo(dataset="cifar10", clean_acc="90.00", autoattack_acc="60.00")
    assert write_model_info(tmp_path, "M", update) == path
    merged = json.loads(path.read_text())
    assert merged["clean_acc"] == "90.00" and merged["autoattack_acc"] == "60.00"
    assert merged["footnote"] == "first run" and merged["name"] == first.name and merged["eps"] == "8/255"
    assert merged["external"] == "50.00"


def test_merge_matches_robustbench_update_json(tmp_path, monkeypatch):
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    existing = (TESTDATA / "cifar10" / "Linf" / "Zhang2019Theoretically.json").read_text()
    ours_root, rb_root = tmp_path / "ours", tmp_path / "rb"
    for root in (ours_root, rb_root):
        target = root / "model_info" / "cifar10" / "Linf" / "Zhang2019Theoretically.json"
        target.parent.mkdir(parents=True)
        target.write_text(existing)
    monkeypatch.chdir(rb_root)  # update_json writes below the working directory
    rb_utils.update_json(
        enums.BenchmarkDataset.cifar_10, enums.ThreatModel.Linf, "Zhang2019Theoretically", 0.9, 0.6, None
    )
    rb = json.loads((rb_root / "model_info" / "cifar10" / "Linf" / "Zhang2019Theoretically.json").read_text())
    info = ModelInfo(dataset="cifar10", clean_acc=format_accuracy(0.9), autoattack_acc=format_accuracy(0.6))
    ours = json.loads(write_model_info(ours_root, "Zhang2019Theoretically", info).read_text())
    assert set(ours) == set(rb)
    for key in ours:
        if key in ("clean_acc", "autoattack_acc"):  # RobustBench writes "90.0", we write "90.00"
            assert float(ours[key]) == float(rb[key])
        else:
            assert ours[key] == rb[key], key


def test_merge_into_invalid_json_fails(tmp_path):
    path = model_info_path(tmp_path, "M", dataset="cifar10")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        write_model_info(tmp_path, "M", full_info())
    assert path.read_text() == "{not json"


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clean_acc": "abc"}, "clean_acc='abc'"),
        ({"clean_acc": "100.5"}, "clean_acc='100.5'"),
        ({"clean_acc": 84.92}, "clean_acc=84.92"),
        ({"clean_acc": None}, "clean_acc is missing"),
        ({"autoattack_acc": "-1"}, "autoattack_acc='-1'"),
        ({"autoattack_acc": None}, "autoattack_acc is missing"),
        ({"reported": "n/a"}, "reported='n/a'"),
        ({"eps": "0"}, "eps='0'"),
        ({"eps": "8/0"}, "eps='8/0'"),
        ({"eps": None}, "eps is missing"),
        ({"number_forward_passes": 0}, "number_forward_passes=0"),
        ({"number_forward_passes": True}, "number_forward_passes=True"),
        ({"additional_data": "yes"}, "additional_data='yes'"),
        ({"unreliable": 1}, "unreliable=1"),
        ({"name": 3}, "name=3"),
        ({"dataset": None}, "dataset is missing"),
        ({"dataset": "../cifar10"}, "dataset='../cifar10'"),
    ],
)
def test_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_model_info(full_info(**overrides), threat_model="Linf")


def test_validation_lists_every_problem():
    with pytest.raises(ValueError) as err:
        validate_model_info(full_info(clean_acc="x", eps="y", additional_data="z"))
    assert all(s in str(err.value) for s in ("clean_acc='x'", "eps='y'", "additional_data='z'"))


def test_not_reported_markers_and_corruptions_are_valid():
    validate_model_info(full_info(reported=""), threat_model="Linf")
    validate_model_info(full_info(reported=None), threat_model="Linf")
    validate_model_info(full_info(eps=None, autoattack_acc=None), threat_model="corruptions")


def test_invalid_info_is_not_written(tmp_path):
    with pytest.raises(ValueError, match="clean_acc"):
        write_model_info(tmp_path, "M", full_info(clean_acc="high"))
    assert not (tmp_path / "model_info").exists() or not any((tmp_path / "model_info").rglob("*.json"))


@pytest.mark.parametrize("model_id", ["a/b", "../evil", "..", "", "a\\b", "/abs", ".hidden", "x/../../y"])
def test_model_id_with_path_separator_rejected(tmp_path, model_id):
    with pytest.raises(ValueError, match="model_id="):
        write_model_info(tmp_path / "root", model_id, full_info())
    assert not any(tmp_path.rglob("*.json"))


def test_bad_threat_model_rejected(tmp_path):
    with pytest.raises(ValueError, match="threat_model='Linfinity'"):
        write_model_info(tmp_path, "M", full_info(), threat_model="Linfinity")


def test_corruptions_3d_goes_to_corruptions_folder(tmp_path):
    info = full_info(eps=None, autoattack_acc=None)
    path = write_model_info(tmp_path, "M", info, threat_model="corruptions_3d")
    assert path.parent.name == "corruptions"


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_unlisted_dataset_written_with_warning(tmp_path, dataset):
    info = full_info(dataset=dataset, eps="0.1")
    with pytest.warns(UserWarning, match="cannot be submitted"):
        path = write_model_info(tmp_path, "M", info)
    assert path == tmp_path / "model_info" / dataset / "Linf" / "M.json"
    assert list(json.loads(path.read_text())) == list(ISSUE_FIELDS)


# ----------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("eps", "text"),
    [(8 / 255, "8/255"), (4 / 255, "4/255"), (16 / 255, "16/255"), (0.5, "0.5"), (0.031, "0.031"), (0.3, "0.3")],
)
def test_format_eps(eps, text):
    assert format_eps(eps) == text
    assert parse_eps(text) == eps


@given(st.floats(min_value=1e-6, max_value=16.0, allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_format_eps_round_trips(eps):
    assert parse_eps(format_eps(eps)) == eps


@given(st.integers(min_value=1, max_value=255))
@settings(max_examples=50, deadline=None)
def test_format_eps_k_over_255(k):
    text = format_eps(k / 255)
    assert parse_eps(text) == k / 255
    if len(f"{k / 255:g}") > 6 or float(f"{k / 255:g}") != k / 255:
        assert text == f"{k}/255"


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "zero", True])
def test_format_eps_rejects(bad):
    with pytest.raises(ValueError, match="eps="):
        format_eps(bad)


def test_format_accuracy():
    assert format_accuracy(0.8492) == "84.92"
    assert format_accuracy(1.0) == "100.00"
    assert format_accuracy(0) == "0.00"
    assert format_accuracy(2 / 3) == "66.67"
    for bad in (-0.01, 1.01, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="accuracy="):
            format_accuracy(bad)  # type: ignore[arg-type]


def test_model_info_from_result():
    result = EvalResult(n_examples=200, eps=8 / 255, norm="Linf", clean_acc=0.875, autoattack_acc=0.5)
    info = model_info_from_result(result, dataset="cifar10", architecture="WideResNet-34-10", name="FIRE")
    assert (info.eps, info.clean_acc, info.autoattack_acc) == ("8/255", "87.50", "50.00")
    validate_model_info(info, threat_model="Linf")
    custom = EvalResult(n_examples=2, eps=0.1, norm="Linf", clean_acc=1.0, autoattack_acc=0.5)
    custom.autoattack_version = "custom:apgd-ce"
    with pytest.warns(UserWarning, match="not 'standard'"):
        model_info_from_result(custom, dataset="digits")

"""Tests of fire_plugin.robustbench_io against RobustBench's own files and its update_json."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import stat
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fire_plugin._compat import import_robustbench
from fire_plugin.evaluation import EvalResult
from fire_plugin.robustbench_io import (
    DEMO_VENUE,
    MODEL_INFO_FIELDS,
    PRESET_VENUE,
    ModelInfo,
    format_accuracy,
    format_eps,
    model_info_from_result,
    model_info_path,
    parse_eps,
    read_model_info,
    subset_of,
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
# What full_info() writes: its footnote is None, and an unset footnote is left out as in RobustBench's files.
WRITTEN_FIELDS = tuple(f for f in ISSUE_FIELDS if f != "footnote")


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
    assert list(on_disk) == list(WRITTEN_FIELDS)
    assert on_disk == {k: v for k, v in dataclasses.asdict(info).items() if k in WRITTEN_FIELDS}
    back = read_model_info(path)
    assert back == info
    assert back.extra == {}


def test_written_like_robustbench(tmp_path):
    info = full_info()
    path = write_model_info(tmp_path, "M", info)
    expected = {k: v for k, v in dataclasses.asdict(info).items() if k in WRITTEN_FIELDS}
    assert path.read_text() == json.dumps(expected, indent=2) == info.to_json()


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
    # nothing lost, nothing changed, nothing added (a "footnote": null stays; an absent footnote stays absent)
    assert written == original and list(written) == [k for k in MODEL_INFO_FIELDS if k in original] + [
        k for k in original if k not in MODEL_INFO_FIELDS
    ]
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
    corruptions = full_info(eps=None, autoattack_acc=None)
    corruptions.extra["corruptions_acc"] = "80.10"
    validate_model_info(corruptions, threat_model="corruptions")


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
    info.extra.update(corruptions_acc="80.10", corruptions_acc_3d="78.20")
    path = write_model_info(tmp_path, "M", info, threat_model="corruptions_3d")
    assert path.parent.name == "corruptions"


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_unlisted_dataset_written_with_warning(tmp_path, dataset):
    info = full_info(dataset=dataset, eps="0.1")
    with pytest.warns(UserWarning, match="cannot be submitted"):
        path = write_model_info(tmp_path, "M", info)
    assert path == tmp_path / "model_info" / dataset / "Linf" / "M.json"
    assert list(json.loads(path.read_text())) == list(WRITTEN_FIELDS)


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
        model_info_from_result(custom, dataset="digits", name="custom", architecture="digits_cnn")


# ------------------------------------------------------------------------------------- files RobustBench reads


def _real_key_sets(threat_model: str) -> set[frozenset[str]]:
    return {frozenset(json.loads(p.read_text())) for p in REAL_FILES if p.parent.name == threat_model}


@pytest.mark.parametrize("footnote", [None, "Evaluated on 1000 images."])
@pytest.mark.parametrize("unreliable", [None, False, True])
@pytest.mark.parametrize("threat_model", ["Linf", "L2"])
def test_written_key_set_is_one_of_the_real_files(tmp_path, footnote, unreliable, threat_model):
    # Before: every field was written, None as null ("unreliable": null, which no real file holds and
    # RobustBench's leaderboard shows as reliable); that key set is none of the real files'.
    path = write_model_info(
        tmp_path, "M", full_info(footnote=footnote, unreliable=unreliable), threat_model=threat_model
    )
    written = json.loads(path.read_text())
    assert frozenset(written) in _real_key_sets(threat_model)
    assert all(written[k] is not None for k in ("autoattack_acc", "footnote", "unreliable") if k in written)


def test_written_corruptions_key_set_is_one_of_the_real_files(tmp_path):
    info = full_info(eps=None, autoattack_acc=None, reported="", unreliable=None)
    info.extra["corruptions_acc"] = "80.10"
    written = json.loads(write_model_info(tmp_path, "M", info, threat_model="corruptions").read_text())
    assert frozenset(written) in _real_key_sets("corruptions")


def test_merge_drops_null_unreliable_of_older_files(tmp_path):
    path = model_info_path(tmp_path, "M", dataset="cifar10")
    path.parent.mkdir(parents=True)
    old = {**dataclasses.asdict(full_info()), "unreliable": None}  # what the previous writer produced
    path.write_text(json.dumps(old))
    write_model_info(tmp_path, "M", ModelInfo(dataset="cifar10", clean_acc="91.00"))
    merged = json.loads(path.read_text())
    assert "unreliable" not in merged and merged["clean_acc"] == "91.00"
    assert "footnote" in merged and merged["footnote"] is None  # null footnotes exist in real files: kept


@pytest.mark.parametrize(
    "field", ["link", "name", "authors", "venue", "architecture", "additional_data", "number_forward_passes"]
)
def test_fields_robustbench_reads_are_required(tmp_path, field):
    with pytest.raises(ValueError, match=rf"{field} is missing .*give ") as err:
        write_model_info(tmp_path, "M", full_info(**{field: None}))
    assert "not writing" in str(err.value)
    assert not any(tmp_path.rglob("*.json"))


@pytest.mark.parametrize(("value", "message"), [(None, "external=None"), ("", "external=''"), (55.1, "external=55.1")])
def test_external_must_be_a_percent_string(tmp_path, value, message):
    info = full_info()
    info.extra["external"] = value
    with pytest.raises(ValueError, match=message):
        write_model_info(tmp_path, "M", info)
    assert not any(tmp_path.rglob("*.json"))


def test_corruptions_need_corruptions_acc(tmp_path):
    with pytest.raises(ValueError, match=r"corruptions_acc is missing .*info.extra\['corruptions_acc'\]"):
        write_model_info(tmp_path, "M", full_info(eps=None, autoattack_acc=None), threat_model="corruptions")
    info = full_info(eps=None, autoattack_acc=None)
    info.extra.update(corruptions_acc="80.10", corruptions_mce="not a number")
    with pytest.raises(ValueError, match="corruptions_mce='not a number'"):
        validate_model_info(info, threat_model="corruptions")


def test_model_info_from_result_defaults_are_readable():
    # Before: link/venue/authors defaulted to None (null in the file), which get_leaderboard_bibtex cannot read.
    result = EvalResult(n_examples=10, eps=8 / 255, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    info = model_info_from_result(result, dataset="cifar10", name="FIRE", architecture="WideResNet-34-10")
    assert (info.link, info.authors, info.venue) == ("", "", "N/A")  # the markers of RobustBench's Standard entries
    validate_model_info(info, threat_model="Linf")
    with pytest.raises(ValueError, match="name=None"):
        model_info_from_result(result, dataset="cifar10", name=None, architecture="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="architecture"):
        model_info_from_result(result, dataset="cifar10", name="FIRE")  # type: ignore[call-arg]


# ----------------------------------------------------------------------------------------------- strictness


@pytest.mark.parametrize("model_id", ["M\n", "Zhang2019Theoretically\n", "M\r", " M", "M "])
def test_model_id_with_trailing_newline_or_space_rejected(tmp_path, model_id):
    # Before: "M\n" passed: re.match with "$" matches before a final newline.
    with pytest.raises(ValueError, match="model_id="):
        write_model_info(tmp_path, model_id, full_info())
    with pytest.raises(ValueError, match="model_id="):
        model_info_path(tmp_path, model_id, dataset="cifar10")
    assert not any(tmp_path.rglob("*"))


def test_dataset_and_percent_with_trailing_newline_rejected():
    with pytest.raises(ValueError, match=r"dataset='cifar10\\n'"):
        validate_model_info(full_info(dataset="cifar10\n"))
    for field in ("clean_acc", "autoattack_acc", "reported"):
        with pytest.raises(ValueError, match=rf"{field}='84.92\\n'"):
            validate_model_info(full_info(**{field: "84.92\n"}))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"note": float("nan")}, "note=nan"),
        ({"eps_float": float("inf")}, "eps_float=inf"),
        ({"settings": {"steps": [10, float("-inf")]}}, r"settings.steps\[1\]=-inf"),
    ],
)
def test_non_finite_numbers_refused(tmp_path, extra, message):
    # Before: written as the bare tokens NaN / Infinity, which are not JSON (json.loads(strict JSON) fails).
    info = full_info()
    info.extra.update(extra)
    with pytest.raises(ValueError, match=message):
        write_model_info(tmp_path, "M", info)
    with pytest.raises(ValueError, match=message):
        info.to_json()
    assert not any(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("text", ["8/255\n", " 0.5", "0.5 ", "1_0", "8 / 255", "-0.5", "inf", "nan", "8/255/2", "0x1"])
def test_parse_eps_is_strict(text):
    # Before: "8/255\n", " 0.5" and "1_0" (float() accepts spaces and underscores) passed validation.
    with pytest.raises(ValueError, match="eps="):
        parse_eps(text)


def test_eps_infinite_refused():
    with pytest.raises(ValueError, match="eps='inf'"):
        validate_model_info(full_info(eps="inf"))
    with pytest.raises(ValueError, match="eps=inf"):
        validate_model_info(full_info(eps=float("inf")))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps=inf"):
        format_eps(float("inf"))


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask")
def test_new_file_mode_follows_umask_and_existing_mode_is_kept(tmp_path):
    # Before: new files were 0600 (tempfile.mkstemp) and a rewrite turned a 0644 file into 0600.
    path = write_model_info(tmp_path, "M", full_info())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0o666 & ~0o022, what open(path, "w") gives
    os.umask(0o077)
    assert stat.S_IMODE(write_model_info(tmp_path, "N", full_info()).stat().st_mode) == 0o600
    path.chmod(0o664)
    write_model_info(tmp_path, "M", ModelInfo(dataset="cifar10", clean_acc="91.00"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    assert json.loads(path.read_text())["clean_acc"] == "91.00"
    assert sorted(p.name for p in path.parent.iterdir()) == ["M.json", "N.json"]  # no temp file left


def test_non_utf8_file_error_names_path(tmp_path):
    path = tmp_path / "model_info" / "cifar10" / "Linf" / "M.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(
        json.dumps(dataclasses.asdict(full_info(name="Caf\u00e9"))).encode("latin-1").replace(b"\\u00e9", b"\xe9")
    )
    with pytest.raises(ValueError, match="not UTF-8") as err:
        read_model_info(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="not UTF-8") as err:
        write_model_info(tmp_path, "M", full_info())
    assert str(path) in str(err.value)


def test_output_root_may_contain_dotdot(tmp_path):
    # The output folder is the user's choice: runs/../runs/e is fine (ids from data stay strict).
    root = tmp_path / "runs" / ".." / "runs" / "e"
    path = write_model_info(root, "M", full_info())
    assert path.resolve() == (tmp_path / "runs" / "e" / "model_info" / "cifar10" / "Linf" / "M.json").resolve()
    assert read_model_info(path) == full_info()


# ------------------------------------------------------------------------------ numeric eps, evaluated images


def test_file_written_by_robustbench_update_json_with_numeric_eps_is_read(tmp_path, monkeypatch):
    # RobustBench's benchmark(..., to_disk=True) calls update_json, which writes "eps" as a JSON number; before,
    # read_model_info refused such a file ("eps=0.03137... is not allowed; allowed: a string").
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    monkeypatch.chdir(tmp_path)
    rb_utils.update_json(enums.BenchmarkDataset.cifar_10, enums.ThreatModel.Linf, "Fresh2026Model", 0.9, 0.6,
                         8 / 255)
    path = tmp_path / "model_info" / "cifar10" / "Linf" / "Fresh2026Model.json"
    assert isinstance(json.loads(path.read_text())["eps"], float)  # what RobustBench writes
    info = read_model_info(path, validate=False)  # RobustBench leaves the paper fields to be filled in by hand
    assert info.eps == 8 / 255 and parse_eps(info.eps) == 8 / 255
    assert info.extra["corruptions_acc"] is None
    paper = {k: v for k, v in full_info().to_file_dict().items() if k not in ("eps", "clean_acc", "autoattack_acc")}
    completed = ModelInfo.from_dict({**json.loads(path.read_text()), **paper})  # the fields filled in by hand
    assert completed.extra["corruptions_acc"] is None and completed.eps == 8 / 255
    validate_model_info(completed, threat_model="Linf")  # numeric eps and null corruptions fields are accepted
    written = json.loads(write_model_info(tmp_path / "out", "Fresh2026Model", completed).read_text())
    assert written["eps"] == 8 / 255  # kept as the number it was


@pytest.mark.parametrize("bad", [0, -0.5, float("inf"), True])
def test_numeric_eps_must_be_positive_finite(bad):
    with pytest.raises(ValueError, match="eps="):
        validate_model_info(full_info(eps=bad))


def test_model_info_records_evaluated_images_and_flags_a_subset():
    # Before: `evaluate --n-examples 10` wrote a file that did not say it used 10 images.
    result = EvalResult(n_examples=10, eps=8 / 255, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    info = model_info_from_result(result, dataset="cifar10", name="M", architecture="ResNet-18", footnote="EMA.")
    assert info.extra == {"n_examples": 10}
    assert info.footnote == ("EMA. Evaluated on the first 10 of the 10,000 test images RobustBench evaluates: not "
                             "a leaderboard result.")
    assert subset_of(info) == (10, 10_000)
    validate_model_info(info, threat_model="Linf")
    full = EvalResult(n_examples=10_000, eps=8 / 255, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    info = model_info_from_result(full, dataset="cifar10", name="M", architecture="ResNet-18")
    assert info.footnote is None and info.extra == {"n_examples": 10_000} and subset_of(info) is None
    imagenet = EvalResult(n_examples=5_000, eps=4 / 255, norm="Linf", clean_acc=0.7, autoattack_acc=0.4)
    assert model_info_from_result(imagenet, dataset="imagenet", name="M", architecture="RN-50").footnote is None
    digits = EvalResult(n_examples=100, eps=0.1, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    assert model_info_from_result(digits, dataset="digits", name="M", architecture="c").footnote is None  # no size
    info = model_info_from_result(digits, dataset="digits", name="M", architecture="c", n_test=450)
    assert info.footnote == "Evaluated on the first 100 of the 450 test images."


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True, None])
def test_n_examples_field_is_checked(bad):
    info = full_info()
    info.extra["n_examples"] = bad
    with pytest.raises(ValueError, match="n_examples="):
        validate_model_info(info)


@pytest.mark.parametrize("venue", [DEMO_VENUE, PRESET_VENUE])
def test_demo_and_preset_venues_render_in_robustbench_bibtex(tmp_path, monkeypatch, venue):
    # Before: venue "fire_plugin demo" gave RobustBench's BibTeX code journal={fire_plugin}, year={demo}.
    rb_utils = import_robustbench("utils")
    write_model_info(tmp_path, "Demo2026Fire", full_info(venue=venue))
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        _, bibtex = rb_utils.get_leaderboard_bibtex("cifar10", "Linf")
    assert "\tjournal\t= {fire_plugin},\n\tyear\t= {2026}\n" in bibtex

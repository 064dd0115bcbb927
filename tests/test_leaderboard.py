"""Leaderboard placement: ranks on hand-made entries, on the shipped RobustBench snapshot, the figure, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fire_plugin.leaderboard import (
    SNAPSHOT_DIR,
    load_entries,
    place,
    place_info,
    snapshot_source,
    supported_leaderboards,
    write_placement,
)
from fire_plugin.robustbench_io import ModelInfo

# (model_id, autoattack_acc, clean_acc, extra fields); the order below is the expected leaderboard order
HAND_MADE = [
    ("A", "60.00", "90.00", {}),
    ("B", "55.00", "85.00", {"unreliable": False}),
    ("C", "55.00", "80.00", {}),  # ties B on robust accuracy: behind it by clean accuracy
    ("E", "58.00", "75.00", {"external": "45.00"}),  # ranked by external (45), not AutoAttack (58)
    ("F", 40, "70.00", {"unreliable": True}),  # a number, not a string
    ("G", "40", "70.00", {}),  # exactly equal to F: they share a rank
]


def _write(root: Path, dataset: str, threat_model: str, model_id: str, data: dict) -> Path:
    path = root / dataset / threat_model / f"{model_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture()
def entries_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model_info"
    for model_id, aa, clean, extra in HAND_MADE:
        _write(root, "cifar10", "Linf", model_id,
               {"name": f"paper {model_id}", "dataset": "cifar10", "eps": "8/255", "clean_acc": clean,
                "reported": "", "autoattack_acc": aa, **extra})
    # a corruptions folder (no AutoAttack accuracy) must be ignored
    _write(root, "cifar10", "corruptions", "Corr", {"dataset": "cifar10", "clean_acc": "90.00",
                                                    "corruptions_acc": "80.00"})
    return root


def _model(tmp_path: Path, aa: str, clean: str, *, model_id: str = "Mine", dataset: str = "cifar10",
           threat_model: str = "Linf", **extra: object) -> Path:
    data = {"dataset": dataset, "eps": "8/255", "clean_acc": clean, "autoattack_acc": aa, **extra}
    return _write(tmp_path / "mine", dataset, threat_model, model_id, data)


def test_hand_made_order_and_ranks(entries_dir: Path) -> None:
    entries = load_entries("cifar10", "Linf", entries_dir=entries_dir)
    assert [e.model_id for e in entries] == ["A", "B", "C", "E", "F", "G"]
    assert [e.rank for e in entries] == [1, 2, 3, 4, 5, 5]
    e = entries[3]
    assert (e.robust_acc, e.autoattack_acc, e.external) == (45.0, 58.0, 45.0)
    assert entries[4].unreliable and not entries[0].unreliable  # missing field -> False
    assert entries[4].autoattack_acc == 40.0


def test_place_top_bottom_between(entries_dir: Path, tmp_path: Path) -> None:
    top = place(_model(tmp_path, "70.00", "95.00"), entries_dir=entries_dir)
    assert (top.rank, top.above, [e.model_id for e in top.below]) == (1, [], ["A", "B", "C"])
    assert [e.rank for e in top.below] == [2, 3, 4]  # the entries move down by one

    bottom = place(_model(tmp_path, "10.00", "99.00"), entries_dir=entries_dir, neighbours=2)
    assert (bottom.rank, bottom.below, bottom.n_entries) == (7, [], 6)
    assert [e.model_id for e in bottom.above] == ["F", "G"]

    # robust accuracy equal to B and C, clean accuracy between them: between B and C
    mid = place(_model(tmp_path, "55.00", "82.00"), entries_dir=entries_dir, neighbours=1)
    assert (mid.rank, mid.above[0].model_id, mid.below[0].model_id, mid.tied) == (3, "B", "C", [])
    assert mid.below[0].rank == 4


def test_place_equal_to_an_entry_shares_its_rank(entries_dir: Path, tmp_path: Path) -> None:
    p = place(_model(tmp_path, "55.00", "85.00"), entries_dir=entries_dir)
    assert p.rank == 2
    assert [(e.model_id, e.rank) for e in p.tied] == [("B", 2)]
    assert [(e.model_id, e.rank) for e in p.above] == [("A", 1)]
    assert [(e.model_id, e.rank) for e in p.below] == [("C", 4), ("E", 5), ("F", 6)]  # competition ranks
    assert "| **2** | **Mine** |" in p.to_markdown()


def test_place_a_leaderboard_entry_is_not_ranked_against_itself(entries_dir: Path) -> None:
    p = place(entries_dir / "cifar10" / "Linf" / "C.json", entries_dir=entries_dir)
    assert (p.rank, p.n_entries, p.tied) == (3, 5, [])
    assert "C" not in [e.model_id for e in p.entries]
    assert any("left out" in n for n in p.notes)


def test_model_ranked_by_its_external_field(entries_dir: Path, tmp_path: Path) -> None:
    p = place(_model(tmp_path, "59.00", "80.00", external="50.00"), entries_dir=entries_dir, neighbours=1)
    assert (p.rank, p.model.robust_acc, p.above[0].model_id, p.below[0].model_id) == (4, 50.0, "C", "E")


def test_errors(entries_dir: Path, tmp_path: Path) -> None:
    digits = _model(tmp_path, "80.00", "95.00", dataset="digits")
    with pytest.raises(ValueError, match=r"dataset='digits'.*supported: cifar10 \(L2, Linf\), cifar100"):
        place(digits)
    with pytest.raises(ValueError, match=r"dataset='digits'.*supported: cifar10 \(Linf\)$"):
        place(digits, entries_dir=entries_dir)
    with pytest.raises(ValueError, match="threat_model='corruptions'"):
        place(_model(tmp_path, "80.00", "95.00", threat_model="corruptions"))
    with pytest.raises(ValueError, match=r"dataset='cifar100' has no .*supported: cifar10 \(Linf\)"):
        place(_model(tmp_path, "80.00", "95.00", dataset="cifar100"), entries_dir=entries_dir)
    with pytest.raises(ValueError, match="dataset='cifar100' with threat_model='L2'"):  # no cifar100 L2 board
        place(_model(tmp_path, "80.00", "95.00", dataset="cifar100", threat_model="L2"))
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"dataset": "cifar10", "clean_acc": "90.00", "autoattack_acc": "50.00"}))
    with pytest.raises(ValueError, match="pass threat_model"):
        place(loose)
    assert place(loose, threat_model="Linf").rank > 1
    no_aa = _model(tmp_path, "80.00", "95.00", model_id="NoAA")
    no_aa.write_text(json.dumps({"dataset": "cifar10", "clean_acc": "90.00"}))
    with pytest.raises(ValueError, match="autoattack_acc is missing"):
        place(no_aa)
    with pytest.raises(ValueError, match="autoattack_acc='n/a'"):
        place(_model(tmp_path, "n/a", "95.00"))
    with pytest.raises(ValueError, match="entries_dir="):
        place(loose, threat_model="Linf", entries_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="neighbours=-1"):
        place(loose, threat_model="Linf", neighbours=-1)


def test_eps_mismatch_warns(tmp_path: Path) -> None:
    path = _model(tmp_path, "70.00", "90.00")
    data = json.loads(path.read_text())
    data["eps"] = "4/255"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="eps=4/255.*eps=8/255"):
        p = place(path)
    assert any("not comparable" in n for n in p.notes)
    data["eps"] = "0.031"  # 1.2% below 8/255: the same leaderboard, as RobustBench's own 0.031 entries
    path.write_text(json.dumps(data))
    assert not any("eps" in n for n in place(path).notes)


def test_entries_dir_accepts_a_checkout_root(entries_dir: Path, tmp_path: Path) -> None:
    a = place(_model(tmp_path, "57.00", "80.00"), entries_dir=entries_dir)
    b = place(_model(tmp_path, "57.00", "80.00"), entries_dir=entries_dir.parent)
    assert a.rank == b.rank == 2


# --------------------------------------------------------------------------------------------------
# the shipped snapshot, against the raw JSON files read here


def _raw(dataset: str, threat_model: str) -> list[tuple[str, float, float]]:
    out = []
    for path in sorted((SNAPSHOT_DIR / "model_info" / dataset / threat_model).glob("*.json")):
        d = json.loads(path.read_text())
        # robustbench.utils.ACC_FIELDS[Linf] = ("external", "autoattack_acc"): the first present field ranks
        key = d["external"] if "external" in d else d["autoattack_acc"]
        out.append((path.stem, float(key), float(d["clean_acc"])))
    return out


def test_snapshot_contents_and_license() -> None:
    source = snapshot_source()
    assert len(source["commit"]) == 40 and source["license"] == "MIT"
    for name, count in source["counts"].items():
        dataset, tm = name.split("/")
        assert len(_raw(dataset, tm)) == count
    assert source["counts"]["cifar10/Linf"] >= 90  # measured: 99 at commit 78fcc9e
    assert supported_leaderboards() == {"cifar10": ["L2", "Linf"], "cifar100": ["Linf"], "imagenet": ["Linf"]}
    license_text = (SNAPSHOT_DIR / "LICENSE-robustbench").read_text()
    assert "MIT License" in license_text and "Francesco Croce" in license_text
    assert source["commit"] in (SNAPSHOT_DIR / "README.md").read_text()


@pytest.mark.parametrize("dataset,threat_model", [("cifar10", "Linf"), ("cifar10", "L2"), ("cifar100", "Linf"),
                                                  ("imagenet", "Linf")])
def test_snapshot_order_matches_raw_files(dataset: str, threat_model: str) -> None:
    raw = sorted(_raw(dataset, threat_model), key=lambda r: (-r[1], -r[2], r[0]))
    entries = load_entries(dataset, threat_model)
    assert [e.model_id for e in entries] == [r[0] for r in raw]
    assert [e.robust_acc for e in entries] == [r[1] for r in raw]


def test_snapshot_cifar10_linf_aa_60(tmp_path: Path) -> None:
    model = (60.0, 85.0)
    raw = _raw("cifar10", "Linf")
    ahead = [r for r in raw if (r[1], r[2]) > model]
    behind = [r for r in raw if (r[1], r[2]) < model]
    just_above = min(ahead, key=lambda r: (r[1], r[2]))
    just_below = max(behind, key=lambda r: (r[1], r[2]))
    assert len(ahead) + len(behind) == len(raw)  # no exact tie in this snapshot

    p = place(_model(tmp_path, "60.00", "85.00"))
    assert p.rank == len(ahead) + 1
    assert p.above[-1].model_id == just_above[0]
    assert p.below[0].model_id == just_below[0]
    assert p.above[-1].robust_acc > 60.0 > p.below[0].robust_acc
    # the real tie of the snapshot: Kang2021Stable and Rebuffi2021Fixing_70_16_cutmix_ddpm both rank by 64.20
    order = [e.model_id for e in p.entries]
    assert order.index("Kang2021Stable") + 1 == order.index("Rebuffi2021Fixing_70_16_cutmix_ddpm")


def test_png_and_files_written(tmp_path: Path) -> None:
    from fire_plugin.plots import plot_leaderboard

    p = place_info(ModelInfo(dataset="cifar10", eps="8/255", clean_acc="86.00", autoattack_acc="60.00"),
                   threat_model="Linf", model_id="Mine")
    png = tmp_path / "placement.png"
    plot_leaderboard(p).savefig(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    paths = write_placement(p, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["rank"] == p.rank and saved["model"]["model_id"] == "Mine"
    assert saved["above"][-1]["model_id"] == p.above[-1].model_id
    md = paths["markdown"].read_text()
    assert f"#{p.rank} of {p.n_entries + 1}" in md and "78fcc9e" in md
    with pytest.raises(ValueError, match="stem="):
        write_placement(p, tmp_path, stem="../x")


# ------------------------------------------------------------------------- impossible files, subsets, numeric eps


def test_placed_file_with_autoattack_or_external_above_clean_is_refused(entries_dir: Path, tmp_path: Path) -> None:
    # Before: ranked #1 without a note (AutoAttack 70 on a model with 50% clean accuracy cannot happen).
    with pytest.raises(ValueError, match=r"autoattack_acc 70.00 is above clean_acc 50.00"):
        place(_model(tmp_path, "70.00", "50.00"), entries_dir=entries_dir)
    with pytest.raises(ValueError, match=r"external 60.00 is above clean_acc 55.00"):
        place(_model(tmp_path, "50.00", "55.00", external="60.00"), entries_dir=entries_dir)
    assert place(_model(tmp_path, "50.00", "50.00"), entries_dir=entries_dir).rank == 4  # equal is possible


def test_placed_file_whose_dataset_disagrees_with_its_folder_is_refused(entries_dir: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "mine", "cifar100", "Linf", "Mixed",
                  {"dataset": "cifar10", "eps": "8/255", "clean_acc": "80.00", "autoattack_acc": "50.00"})
    with pytest.raises(ValueError, match=r"dataset field says 'cifar10' but it sits in the folder 'cifar100'"):
        place(path, entries_dir=entries_dir)
    loose = tmp_path / "Loose.json"  # outside RobustBench's layout the field decides, as before
    loose.write_text(path.read_text())
    assert place(loose, threat_model="Linf", entries_dir=entries_dir).dataset == "cifar10"


def test_impossible_entries_are_flagged_not_dropped(entries_dir: Path, tmp_path: Path) -> None:
    _write(entries_dir, "cifar10", "Linf", "Odd", {"dataset": "cifar100", "eps": "8/255", "clean_acc": "30.00",
                                                  "autoattack_acc": "65.00"})
    entries = {e.model_id: e for e in load_entries("cifar10", "Linf", entries_dir=entries_dir)}
    assert len(entries["Odd"].problems) == 2 and entries["A"].problems == ()
    p = place(_model(tmp_path, "50.00", "80.00"), entries_dir=entries_dir, neighbours=10)
    (note,) = [n for n in p.notes if "look wrong" in n]
    assert "Odd: autoattack_acc 65.00 is above clean_acc 30.00" in note and "'cifar100'" in note
    assert p.above[0].model_id == "Odd" and p.rank == 5  # kept in its place (by its folder), and marked
    assert "| Odd (flagged: see the notes) |" in write_placement(p, tmp_path / "out")["markdown"].read_text()


def test_snapshot_entry_with_other_dataset_field_is_named() -> None:
    # RobustBench's cifar100/Linf/Hendrycks2019Using.json says "cifar10": ranked on cifar100 and named.
    p = place_info(ModelInfo(dataset="cifar100", eps="8/255", clean_acc="60.00", autoattack_acc="30.00"),
                   threat_model="Linf")
    assert any("Hendrycks2019Using: its dataset field says 'cifar10'" in n for n in p.notes)


def test_subset_evaluation_is_flagged(entries_dir: Path, tmp_path: Path) -> None:
    # Before: a file from `evaluate --n-examples 10` was ranked without comment.
    path = _model(tmp_path, "50.00", "80.00", n_examples=10)
    with pytest.warns(UserWarning, match="evaluated on 10 test images, not the 10,000"):
        p = place(path, entries_dir=entries_dir)
    assert any("not comparable" in n and "10 test images" in n for n in p.notes)
    full = _model(tmp_path, "50.00", "80.00", model_id="Full", n_examples=10_000)
    assert not any("test images" in n for n in place(full, entries_dir=entries_dir).notes)


def test_numeric_eps_is_read_and_placed(tmp_path: Path) -> None:
    # RobustBench's update_json (benchmark(..., to_disk=True)) writes "eps" as a JSON number.
    path = _write(tmp_path / "mine", "cifar10", "Linf", "Numeric",
                  {"dataset": "cifar10", "eps": 8 / 255, "clean_acc": "85.0", "autoattack_acc": "55.0"})
    p = place(path)
    assert p.rank > 1 and not any("eps" in n for n in p.notes)
    data = json.loads(path.read_text())
    data["eps"] = 4 / 255
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="not comparable"):
        place(path)
    l2 = _write(tmp_path / "mine", "cifar10", "L2", "NumericL2",
                {"dataset": "cifar10", "eps": 0.5, "clean_acc": "90.0", "autoattack_acc": "70.0"})
    assert not any("eps" in n for n in place(l2).notes)

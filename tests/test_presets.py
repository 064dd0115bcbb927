"""Presets: the paper's numbers, --set parsing, smoke runs of every preset, resume; the mixed original/extra loader."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fire_plugin.data import mixed_loader
from fire_plugin.engine import ConfigMismatchError, load_checkpoint
from fire_plugin.presets import (
    DEFAULTS,
    SCHEMA,
    describe_preset,
    describe_presets,
    list_presets,
    load_preset,
    parse_overrides,
    random_crop_flip,
    run_preset,
)
from fire_plugin.robustbench_io import read_model_info

ALL = list_presets()
CIFAR = [n for n in ALL if n.startswith("cifar")]


def test_every_expected_preset_ships():
    expected = {"mnist-smallcnn-fire", "mnist-smallcnn-trades", "cifar10-wrn28-extra-fire",
                "cifar10-wrn28-extra-fire-ema", "mnist-lenet-isometry"}
    expected |= {f"{d}-wrn34-{m}" for d in ("cifar10", "cifar100") for m in ("fire", "trades", "hellinger", "madry")}
    assert set(ALL) == expected


# The numbers of the FIRE paper's section 5.1 and of the partial-isometry paper's section 4.2, written out here
# independently of the preset files (batch 128 as TRADES; the paper's text says 256: --set batch_size=256).
PAPER_CIFAR = {"model": "wrn34_10", "eps_step": 0.007, "attack_steps": 10, "batch_size": 128, "epochs": 100,
               "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "schedule": "multistep",
               "augment": True}
WEIGHTS = {"fire": 3.0, "trades": 6.0, "hellinger": 12.0}


@pytest.mark.parametrize("name", [n for n in CIFAR if "wrn34" in n])
def test_cifar_presets_follow_section_5_1(name):
    cfg = load_preset(name)
    assert {k: cfg[k] for k in PAPER_CIFAR} == PAPER_CIFAR
    assert cfg["eps"] == pytest.approx(8 / 255, abs=1e-15) and cfg["dataset"] == name.split("-")[0]
    method = name.rsplit("-", 1)[1]
    assert cfg["method"] == method
    if method in WEIGHTS:
        assert cfg["lam"] == WEIGHTS[method]
    assert load_preset(name, overrides=["eps=0.031"])["eps"] == 0.031  # the paper's written value


def test_mnist_and_isometry_presets():
    for name in ("mnist-smallcnn-fire", "mnist-smallcnn-trades"):
        cfg = load_preset(name)
        assert (cfg["model"], cfg["eps"], cfg["attack_steps"], cfg["eps_step"], cfg["lr"], cfg["momentum"],
                cfg["epochs"], cfg["batch_size"]) == ("small_cnn", 0.3, 40, 0.01, 0.01, 0.9, 100, 128)
    iso = load_preset("mnist-lenet-isometry")
    assert (iso["model"], iso["method"], iso["lr"], iso["momentum"], iso["batch_size"], iso["epochs"],
            iso["delta_over_epsilon"], iso["eta_min"], iso["eta_max"], iso["schedule"]) == (
        "lenet_pi", "isometry", 0.01, 0.0, 32, 30, 1e-3, 0.002, 0.006, "constant")
    extra = load_preset("cifar10-wrn28-extra-fire")
    assert (extra["model"], extra["schedule"], extra["epochs"], extra["extra_fraction"]) == (
        "wrn28_10", "cosine", 200, 0.5)
    modern = load_preset("cifar10-wrn28-extra-fire-ema")
    assert modern["ema"] and modern["ema_decay"] == 0.999 and modern["extra_fraction"] == 0.7


def test_overrides_are_parsed_and_type_checked():
    assert parse_overrides(["eps=8/255", "epochs=3", "ema=yes", "extra_data=none", "eval_attacks=clean,pgd"]) == {
        "eps": 8 / 255, "epochs": 3, "ema": True, "extra_data": None, "eval_attacks": ["clean", "pgd"]}
    cases = [
        ("epoch=3", r"unknown key 'epoch'.*allowed keys: \[.*'epochs'"),
        ("epochs=1.5", r"epochs='1.5' is not allowed; allowed: an integer >= 1"),
        ("eps=-0.1", r"eps='-0.1' is not allowed; allowed: a finite number .* > 0"),
        ("eps=nan", r"eps='nan' is not allowed"),
        ("lr=fast", r"lr='fast' is not allowed"),
        ("method=pgd", r"method='pgd' is not allowed; allowed: one of \['fire', 'trades', 'hellinger', 'madry'"),
        ("ema=maybe", r"ema='maybe' is not allowed; allowed: true or false"),
        ("extra_fraction=1", r"extra_fraction='1' is not allowed; allowed: .* < 1"),
        ("eval_attacks=clean,cw", r"eval_attacks='clean,cw' is not allowed"),
        ("epochs", r"--set 'epochs' is not allowed; allowed: key=value"),
    ]
    for item, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            load_preset("cifar10-wrn34-fire", overrides=[item])
    with pytest.raises(ValueError, match=r"preset 'cifar10-wrn34-fir' does not exist; allowed: \["):
        load_preset("cifar10-wrn34-fir")
    with pytest.raises(ValueError, match="select_best=true needs a validation split"):
        load_preset("cifar10-wrn34-fire", overrides=["val_size=0"])
    with pytest.raises(ValueError, match="eta_min"):
        load_preset("mnist-lenet-isometry", overrides=["eta_min=0.01"])
    assert set(load_preset("mnist-lenet-isometry")) == set(DEFAULTS)


@pytest.mark.parametrize("name", ALL)
def test_every_preset_runs_a_smoke_run(name, tmp_path):
    res = run_preset(name, out=tmp_path, smoke=True, tiny=True, keep_checkpoints=True,
                     verbose=False)  # measured 0.4 - 0.8 s each
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["preset"] == name and cfg["smoke"] is True and set(cfg) >= set(DEFAULTS)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["eval"]["n_examples"] == 4 and len(saved["history"]) == 1 and saved["wall_seconds"] > 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 1 and rows[0]["preset"] == name and float(rows[0]["clean_acc"]) == res["eval"]["clean_acc"]
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    if res["config"]["select_best"]:
        best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
        assert best["epoch"] == 0 and best["weights"] == ("ema" if res["config"]["ema"] else "raw")
    if "autoattack" in res["config"]["eval_attacks"]:
        info = read_model_info(res["paths"]["model_info"])
        assert info.dataset == res["config"]["dataset"] and "Smoke run" in info.footnote
        assert info.additional_data == (res["config"]["extra_fraction"] > 0)
    else:
        assert res["paths"]["model_info"] is None


def test_rerun_resumes_and_a_changed_config_is_refused(tmp_path):
    kw = {"smoke": True, "tiny": True, "keep_checkpoints": True, "verbose": False}
    first = run_preset("mnist-smallcnn-fire", out=tmp_path, **kw)
    # finished: the saved results come back
    again = run_preset("mnist-smallcnn-fire", out=tmp_path, **kw)
    assert again == json.loads(json.dumps(first))
    (tmp_path / "results.json").unlink()  # an interrupted run: training resumes from last.pt (nothing left to do)
    resumed = run_preset("mnist-smallcnn-fire", out=tmp_path, **kw)
    assert resumed["history"] == first["history"] and resumed["eval"]["clean_acc"] == first["eval"]["clean_acc"]
    (tmp_path / "results.json").unlink()
    with pytest.raises(ConfigMismatchError, match=r"lam: checkpoint 3.0 vs now 6.0"):
        run_preset("mnist-smallcnn-fire", overrides=["lam=6"], out=tmp_path, **kw)
    # runtime keys (workers, evaluation size, ...) may change on resume
    run_preset("mnist-smallcnn-fire", overrides=["workers=0", "compile=false"], out=tmp_path, **kw)


def test_smoke_keeps_no_checkpoints_unless_asked(tmp_path):
    res = run_preset("mnist-smallcnn-fire", out=tmp_path, smoke=True, tiny=True, verbose=False)
    assert res["paths"]["checkpoints"] is None
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / ".smoke-checkpoints").exists()
    assert "best.pt (epoch 1" in res["weights"]  # best.pt was still selected and evaluated before the clean-up


def test_the_preset_model_is_built_for_the_chosen_dataset(tmp_path):
    # issue 16: lenet_pi of mnist-lenet-isometry is built for 8x8 digits (it crashed with a matrix-shape error)
    res = run_preset("mnist-lenet-isometry", overrides=["dataset=digits"], out=tmp_path / "a", smoke=True,
                     verbose=False)
    assert res["config"]["dataset"] == "digits" and res["eval"]["n_examples"] == 4
    # an architecture that cannot take the images is refused in one line naming both
    with pytest.raises(ValueError, match=r"model 'small_cnn' cannot take digits images \(1x8x8\)"):
        run_preset("mnist-smallcnn-fire", overrides=["dataset=digits"], out=tmp_path / "b", smoke=True, verbose=False)


def test_output_names_follow_the_model_trained(tmp_path):
    res = run_preset("cifar10-wrn34-fire", overrides=["model=digits_cnn"], out=tmp_path, smoke=True, verbose=False)
    info = read_model_info(res["paths"]["model_info"])
    assert res["paths"]["model_info"].endswith("FirePluginCifar10DigitsCnnFire.json")
    assert info.architecture == "DigitsCNN" and "--set model=digits_cnn" in info.name
    own = run_preset("mnist-smallcnn-fire", out=tmp_path / "own", smoke=True, tiny=True, verbose=False)
    assert own["paths"]["model_info"].endswith("FirePluginMnistSmallcnnFire.json")


def test_n_train_trains_on_a_subset(tmp_path):
    cfg = load_preset("mnist-smallcnn-fire", overrides=["n_train=64"])
    assert cfg["n_train"] == 64 and load_preset("mnist-smallcnn-fire")["n_train"] is None
    assert parse_overrides(["n_train=none"]) == {"n_train": None}
    with pytest.raises(ValueError, match=r"n_train='0' is not allowed; allowed: an integer >= 1, or none"):
        parse_overrides(["n_train=0"])
    # smoke data has 4 training images in batches of 2: n_train=2 keeps one batch
    res = run_preset("mnist-smallcnn-fire", overrides=["n_train=2"], out=tmp_path, smoke=True, tiny=True,
                     verbose=False)
    record = res["history"][0]
    assert round(record["samples_per_s"] * record["seconds"]) == 2  # images trained in the epoch (4 without n_train)
    with pytest.raises(ValueError, match=r"n_train=1 is smaller than a batch"):
        run_preset("mnist-smallcnn-fire", overrides=["n_train=1"], out=tmp_path / "b", smoke=True, tiny=True,
                   verbose=False)


def test_presets_list_and_show_print_every_preset_and_key():
    listing = describe_presets()
    for name in list_presets():
        assert name in listing
    for key, spec in SCHEMA.items():
        if key != "description":
            assert key in listing and spec.allowed() in listing
    shown = describe_preset("cifar10-wrn34-fire").splitlines()
    rows = {line.split()[0]: line for line in shown[2:-2] if line.strip()}
    assert rows["eps"].split()[1:3] == ["*", "8/255"] and "float" in rows["eps"]
    assert rows["n_train"].split()[1:3] == ["none", "int|none"]


def test_extra_data_presets_need_the_data(tmp_path):
    with pytest.raises(ValueError, match=r"--set extra_data=PATH"):
        run_preset("cifar10-wrn28-extra-fire", out=tmp_path, verbose=False)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        run_preset("cifar10-wrn28-extra-fire", overrides=[f"extra_data={tmp_path / 'missing.npz'}"], out=tmp_path,
                   verbose=False)


@pytest.mark.slow
def test_full_size_wrn34_smoke(tmp_path):
    """The real WRN-34-10 on 2 batches of 2 images (measured: 17 s on 1 thread)."""
    res = run_preset("cifar10-wrn34-fire", out=tmp_path, smoke=True, verbose=False)
    assert res["config"]["model"] == "wrn34_10" and "widen factor 1" not in read_model_info(
        res["paths"]["model_info"]).architecture


# ----------------------------------------------------------------------------------------------- augmentation


def test_random_crop_flip_is_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.rand(3, 8, 8)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    windows = [padded[:, i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
    flips = 0
    for _ in range(40):
        out = random_crop_flip(x)
        plain = any(torch.equal(out, w) for w in windows)
        flipped = any(torch.equal(out.flip(-1), w) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 5 < flips < 35  # about half are flipped (binomial(40, 0.5): outside (5, 35) has probability < 1e-6)


# ----------------------------------------------------------------------------------------------- mixed loader


def _two_sets(n_orig=60, n_more=200):
    orig = TensorDataset(torch.rand(n_orig, 1, 4, 4), torch.zeros(n_orig, dtype=torch.long))
    more = TensorDataset(torch.rand(n_more, 1, 4, 4), torch.ones(n_more, dtype=torch.long))
    return orig, more


def test_mixed_loader_counts_per_batch_and_covers_the_original_set():
    orig, more = _two_sets()
    loader = mixed_loader(orig, more, batch_size=10, extra_fraction=0.7, seed=3, batches_per_epoch=20)
    batches = list(loader)
    assert len(batches) == len(loader) == 20
    assert [int(y.sum()) for _, y in batches] == [7] * 20  # round(10 * 0.7) extra (label 1) in every batch
    # the original images of one epoch: 20 batches x 3 = 60 = one permutation of the original set
    seen = torch.cat([x[:3] for x, _ in batches]).flatten(1)
    order = [int((orig.tensors[0].flatten(1) == row).all(1).nonzero()) for row in seen]
    assert sorted(order) == list(range(60))
    # the default epoch length is RST's: as many batches as the original set alone gives
    assert len(mixed_loader(orig, more, batch_size=10, extra_fraction=0.3)) == 6
    assert [int(y.sum()) for _, y in mixed_loader(orig, more, batch_size=10, extra_fraction=0.3)] == [3] * 6


def test_mixed_loader_is_deterministic_per_seed_and_epoch_and_shards():
    orig, more = _two_sets()

    def epoch_batches(seed, epoch, shard=None):
        loader = mixed_loader(orig, more, batch_size=8, extra_fraction=0.5, seed=seed)
        sampler = loader.batch_sampler if shard is None else loader.batch_sampler.shard(*shard)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(0)
    a = epoch_batches(1, 0)
    torch.manual_seed(99)  # the global RNG plays no part
    assert epoch_batches(1, 0) == a
    assert epoch_batches(1, 1) != a and epoch_batches(2, 0) != a
    ranks = [epoch_batches(1, 0, (2, r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 8 batches over 2 ranks
    assert sorted(ranks[0] + ranks[1]) == sorted(a)


def test_mixed_loader_reads_npz_and_names_bad_files(tmp_path):
    orig = TensorDataset(torch.rand(20, 3, 4, 4), torch.zeros(20, dtype=torch.long))
    images = np.random.default_rng(0).integers(0, 256, size=(12, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "extra.npz", image=images, label=np.arange(12) % 3 + 1)
    loader = mixed_loader(orig, tmp_path / "extra.npz", batch_size=4, extra_fraction=0.5, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 4, 4) and x.dtype == torch.float32 and (y[2:] >= 1).all()
    extra_images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, C, H, W) in [0, 1]
    assert all(any(torch.equal(img, e) for e in extra_images) for img in x[2:])
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        mixed_loader(orig, tmp_path / "nothing.npz", batch_size=4)
    np.savez(tmp_path / "bad.npz", x=images, y=np.zeros(12))
    with pytest.raises(ValueError, match=r"lacks the keys \['image', 'label'\]"):
        mixed_loader(orig, tmp_path / "bad.npz", batch_size=4)
    np.savez(tmp_path / "float.npz", image=images.astype(np.float32), label=np.zeros(12, dtype=np.int64))
    with pytest.raises(ValueError, match="uint8 of shape"):
        mixed_loader(orig, tmp_path / "float.npz", batch_size=4)
    with pytest.raises(ValueError, match="extra_fraction=1.0 is not allowed"):
        mixed_loader(orig, orig, batch_size=4, extra_fraction=1.0)


def test_presets_list_and_show_answer_without_importing_torch():
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom fire_plugin.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    codes = [main(['presets', 'list']), main(['presets', 'show', 'cifar10-wrn34-fire'])]\n"
            "print(codes, 'torch' in sys.modules, len(out.getvalue().splitlines()) > 50)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[-2] == "[0, 0] False True", done.stdout + done.stderr

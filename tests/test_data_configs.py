"""Configs alone wire datasets: a BHSig260-like folder loads through `signature_folder`; the
Kaggle pair lists load as a protocol of their own."""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from configs import bhsig260, sigcomp, synthetic
from siamjax.data import Data


def _scan(path, seed):
    """A made-up 'scan': a few dark polylines on white paper, saved as TIFF."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (220, 100), 255)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        pts = [tuple(int(v) for v in p) for p in rng.uniform([10, 10], [210, 90], (6, 2))]
        draw.line(pts, fill=int(rng.integers(0, 60)), width=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="TIFF")


def _bhsig_folder(root):
    """8 writers x (3 genuine + 3 forged) made-up scans in BHSig260's Bengali layout."""
    for w in range(1, 9):
        for n in range(1, 4):
            _scan(root / "Bengali" / str(w) / f"B-S-{w}-G-{n:02d}.tif", seed=100 * w + n)
            _scan(root / "Bengali" / str(w) / f"B-S-{w}-F-{n:02d}.tif", seed=1000 * w + n)
    (root / "Bengali" / "1" / "Thumbs.db").write_bytes(b"\0")  # Ignored, not an error.


def _bhsig_config(tmp_path):
    """configs/bhsig260.py on a made-up folder under tmp_path, at 32x48, 25% / 25% of writers."""
    _bhsig_folder(tmp_path / "data" / "BHSig260")
    cfg = bhsig260.get_config()
    cfg.data_dir = str(tmp_path / "data")
    cfg.tfds_data_dir = str(tmp_path / "tfds")
    cfg.image_height, cfg.image_width = 32, 48
    cfg.split.val_fraction = cfg.split.test_fraction = 0.25
    return cfg


def test_a_bhsig260_layout_loads_with_the_config_only(tmp_path):
    cfg = _bhsig_config(tmp_path)
    data = Data(cfg)
    cat = data.catalog
    assert len(cat) == 48 and len(set(cat.writer)) == 8
    assert int(cat.is_genuine.sum()) == 24
    assert cat.images.shape == (48, 32, 48, 1) and cat.images.dtype == np.uint8
    assert sorted(sum(data.splits.values(), [])) == sorted(set(cat.writer))
    assert set(data.eval_pairs) == {"validation", "test"}


def test_an_absolute_folder_root_needs_no_data_dir(tmp_path, monkeypatch):
    """`--config.real.folder_root=/abs/path` (documented in configs/default.py) builds from that
    folder: no data dir (nor TFDS's default manual dir) is needed."""
    root = tmp_path / "elsewhere" / "BHSig260"
    _bhsig_folder(root)
    monkeypatch.delenv("SIAMJAX_DATA_DIR", raising=False)
    cfg = bhsig260.get_config()
    cfg.data_dir = ""
    cfg.real.folder_root = str(root)
    assert os.path.isabs(cfg.real.folder_root)
    cfg.tfds_data_dir = str(tmp_path / "tfds")
    cfg.image_height, cfg.image_width = 32, 48
    cfg.split.val_fraction = cfg.split.test_fraction = 0.25
    data = Data(cfg)
    cat = data.catalog
    assert len(cat) == 48 and len(set(cat.writer)) == 8 and int(cat.is_genuine.sum()) == 24
    # Paths are relative to the root, as with a root under the data dir.
    assert "Bengali/1/B-S-1-G-01.tif" in set(cat.path)


def test_save_writes_the_evaluation_pairs_and_splits(tmp_path):
    """Data computes; `save` writes pairs/<split>.json and pairs/splits.json into the workdir."""
    cfg = synthetic.get_config("tiny")
    cfg.tfds_data_dir = str(tmp_path / "tfds")
    data = Data(cfg)
    workdir = tmp_path / "workdir"
    assert not workdir.exists()
    data.save(str(workdir))
    assert sorted(os.listdir(workdir / "pairs")) == ["splits.json", "test.json", "validation.json"]
    assert json.loads((workdir / "pairs" / "splits.json").read_text()) == data.splits
    for name, pairs in data.eval_pairs.items():
        doc = json.loads((workdir / "pairs" / f"{name}.json").read_text())
        assert doc["counts"] == pairs.counts() and len(doc["pairs"]) == len(pairs)
        first = doc["pairs"][0]
        assert first["reference"] == data.catalog.path[pairs.a[0]]
        assert first["questioned"] == data.catalog.path[pairs.b[0]]
        assert first["label"] == int(pairs.label[0])


@pytest.mark.realdata
def test_kaggle_csv_protocol_uses_kaggles_pair_lists(tmp_path):
    from conftest import real_data_path

    data_dir = real_data_path("sigcomp2011", "sign_data").parent.parent
    cfg = sigcomp.get_config("smoke")
    cfg.data_dir = str(data_dir)
    cfg.tfds_data_dir = str(tmp_path)
    cfg.image_height, cfg.image_width = 32, 48
    cfg.split.method = "kaggle_csv"
    data = Data(cfg)
    assert len(data.catalog) == 1649 + 500  # Both Kaggle folders, duplicates kept.
    n_train = len(data.train_pairs) + len(data.eval_pairs["validation"])
    assert n_train == 23206 and len(data.eval_pairs["test"]) == 5748
    test = data.eval_pairs["test"]
    assert all(data.catalog.path[i].startswith("test/") for i in np.concatenate([test.a, test.b]))
    # Kaggle's target 1 marks (genuine, forged): our label 0, kind skilled, a forged image.
    skilled = test.kind == 1
    assert np.all(test.label[skilled] == 0)
    assert not np.any(data.catalog.is_genuine[test.b[skilled]])
    assert np.all(data.catalog.is_genuine[test.b[~skilled]])
    assert 0.0 < data.prior_positive < 1.0


def test_several_datasets_train_together_each_split_as_alone(tmp_path):
    """config.dataset='synthetic+signature_folder': one catalog whose writer ids are qualified by
    their dataset; each dataset keeps the writers and evaluation pairs it has when used alone,
    so `--config.eval.dataset=<one>` evaluates the same writers."""
    cfg = _bhsig_config(tmp_path)
    cfg.synthetic.num_writers, cfg.synthetic.genuine_per_writer = 8, 3
    cfg.synthetic.forgeries_per_writer, cfg.synthetic.forgers_per_writer = 3, 1
    alone = {}
    for name in ("synthetic", "signature_folder"):
        one = cfg.copy_and_resolve_references()
        one.dataset = name
        alone[name] = Data(one)
    cfg.dataset = "synthetic+signature_folder"
    both = Data(cfg)
    cat = both.catalog
    assert len(cat) == sum(len(d.catalog) for d in alone.values())
    for name, data in alone.items():
        for split, writers in data.splits.items():
            mine = [w.split(":", 1)[1] for w in both.splits[split] if w.startswith(f"{name}:")]
            assert mine == writers
        for split, pairs in data.eval_pairs.items():
            joined = both.eval_pairs[split]
            ours = np.array([p.startswith(f"{name}:") for p in cat.path[joined.a]])
            got = [
                (cat.path[a].split(":", 1)[1], cat.path[b].split(":", 1)[1], k)
                for a, b, k in zip(joined.a[ours], joined.b[ours], joined.kind[ours], strict=True)
            ]
            want = [
                (data.catalog.path[a], data.catalog.path[b], k)
                for a, b, k in zip(pairs.a, pairs.b, pairs.kind, strict=True)
            ]
            assert got == want
    with pytest.raises(Exception, match="names a dataset twice"):
        cfg.dataset = "synthetic+synthetic"
        Data(cfg)


def test_best_recipe_runs_on_a_dataset_it_has_never_seen(tmp_path):
    """configs/best.py, as a user with another dataset runs it (signature_folder by config only):
    trains its ensemble, evaluates its test writers with the `svm_pair` enrolment at the threshold
    chosen on validation, and siamjax-verify then decides with the same enrolment and threshold."""
    from configs import best
    from siamjax import eval_lib, train_lib, verify

    folder = _bhsig_config(tmp_path)
    cfg = best.get_config("smoke")
    cfg.dataset = "signature_folder"
    for key, value in folder.real.items():  # The folder's layout; the recipe keeps its ink.
        if key != "ink":
            cfg.real[key] = value
    cfg.data_dir, cfg.tfds_data_dir = folder.data_dir, folder.tfds_data_dir
    cfg.split = folder.split
    cfg.num_train_steps, cfg.batch_size = 6, 8
    cfg.eval_every_steps = cfg.checkpoint_every_steps = 6
    assert cfg.real.ink == "normalized" and cfg.eval.enrollment == "svm_pair"
    assert cfg.model.members == 3  # The ensemble, through train, eval and siamjax-verify.
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(cfg, workdir)
    metrics = eval_lib.run_evaluation(cfg, workdir, "test")
    report = json.loads((tmp_path / "run" / "eval" / "test" / "metrics.json").read_text())
    assert report["enrollment"] == "svm_pair" and report["ink"] == "normalized"
    assert 0.0 <= metrics["eer"] <= 1.0 and metrics["n_genuine"] > 0

    v = verify.Verifier(workdir)
    assert v.enrollment == "svm_pair"
    test_writer = json.loads((tmp_path / "run" / "pairs" / "splits.json").read_text())["test"][0]
    root = tmp_path / "data" / "BHSig260" / "Bengali" / str(test_writer)
    d = v.verify(root / f"B-S-{test_writer}-G-01.tif", root / f"B-S-{test_writer}-G-02.tif")
    assert d.enrollment == "svm_pair" and 0.0 < d.score < 1.0
    calibration = json.loads((tmp_path / "run" / "enrollment" / "svm_pair_k1.json").read_text())
    assert d.threshold == calibration["threshold"]
    assert d.decision == ("genuine" if d.score >= d.threshold else "forged")

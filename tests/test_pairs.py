"""Writer-disjoint splits and pair sampling: the protocol that keeps numbers honest."""

import numpy as np
import pytest

from configs import default
from siamjax import pairs
from siamjax.errors import UserError


def _toy(num_writers=20, genuine=6, forged=4):
    writer, is_genuine, sha = [], [], []
    for w in range(num_writers):
        for i in range(genuine + forged):
            writer.append(f"w{w:02d}")
            is_genuine.append(i < genuine)
            sha.append(f"{w}-{i}")
    return np.array(writer), np.array(is_genuine), np.array(sha)


@pytest.mark.parametrize("method", ["fractions", "kfold"])
def test_splits_partition_the_writers(method):
    writer, _, sha = _toy()
    cfg = default.get_config()
    cfg.split.method = method
    s = pairs.split_writers(writer, cfg.split, seed=0)
    all_w = s["train"] + s["validation"] + s["test"]
    assert sorted(all_w) == sorted(set(writer)) and len(all_w) == len(set(all_w))
    assert len(s["validation"]) >= 2 and len(s["test"]) >= 2
    idx = pairs.split_indices(writer, s)
    pairs.check_disjoint(writer, sha, idx)
    assert sum(len(v) for v in idx.values()) == len(writer)
    assert pairs.split_writers(writer, cfg.split, seed=0) == s
    assert pairs.split_writers(writer, cfg.split, seed=1) != s


def test_kfold_test_folds_cover_every_writer_once():
    writer, _, _ = _toy()
    cfg = default.get_config()
    cfg.split.method = "kfold"
    tested = []
    for k in range(cfg.split.num_folds):
        cfg.split.fold = k
        tested += pairs.split_writers(writer, cfg.split, seed=3)["test"]
    assert sorted(tested) == sorted(set(writer))


def test_explicit_writer_lists_and_unknown_writers():
    writer, _, _ = _toy()
    cfg = default.get_config()
    cfg.split.method = "writers"
    cfg.split.val_writers = "w01,w02"
    cfg.split.test_writers = "w03"
    s = pairs.split_writers(writer, cfg.split, seed=0)
    assert s["validation"] == ["w01", "w02"] and s["test"] == ["w03"]
    assert len(s["train"]) == 17
    cfg.split.test_writers = "w99"
    with pytest.raises(UserError, match="w99"):
        pairs.split_writers(writer, cfg.split, seed=0)


def test_shared_image_content_across_splits_is_refused():
    writer, _, sha = _toy()
    sha = sha.copy()
    sha[writer == "w05"] = sha[writer == "w06"]  # The Kaggle test/ leak, in miniature.
    idx = {"train": np.flatnonzero(writer == "w05"), "test": np.flatnonzero(writer == "w06")}
    with pytest.raises(UserError, match="image"):
        pairs.check_disjoint(writer, sha, idx)


def test_training_pairs_have_the_right_kinds_labels_and_proportions():
    writer, is_genuine, _ = _toy()
    cfg = default.get_config()
    idx = np.arange(len(writer))
    p = pairs.sample_train_pairs(writer, is_genuine, idx, cfg.pairs, seed=0, epoch=0)
    n_gen = int(is_genuine.sum())
    assert len(p) == cfg.pairs.pairs_per_genuine * n_gen
    c = p.counts()
    assert c["genuine"] == round(len(p) * 0.5) and c["skilled"] == round(len(p) * 0.3)
    assert np.all(is_genuine[p.a])  # References are always genuine.
    g, s, r = (p.kind == k for k in (pairs.GENUINE, pairs.SKILLED, pairs.RANDOM))
    assert np.all(writer[p.a[g]] == writer[p.b[g]]) and np.all(p.a[g] != p.b[g])
    assert np.all(is_genuine[p.b[g]]) and np.all(p.label[g] == 1)
    assert np.all(writer[p.a[s]] == writer[p.b[s]]) and not np.any(is_genuine[p.b[s]])
    assert np.all(writer[p.a[r]] != writer[p.b[r]]) and np.all(is_genuine[p.b[r]])
    assert np.all(p.label[s | r] == 0)
    again = pairs.sample_train_pairs(writer, is_genuine, idx, cfg.pairs, seed=0, epoch=0)
    other = pairs.sample_train_pairs(writer, is_genuine, idx, cfg.pairs, seed=0, epoch=1)
    np.testing.assert_array_equal(p.a, again.a)
    assert not np.array_equal(p.a, other.a)  # Re-sampled every epoch.


def test_pairs_stay_inside_their_split():
    writer, is_genuine, _ = _toy()
    idx = np.flatnonzero(np.isin(writer, ["w01", "w02", "w03"]))
    p = pairs.sample_train_pairs(
        writer, is_genuine, idx, default.get_config().pairs, seed=0, epoch=0
    )
    assert set(p.a) | set(p.b) <= set(idx)
    e = pairs.eval_pairs(writer, is_genuine, idx, default.get_config().pairs, seed=0)
    assert set(e.a) | set(e.b) <= set(idx)


def test_evaluation_pairs_are_fixed_distinct_and_complete(tmp_path):
    writer, is_genuine, _ = _toy(num_writers=5)
    idx = np.arange(len(writer))
    cfg = default.get_config()
    e = pairs.eval_pairs(writer, is_genuine, idx, cfg.pairs, seed=0)
    n_gen = int(is_genuine.sum())
    assert e.counts() == {k: cfg.pairs.eval_per_genuine * n_gen for k in pairs.KIND_NAMES}
    assert len({(a, b) for a, b in zip(e.a, e.b, strict=True)}) == len(e)
    np.testing.assert_array_equal(e.b, pairs.eval_pairs(writer, is_genuine, idx, cfg.pairs, 0).b)
    paths = np.array([f"img{i}.png" for i in range(len(writer))])
    pairs.save_pairs(str(tmp_path / "p" / "test.json"), e, paths, writer)
    import json

    doc = json.loads((tmp_path / "p" / "test.json").read_text())
    assert len(doc["pairs"]) == len(e) and doc["counts"] == e.counts()
    assert doc["pairs"][0]["reference"] == paths[e.a[0]]


@pytest.mark.parametrize("k", [1, 3])
def test_reference_trials(k):
    writer, is_genuine, _ = _toy(num_writers=6, genuine=6, forged=4)
    idx = np.arange(len(writer))
    t = pairs.reference_trials(writer, is_genuine, idx, k, seed=0)
    assert t.references.shape == (len(t), k)
    c = t.counts()
    assert c["genuine"] == 6 * (6 - k) and c["skilled"] == 6 * 4 and c["random"] == c["genuine"]
    for q, refs, kind in zip(t.questioned, t.references, t.kind, strict=True):
        assert np.all(is_genuine[refs]) and len(set(writer[refs])) == 1
        assert q not in refs
        same = writer[q] == writer[refs[0]]
        assert same == (kind != pairs.RANDOM)
        assert is_genuine[q] == (kind != pairs.SKILLED)
    # Every trial of a writer uses the same K references.
    for w in set(writer):
        rows = t.references[writer[t.references[:, 0]] == w]
        assert len({tuple(r) for r in rows}) == 1
    p = t.as_pairs()
    assert len(p) == len(t) * k and np.array_equal(p.b[::k], t.questioned)


def test_reference_trials_need_enough_genuine_signatures():
    writer, is_genuine, _ = _toy(num_writers=3, genuine=4, forged=1)
    with pytest.raises(UserError, match="references=4"):
        pairs.reference_trials(writer, is_genuine, np.arange(len(writer)), 4, seed=0)


def test_writers_without_k_plus_one_genuine_are_refused_unless_allowed():
    writer, is_genuine, _ = _toy(num_writers=4, genuine=6, forged=2)
    short = writer == writer[0]
    keep = ~(short & is_genuine) | (np.cumsum(short & is_genuine) <= 3)  # Writer 0: 3 genuine.
    writer, is_genuine = writer[keep], is_genuine[keep]
    idx = np.arange(len(writer))
    with pytest.raises(UserError, match=r"1 of 4 writers .* fewer than 4 genuine"):
        pairs.reference_trials(writer, is_genuine, idx, 3, seed=0)
    t = pairs.reference_trials(writer, is_genuine, idx, 3, seed=0, allow_fewer_writers=True)
    assert t.left_out == (str(writer[0]),)
    assert str(writer[0]) not in set(writer[t.references[:, 0]])
    assert pairs.reference_trials(writer, is_genuine, idx, 2, seed=0).left_out == ()

"""The embedded procedural signatures: deterministic, well-formed, and not trivially separable."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from siamjax.datasets.synthetic import generator as synthetic
from siamjax.datasets.synthetic import synthetic_dataset_builder as builder_lib

SETTINGS = synthetic.Settings(
    num_writers=6,
    genuine_per_writer=5,
    forgeries_per_writer=5,
    forgers_per_writer=2,
    height=48,
    width=72,
    seed=7,
)


@pytest.fixture(scope="module")
def examples():
    return list(synthetic.render_dataset(SETTINGS))


def test_counts_shapes_and_labels(examples):
    assert len(examples) == 6 * 10
    for e in examples:
        assert e["image"].shape == (48, 72, 1) and e["image"].dtype == np.uint8
        assert e["image"].max() > 128 and (e["image"] > 0).mean() < 0.5  # Ink high, on 0.
        assert e["is_genuine"] == (e["forger"] == -1)
    assert len({e["writer"] for e in examples}) == 6
    assert len({e["sha256"] for e in examples}) == len(examples)
    assert len({e["path"] for e in examples}) == len(examples)
    forgers = {e["forger"] for e in examples if not e["is_genuine"]}
    assert len(forgers) == 6 * 2  # Each writer's forgeries come from its own forgers.


def test_deterministic_from_the_seed(examples):
    again = list(synthetic.render_dataset(SETTINGS))
    assert [e["sha256"] for e in again] == [e["sha256"] for e in examples]
    other = list(synthetic.render_dataset(dataclasses.replace(SETTINGS, seed=8)))
    assert not {e["sha256"] for e in other} & {e["sha256"] for e in examples}


def _by_writer(examples):
    out = {}
    for e in examples:
        g, f = out.setdefault(e["writer"], ([], []))
        (g if e["is_genuine"] else f).append(e["image"][..., 0].astype(np.float64) / 255.0)
    return out


def _auc(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def test_ink_amount_does_not_separate_genuine_from_forged(examples):
    """Within each writer, total ink of genuine vs forged: an AUC near 0.5 on average, so the
    model cannot win by counting pixels."""
    aucs = [
        _auc([g.sum() for g in gs], [f.sum() for f in fs])
        for gs, fs in _by_writer(examples).values()
    ]
    assert 0.25 < np.mean(aucs) < 0.75, aucs


def _blur_distance(a, b):
    """Mean absolute difference of 4x-downsampled images: tolerant to small shifts."""

    def small(x):
        h, w = x.shape[0] // 4 * 4, x.shape[1] // 4 * 4
        return x[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))

    return float(np.abs(small(a) - small(b)).mean())


def test_forgeries_sit_between_genuine_variation_and_other_writers(examples):
    groups = _by_writer(examples)
    same, skilled, other = [], [], []
    writers = sorted(groups)
    for i, w in enumerate(writers):
        gs, fs = groups[w]
        ref = gs[0]
        same += [_blur_distance(ref, g) for g in gs[1:]]
        skilled += [_blur_distance(ref, f) for f in fs]
        other += [_blur_distance(ref, g) for g in groups[writers[(i + 1) % len(writers)]][0]]
    assert np.mean(same) < np.mean(skilled) < np.mean(other)


def test_tfds_round_trip(tmp_path):
    settings = synthetic.Settings(
        num_writers=3,
        genuine_per_writer=2,
        forgeries_per_writer=2,
        forgers_per_writer=1,
        height=32,
        width=48,
        seed=1,
    )
    b = builder_lib.make_builder(settings, data_dir=str(tmp_path))
    b.download_and_prepare()
    assert b.builder_config.name == "w3_g2_f2_k1_32x48_s1"
    data = tfds.as_numpy(b.as_dataset(split="train", batch_size=-1))
    assert data["image"].shape == (12, 32, 48, 1) and data["image"].dtype == np.uint8
    assert int(data["is_genuine"].sum()) == 6
    assert sorted(set(data["writer"])) == [b"w0000", b"w0001", b"w0002"]


def test_ink_mode_restyles_the_rendered_ink_and_names_the_dataset():
    """`real.ink` applies to the generated writers as to scans: the same strokes, the ink kept as
    rendered, ranked or binary; the mode is part of the prepared dataset's name."""
    from siamjax import preprocess

    styled = {
        ink: synthetic.render_writer(0, dataclasses.replace(SETTINGS, ink=ink))
        for ink in preprocess.INK_MODES
    }
    for raw, norm, binary in zip(*styled.values(), strict=True):
        assert raw["path"] == norm["path"] == binary["path"]
        np.testing.assert_array_equal(
            norm["image"], preprocess.restyle_ink(raw["image"], "normalized")
        )
        np.testing.assert_array_equal(binary["image"], np.where(raw["image"] > 0, 255, 0))
        assert norm["sha256"] != raw["sha256"]
    names = {
        ink: builder_lib.SyntheticConfig.of(dataclasses.replace(SETTINGS, ink=ink)).name
        for ink in preprocess.INK_MODES
    }
    assert names["raw"] == "w6_g5_f5_k2_48x72_s7"  # Unchanged for datasets prepared before.
    assert names["normalized"] == "w6_g5_f5_k2_48x72_s7_ink-normalized"
    assert len(set(names.values())) == 3


def test_skilled_forgeries_stay_closer_to_the_writer_than_trembling_ones():
    """forgery_style='skilled' keeps the writer's shape: how much further its forgeries lie from
    the writer's mean genuine image than the genuine ones do (pixel distance) is smaller than for
    the 'tremor' forgers' copies, from the same draws; genuine signatures are the same."""
    from siamjax.datasets.synthetic import generator as synth

    excess, genuine_images = {}, {}
    for style in synth.FORGERY_STYLES:
        s = synth.Settings(
            num_writers=6,
            genuine_per_writer=6,
            forgeries_per_writer=6,
            forgers_per_writer=2,
            height=64,
            width=96,
            seed=7,
            forgery_style=style,
        )
        gaps = []
        for w in range(s.num_writers):
            ex = synth.render_writer(w, s)
            img = np.stack([e["image"][..., 0] for e in ex]).astype(np.float32)
            is_genuine = np.array([e["is_genuine"] for e in ex])
            gen, forg = img[is_genuine], img[~is_genuine]
            own = [np.abs(g - np.delete(gen, i, 0).mean(0)).mean() for i, g in enumerate(gen)]
            gaps.append(np.abs(forg - gen.mean(0)).mean() - np.mean(own))
            genuine_images.setdefault(w, []).append(gen)
        excess[style] = float(np.mean(gaps))
    assert 0 < excess["skilled"] < 0.9 * excess["tremor"], excess
    for both in genuine_images.values():
        np.testing.assert_array_equal(*both)

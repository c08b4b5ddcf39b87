"""Evaluation scores what the full model scores, and its memory does not grow with the pairs."""

import jax
import numpy as np

from bench import eval_memory
from configs import synthetic
from siamjax import inference, models, parallel
from siamjax import pairs as pairs_lib


def test_cached_embedding_logits_equal_the_full_model():
    """Batch-wise gathering from cached embeddings must give each pair the logit of the network
    run on its two images, with repeated images, a short last batch and 8 devices."""
    cfg = synthetic.get_config("tiny")
    model = models.create_model(cfg.model)
    h, w = cfg.image_height, cfg.image_width
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, h, w, 1), dtype=np.uint8)
    dummy = images[:2]
    variables = jax.jit(lambda k: model.init({"params": k}, dummy, dummy, train=False))(
        jax.random.key(0, impl="rbg")
    )
    n = 37  # Not a multiple of the batch: the last batch is padded.
    a = rng.integers(0, 30, n).astype(np.int32)
    b = rng.integers(0, 30, n).astype(np.int32)
    b[:3] = a[:3]  # An image against itself.
    zeros = np.zeros(n, np.int32)
    scorer = inference.Scorer(model, parallel.make_mesh(jax.devices()[:8]), 16)
    got = scorer.logits(variables, images, pairs_lib.Pairs(a, b, zeros, zeros))
    want = model.apply(variables, images[a], images[b], train=False)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


def test_evaluation_peak_memory_stays_flat_from_1k_to_100k_pairs():
    """Scoring 100k pairs over 200 images may add to the peak RSS only what is honestly per pair
    (indices, kinds, positions, logits and scores: under 64 bytes a pair) plus allocator slack;
    gathering both embeddings of every pair up front (D=256) would add 195 MiB."""
    small, large = 1_000, 100_000
    rows = eval_memory.bench_eval_memory(pairs=(small, large), embedding_dim=256)
    by_pairs = {r["pairs"]: r for r in rows}
    growth = by_pairs[large]["growth_mb"]
    bound = 30 + large * 64 / 2**20
    assert by_pairs[large]["naive_mb"] > 4 * bound  # The test could tell the naive way apart.
    assert growth < bound, f"peak RSS grew {growth} MiB from {small} to {large} pairs: {rows}"

"""Shapes, dtypes and structure of the Siamese network."""

import jax
import jax.numpy as jnp
import pytest

from configs import default, synthetic
from siamjax import models
from siamjax.errors import UserError


def _init(cfg, batch=2):
    model = models.create_model(cfg.model)
    x = jnp.zeros((batch, cfg.image_height, cfg.image_width, 1), jnp.uint8)
    variables = model.init(jax.random.key(0, impl="rbg"), x, x, train=False)  # Fast to compile.
    return model, variables, x


def test_signet_matches_the_pytorch_reference_layer_for_layer():
    """bench/torch_reference.py: conv kernels 11/5/3/3/3, widths 96/256/384/384/256, dense
    2048/2048/128 after a 256x3x5 map at 150x220, head 128->64->1."""
    cfg = default.get_config()
    model, variables, x = _init(cfg)
    p = variables["params"]["encoder"]
    assert [p[f"conv{i}"]["kernel"].shape for i in range(5)] == [
        (11, 11, 1, 96),
        (5, 5, 96, 256),
        (3, 3, 256, 384),
        (3, 3, 384, 384),
        (3, 3, 384, 256),
    ]
    assert p["fc0"]["kernel"].shape == (3 * 5 * 256, 2048)
    assert p["fc1"]["kernel"].shape == (2048, 2048)
    assert p["embedding"]["kernel"].shape == (2048, 128)
    head = variables["params"]["head"]
    assert head["hidden0"]["kernel"].shape == (128, 64)
    assert head["logit"]["kernel"].shape == (64, 1)
    n = sum(v.size for v in jax.tree.leaves(variables["params"]))
    assert n == 16_060_033  # Same count as the PyTorch module (BN affine included).
    logits = model.apply(variables, x, x, train=False)
    assert logits.shape == (2,) and logits.dtype == jnp.float32


@pytest.mark.parametrize("combine,first_in", [("diff", 16), ("absdiff", 16), ("concat", 32)])
def test_head_combines(combine, first_in):
    cfg = synthetic.get_config("tiny")
    cfg.model.combine = combine
    model, variables, x = _init(cfg, batch=3)
    assert variables["params"]["head"]["hidden0"]["kernel"].shape == (first_in, 16)
    assert model.apply(variables, x, x, train=False).shape == (3,)


def test_diff_head_is_antisymmetric_only_through_the_mlp():
    """diff is order-sensitive, absdiff is not: swapping the images must not change absdiff."""
    cfg = synthetic.get_config("tiny")
    cfg.model.combine = "absdiff"
    model, variables, _ = _init(cfg)
    a = jax.random.randint(jax.random.key(1), (4, 32, 48, 1), 0, 256).astype(jnp.uint8)
    b = jax.random.randint(jax.random.key(2), (4, 32, 48, 1), 0, 256).astype(jnp.uint8)
    ab = model.apply(variables, a, b, train=False)
    ba = model.apply(variables, b, a, train=False)
    assert jnp.allclose(ab, ba, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    cfg = synthetic.get_config("tiny")
    cfg.model.dtype = "bfloat16"
    model, variables, x = _init(cfg)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables["params"]))
    assert model.apply(variables, x, x, train=False).dtype == jnp.float32


def test_embed_and_score_equal_the_full_forward():
    cfg = synthetic.get_config("tiny")
    model, variables, _ = _init(cfg)
    a = jax.random.randint(jax.random.key(1), (4, 32, 48, 1), 0, 256).astype(jnp.uint8)
    b = jax.random.randint(jax.random.key(2), (4, 32, 48, 1), 0, 256).astype(jnp.uint8)
    full = model.apply(variables, a, b, train=False)
    ea = model.apply(variables, a, method=models.SiameseNet.embed)
    eb = model.apply(variables, b, method=models.SiameseNet.embed)
    assert ea.shape == (4, 16)
    cached = model.apply(variables, ea, eb, method=models.SiameseNet.score)
    assert jnp.allclose(full, cached, atol=1e-5)


@pytest.mark.parametrize(
    "key,value",
    [
        ("encoder", "resnet"),
        ("combine", "product"),
        ("dtype", "float8"),
        ("init", "xavier"),
        ("norm", "layer"),
        ("pool", "max"),
    ],
)
def test_unknown_choices_are_user_errors(key, value):
    cfg = synthetic.get_config("tiny")
    cfg.model[key] = value
    with pytest.raises(UserError, match=key):
        _init(cfg)


def test_vgg_encoder_with_patchify_stem():
    """configs/sigcomp_best.py: a 4x4/4 stem, then three 3x3 conv + 2x2 pool blocks."""
    from configs import cedar_best, sigcomp_best

    cfg = sigcomp_best.get_config()
    assert cedar_best.get_config().model.to_dict() == cfg.model.to_dict()
    model, variables, x = _init(cfg)
    p = variables["params"]["encoder"]
    assert [p[f"conv{i}"]["kernel"].shape for i in range(4)] == [
        (4, 4, 1, 32),
        (3, 3, 32, 64),
        (3, 3, 64, 96),
        (3, 3, 96, 128),
    ]
    # 150x220 -> 37x55 (stem) -> 18x27 -> 9x13 -> 4x6 after the three pools.
    assert p["fc0"]["kernel"].shape == (4 * 6 * 128, 256)
    logits = model.apply(variables, x, x, train=False)
    assert logits.shape == (2,) and logits.dtype == jnp.float32


def test_groupnorm_and_global_pooling():
    """norm='group' keeps no batch statistics (each image is normalised alone: the same output
    in a batch of one or of many); pool='gap' leaves fc0 with c inputs instead of h*w*c."""
    from configs import sigcomp_best

    cfg = sigcomp_best.get_config()
    cfg.model.norm, cfg.model.pool = "group", "gap"
    cfg.image_height, cfg.image_width = 48, 64  # Pooled globally: any size gives these shapes.
    model, variables, _ = _init(cfg)
    assert "batch_stats" not in variables
    p = variables["params"]["encoder"]
    assert p["fc0"]["kernel"].shape == (128, 256) and p["gn1"]["scale"].shape == (64,)
    images = jax.random.randint(jax.random.key(1), (3, 48, 64, 1), 0, 256).astype(jnp.uint8)
    together = model.apply(variables, images, method="embed")
    alone = model.apply(variables, images[1:2], method="embed")
    assert jnp.allclose(together[1:2], alone, atol=1e-5)  # float32 reordering only.

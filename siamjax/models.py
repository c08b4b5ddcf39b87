"""The Siamese network: a shared encoder, a way to combine two embeddings, and an MLP head.

Only modules live here: no data, no optimiser, no training loop. Images enter as uint8
[batch, height, width, 1] with ink high (see `siamjax.preprocess`) and are scaled to [0, 1] inside
the model, so that every caller feeds the same thing. Parameters are float32 whatever `dtype` is;
`dtype` only sets the compute precision (bfloat16 on accelerators).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from siamjax import conv as conv_lib
from siamjax import losses
from siamjax import pool as pool_lib
from siamjax.errors import UserError

ENCODERS = ("signet", "small", "vgg")
NORMS = ("batch", "group")  # Of the conv blocks of "small" and "vgg".
POOLS = ("flatten", "gap")  # How "small" and "vgg" turn their last feature map into a vector.
GROUPS = 8  # GroupNorm's groups (fewer where a layer has fewer channels).
COMBINES = ("diff", "absdiff", "concat", "distance")

# PyTorch's default Conv/Linear weight init, kaiming_uniform(a=sqrt(5)), is U(+-1/sqrt(fan_in)),
# i.e. variance 1/(3 fan_in). With Adagrad it trains much faster than flax's lecun_normal here.
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def kernel_init(name: str) -> Any:
    if name == "torch":
        return _TORCH_KERNEL_INIT
    if name == "flax":
        return nn.initializers.lecun_normal()
    raise UserError(f"config.model.init={name!r} is unknown; use 'torch' or 'flax'.")


def _to_float(images: jax.Array, dtype: Any) -> jax.Array:
    """uint8 [..., H, W, 1] in 0..255 -> `dtype` in [0, 1]; float input is taken as already in
    [0, 1] (augmented training images arrive that way)."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(dtype) / jnp.asarray(255.0, dtype)
    return images.astype(dtype)


class SigNetEncoder(nn.Module):
    """SigNet-size encoder, layer for layer as in bench/torch_reference.py (150x220 -> 128-D).

    conv96 11x11/4 - pool - conv256 5x5 - pool - conv384 3x3 - conv384 3x3 - conv256 3x3 - pool -
    dense 2048 - dense 2048 - dense `embedding_dim`; every conv followed by BatchNorm and ReLU.
    """

    embedding_dim: int = 128
    dtype: Any = jnp.float32
    init: str = "torch"
    bn_momentum: float = 0.9
    conv_impl: str = "xla"  # See siamjax.conv: 'xla', 'matmul_dw' or 'auto'.

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """[batch, H, W, 1] uint8 -> [batch, embedding_dim] float32."""
        k_init = kernel_init(self.init)
        conv = functools.partial(
            nn.Conv,
            dtype=self.dtype,
            kernel_init=k_init,
            conv_general_dilated=conv_lib.for_backend(self.conv_impl),
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        x = _to_float(images, self.dtype)
        layers = [
            (96, 11, 4, "VALID", True),
            (256, 5, 1, 2, True),
            (384, 3, 1, 1, False),
            (384, 3, 1, 1, False),
            (256, 3, 1, 1, True),
        ]
        for i, (features, k, s, pad, pool) in enumerate(layers):
            x = conv(features, (k, k), strides=(s, s), padding=pad, name=f"conv{i}")(x)
            x = nn.relu(norm(name=f"bn{i}")(x))
            if pool:
                x = pool_lib.max_pool(x, (3, 3), (2, 2), "VALID", fast_grad=self.conv_impl != "xla")
        x = x.reshape((x.shape[0], -1))
        dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=k_init)
        x = nn.relu(dense(2048, name="fc0")(x))
        x = nn.relu(dense(2048, name="fc1")(x))
        return dense(self.embedding_dim, name="embedding")(x).astype(jnp.float32)


class _ConvBlockEncoder(nn.Module):
    """What `SmallEncoder` and `VGGEncoder` share: their fields, a conv-norm-ReLU block (no conv
    bias: the normalisation removes it, and Adagrad would amplify its zero gradient's noise) and
    the tail: the last feature map to a vector, a dense layer and the embedding.

    `pool='flatten'` keeps the spatial layout (where the strokes are) at the cost of a dense layer
    of h*w*c inputs, most of the parameters; `pool='gap'` averages over positions, so the dense
    layer is small and the embedding cannot memorise where a training writer's strokes sit.
    `norm='group'` (GroupNorm) normalises each image alone: no batch statistics, so training and
    evaluation compute the same function whatever the batch holds.
    """

    width: int = 16
    embedding_dim: int = 64
    dtype: Any = jnp.float32
    init: str = "torch"
    bn_momentum: float = 0.9
    conv_impl: str = "xla"  # See siamjax.conv: 'xla', 'matmul_dw' or 'auto'.
    norm: str = "batch"  # NORMS
    pool: str = "flatten"  # POOLS

    def _block(
        self,
        x: jax.Array,
        i: int,
        features: int,
        kernel: int,
        stride: int,
        padding: str,
        train: bool,
    ) -> jax.Array:
        """conv{i} -> bn{i} -> ReLU; called from the subclass's compact `__call__`."""
        x = nn.Conv(
            features,
            (kernel, kernel),
            strides=(stride, stride),
            padding=padding,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=kernel_init(self.init),
            conv_general_dilated=conv_lib.for_backend(self.conv_impl),
            name=f"conv{i}",
        )(x)
        if self.norm == "group":
            x = nn.GroupNorm(
                num_groups=math.gcd(GROUPS, features), epsilon=1e-5, dtype=self.dtype, name=f"gn{i}"
            )(x)
        elif self.norm == "batch":
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=self.bn_momentum,
                epsilon=1e-5,
                dtype=self.dtype,
                name=f"bn{i}",
            )(x)
        else:
            raise UserError(f"config.model.norm={self.norm!r}; use one of {NORMS}.")
        return nn.relu(x)

    def _tail(self, x: jax.Array, hidden: int) -> jax.Array:
        """[batch, h, w, c] -> fc0 (hidden, ReLU) -> embedding: [batch, embedding_dim] float32."""
        k_init = kernel_init(self.init)
        if self.pool == "gap":
            x = x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype)
        elif self.pool == "flatten":
            x = x.reshape((x.shape[0], -1))
        else:
            raise UserError(f"config.model.pool={self.pool!r}; use one of {POOLS}.")
        x = nn.relu(nn.Dense(hidden, dtype=self.dtype, kernel_init=k_init, name="fc0")(x))
        x = nn.Dense(self.embedding_dim, dtype=self.dtype, kernel_init=k_init, name="embedding")(x)
        return x.astype(jnp.float32)


class SmallEncoder(_ConvBlockEncoder):
    """A few-hundred-thousand-parameter encoder for CPUs and tests; same interface as SigNet.

    Four conv-BN-ReLU blocks of stride 2 (widths w, 2w, 4w, 4w), then a dense layer and the
    embedding. Strided convolutions instead of max-pooling: on a CPU, full-resolution convolutions
    and pooling gradients cost 4-5x more for the same receptive field.
    """

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """[batch, H, W, 1] uint8 -> [batch, embedding_dim] float32."""
        x = _to_float(images, self.dtype)
        w = self.width
        for i, (features, k) in enumerate([(w, 5), (2 * w, 3), (4 * w, 3), (4 * w, 3)]):
            x = self._block(x, i, features, k, 2, "SAME", train)
        return self._tail(x, 16 * w)


class VGGEncoder(_ConvBlockEncoder):
    """Four 3x3 conv-BN-ReLU blocks at full resolution, each followed by 2x2 max pooling (widths
    w, 2w, 3w, 4w), then a dense layer and the embedding.

    Unlike `SmallEncoder`'s strided convolutions, every block sees each pixel before pooling, so
    fine stroke detail (tremor, pen lifts, ink width: what tells a skilled forgery from the
    writer's own hand) survives to the deeper layers.
    """

    width: int = 32
    embedding_dim: int = 128
    # > 1: the first block is a stem x stem convolution of stride `stem` (lossless patchify, as in
    # ConvNeXt) instead of a full-resolution 3x3 conv + pool; 4x fewer FLOPs at every later layer
    # and matmul-shaped work, which a CPU runs several times faster than thin full-size convs.
    stem: int = 1

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """[batch, H, W, 1] uint8 -> [batch, embedding_dim] float32."""
        x = _to_float(images, self.dtype)
        w = self.width
        for i, features in enumerate([w, 2 * w, 3 * w, 4 * w]):
            if i == 0 and self.stem > 1:
                x = self._block(x, i, features, self.stem, self.stem, "VALID", train)
                continue
            x = self._block(x, i, features, 3, 1, "SAME", train)
            x = pool_lib.max_pool(x, (2, 2), (2, 2), "VALID", fast_grad=self.conv_impl != "xla")
        return self._tail(x, 8 * w)


class Head(nn.Module):
    """Two embeddings -> one logit (log-odds that the questioned signature is genuine).

    combine 'distance' has no MLP (`hidden` is unused): logit = bias - scale * d, d the Euclidean
    distance of the embeddings and scale = softplus(raw_scale) > 0, so the score falls
    monotonically with the distance, is symmetric in the pair, and its two scalars calibrate it.
    It is the head of the metric-learning losses (see `siamjax.losses.check_loss`).
    """

    hidden: Sequence[int] = (64,)
    combine: str = "diff"
    dtype: Any = jnp.float32
    init: str = "torch"

    @nn.compact
    def __call__(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
        """[batch, D] float32 twice -> [batch] float32 logits."""
        if self.combine == "distance":
            # Starts at logit 1 - 2d: even odds at d = 0.5, half a unit margin.
            bias = self.param("bias", nn.initializers.constant(1.0), (), jnp.float32)
            raw_scale = self.param(
                "raw_scale", nn.initializers.constant(math.log(math.e**2 - 1)), (), jnp.float32
            )
            return bias - jax.nn.softplus(raw_scale) * losses.euclidean_distance(e1, e2)
        if self.combine == "diff":
            x = e1 - e2
        elif self.combine == "absdiff":
            x = jnp.abs(e1 - e2)
        elif self.combine == "concat":
            x = jnp.concatenate([e1, e2], axis=-1)
        else:
            raise UserError(f"config.model.combine={self.combine!r}; use one of {COMBINES}.")
        k_init = kernel_init(self.init)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, kernel_init=k_init, name=f"hidden{i}")(x))
        logit = nn.Dense(1, dtype=self.dtype, kernel_init=k_init, name="logit")(x)
        return logit[..., 0].astype(jnp.float32)


class EnsembleEncoder(nn.Module):
    """M independently initialised encoders (`config.model.members`): their embeddings side by
    side, [batch, M * D], member m's in columns m*D:(m+1)*D.

    Why an ensemble: with ~40 training writers one network's errors are mostly its own (its
    initialisation and what it happened to fit); on 3 CEDAR folds' validation writers, summing the
    scores of three separately trained networks lowered skilled-forgery EER by ~2.5 points at
    K = 10. Writer enrolment reads the concatenated embedding, the head averages its members.
    """

    members: Sequence[nn.Module]

    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """[batch, H, W, 1] uint8 -> [batch, M * D] float32."""
        return jnp.concatenate([m(images, train) for m in self.members], axis=-1)


class EnsembleHead(nn.Module):
    """One `Head` per ensemble member, each on its member's slice of the embeddings; the logit is
    their mean. Training fits each member's head on its own (`member_logits`), so the members
    stay M separately trained networks that share only their batches."""

    members: Sequence[Head]

    def member_logits(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
        """[batch, M * D] twice -> [batch, M] float32: each member's logit on its slice."""
        m = len(self.members)
        parts = zip(self.members, jnp.split(e1, m, axis=-1), jnp.split(e2, m, axis=-1), strict=True)
        return jnp.stack([head(a, b) for head, a, b in parts], axis=-1)

    def __call__(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
        """[batch, M * D] twice -> [batch] float32: the members' mean logit."""
        return jnp.mean(self.member_logits(e1, e2), axis=-1)


class EnsembleWriterHead(nn.Module):
    """One linear writer classifier per ensemble member, on its member's embedding slice."""

    members: Sequence[nn.Module]

    def __call__(self, e: jax.Array) -> jax.Array:
        """[N, M * D] -> [M, N, classes] float32."""
        parts = jnp.split(e, len(self.members), axis=-1)
        return jnp.stack([head(x) for head, x in zip(self.members, parts, strict=True)])


class SiameseNet(nn.Module):
    """Shared encoder on both images (one batch of 2N, as in the PyTorch reference) + head."""

    encoder: nn.Module
    head: Head
    # Linear writer classifier on the embedding (config.model.writer_classes > 0): an auxiliary
    # training target only (`classify_writer`); nothing that scores pairs uses it.
    writer_head: nn.Module | None = None

    def __call__(self, image_a: jax.Array, image_b: jax.Array, train: bool) -> jax.Array:
        """uint8 [N, H, W, 1] twice -> [N] float32 logits."""
        n = image_a.shape[0]
        e = self.encoder(jnp.concatenate([image_a, image_b], axis=0), train)
        return self.head(e[:n], e[n:])

    def embed(self, images: jax.Array) -> jax.Array:
        """Evaluation-mode embeddings, [N, H, W, 1] uint8 -> [N, D]; for caching in evaluation."""
        return self.encoder(images, False)

    def embed_pairs(
        self, image_a: jax.Array, image_b: jax.Array, train: bool
    ) -> tuple[jax.Array, jax.Array]:
        """[N, H, W, 1] twice -> two [N, D]: one encoder pass of 2N, so BatchNorm sees both sides
        together as in `__call__` (the metric-learning losses train on these)."""
        return self._embed_together((image_a, image_b), train)

    def embed_triplets(
        self, anchor: jax.Array, positive: jax.Array, negative: jax.Array, train: bool
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """[N, H, W, 1] three times -> three [N, D], in one encoder pass of 3N."""
        return self._embed_together((anchor, positive, negative), train)

    def _embed_together(self, images: tuple[jax.Array, ...], train: bool) -> tuple[jax.Array, ...]:
        n = images[0].shape[0]
        e = self.encoder(jnp.concatenate(images, axis=0), train)
        return tuple(e[i * n : (i + 1) * n] for i in range(len(images)))

    def score(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
        """Head on cached embeddings: [N, D] twice -> [N] logits (an ensemble's: the mean of its
        members')."""
        return self.head(e1, e2)

    def member_logits(self, e1: jax.Array, e2: jax.Array) -> jax.Array:
        """[N, D] twice -> [N, M] logits of each ensemble member (M = 1 without an ensemble):
        what training fits, so that every member learns from its own loss."""
        if isinstance(self.head, EnsembleHead):
            return self.head.member_logits(e1, e2)
        return self.head(e1, e2)[:, None]

    def classify_writer(self, e: jax.Array) -> jax.Array:
        """Writer logits of embeddings: [N, D] -> [M, N, writer_classes] float32, one slab per
        ensemble member (M = 1 without an ensemble)."""
        if self.writer_head is None:
            raise UserError("this model has no writer head: set config.model.writer_classes.")
        logits = self.writer_head(e.astype(jnp.float32))
        return logits if isinstance(self.writer_head, EnsembleWriterHead) else logits[None]

    def init_all(self, image_a: jax.Array, image_b: jax.Array, train: bool) -> jax.Array:
        """`__call__`, also touching the writer head so that `init` creates its parameters."""
        logits = self(image_a, image_b, train)
        if self.writer_head is not None:
            self.classify_writer(self.embed(image_a))
        return logits


def dtype_from_name(name: str) -> Any:
    if name in ("float32", "fp32"):
        return jnp.float32
    if name in ("bfloat16", "bf16"):
        return jnp.bfloat16
    raise UserError(f"config.model.dtype={name!r}; use 'float32' or 'bfloat16'.")


def create_model(model_config: ml_collections.ConfigDict) -> SiameseNet:
    """The SiameseNet that `config.model` describes; with `members` M > 1, an ensemble of M
    encoders and heads (`EnsembleEncoder`) behind the same interface. M = 1 builds no ensemble
    modules, so the parameters of models from before the key are unchanged."""
    members = ensemble_size(model_config)
    if members < 1:
        raise UserError(f"config.model.members={members}; use 1 (one network) or more.")
    classes = int(model_config.get("writer_classes", 0))
    if classes < 0:
        raise UserError(f"config.model.writer_classes={classes}; use 0 (none) or more.")

    def one_or_ensemble(make: Callable[[], nn.Module], ensemble: type[nn.Module]) -> nn.Module:
        # Flax initialises each member from its own path (encoder/members_0, ...): M distinct
        # draws. One member is the bare module, as before the key.
        return make() if members == 1 else ensemble(tuple(make() for _ in range(members)))

    return SiameseNet(
        encoder=one_or_ensemble(lambda: _encoder(model_config), EnsembleEncoder),
        head=one_or_ensemble(lambda: _head(model_config), EnsembleHead),
        # float32 parameters and logits whatever the compute dtype: a softmax over many classes.
        writer_head=one_or_ensemble(
            lambda: nn.Dense(classes, kernel_init=kernel_init(model_config.init)),
            EnsembleWriterHead,
        )
        if classes
        else None,
    )


def ensemble_size(model_config: ml_collections.ConfigDict) -> int:
    """`config.model.members`: 1 (one network) in configs from before the key."""
    return int(model_config.get("members", 1))


def embedding_size(model_config: ml_collections.ConfigDict) -> int:
    """The width of `SiameseNet.embed`'s output: embedding_dim per ensemble member."""
    return int(model_config.embedding_dim) * ensemble_size(model_config)


def _encoder(model_config: ml_collections.ConfigDict) -> nn.Module:
    dtype = dtype_from_name(model_config.dtype)
    common = dict(
        embedding_dim=model_config.embedding_dim,
        dtype=dtype,
        init=model_config.init,
        bn_momentum=model_config.bn_momentum,
        conv_impl=model_config.conv_impl,
    )
    blocks = dict(norm=model_config.get("norm", "batch"), pool=model_config.get("pool", "flatten"))
    if model_config.encoder == "signet":
        if blocks != {"norm": "batch", "pool": "flatten"}:
            raise UserError("config.model.norm and pool apply to the 'small' and 'vgg' encoders.")
        return SigNetEncoder(**common)
    if model_config.encoder == "vgg":
        return VGGEncoder(
            width=model_config.small_width, stem=model_config.vgg_stem, **common, **blocks
        )
    if model_config.encoder == "small":
        return SmallEncoder(width=model_config.small_width, **common, **blocks)
    raise UserError(f"config.model.encoder={model_config.encoder!r}; use one of {ENCODERS}.")


def _head(model_config: ml_collections.ConfigDict) -> Head:
    return Head(
        hidden=tuple(model_config.head_hidden),
        combine=model_config.combine,
        dtype=dtype_from_name(model_config.dtype),
        init=model_config.init,
    )


def init_variables(model: SiameseNet, rng: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """Fresh {"params", "batch_stats"} of `model` for images of `input_shape` (H, W, 1): the one
    initialisation behind a train state and behind the shapes inference restores into."""
    dummy = jnp.zeros((2, *input_shape), jnp.uint8)
    # Flax derives each module's initialisation from its path, so the writer head (when there is
    # one) changes no other parameter's initial value.
    method = SiameseNet.init_all if model.writer_head is not None else None
    variables = dict(model.init({"params": rng}, dummy, dummy, train=False, method=method))
    variables.setdefault("batch_stats", {})
    return variables


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(H, W, 1): the images a model of `config` reads (config.image_height x image_width)."""
    return int(config.image_height), int(config.image_width), 1

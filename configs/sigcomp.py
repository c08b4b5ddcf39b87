"""The original design on SigComp2011 (Kaggle `sign_data` layout), writer-disjoint protocol.

    SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/sigcomp.py --workdir=W
    python eval.py --config=configs/sigcomp.py --workdir=W

SigNet encoder (150x220 -> 128-D, layer for layer as bench/torch_reference.py), element-wise
difference, MLP head, one logit, BCE, Adagrad 1e-3. Only `train/` is used: every Kaggle `test/`
image is a copy of a `train/` image. Writers are split 70/15/15 by seed.
`:smoke` is a minutes-long CPU check of the same data path with the small encoder.
"""

from configs import default


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = default.get_config()
    c.dataset = "sigcomp2011"
    c.image_height = 150
    c.image_width = 220
    c.model.encoder = "signet"
    c.model.embedding_dim = 128
    c.model.head_hidden = (64,)
    c.model.combine = "diff"
    c.loss = "bce"
    c.learning_rate = 1e-3
    c.batch_size = 32
    c.num_epochs = 7
    c.augment.noise_std = 0.03
    c.augment.blur_prob = 0.3
    c.augment.max_shift = 4
    if variant == "smoke":
        c.image_height = 64
        c.image_width = 96
        c.model.encoder = "small"
        c.model.embedding_dim = 64
        c.learning_rate = 1e-2
        c.num_train_steps = 60
        c.log_every_steps = 10
        c.eval_every_steps = 30
        c.checkpoint_every_steps = 30
    elif variant:
        raise ValueError(f"configs/sigcomp.py has no variant {variant!r}; use '' or 'smoke'.")
    return c

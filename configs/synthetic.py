"""The embedded default: procedural signatures, a small encoder, a few minutes on a laptop CPU.

    python train.py --config=configs/synthetic.py --workdir=/tmp/siamjax_synth
    python eval.py --config=configs/synthetic.py --workdir=/tmp/siamjax_synth

`--config=configs/synthetic.py:tiny` is the seconds-long variant the tests use.
"""

from configs import default


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = default.get_config()
    c.dataset = "synthetic"
    c.image_height = 64
    c.image_width = 96
    c.model.encoder = "small"
    c.model.embedding_dim = 64
    c.model.head_hidden = (64,)
    # |e1 - e2|: with the signed difference the small model learns to spot a forger's tremor in
    # the questioned image alone and stays poor at telling writers apart (random-forgery EER
    # ~15%); the symmetric comparison learns both (measured: skilled 7.6%, random 5.3% EER).
    c.model.combine = "absdiff"
    c.synthetic.num_writers = 150  # More writers generalise better than more epochs over 60.
    c.pairs.skilled = 0.2
    c.pairs.random = 0.3
    c.augment.max_shift = 3
    c.learning_rate = 1e-2
    c.batch_size = 32
    c.num_epochs = 6
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    if variant == "tiny":
        c.synthetic.num_writers = 12
        c.image_height = 32
        c.image_width = 48
        c.synthetic.genuine_per_writer = 4
        c.synthetic.forgeries_per_writer = 4
        c.synthetic.forgers_per_writer = 2
        c.model.small_width = 4
        c.model.embedding_dim = 16
        c.model.head_hidden = (16,)
        c.batch_size = 8
        c.num_train_steps = 12
        c.eval_batch_size = 16
        c.log_every_steps = 4
        c.eval_every_steps = 6
        c.checkpoint_every_steps = 6
    elif variant:
        raise ValueError(f"configs/synthetic.py has no variant {variant!r}; use '' or 'tiny'.")
    return c

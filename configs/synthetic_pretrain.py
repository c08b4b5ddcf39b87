"""Pretraining on many synthetic writers for a real dataset's encoder (`config.init_from`).

    python train.py --config=configs/synthetic_pretrain.py --workdir=P
    python train.py --config=configs/cedar_best.py --config.model.norm=group \\
        --config.model.pool=gap --config.real.ink=normalized --config.init_from=P --workdir=W

Why: a real dataset has ~40-50 training writers, too few for an encoder learnt from scratch to
tell writers' hands apart rather than memorise them. The embedded generator makes as many writers
as asked, with 'skilled' forgers that keep the writer's shape (small errors of proportion, slant
and hesitation), so pretraining teaches comparison rather than tremor spotting (the 'tremor'
forgers give themselves away alone). The encoder, input size and ink mode match the fine-tuning
config above (init_from checks), so only the head and the optimiser start fresh there.
"""

from configs import sigcomp_best


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    if variant not in ("", "smoke"):
        raise ValueError(
            f"configs/synthetic_pretrain.py has no variant {variant!r}; use '' or 'smoke'."
        )
    c = sigcomp_best.get_config(variant)  # 'smoke': its small input and few steps.
    c.dataset = "synthetic"
    c.model.norm = "group"
    c.model.pool = "gap"
    c.real.ink = "normalized"
    c.synthetic.num_writers = 24 if variant == "smoke" else 1000
    c.synthetic.genuine_per_writer = 12
    c.synthetic.forgeries_per_writer = 12
    c.synthetic.forgers_per_writer = 3
    c.synthetic.forgery_style = "skilled"
    c.split.val_fraction = 0.05  # 50 validation writers are plenty to follow the pretraining.
    c.split.test_fraction = 0.05
    if not variant:
        c.num_train_steps = 2000
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 500
    return c

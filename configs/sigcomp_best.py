"""The best recipe found on SigComp2011's validation writers, trainable on a 2-core CPU (~15 min).

    SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/sigcomp_best.py --workdir=W
    python eval.py --config=configs/sigcomp_best.py --workdir=W [--config.eval.references=5]

What changed from the design (configs/sigcomp.py), and why, each judged on validation writers
(seed 0's split; the test writers were never looked at while choosing):
- `vgg` encoder with a 4x4 patchify stem at 150x220 (1.0 M parameters): 3x3 convolutions with max
  pooling keep stroke detail that SigNet's 11x11 stride-4 first layer and the strided `small`
  encoder blur away, and the stem makes its bare train step run at ~64 pairs/s on 2 cores
  (SigNet: ~16); a whole run of 1200 steps took 14m46s-16m09s here (pipeline, validation and
  checkpoints included; 20m39s while a test suite shared the CPU).
- `absdiff`: |e1 - e2| is symmetric, so the head must compare the two signatures; the design's
  signed difference lets it judge the questioned image alone ("does it look forged?") and it
  misses other writers' genuine signatures (random-forgery EER worse than skilled).
- Adam 1e-3 with warm-up and cosine decay: the design's Adagrad 1e-3 is still underfitting after 7
  epochs (training accuracy 0.83).
- Augmentation (small affine, shift, blur, noise): without it training accuracy reaches 0.985 and
  validation random-forgery EER is 31% against 17% with it, at the same skilled-forgery EER.

The runs behind the choice (validation writers of seed 0, EER skilled / random):
- `small` encoder (strided), 96x144, absdiff, Adam: 36.7% / 12.6% after 900 of 1500 steps
  (stopped: sees writers, not forgers, as issue #7 found for the smoke config);
- this config: 25.5% / 16.4% at its best step (900), 26.2% / 15.0% at 1200;
- this config without augmentation: 25.5% / 22.7% (best, step 900), 26.6% / 21.3% at 1200.
The design (`configs/sigcomp.py`) reported 18.5% / 40.2% at its best step (issue #7): better on
skilled forgeries, at chance-like random-forgery EER; neither reaches the targets yet.
"""

from configs import sigcomp


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = sigcomp.get_config()
    c.image_height = 150
    c.image_width = 220
    c.model.encoder = "vgg"
    c.model.small_width = 32
    c.model.vgg_stem = 4
    c.model.embedding_dim = 128
    c.model.head_hidden = (64,)
    c.model.combine = "absdiff"
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    c.lr_schedule = "cosine"
    c.warmup_steps = 100
    c.num_train_steps = 1200
    c.augment.max_shift = 4
    c.augment.max_rotation = 3.0
    c.augment.max_scale = 0.05
    c.augment.max_shear = 0.1
    c.augment.noise_std = 0.02
    c.augment.blur_prob = 0.2
    c.log_every_steps = 100
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    if variant == "smoke":
        c.image_height = 64
        c.image_width = 96
        c.model.small_width = 8
        c.num_train_steps = 20
        c.warmup_steps = 5
        c.log_every_steps = 10
        c.eval_every_steps = 10
        c.checkpoint_every_steps = 10
    elif variant:
        raise ValueError(f"configs/sigcomp_best.py has no variant {variant!r}; use '' or 'smoke'.")
    return c

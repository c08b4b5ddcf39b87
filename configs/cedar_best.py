"""The best recipe of configs/sigcomp_best.py on CEDAR, unchanged (chosen on SigComp2011's
validation writers; nothing was tuned on CEDAR).

    SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/cedar_best.py --workdir=W \
        --config.split.method=kfold --config.split.fold=0
"""

from configs import sigcomp_best


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = sigcomp_best.get_config(variant)
    c.dataset = "cedar"
    return c

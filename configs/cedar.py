"""The original design on CEDAR (official full_org/ + full_forg/ layout), writer-disjoint.

SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/cedar.py --workdir=W
"""

from configs import sigcomp


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = sigcomp.get_config(variant)
    c.dataset = "cedar"
    return c

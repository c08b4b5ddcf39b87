"""GPDS (e.g. GPDS-960 gray) through `signature_folder`: <w>/c-<w>-NN.jpg genuine, cf-... forged.

SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/gpds.py --workdir=W
"""

from configs import sigcomp


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = sigcomp.get_config(variant)
    c.dataset = "signature_folder"
    c.real.folder_root = "gpds"
    c.real.pattern = r"(?P<writer>\d+)/(?P<kind>c|cf)-(?P=writer)-\d+\.jpg"
    c.real.genuine_values = "c"
    c.real.forged_values = "cf"
    c.real.folder_name = "gpds"
    return c

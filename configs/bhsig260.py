"""BHSig260 (Bengali) through `signature_folder`: a layout set by a root and a regex, no code.

    SIAMJAX_DATA_DIR=/path/to/datasets python train.py --config=configs/bhsig260.py --workdir=W

Expects $SIAMJAX_DATA_DIR/BHSig260/Bengali/<w>/B-S-<w>-G-NN.tif (genuine) and ...-F-NN.tif (forged).
For both scripts with distinct writer ids use the pattern
`(?:Bengali|Hindi)/\\d+/(?P<writer>[BH]-S-\\d+)-(?P<kind>[GF])-\\d+\\.tif`.
"""

from configs import sigcomp


def get_config(variant: str = "") -> "ml_collections.ConfigDict":  # noqa: F821
    c = sigcomp.get_config(variant)
    c.dataset = "signature_folder"
    c.real.folder_root = "BHSig260"  # Relative to data_dir, or absolute.
    c.real.pattern = r"Bengali/(?P<writer>\d+)/B-S-(?P=writer)-(?P<kind>[GF])-\d+\.tif"
    c.real.genuine_values = "G"
    c.real.forged_values = "F"
    c.real.folder_name = "bhsig260_bengali"
    return c

"""sigcomp2011: ICDAR 2011 SigComp Dutch offline signatures in Kaggle's sign_data layout."""

from siamjax.datasets.sigcomp2011.kaggle import KagglePair, read_kaggle_pairs
from siamjax.datasets.sigcomp2011.sigcomp2011_dataset_builder import Builder, find_root, list_files

__all__ = ["Builder", "KagglePair", "find_root", "list_files", "read_kaggle_pairs"]

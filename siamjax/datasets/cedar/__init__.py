"""cedar: the CEDAR offline signature database (official layout or one flat folder)."""

from siamjax.datasets.cedar.cedar_dataset_builder import Builder, find_root, list_files

__all__ = ["Builder", "find_root", "list_files"]

"""signature_folder: any folder of signatures, classified by a regular expression on paths."""

from siamjax.datasets.signature_folder.signature_folder_dataset_builder import (
    Builder,
    FolderConfig,
    make_builder,
)

__all__ = ["Builder", "FolderConfig", "make_builder"]

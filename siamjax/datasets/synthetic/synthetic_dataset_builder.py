"""TFDS builder of the embedded procedural signatures (`siamjax.synthetic`): no download at all.

Each setting of the generator (writers, samples, image size, seed) is its own BuilderConfig whose
name encodes it, so different settings prepare into different folders of the same data dir.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from siamjax import synthetic
from siamjax.datasets import common


@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Generator settings; make it with `SyntheticConfig.of(...)`, which names it after them."""

    num_writers: int = 60
    genuine_per_writer: int = 12
    forgeries_per_writer: int = 12
    forgers_per_writer: int = 3
    height: int = 64
    width: int = 96
    seed: int = 1234

    @classmethod
    def of(cls, num_writers: int, genuine_per_writer: int, forgeries_per_writer: int,
           forgers_per_writer: int, height: int, width: int, seed: int) -> SyntheticConfig:
        name = (f"w{num_writers}_g{genuine_per_writer}_f{forgeries_per_writer}_"
                f"k{forgers_per_writer}_{height}x{width}_s{seed}")
        return cls(name=name, num_writers=num_writers, genuine_per_writer=genuine_per_writer,
                   forgeries_per_writer=forgeries_per_writer,
                   forgers_per_writer=forgers_per_writer, height=height, width=width, seed=seed)


class SyntheticSignatures(tfds.core.GeneratorBasedBuilder):
    """Procedural genuine signatures and skilled forgeries of `num_writers` writers."""

    name = "synthetic_signatures"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS: list[SyntheticConfig] = []  # Any setting, made by `make_builder`.

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Procedurally generated offline signatures: per writer, genuine samples "
                         "with small natural variation and skilled forgeries by a few forgers "
                         "with forger-specific deviations (tremor, proportions, slant)."),
            features=common.features(c.height, c.width),
            supervised_keys=None,
            homepage="https://github.com/siamjax/siamjax",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the data is generated.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        c = self.builder_config
        for example in synthetic.render_dataset(
                c.num_writers, c.genuine_per_writer, c.forgeries_per_writer,
                c.forgers_per_writer, c.height, c.width, c.seed):
            yield example["path"], example


def make_builder(num_writers: int, genuine_per_writer: int, forgeries_per_writer: int,
                 forgers_per_writer: int, height: int, width: int, seed: int,
                 data_dir: str) -> SyntheticSignatures:
    """The builder for one generator setting, preparing into `data_dir`."""
    config = SyntheticConfig.of(num_writers, genuine_per_writer, forgeries_per_writer,
                                forgers_per_writer, height, width, seed)
    return SyntheticSignatures(config=config, data_dir=data_dir)

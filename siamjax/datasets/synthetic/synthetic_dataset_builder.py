"""TFDS builder of the embedded procedural signatures (`generator.py` beside it): no download.

Each setting of the generator (`synthetic.Settings`: writers, samples, image size, seed) is its own
BuilderConfig whose name encodes it, so different settings prepare into different folders of the
same data dir.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from siamjax.datasets import common
from siamjax.datasets.synthetic import generator as synthetic


@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Generator settings; `SyntheticConfig.of(settings)` makes it and names it after them."""

    settings: synthetic.Settings

    @classmethod
    def of(cls, settings: synthetic.Settings) -> SyntheticConfig:
        s = settings
        name = (
            f"w{s.num_writers}_g{s.genuine_per_writer}_f{s.forgeries_per_writer}_"
            f"k{s.forgers_per_writer}_{s.height}x{s.width}_s{s.seed}"
            + ("" if s.forgery_style == "tremor" else f"_{s.forgery_style}")
            + ("" if s.ink == "raw" else f"_ink-{s.ink}")
        )
        return cls(name=name, settings=settings)


class SyntheticSignatures(tfds.core.GeneratorBasedBuilder):
    """Procedural genuine signatures and skilled forgeries of `num_writers` writers."""

    name = "synthetic_signatures"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS: list[SyntheticConfig] = []  # Any setting, made by `make_builder`.

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.settings
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedurally generated offline signatures: per writer, genuine samples "
                "with small natural variation and skilled forgeries by a few forgers "
                "with forger-specific deviations (tremor, proportions, slant)."
            ),
            features=common.features(s.height, s.width),
            supervised_keys=None,
            homepage="https://github.com/siamjax/siamjax",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the data is generated.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for example in synthetic.render_dataset(self.builder_config.settings):
            yield example["path"], example


def make_builder(settings: synthetic.Settings, data_dir: str) -> SyntheticSignatures:
    """The builder for one generator setting, preparing into `data_dir`."""
    return SyntheticSignatures(config=SyntheticConfig.of(settings), data_dir=data_dir)
